"""What `--model_dir` holds, judged by content rather than by file name, and where its spec is."""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Literal

import fsspec

from .base import ModelLoadError
from .model_spec import SPEC_FILE_NAME, ModelSpec

ModelFormat = Literal["savedmodel", "torchscript", "torch_export", "onnx", "state_dict"]

_SAVEDMODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_HEAD_BYTES = 64


@dataclass(frozen=True)
class Located:
    """The model to load: its format, the file or SavedModel folder, and the folder it lies in
    (where labels that ship with it are looked for)."""

    format: ModelFormat
    path: str
    folder: str


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def find_spec_file(model_dir: str) -> str | None:
    """`model.yaml` inside a model folder; beside a model file, `<stem>.yaml`, then `model.yaml`."""
    fs, root = fsspec.core.url_to_fs(model_dir)
    if fs.isdir(root):
        candidates = [_join(model_dir, SPEC_FILE_NAME)]
    else:
        folder, name = posixpath.split(model_dir)
        stem = name.rsplit(".", 1)[0]
        candidates = [posixpath.join(folder, f"{stem}.yaml"), posixpath.join(folder, SPEC_FILE_NAME)]
    return next((c for c in candidates if fs.isfile(fsspec.core.url_to_fs(c)[1])), None)


def read_bytes(path: str) -> bytes:
    """A model file's bytes, from any fsspec location (backends load from memory)."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ModelLoadError(f"--model_dir: cannot read {path!r}: {exc}") from None


def is_savedmodel(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return fs.isdir(root) and any(fs.isfile(_join(root, n)) for n in _SAVEDMODEL_FILES)


def identify_file(path: str) -> ModelFormat:
    """The format of one model file, from its bytes: a zip archive's members tell TorchScript,
    `torch.export` and `torch.save` apart; ONNX is a protobuf that starts with its IR version."""
    try:
        with fsspec.open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            if head.startswith(_ZIP_MAGIC):
                f.seek(0)
                return _identify_zip(path, f)
    except OSError as exc:
        raise ModelLoadError(f"--model_dir: cannot read {path!r}: {exc}") from None
    if head.startswith(_PICKLE_MAGIC):
        return "state_dict"  # the legacy torch.save format; loaded as weights only, never unpickled freely
    if len(head) > 2 and head[0] == 0x08 and 1 <= head[1] <= 32:
        return "onnx"  # ModelProto field 1, ir_version, a small varint
    raise ModelLoadError(
        f"--model_dir: {path!r} is not a model file this build recognises "
        "(TorchScript, torch.export .pt2, ONNX, or a PyTorch state dict)"
    )


def _identify_zip(path: str, data: BinaryIO) -> ModelFormat:
    try:
        names = zipfile.ZipFile(data).namelist()
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"--model_dir: {path!r} is a damaged zip archive: {exc}") from None
    if any(n.endswith("/archive_format") for n in names):
        return "torch_export"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "state_dict"
    raise ModelLoadError(f"--model_dir: {path!r} is a zip archive but not a PyTorch model file")


def locate(model_dir: str, spec: ModelSpec) -> Located:
    """The model `--model_dir` names: a SavedModel folder, a model file, or the file that the
    spec's `model:` field names when `--model_dir` is a folder of another kind."""
    fs, root = fsspec.core.url_to_fs(model_dir)
    if not fs.exists(root):
        raise ModelLoadError(f"--model_dir: {model_dir!r} does not exist")
    if not fs.isdir(root):
        return Located(identify_file(model_dir), model_dir, posixpath.dirname(model_dir) or ".")
    if is_savedmodel(model_dir):
        return Located("savedmodel", model_dir, model_dir)
    if spec.model is None:
        raise ModelLoadError(
            f"--model_dir: {model_dir!r} holds no SavedModel (saved_model.pb), and no model spec "
            f"({SPEC_FILE_NAME} there, or --model_spec) names a model file in its `model:` field"
        )
    path = spec.path(spec.model)
    return Located(identify_file(path), path, model_dir)
