"""`tfrecord_gzip`: gzip-compressed TFRecord files (TFRecordOptions GZIP), read whole."""

from __future__ import annotations

import functools

from . import InputFormat, Packing
from .tfrecord import encode_record, read_tfrecords, record_shard

FORMAT = InputFormat(
    "tfrecord_gzip", read_tfrecords, "the same, gzip-compressed.", compression="gzip",
    looks_like=lambda name, head: head.startswith(b"\x1f\x8b") and not name.endswith((".tar.gz", ".tgz")),
    packing=Packing("tfrecord.gz", encode_record, functools.partial(record_shard, gzipped=True)),
)
