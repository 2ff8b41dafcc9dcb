"""`tfrecord`: TFRecord files of encoded images, raw or in `tf.train.Example`s (the TF OD API's
`image/encoded`, keyed by `image/key/sha256`, `image/source_id` or `image/filename`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...records import FailedRecord, Record, default_key
from .. import tf_example
from ..sources import InputFile
from ..tfrecord import masked_crc, read_record_range
from . import InputFormat, ReadOptions

_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
_KEY_FEATURES = ("image/key/sha256", "image/source_id", "image/filename")


def read_tfrecords(file: InputFile, stream: Any, start: int, end: int | None, options: ReadOptions) -> Iterator[Record | FailedRecord]:
    source = file.url
    for index, data in read_record_range(stream, start, end, options.max_record_bytes):
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




def _looks_like(name: str, head: bytes) -> bool:
    """A TFRecord file begins with a record's length and that length's masked CRC."""
    return len(head) >= 12 and masked_crc(head[:8]) == int.from_bytes(head[8:12], "little")


FORMAT = InputFormat(
    "tfrecord", read_tfrecords, "TFRecords of encoded JPEG/PNG bytes (raw, or tf.train.Examples).",
    splittable=True, looks_like=_looks_like,
)
