"""`tfrecord`: TFRecord files of encoded images, raw or in `tf.train.Example`s (the TF OD API's
`image/encoded`, keyed by `image/key/sha256`, `image/source_id` or `image/filename`)."""

from __future__ import annotations

import contextlib
import gzip
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from ...records import FailedRecord, Record, default_key
from .. import tf_example
from ..sources import InputFile
from ..tfrecord import masked_crc, read_record_range, write_record
from . import InputFormat, Packing, ReadOptions

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


_MAGIC_FORMATS = ((b"\xff\xd8", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


def image_format(data: bytes, name: str) -> str:
    """`image/format` as the TF OD API writes it: from the bytes, else from the file name."""
    for magic, fmt in _MAGIC_FORMATS:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return posixpath.splitext(name)[1].lstrip(".").lower()


def encode_record(key: str, data: bytes, record_kind: str) -> bytes:
    """A packed record: the image bytes (`raw`), or a tf.train.Example around them as the TF OD API's are."""
    if record_kind == "raw":
        return data
    filename = posixpath.basename(key)
    return tf_example.build_example({
        "image/encoded": data,
        "image/source_id": key.encode("utf-8"),
        "image/filename": filename.encode("utf-8"),
        "image/format": image_format(data, filename).encode("utf-8"),
    })


@contextlib.contextmanager
def record_shard(raw: Any, gzipped: bool = False) -> Iterator[Callable[[str, bytes], None]]:
    """A TFRecord shard on `raw`; gzipped at level 6, as TensorFlow's GZIP writer does (9 is half as fast for no gain)."""
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) if gzipped else contextlib.nullcontext(raw) as out:
        yield lambda key, payload: write_record(out, payload)


FORMAT = InputFormat(
    "tfrecord", read_tfrecords, "TFRecords of encoded JPEG/PNG bytes (raw, or tf.train.Examples).",
    splittable=True, looks_like=_looks_like, packing=Packing("tfrecord", encode_record, record_shard),
)
