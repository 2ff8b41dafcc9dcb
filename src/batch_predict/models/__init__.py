"""Model backends, chosen by what `--model_dir` holds; one module per backend.

Adding a backend is one module with a `load(located, spec, labels, settings) -> Model` function
and one entry in `_BACKENDS`. Each is imported only when used, so the TF path never imports
PyTorch and the PyTorch paths never import TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import threading
from concurrent.futures import Future

import fsspec

from .labels import load_label_map
from ..spec import ModelSettings
from .base import InputKind, Model, ModelLoadError, PredictError
from .formats import Located, find_spec_file, locate
from .model_spec import ModelSpec, ModelSpecError, load_spec

__all__ = [
    "InputKind", "Model", "ModelLoadError", "ModelSpec", "ModelSpecError", "PredictError", "find_labels", "load_model",
    "load_model_in_background",
]

_LABEL_FILES = ("label_map.pbtxt", "labels.txt")

#: format -> (module, the extra that installs what it needs)
_BACKENDS = {
    "savedmodel": ("tf_savedmodel", "tf"),
    "torchscript": ("torchscript", "torch"),
    "torch_export": ("torch_export", "torch"),
    "onnx": ("onnx", "onnx"),
    "state_dict": ("torchvision_arch", "torch"),
}

#: Hardware work queues the CUDA driver gives the process: its most (it defaults to 8).
CUDA_QUEUES = "32"

#: Formats whose runtimes choose their own kernels: the PyTorch speed options do not reach them.
_NO_SPEED_OPTIONS = ("savedmodel", "onnx")


def find_labels(settings: ModelSettings, spec: ModelSpec, located: Located) -> dict[int, str]:
    """{class id: name}, in the order given: `--label_map`, else the spec's `labels`, else a
    label_map.pbtxt or labels.txt that ships beside the model."""
    if settings.label_map:
        return load_label_map(settings.label_map)
    if isinstance(spec.labels, tuple):
        return dict(enumerate(spec.labels))
    if isinstance(spec.labels, str):
        return load_label_map(spec.path(spec.labels))
    fs, root = fsspec.core.url_to_fs(located.folder)
    for name in _LABEL_FILES:
        if fs.isfile(f"{root.rstrip('/')}/{name}"):
            return load_label_map(f"{located.folder.rstrip('/')}/{name}")
    return {}


def separate_cuda_queues() -> None:
    """Let the CUDA driver give each stream a hardware queue of its own, unless the user chose a number.

    The driver maps a process's streams onto `CUDA_DEVICE_MAX_CONNECTIONS` hardware queues, 8 by
    default. The model's, the preparing and collecting streams and the JPEG decoders' own
    (nvImageCodec alone runs 14) then share queues, and a decoder's small kernels wait behind
    model kernels that sit in the same queue though nothing orders them: the GPU side ran at
    6,980-7,670 images/s with 8 queues, 8,190-8,570 with 32 and 3,200 with 1 (docs/benchmarks.md).
    The driver reads the variable when the process first uses a GPU, so this runs before any
    model loads; in a process that used its GPU already it changes nothing.
    """
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", CUDA_QUEUES)


def load_model(settings: ModelSettings) -> Model:
    """Load the model `settings.model_dir` holds, with its spec, or raise `ModelLoadError` saying why not."""
    separate_cuda_queues()
    spec = load_spec(settings.model_spec or find_spec_file(settings.model_dir), settings.model_options, settings.score_threshold)
    located = locate(settings.model_dir, spec)
    labels = find_labels(settings, spec, located)
    if spec.class_ids == "label_order" and not labels:
        raise spec.error("class_ids", "label_order maps output k to the k-th label, but no labels were found")
    module_name, extra = _BACKENDS[located.format]
    if located.format in _NO_SPEED_OPTIONS and (settings.precision, settings.channels_last, settings.compile) != ("fp32", False, "none"):
        raise ModelLoadError(
            f"--precision, --channels_last and --compile apply to PyTorch models; {located.path!r} is a {located.format} model"
        )
    try:
        backend = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        raise ModelLoadError(
            f"--model_dir: {located.path!r} is a {located.format} model, but {exc.name} is not installed: "
            f"pip install 'batch-predict[{extra}]'"
        ) from None
    return backend.load(located, spec, labels, settings)


def load_model_in_background(settings: ModelSettings) -> Future[Model]:
    """`load_model(settings)` on a thread of its own, so that a job lists its inputs (seconds in a
    bucket of many files) while the model loads (seconds on a GPU: importing PyTorch, the CUDA
    context, the first call). The thread is a daemon: a job whose plan fails need not wait for it."""
    loaded: Future[Model] = Future()

    def load() -> None:
        loaded.set_running_or_notify_cancel()
        try:
            loaded.set_result(load_model(settings))
        except BaseException as exc:  # handed to whoever takes the model
            loaded.set_exception(exc)

    threading.Thread(target=load, name="batch-predict-load", daemon=True).start()
    return loaded
