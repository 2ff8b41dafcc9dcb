"""TorchScript files (`torch.jit.save`).

TorchScript's loader rebuilds only TorchScript types and tensors from the archive, never
arbitrary Python objects, so loading an untrusted file cannot run Python code.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import torch

from ..spec import ModelSettings
from .base import ModelLoadError
from .formats import Located, read_bytes
from .model_spec import ModelSpec
from .speed import accelerate
from .tensor_model import ModuleRunner, TensorModel, torch_device


def load_script(data: bytes, device: torch.device, path: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet what many models ship as
            return torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except RuntimeError as exc:
        raise ModelLoadError(f"--model_dir: cannot load TorchScript {path!r}: {str(exc).splitlines()[0]}") from None


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> TensorModel:
    device = torch_device(settings.device)
    module = load_script(read_bytes(located.path), device, located.path)
    runner = accelerate(ModuleRunner(module, {"format": "torchscript"}), settings, device)
    # A TorchScript module does not declare its input shape: the spec gives it.
    return TensorModel(runner, spec.resolve_input(None, None), labels, device, backend="torchscript")
