"""Model backends, chosen by what `--model_dir` holds; one module per backend.

Adding a backend is one module with a `load(located, spec, labels, settings) -> Model` function,
an `open_runtime(settings)` one (its framework imported, its device opened: what a job does while
it lists its inputs), and one entry in `_BACKENDS`. Each is imported only when used: the PyTorch
paths never import TensorFlow, and the TF path needs no PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from types import ModuleType

import fsspec

from .labels import load_label_map
from ..spec import ModelSettings
from .base import InputKind, Model, ModelLoadError, PredictError
from .cuda_driver import PrimaryContext, cuda_ordinal
from .formats import Located, find_spec_file, locate
from .model_spec import ModelSpec, ModelSpecError, load_spec

__all__ = [
    "InputKind", "Model", "ModelLoadError", "ModelSpec", "ModelSpecError", "PredictError", "find_labels", "load_model",
    "load_runtime", "load_runtime_in_background",
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

#: Formats run by a framework that opens its GPU as a CUDA runtime does, in the primary context
#: (PyTorch; onnxruntime's session beside PyTorch). TensorFlow is left out: it sets the context's
#: flags itself, which it cannot once the context is open.
_PRIMARY_CONTEXT_FORMATS = ("torchscript", "torch_export", "onnx", "state_dict")

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
    spec, located = _located(settings)
    labels = find_labels(settings, spec, located)
    if spec.class_ids == "label_order" and not labels:
        raise spec.error("class_ids", "label_order maps output k to the k-th label, but no labels were found")
    if located.format in _NO_SPEED_OPTIONS and (settings.precision, settings.channels_last, settings.compile) != ("fp32", False, "none"):
        raise ModelLoadError(
            f"--precision, --channels_last and --compile apply to PyTorch models; {located.path!r} is a {located.format} model"
        )
    return _backend(located).load(located, spec, labels, settings)


def load_runtime(settings: ModelSettings) -> None:
    """Import the framework the model `settings.model_dir` holds needs, and open the GPU it runs on
    where PyTorch runs it: the model-independent seconds of `load_model` (on an H200, importing
    PyTorch took 3.4-4.6 s and its CUDA context 0.8 s; docs/benchmarks.md, 0c). The model itself is not
    loaded: its first call, which plans the model's kernels, is kept for the thread that will run it,
    since PyTorch keeps cuDNN's execution plans per thread. The GPU's context is opened through the
    driver while the framework imports (`cuda_driver`)."""
    separate_cuda_queues()
    _, located = _located(settings)
    ordinal = cuda_ordinal(settings.device) if located.format in _PRIMARY_CONTEXT_FORMATS else None
    context = PrimaryContext(ordinal) if ordinal is not None else None
    try:
        _backend(located).open_runtime(settings)
    finally:
        if context is not None:
            context.hand_over()


def load_runtime_in_background(settings: ModelSettings) -> None:
    """`load_runtime(settings)` on a daemon thread, so that a job lists its inputs (seconds in a
    bucket of many files) while it runs. Only a head start: `load_model` takes each step again,
    finding it done (or waiting for it), and raises what failed here; a job whose plan fails does
    not wait for it."""

    def load() -> None:
        with contextlib.suppress(Exception):
            load_runtime(settings)

    threading.Thread(target=load, name="batch-predict-runtime", daemon=True).start()


def _located(settings: ModelSettings) -> tuple[ModelSpec, Located]:
    spec = load_spec(settings.model_spec or find_spec_file(settings.model_dir), settings.model_options, settings.score_threshold)
    return spec, locate(settings.model_dir, spec)


def _backend(located: Located) -> ModuleType:
    """The backend module for `located`'s format, imported with the framework it needs."""
    module_name, extra = _BACKENDS[located.format]
    try:
        return importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        raise ModelLoadError(
            f"--model_dir: {located.path!r} is a {located.format} model, but {exc.name} is not installed: "
            f"pip install 'batch-predict[{extra}]'"
        ) from None
