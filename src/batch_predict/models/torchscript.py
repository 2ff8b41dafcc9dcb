"""TorchScript files (`torch.jit.save`).

TorchScript's loader rebuilds only TorchScript types and tensors from the archive, never
arbitrary Python objects, so loading an untrusted file cannot run Python code.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping

import torch

from ..spec import ModelSettings
from .base import ModelLoadError
from .formats import Located, read_bytes
from .model_spec import ModelSpec
from .speed import accelerate, input_dtype
from .tensor_model import ModuleRunner, TensorModel, open_torch_runtime, torch_device

log = logging.getLogger("batch_predict")


open_runtime = open_torch_runtime


def load_script(data: bytes, device: torch.device, path: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet what many models ship as
            return torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except RuntimeError as exc:
        raise ModelLoadError(f"--model_dir: cannot load TorchScript {path!r}: {str(exc).splitlines()[0]}") from None


def freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """`module` with its weights and attributes folded into its graph as constants.

    Models converted from ONNX (onnx2torch) keep each slice's bounds as tensors on the model's
    device and call `int()` on them in every forward: a host synchronization each (22 per call
    of YOLOX-Nano), so the thread launching the model waits for the GPU to drain again and
    again, and a CUDA graph cannot capture it. Freezing computes them once, here. Numerics are
    left as they are (no folding of batch norms into convolutions). A module that cannot be
    frozen (one whose forward changes its own attributes) runs as loaded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.freeze(module, optimize_numerics=False)
    except RuntimeError as exc:
        log.info("TorchScript: running the module unfrozen (%s)", str(exc).splitlines()[0])
        return module


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> TensorModel:
    device = torch_device(settings.device)
    module = load_script(read_bytes(located.path), device, located.path)
    loaded = ModuleRunner(module, {"format": "torchscript"})
    runner = accelerate(loaded, settings, device)
    loaded.module = freeze(loaded.module)  # after `accelerate` cast the weights: constants do not cast
    # A TorchScript module does not declare its input shape: the spec gives it.
    return TensorModel(
        runner, spec.resolve_input(None, None), labels, device, backend="torchscript",
        input_dtype=input_dtype(settings, loaded.module),
    )
