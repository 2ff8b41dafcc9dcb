"""TFRecord framing: read and write, with the length and data CRCs checked.

Each record is `uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`,
little-endian. Reading needs no TensorFlow.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import crc32c

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class TFRecordCorruption(ValueError):
    """The framing cannot be trusted past this point."""


class TFRecordDataCorruption(ValueError):
    """One record's data fails its CRC; the framing around it is intact."""


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(stream: BinaryIO) -> Iterator[bytes | TFRecordDataCorruption]:
    """Yield each record's bytes, or a `TFRecordDataCorruption` in its place.

    A bad data CRC spoils one record only, since its length was verified, so reading goes
    on. A bad length CRC or a short read loses the framing: `TFRecordCorruption` is raised.
    """
    while True:
        header = stream.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise TFRecordCorruption(f"truncated record header ({len(header)} of {_HEADER.size} bytes)")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc(header[:8]) != length_crc:
            raise TFRecordCorruption("length CRC mismatch")
        data = stream.read(length)
        footer = stream.read(_FOOTER.size)
        if len(data) < length or len(footer) < _FOOTER.size:
            raise TFRecordCorruption(f"truncated record ({len(data)} of {length} data bytes)")
        if masked_crc(data) != _FOOTER.unpack(footer)[0]:
            yield TFRecordDataCorruption("data CRC mismatch")
        else:
            yield data


def write_record(stream: BinaryIO, data: bytes) -> None:
    length = struct.pack("<Q", len(data))
    stream.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))
