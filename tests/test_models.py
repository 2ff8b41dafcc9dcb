"""Loading any model, or its framework ahead of it, first gives the process's CUDA streams hardware
queues of their own; loading the framework imports what the model's backend needs, and no more."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import pytest

from backend_helpers import REPO
from batch_predict.models import ModelLoadError, load_model, load_runtime
from batch_predict.spec import ModelSettings

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")

_LOAD_AND_SHOW = """
import os, sys
from batch_predict import models
from batch_predict.spec import ModelSettings
opened = []
class Recorded(models.PrimaryContext):
    def __init__(self, ordinal):
        opened.append(str(ordinal))
        super().__init__(ordinal)
models.PrimaryContext = Recorded
getattr(models, sys.argv[1])(ModelSettings(model_dir=sys.argv[2], model_spec=sys.argv[3] or None, device=sys.argv[4]))
print(os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"), *(name in sys.modules for name in ("torch", "tensorflow", "onnxruntime")),
      ",".join(opened) or "-")
"""


def _load_and_show(load: str, model: Path, spec: str, env: dict[str, str] | None = None, device: str = "cpu") -> list[str]:
    """What loading left: the CUDA queue count, whether torch, tensorflow and onnxruntime were
    imported, and the devices whose CUDA context was opened through the driver ("-": none)."""
    shown = subprocess.run([sys.executable, "-c", _LOAD_AND_SHOW, load, str(model), spec, device],
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip().splitlines()[-1].split()


@pytest.mark.parametrize("load", ["load_model", "load_runtime"])
@pytest.mark.parametrize(("preset", "expected"), [(None, "32"), ("4", "4")])
def test_loading_a_model_sets_the_cuda_queue_count_unless_the_user_chose_one(yolox_dir, load, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    if preset is not None:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = preset
    assert _load_and_show(load, yolox_dir / "yolox_nano_torchscript.pt", SPEC, env)[0] == expected


@pytest.mark.parametrize(("model", "spec", "imported"), [
    ("yolox_nano_torchscript.pt", SPEC, {"torch": "True", "tensorflow": "False", "onnxruntime": "False"}),
    ("tfod_encoded_savedmodel", "", {"tensorflow": "True"}),  # torch too, where torchvision is installed
    ("yolox_nano.onnx", SPEC, {"onnxruntime": "True", "tensorflow": "False"}),
], ids=["torchscript", "savedmodel", "onnx"])
def test_loading_the_framework_imports_the_backends_own(yolox_dir, model, spec, imported):
    shown = dict(zip(("torch", "tensorflow", "onnxruntime"), _load_and_show("load_runtime", yolox_dir / model, spec)[1:4]))
    assert {name: shown[name] for name in imported} == imported


@pytest.mark.parametrize(("model", "spec", "device", "opened"), [
    ("yolox_nano_torchscript.pt", SPEC, "auto", "0"),
    ("yolox_nano_torchscript.pt", SPEC, "cpu", "-"),
    ("yolox_nano.onnx", SPEC, "auto", "0"),
    ("tfod_encoded_savedmodel", "", "auto", "-"),
], ids=["torchscript", "torchscript-cpu", "onnx", "savedmodel"])
def test_loading_the_framework_opens_the_gpu_beside_it_for_frameworks_that_share_its_context(
        yolox_dir, model, spec, device, opened):
    """PyTorch and onnxruntime work in the GPU's primary context, so the driver opens it while they
    import; TensorFlow sets the context's flags itself, and a CPU job needs none."""
    assert _load_and_show("load_runtime", yolox_dir / model, spec, device=device)[4] == opened


def test_loading_the_framework_fails_as_loading_the_model_does(tmp_path):
    for load in (load_model, load_runtime):
        with pytest.raises(ModelLoadError, match="does not exist"):
            load(ModelSettings(model_dir=str(tmp_path / "no-model"), device="cpu"))
