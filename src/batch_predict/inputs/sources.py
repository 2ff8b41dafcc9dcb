"""Find the input files and read them into records, a file or a byte range of one at a time.

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

from . import tf_example
from ..decode import to_uint8_rgb
from ..errors import SetupError
from ..records import FailedRecord, Record, default_key, safe_text
from ..spec import DEFAULT_MAX_RECORD_BYTES
from .tfrecord import TFRecordCorruption, read_record_range

_GLOB_CHARS = frozenset("*?[")
_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
_KEY_FEATURES = ("image/key/sha256", "image/source_id", "image/filename")
#: Damaged data, as opposed to a failing file system: gzip.BadGzipFile is an OSError, so it is named.
_DATA_ERRORS = (TFRecordCorruption, EOFError, gzip.BadGzipFile, zlib.error)


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


def read_file(
    file: InputFile, input_format: str, start: int = 0, end: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[Record | FailedRecord]:
    """The records of one file that begin in bytes [start, end), in order, errors included.

    Records keep their index in the whole file, so keys do not depend on how a file is split.
    Damaged data (a broken framing, a truncated or invalid gzip stream) ends the range with
    one error line for what could not be read; a framing break before the range is the
    earlier range's error line, so nothing is reported twice. An I/O failure (permission,
    network) is not a property of the records and is raised: the unit is not committed,
    and a rerun retries it rather than recording good records as failed.
    """
    compression = "gzip" if input_format == "tfrecord_gzip" else None
    if compression and (start or end is not None):
        raise ValueError("a compressed file cannot be read from a byte range")
    reader = _read_json_lines if input_format == "json" else _read_tfrecords
    next_index = 0
    try:
        with file.fs.open(file.path, "rb", compression=compression) as stream:
            for item in reader(file.url, stream, start, end, max_record_bytes):
                next_index = item.index + 1
                yield item
    except _DATA_ERRORS as exc:
        index = exc.index if isinstance(exc, TFRecordCorruption) else next_index
        # What follows a framing error cannot be located, so it is one error line.
        yield FailedRecord(
            default_key(file.url, index), file.url, index, type(exc).__name__,
            f"file unreadable from this record on: {exc}", "read",
        )


def _read_tfrecords(source: str, stream: Any, start: int, end: int | None, max_bytes: int) -> Iterator[Record | FailedRecord]:
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


def _read_json_lines(source: str, stream: Any, start: int, end: int | None, max_bytes: int) -> Iterator[Record | FailedRecord]:
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
