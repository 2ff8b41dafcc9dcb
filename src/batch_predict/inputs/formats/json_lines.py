"""`json`: JSON lines of instances in the Cloud ML conventions: `{"b64": ...}`, `{"<input>": {"b64": ...}}`,
or nested uint8 arrays, with an optional `key`."""

from __future__ import annotations

import base64
import contextlib
import binascii
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...decode import to_uint8_rgb
from ...records import FailedRecord, Record, default_key, safe_text
from ..sources import InputFile
from . import InputFormat, Packing, ReadOptions
from ._lines import lines


def read_json_lines(file: InputFile, stream: Any, start: int, end: int | None, options: ReadOptions) -> Iterator[Record | FailedRecord]:
    source, max_bytes = file.url, options.max_record_bytes
    for index, (line_start, line, size) in enumerate(lines(stream, max_bytes, end)):
        if line_start < start or (line is not None and not line.strip()):
            continue
        key = default_key(source, index)
        if line is None:
            yield FailedRecord.too_large(key, source, index, f"line of {size} bytes", max_bytes)
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


def _encode(key: str, data: bytes, record_kind: str) -> bytes:
    return json.dumps({"key": key, "b64": base64.b64encode(data).decode("ascii")}).encode("utf-8") + b"\n"


FORMAT = InputFormat(
    "json", read_json_lines, 'JSON lines of {"b64": ...}, {"inputs": {"b64": ...}} or nested uint8 arrays.',
    splittable=True, looks_like=lambda name, head: head.lstrip()[:1] in (b"{", b"[") and not name.lower().endswith(".csv"),
    packing=Packing("jsonl", _encode, lambda raw: contextlib.nullcontext(lambda key, payload: raw.write(payload))),
)
