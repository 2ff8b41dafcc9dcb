"""TorchScript files load frozen: no host synchronization inside a call, the same outputs."""

from __future__ import annotations

import warnings

import pytest
import torch

from batch_predict.models import load_model
from batch_predict.models.torchscript import freeze, load_script
from batch_predict.spec import ModelSettings

from backend_helpers import REPO

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")
#: Graph operations that copy a device value to the host, and so wait for the device.
_HOST_SYNCS = {"aten::Int", "aten::item", "aten::_local_scalar_dense", "aten::tolist"}


def _syncs(module: torch.jit.ScriptModule) -> int:
    graph = module.inlined_graph if hasattr(module, "inlined_graph") else module.graph
    return sum(node.kind() in _HOST_SYNCS for node in graph.nodes())


@pytest.fixture(scope="module")
def loaded(yolox_dir):
    path = yolox_dir / "yolox_nano_torchscript.pt"
    return load_script(path.read_bytes(), torch.device("cpu"), str(path))


def test_the_onnx_converted_yolox_synchronizes_in_every_call_until_frozen(loaded):
    assert _syncs(loaded) >= 20  # onnx2torch's slices read their bounds from tensors
    assert _syncs(freeze(loaded)) == 0


def test_the_loaded_model_runs_the_frozen_module(yolox_dir):
    model = load_model(ModelSettings(model_dir=str(yolox_dir / "yolox_nano_torchscript.pt"), model_spec=SPEC, device="cpu"))
    assert _syncs(model._runner.module) == 0


def test_freezing_changes_no_output(loaded):
    images = torch.rand((2, 3, 416, 416), generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():
        assert torch.equal(freeze(loaded)(images), loaded(images))


def test_a_module_that_cannot_be_frozen_runs_as_loaded():
    class Doubling(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        training = torch.jit.script(Doubling())  # freezing needs eval mode
    assert freeze(training) is training
