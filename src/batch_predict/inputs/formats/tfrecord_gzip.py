"""`tfrecord_gzip`: gzip-compressed TFRecord files (TFRecordOptions GZIP), read whole."""

from __future__ import annotations

from . import InputFormat
from .tfrecord import read_tfrecords

FORMAT = InputFormat(
    "tfrecord_gzip", read_tfrecords, "the same, gzip-compressed.", compression="gzip",
    looks_like=lambda name, head: head.startswith(b"\x1f\x8b") and not name.endswith((".tar.gz", ".tgz")),
)
