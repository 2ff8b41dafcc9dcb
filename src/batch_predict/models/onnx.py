"""ONNX files, run by onnxruntime: on the CUDA provider when onnxruntime-gpu is installed and
the job runs on a GPU, else on the CPU provider."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..spec import ModelSettings
from .base import ModelLoadError
from .formats import Located, read_bytes
from .model_spec import ModelSpec
from .tensor_model import TensorModel, at_few_batch_sizes, open_device, torch_device

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(
            "--model_dir holds an ONNX model, but onnxruntime is not installed: pip install 'batch-predict[onnx]'"
        ) from None
    return onnxruntime


def open_runtime(settings: ModelSettings) -> None:
    """The backend's hook for `models.load_runtime`: onnxruntime imported, and the CUDA context
    opened where the session will run on a GPU."""
    open_device(_providers(_import_onnxruntime(), settings.device)[1])


def _providers(ort, requested: str) -> tuple[list, torch.device]:
    """Execution providers and the torch device for pre- and post-processing."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if requested == "cpu" or (requested == "auto" and not (has_cuda and torch.cuda.is_available())):
        return ["CPUExecutionProvider"], torch.device("cpu")
    if not has_cuda:
        raise ModelLoadError(
            f"--device {requested}: onnxruntime has no CUDA provider here; pip install onnxruntime-gpu"
        )
    device = torch_device("cuda" if requested == "auto" else requested)
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"], device


class OnnxRunner:
    """Feeds the session a host array and hands its outputs back as tensors on `device`, by name."""

    def __init__(self, session, input_name: str, device: torch.device) -> None:
        self.session = session
        self.input_name = input_name
        self.device = device
        self._outputs = [o.name for o in session.get_outputs()]

    def __call__(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        arrays = self.session.run(self._outputs, {self.input_name: inputs.detach().cpu().numpy()})
        return {name: torch.from_numpy(np.asarray(a)).to(self.device) for name, a in zip(self._outputs, arrays)}

    def describe(self) -> dict[str, object]:
        return {"format": "onnx", "providers": self.session.get_providers(), "input_name": self.input_name}


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> TensorModel:
    ort = _import_onnxruntime()
    providers, device = _providers(ort, settings.device)
    try:
        session = ort.InferenceSession(read_bytes(located.path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for unreadable models
        raise ModelLoadError(f"--model_dir: cannot load ONNX model {located.path!r}: {exc}") from None
    inputs = {i.name: i for i in session.get_inputs()}
    name = spec.input.name or (next(iter(inputs)) if len(inputs) == 1 else None)
    if name is None or name not in inputs:
        raise spec.error("input.name", f"the ONNX model's inputs are {sorted(inputs)}; name the image input")
    declared = inputs[name]
    if declared.type not in _ONNX_DTYPES:
        raise spec.error("input.dtype", f"input {name!r} is {declared.type}; supported: {', '.join(_ONNX_DTYPES)}")
    shape = [d if isinstance(d, int) else None for d in declared.shape]
    resolved = spec.resolve_input(shape, _ONNX_DTYPES[declared.type])
    runner = at_few_batch_sizes(
        OnnxRunner(session, name, device), settings.batch_size,
        export_batch=shape[0] if shape else None, costly_shapes=device.type == "cuda",
    )
    return TensorModel(runner, resolved, labels, device, backend="onnx")
