"""Model backends, chosen by what `--model_dir` holds."""

from __future__ import annotations

import fsspec

from ..labels import load_label_map
from ..spec import JobSpec
from .base import InputKind, Model, ModelLoadError, PredictError

__all__ = ["InputKind", "Model", "ModelLoadError", "PredictError", "load_model", "find_labels"]

_LABEL_FILES = ("label_map.pbtxt", "labels.txt")


def find_labels(spec: JobSpec) -> dict[int, str]:
    """The job's label map: `--label_map`, else one that ships inside the model directory."""
    if spec.label_map:
        return load_label_map(spec.label_map)
    fs, root = fsspec.core.url_to_fs(spec.model_dir)
    for name in _LABEL_FILES:
        if fs.isfile(f"{root.rstrip('/')}/{name}"):
            return load_label_map(f"{spec.model_dir.rstrip('/')}/{name}")
    return {}


def load_model(spec: JobSpec) -> Model:
    """Load the model that `spec.model_dir` holds, or raise `ModelLoadError` saying why not."""
    fs, root = fsspec.core.url_to_fs(spec.model_dir)
    if not fs.exists(root):
        raise ModelLoadError(f"--model_dir: {spec.model_dir!r} does not exist")
    if fs.isdir(root) and any(fs.isfile(f"{root.rstrip('/')}/{n}") for n in ("saved_model.pb", "saved_model.pbtxt")):
        from .tf_savedmodel import TFSavedModel

        return TFSavedModel(spec, labels=find_labels(spec))
    raise ModelLoadError(
        f"--model_dir: {spec.model_dir!r} holds no model this build can load "
        "(expected a TensorFlow SavedModel directory with saved_model.pb)"
    )
