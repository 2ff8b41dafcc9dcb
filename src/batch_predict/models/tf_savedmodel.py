"""TensorFlow SavedModels with a TF Object Detection API signature."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..records import Detections, Record
from ..spec import JobSpec
from .base import InputKind, ModelLoadError, PredictError

_STANDARD_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def _import_tensorflow():
    # TF's C++ log repeats, unreadably, each failure the job already writes as an error line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(
            "--model_dir holds a TensorFlow SavedModel, but TensorFlow is not installed: "
            "pip install 'batch-predict[tf]'"
        ) from None
    return tf


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


def _tensor_spec(name: str, spec) -> dict[str, str]:
    return {"name": name, "dtype": spec.dtype.name, "shape": str(spec.shape)}


class TFSavedModel:
    """A SavedModel signature with one input: `[None]` encoded strings, or uint8 images.

    Outputs follow the TF OD API: normalized `[ymin, xmin, ymax, xmax]` boxes, scores,
    1-based float classes and `num_detections`; they become pixel boxes of each original image.
    """

    def __init__(self, spec: JobSpec, labels: dict[int, str]) -> None:
        tf = _import_tensorflow()
        self._tf = tf
        self.labels = labels
        self.score_threshold = spec.score_threshold
        self.output_raw = spec.output_raw
        self._device = _tf_device(tf, spec.device)
        try:
            self._loaded = tf.saved_model.load(spec.model_dir, tags=["serve"])
        except Exception as exc:  # TF raises many types for unreadable or invalid SavedModels
            raise ModelLoadError(f"--model_dir: cannot load SavedModel {spec.model_dir!r}: {_clean_tf_message(str(exc))}") from None
        signatures = self._loaded.signatures
        if spec.signature_name not in signatures:
            raise ModelLoadError(
                f"--signature_name: {spec.signature_name!r} is not in the SavedModel; it has {sorted(signatures) or 'none'}"
            )
        self._fn = signatures[spec.signature_name]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelLoadError(f"signature {spec.signature_name!r} has {len(inputs)} inputs; expected exactly one")
        (self._input_name, input_spec), = inputs.items()
        self.input_kind: InputKind = self._input_kind(input_spec)
        self.same_size_batches = self.input_kind == "image"
        outputs = self._fn.structured_outputs
        missing = [name for name in ("detection_boxes", "detection_scores") if name not in outputs]
        if missing:
            raise ModelLoadError(
                f"signature {spec.signature_name!r} lacks the TF OD API outputs {missing}; it has {sorted(outputs)}"
            )
        self._signature_name = spec.signature_name
        self._input_spec = input_spec

    def _input_kind(self, input_spec) -> InputKind:
        tf = self._tf
        shape = input_spec.shape
        if input_spec.dtype == tf.string and shape.rank == 1:
            return "encoded"
        if input_spec.dtype == tf.uint8 and shape.rank == 4 and shape[-1] in (3, None):
            return "image"
        raise ModelLoadError(
            f"signature input {self._input_name!r} is {input_spec.dtype.name} {shape}; expected a [None] string "
            "tensor (encoded_image_string_tensor) or a uint8 [None, None, None, 3] image tensor"
        )

    def describe(self) -> dict[str, object]:
        return {
            "backend": "tensorflow-savedmodel",
            "signature": self._signature_name,
            "signatures": sorted(self._loaded.signatures),
            "input": _tensor_spec(self._input_name, self._input_spec),
            "outputs": [_tensor_spec(name, spec) for name, spec in sorted(self._fn.structured_outputs.items())],
            "input_kind": self.input_kind,
            "labels": len(self.labels),
        }

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        tf = self._tf
        if self.input_kind == "encoded":
            batch = tf.constant([r.encoded for r in records], dtype=tf.string)
        else:
            batch = tf.constant(np.stack([r.array for r in records]))
        try:
            if self._device:
                with tf.device(self._device):
                    outputs = self._fn(**{self._input_name: batch})
            else:
                outputs = self._fn(**{self._input_name: batch})
        except tf.errors.OpError as exc:
            raise PredictError(type(exc).__name__, _clean_tf_message(exc.message)) from None
        arrays = {name: value.numpy() for name, value in outputs.items()}
        return tfod_to_detections(arrays, records, self.score_threshold, self.output_raw)


def tfod_to_detections(
    outputs: dict[str, np.ndarray], records: Sequence[Record], score_threshold: float, output_raw: bool
) -> list[Detections]:
    """TF OD API outputs of a batch as per-image detections in original-image pixels."""
    boxes = outputs["detection_boxes"].astype(np.float32)
    scores = outputs["detection_scores"].astype(np.float32)
    count = len(records)
    classes = outputs.get("detection_classes", np.ones_like(scores)).astype(np.int64)
    num = outputs.get("num_detections", np.full(count, scores.shape[1])).astype(np.int64)
    sizes = np.array([[r.width, r.height, r.width, r.height] for r in records], dtype=np.float32)
    # ymin, xmin, ymax, xmax normalized -> x1, y1, x2, y2 pixels, for the whole batch at once.
    pixel_boxes = boxes[:, :, [1, 0, 3, 2]].clip(0.0, 1.0) * sizes[:, None, :]
    within = np.arange(scores.shape[1])[None, :] < num[:, None]
    keep = within & (scores >= score_threshold)
    extras = {k: v for k, v in outputs.items() if k not in _STANDARD_OUTPUTS} if output_raw else {}
    return [
        Detections(
            boxes=pixel_boxes[i][keep[i]],
            scores=scores[i][keep[i]],
            classes=classes[i][keep[i]],
            raw={k: v[i].tolist() for k, v in extras.items()},
        )
        for i in range(count)
    ]
