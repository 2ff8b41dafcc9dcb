"""TensorFlow SavedModels: TF Object Detection API signatures, or bare networks with a spec.

A TF OD API signature (encoded strings or uint8 images in, `detection_*` out) runs as it is
and needs only TensorFlow. Any other signature (a float image tensor in, a raw head out, as
`raw_savedmodel/`) runs like the PyTorch and ONNX backends, through the model spec's
preprocessing and decoder.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from ..records import Detections, Record
from ..spec import ModelSettings
from .base import InputKind, Model, ModelLoadError, PredictError
from .detections import Geometry, tfod_to_padded, to_detections
from .formats import Located
from .model_spec import ModelSpec

_STANDARD_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def _import_tensorflow():
    # TF's C++ log repeats, unreadably, each failure the job already writes as an error line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("torchvision") is not None:
        # torchvision imported after TensorFlow 2.21 kills the process (a segfault loading
        # triton beside TF's libraries); imported first, both work. Raw SavedModels decode
        # with torch in this process, and a Python caller may load another backend later.
        importlib.import_module("torchvision")
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(
            "--model_dir holds a TensorFlow SavedModel, but TensorFlow is not installed: "
            "pip install 'batch-predict[tf]'"
        ) from None
    return tf


def open_runtime(settings: ModelSettings) -> None:
    """The backend's hook for `models.load_runtime`: TensorFlow imported (seconds), its GPU left to the load."""
    _import_tensorflow()


def _tf_device(tf, device: str) -> str | None:
    """The TF device string for `--device`; `cpu` also hides GPUs, so TF allocates none."""
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
        return "/CPU:0"
    if device.startswith(("cuda", "gpu")):
        index = device.partition(":")[2] or "0"
        if not tf.config.list_physical_devices("GPU"):
            raise ModelLoadError(f"--device {device}: TensorFlow sees no GPU")
        return f"/GPU:{index}"
    return None


def _clean_tf_message(message: str) -> str:
    """The one informative line of a TF graph error, without node names and stack banners."""
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "<stack traces", "\t [["))
        and not line.strip().startswith("[[")
    ]
    return " ".join(lines) or message


class Signature:
    """One SavedModel signature with exactly one input, called with a batch, returning arrays."""

    def __init__(self, tf, path: str, name: str, device: str | None) -> None:
        self.tf = tf
        self._device = device
        self.name = name
        try:
            self._loaded = tf.saved_model.load(path, tags=["serve"])
        except Exception as exc:  # TF raises many types for unreadable or invalid SavedModels
            raise ModelLoadError(f"--model_dir: cannot load SavedModel {path!r}: {_clean_tf_message(str(exc))}") from None
        signatures = self._loaded.signatures
        if name not in signatures:
            raise ModelLoadError(f"--signature_name: {name!r} is not in the SavedModel; it has {sorted(signatures) or 'none'}")
        self.fn = signatures[name]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelLoadError(f"signature {name!r} has {len(inputs)} inputs; expected exactly one")
        (self.input_name, self.input_spec), = inputs.items()
        self.output_names = sorted(self.fn.structured_outputs)
        self.all_names = sorted(signatures)

    def tfod_input_kind(self) -> InputKind | None:
        """"encoded" for a `[None]` string input, "image" for uint8 images, else None."""
        tf, spec = self.tf, self.input_spec
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return "encoded"
        if spec.dtype == tf.uint8 and spec.shape.rank == 4 and spec.shape[-1] in (3, None):
            return "image"
        return None

    def describe_input(self) -> str:
        return f"{self.input_name!r}: {self.input_spec.dtype.name} {self.input_spec.shape}"

    def tensors(self) -> dict[str, object]:
        """The input and outputs as {name, dtype, shape}, for `describe()` and `inspect`."""
        def tensor(name: str, spec: Any) -> dict[str, str]:
            return {"name": name, "dtype": spec.dtype.name, "shape": str(spec.shape)}

        outputs = self.fn.structured_outputs
        return {"input": tensor(self.input_name, self.input_spec), "outputs": [tensor(n, outputs[n]) for n in self.output_names]}

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        tf = self.tf
        try:
            if self._device:
                with tf.device(self._device):
                    outputs = self.fn(**{self.input_name: batch})
            else:
                outputs = self.fn(**{self.input_name: batch})
        except tf.errors.OpError as exc:
            raise PredictError(type(exc).__name__, _clean_tf_message(exc.message)) from None
        return {name: value.numpy() for name, value in outputs.items()}


class TFODModel:
    """A TF OD API signature: `[None]` encoded strings or uint8 images in; normalized
    `[ymin, xmin, ymax, xmax]` boxes, scores, 1-based float classes and `num_detections` out,
    of each original image (the graph letterboxes and runs NMS itself)."""

    def __init__(
        self, signature: Signature, input_kind: InputKind, spec: ModelSpec, labels: Mapping[int, str], output_raw: bool
    ) -> None:
        self._signature = signature
        self._tf = signature.tf
        self.input_kind = input_kind
        self.same_size_batches = input_kind == "image"
        self.decode_split = None  # TensorFlow decodes inside the graph or is fed pixels
        self.labels = dict(labels)
        self.spec = spec
        self.output_raw = output_raw
        self._class_ids = np.array(list(self.labels), np.int64) if spec.class_ids == "label_order" else None
        missing = [name for name in ("detection_boxes", "detection_scores") if name not in signature.output_names]
        if missing:
            raise ModelLoadError(
                f"signature {signature.name!r} lacks the TF OD API outputs {missing}; it has {signature.output_names}"
            )

    def describe(self) -> dict[str, object]:
        return {
            "backend": "tensorflow-savedmodel",
            "signature": self._signature.name,
            "signatures": self._signature.all_names,
            **self._signature.tensors(),
            "input_kind": self.input_kind,
            "score_threshold": self.spec.thresholds.score,
            "labels": len(self.labels),
        }

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        tf = self._tf
        if self.input_kind == "encoded":
            batch = tf.constant([r.encoded for r in records], dtype=tf.string)
        else:
            # An "image" model's records reach it decoded (pipeline.prepare_for).
            batch = tf.constant(np.stack([cast(np.ndarray, r.array) for r in records]))
        outputs = self._signature(batch)
        sizes = np.array([[r.width, r.height] for r in records], dtype=np.float32)
        extras = {k: v for k, v in outputs.items() if k not in _STANDARD_OUTPUTS} if self.output_raw else {}
        raw = [{k: v[i].tolist() for k, v in extras.items()} for i in range(len(records))]
        return to_detections(
            tfod_to_padded(outputs, sizes), Geometry.identity(len(records)), sizes,
            self.spec.thresholds.score, self._class_ids, raw,
        )


class TFTensorRunner:
    """A bare network's signature as a `Runner`: a preprocessed torch batch in, tensors out."""

    def __init__(self, signature: Signature) -> None:
        self._signature = signature

    def __call__(self, inputs: Any) -> dict[str, Any]:
        import torch

        outputs = self._signature(self._signature.tf.constant(inputs.numpy()))
        return {name: torch.from_numpy(array) for name, array in outputs.items()}

    def describe(self) -> dict[str, object]:
        return {"format": "savedmodel", "signature": self._signature.name, "input_name": self._signature.input_name}


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> Model:
    """A TF OD API signature as it is; any other signature through the spec's decoder."""
    tf = _import_tensorflow()
    signature = Signature(tf, located.path, settings.signature_name, _tf_device(tf, settings.device))
    input_kind = signature.tfod_input_kind()
    if input_kind is not None and spec.output.decoder in (None, "tfod"):
        return TFODModel(signature, input_kind, spec, labels, settings.output_raw)
    if spec.output.decoder is None:
        raise ModelLoadError(
            f"signature {signature.name!r} takes {signature.describe_input()} and returns {signature.output_names}: "
            "not a TF OD API signature; give a model spec (--model_spec) with output.decoder and its input settings"
        )
    try:
        import torch

        from .tensor_model import TensorModel
    except ImportError as exc:
        raise ModelLoadError(
            f"decoder {spec.output.decoder} runs in PyTorch, but {exc.name} is not installed: pip install 'batch-predict[torch]'"
        ) from None

    shape = signature.input_spec.shape
    declared = list(shape) if shape.rank is not None else None
    resolved = spec.resolve_input(declared, signature.input_spec.dtype.name)
    # TF places the network itself; preprocessing and decoding run in torch on the CPU.
    return TensorModel(
        TFTensorRunner(signature), resolved, labels, torch.device("cpu"),
        backend="tensorflow-savedmodel", decode_on_device=False,
    )
