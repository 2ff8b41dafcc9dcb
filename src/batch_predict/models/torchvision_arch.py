"""A torchvision detection architecture, named in the model spec, with a state-dict file.

The weights are read with `torch.load(weights_only=True)`: tensors and plain containers
only, never arbitrary pickled objects.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping

import torch
import torchvision

from ..spec import ModelSettings
from .base import ModelLoadError
from .formats import Located, read_bytes
from .model_spec import ModelSpec
from .speed import accelerate
from .tensor_model import ModuleRunner, TensorModel, open_torch_runtime, torch_device

_CHECKPOINT_KEYS = ("model", "state_dict")


open_runtime = open_torch_runtime


def detection_architectures() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def read_state_dict(data: bytes, path: str) -> dict[str, torch.Tensor]:
    """A state dict, also when wrapped in a training checkpoint's {"model": ...} or {"state_dict": ...}."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(
            f"--model_dir: {path!r} holds objects other than tensors; refusing to unpickle them ({first})"
        ) from None
    except RuntimeError as exc:
        raise ModelLoadError(f"--model_dir: cannot read state dict {path!r}: {exc}") from None
    for key in _CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"--model_dir: {path!r} is not a state dict (a mapping of names to tensors)")
    return state


def build(spec: ModelSpec) -> torch.nn.Module:
    """The architecture with no weights at all (none downloaded), ready for a state dict."""
    name = spec.architecture
    if name not in detection_architectures():
        raise spec.error("architecture", f"{name!r} is not a torchvision detection model; one of {', '.join(detection_architectures())}")
    try:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **spec.architecture_args)
    except (TypeError, ValueError) as exc:
        raise spec.error("architecture_args", f"{name} refuses them: {exc}") from None


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> TensorModel:
    if spec.architecture is None:
        raise spec.error(
            "architecture",
            f"{located.path!r} holds only weights (a state dict); name the torchvision architecture they belong to",
        )
    device = torch_device(settings.device)
    module = build(spec)
    state = read_state_dict(read_bytes(located.path), located.path)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:400]
        raise ModelLoadError(f"--model_dir: {located.path!r} does not fit {spec.architecture}: {summary}") from None
    description = {"format": "state_dict", "architecture": spec.architecture}
    runner = accelerate(ModuleRunner(module.eval().to(device), description, images_as_list=True), settings, device)
    return TensorModel(runner, spec.resolve_input(None, None), labels, device, backend="torchvision")
