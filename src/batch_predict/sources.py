"""Find the input files and read them into records, one file at a time.

A file that cannot be read to its end yields an error record for what was lost and the
job goes on with the next file.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from . import example
from .decode import to_uint8_rgb
from .records import Record, RecordError, default_key
from .tfrecord import TFRecordCorruption, TFRecordDataCorruption, read_records

_GLOB_CHARS = frozenset("*?[")
_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
_KEY_FEATURES = ("image/key/sha256", "image/source_id", "image/filename")
_READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error, TFRecordCorruption)


class NoInputError(FileNotFoundError):
    """An input pattern matched no file."""


@dataclass(frozen=True)
class InputFile:
    """One matched input file, with the file system that reads it."""

    url: str
    fs: fsspec.AbstractFileSystem
    path: str


def expand_patterns(patterns: Iterable[str]) -> list[InputFile]:
    """Every file matched by the patterns, sorted and without repeats.

    Raises `NoInputError` naming the first pattern that matches nothing, so that a typo
    fails the job before any work rather than silently shrinking it.
    """
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        if _GLOB_CHARS.intersection(path):
            matched = [p for p in fs.glob(path) if fs.isfile(p)]
        else:
            matched = [path] if fs.isfile(path) else []
        if not matched:
            raise NoInputError(f"no input file matches {pattern!r}")
        for p in sorted(matched):
            url = p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p)
            files.setdefault(url, InputFile(url, fs, p))
    return sorted(files.values(), key=lambda f: f.url)


def read_file(file: InputFile, input_format: str) -> Iterator[Record | RecordError]:
    """The records of one file in order, errors included."""
    reader = _read_json_lines if input_format == "json" else _read_tfrecords
    compression = "gzip" if input_format == "tfrecord_gzip" else None
    index = 0  # of the next record, which is where an unreadable stretch starts
    try:
        with file.fs.open(file.path, "rb", compression=compression) as stream:
            for item in reader(file.url, stream):
                index = item.index + 1
                yield item
    except _READ_ERRORS as exc:
        # What follows a framing error cannot be located, so it is one error line.
        yield RecordError(
            default_key(file.url, index), file.url, index, type(exc).__name__,
            f"file unreadable from this record on: {exc}", "read",
        )


def _read_tfrecords(source: str, stream: Any) -> Iterator[Record | RecordError]:
    for index, data in enumerate(read_records(stream)):
        if isinstance(data, TFRecordDataCorruption):
            yield RecordError(default_key(source, index), source, index, type(data).__name__, str(data), "read")
            continue
        encoded, key = image_from_tfrecord(data)
        yield Record(key or default_key(source, index), source, index, encoded=encoded)


def image_from_tfrecord(data: bytes) -> tuple[bytes, str | None]:
    """(encoded image, key or None) of a record: raw image bytes, or a tf.train.Example."""
    if data.startswith(_IMAGE_MAGIC):
        return data, None
    try:
        features = example.parse_bytes_features(data)
    except (example.ExampleParseError, UnicodeDecodeError):
        return data, None  # not an Example either: the decoder will say what it is
    encoded = features.get("image/encoded")
    if not encoded:
        return data, None
    key = next((v[0].decode("utf-8", "replace") for k in _KEY_FEATURES if (v := features.get(k))), None)
    return encoded[0], key


def _read_json_lines(source: str, stream: Any) -> Iterator[Record | RecordError]:
    for index, line in enumerate(stream):
        if not line.strip():
            continue
        key = default_key(source, index)
        try:
            instance = json.loads(line)
            if isinstance(instance, dict) and "key" in instance:
                instance = dict(instance)
                key = str(instance.pop("key"))
            image = parse_instance(instance)
        except (ValueError, TypeError) as exc:
            yield RecordError(key, source, index, type(exc).__name__, str(exc), "read")
            continue
        if isinstance(image, bytes):
            yield Record(key, source, index, encoded=image)
        else:
            yield Record(key, source, index, array=image, height=image.shape[0], width=image.shape[1])


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
