"""Find the input files, and read records out of them: one reader per kind of file, listed
with what each can do in `formats`."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from . import tf_example
from ..decode import to_uint8_rgb
from ..errors import SetupError
from ..records import FailedRecord, Record, default_key, safe_text
from .tfrecord import read_record_range

_GLOB_CHARS = frozenset("*?[")
_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
_KEY_FEATURES = ("image/key/sha256", "image/source_id", "image/filename")


class NoInputError(SetupError, FileNotFoundError):
    """An input pattern matched no file."""


@dataclass(frozen=True)
class InputFile:
    """One matched input file, with the file system that reads it and its size in bytes
    (0 when not known: such a file is never split into byte ranges)."""

    url: str
    fs: fsspec.AbstractFileSystem
    path: str
    size: int = 0


def expand_patterns(patterns: Iterable[str]) -> list[InputFile]:
    """Every file matched by the patterns, sorted and without repeats.

    Raises `NoInputError` naming the first pattern that matches nothing, so that a typo
    fails the job before any work rather than silently shrinking it.
    """
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        try:
            found = fs.glob(path, detail=True) if _GLOB_CHARS.intersection(path) else {path: fs.info(path)}
        except FileNotFoundError:
            found = {}
        except OSError as exc:  # a symlink loop, a permission: named, not a traceback
            raise NoInputError(f"cannot read input {pattern!r}: {exc}") from None
        matched = {p: info for p, info in found.items() if info.get("type") == "file"}
        if not matched:
            raise NoInputError(f"no input file matches {pattern!r}")
        for p in sorted(matched):
            if safe_text(p) != p:
                raise NoInputError(f"input file name {safe_text(p)!r} is not valid UTF-8 (the lines naming "
                                   "its records could not be written); rename it")
            url = p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p)
            files.setdefault(url, InputFile(url, fs, p, int(matched[p].get("size") or 0)))
    return sorted(files.values(), key=lambda f: f.url)


def read_tfrecords(source: str, stream: Any, start: int, end: int | None, max_bytes: int) -> Iterator[Record | FailedRecord]:
    for index, data in read_record_range(stream, start, end, max_bytes):
        if isinstance(data, Exception):
            yield FailedRecord(default_key(source, index), source, index, type(data).__name__, str(data), "read")
            continue
        encoded, key = image_from_tfrecord(data)
        yield Record(key or default_key(source, index), source, index, encoded=encoded)


def image_from_tfrecord(data: bytes) -> tuple[bytes, str | None]:
    """(encoded image, key or None) of a record: raw image bytes, or a tf.train.Example."""
    if data.startswith(_IMAGE_MAGIC):
        return data, None
    try:
        features = tf_example.parse_bytes_features(data)
    except (tf_example.ExampleParseError, UnicodeDecodeError):
        return data, None  # not an Example either: the decoder will say what it is
    encoded = features.get("image/encoded")
    if not encoded:
        return data, None
    key = next((v[0].decode("utf-8", "replace") for k in _KEY_FEATURES if (v := features.get(k))), None)
    return encoded[0], key


def read_json_lines(source: str, stream: Any, start: int, end: int | None, max_bytes: int) -> Iterator[Record | FailedRecord]:
    offset = 0
    for index, (line, size) in enumerate(_lines(stream, max_bytes)):
        line_start, offset = offset, offset + size
        if end is not None and line_start >= end:
            return
        if line_start < start or (line is not None and not line.strip()):
            continue
        key = default_key(source, index)
        if line is None:
            message = f"line of {size} bytes is larger than --max_record_bytes ({max_bytes})"
            yield FailedRecord(key, source, index, "RecordTooLarge", message, "read")
            continue
        try:
            instance = json.loads(line)
            if isinstance(instance, dict) and "key" in instance:
                instance = dict(instance)
                key = str(instance.pop("key"))
                if safe_text(key) != key:
                    raise ValueError("the key is not valid Unicode (it holds a lone surrogate)")
            image = parse_instance(instance)
        except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: brackets nested thousands deep
            yield FailedRecord(key, source, index, type(exc).__name__, str(exc), "read")
            continue
        if isinstance(image, bytes):
            yield Record(key, source, index, encoded=image)
        else:
            yield Record(key, source, index, array=image, height=image.shape[0], width=image.shape[1])


def _lines(stream: Any, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """Each line of a binary stream and its length in bytes; None in place of a line longer than
    `max_bytes`, which is skipped without being held in memory."""
    while line := stream.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while rest := stream.readline(1 << 20):
            size += len(rest)
            if rest.endswith(b"\n"):
                break
        yield None, size


def read_image_file(source: str, stream: Any, start: int, end: int | None, max_bytes: int) -> Iterator[Record | FailedRecord]:
    """A file that is one image: one record, keyed by the file's path or URL as matched."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        message = f"file of more than {max_bytes} bytes is larger than --max_record_bytes"
        yield FailedRecord(source, source, 0, "RecordTooLarge", message, "read")
    else:
        yield Record(source, source, 0, encoded=data)


def parse_instance(instance: Any) -> bytes | np.ndarray:
    """The encoded bytes or HxWx3 uint8 pixels of one Cloud ML style instance, its key removed.

    Accepts `{"b64": ...}`, `{"<input name>": {"b64": ...}}`, `{"<input name>": [[[r,g,b]...]...]}`
    and a bare nested list.
    """
    if isinstance(instance, dict):
        if "b64" not in instance:
            if len(instance) != 1:
                raise ValueError(f"expected one image field besides 'key', got {sorted(instance) or 'none'}")
            (instance,) = instance.values()
    if isinstance(instance, dict) and "b64" in instance:
        value = instance["b64"]
        if not isinstance(value, str):
            raise ValueError("'b64' must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64: {exc}") from None
    if isinstance(instance, list):
        return _uint8_array(instance)
    raise ValueError(f"unrecognised instance: expected {{'b64': ...}} or a nested uint8 list, got {type(instance).__name__}")


def _uint8_array(values: list) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"image array is not rectangular: {exc}") from None
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise ValueError(f"image array must hold numbers 0..255, got dtype {array.dtype} of shape {list(array.shape)}")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError("image array holds non-integer or NaN values; expected uint8 0..255")
    if array.min() < 0 or array.max() > 255:
        raise ValueError(f"image array values must be in 0..255, got {array.min()}..{array.max()}")
    return to_uint8_rgb(array.astype(np.uint8))
