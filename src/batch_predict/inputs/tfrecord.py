"""TFRecord framing: read and write, with the length and data CRCs checked.

Each record is `uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`,
little-endian. Reading needs no TensorFlow.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import crc32c

from ..errors import RecordFailure

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class TFRecordCorruption(RecordFailure, ValueError):
    """The framing cannot be trusted past this point: record `index`, at byte `offset`."""

    def __init__(self, message: str, index: int, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.index = index
        self.offset = offset


class TFRecordDataCorruption(RecordFailure, ValueError):
    """One record's data fails its CRC; the framing around it is intact."""


class RecordTooLarge(RecordFailure, ValueError):
    """A record longer than the job reads into memory (`--max_record_bytes`); skipped unread."""


class BytesWriter(Protocol):
    """Where records are written: a binary file, or a `gzip.GzipFile` around one (not a `BinaryIO`)."""

    def write(self, data: bytes, /) -> object: ...


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(stream: BinaryIO, max_bytes: int | None = None) -> Iterator[bytes | TFRecordDataCorruption | RecordTooLarge]:
    """Yield each record's bytes, or a `TFRecordDataCorruption` in its place.

    A bad data CRC spoils one record only, since its length was verified, so reading goes
    on. A bad length CRC or a short read loses the framing: `TFRecordCorruption` is raised.
    """
    for _, data in read_record_range(stream, max_bytes=max_bytes):
        yield data


def read_record_range(
    stream: BinaryIO, start: int = 0, end: int | None = None, max_bytes: int | None = None
) -> Iterator[tuple[int, bytes | TFRecordDataCorruption | RecordTooLarge]]:
    """(index in the file, data) of each record whose header begins in bytes [start, end).

    As `read_records`, for one byte range of a file. Records before `start` are skipped by
    seeking past their data, so that a file split into ranges is read about once, not once
    per range; their length CRCs are still checked, since the framing must hold to find
    where the range's first record begins. A framing break before the range ends it
    silently: the range the break lies in reports it. A record longer than `max_bytes` is
    skipped without being read (a `RecordTooLarge` in its place), since its length, whose CRC
    holds, may still be absurd (2^62 bytes) or be a decompression bomb's.
    """
    index = offset = 0
    while end is None or offset < end:
        mine = offset >= start
        header = stream.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            if mine:
                raise TFRecordCorruption(f"truncated record header ({len(header)} of {_HEADER.size} bytes)", index, offset)
            return
        length, length_crc = _HEADER.unpack(header)
        if masked_crc(header[:8]) != length_crc:
            if mine:
                raise TFRecordCorruption("length CRC mismatch", index, offset)
            return
        if mine and max_bytes is not None and length > max_bytes:
            yield index, _skip(stream, length, max_bytes, index, offset)
        elif mine:
            data = stream.read(length)
            footer = stream.read(_FOOTER.size)
            if len(data) < length or len(footer) < _FOOTER.size:
                raise TFRecordCorruption(f"truncated record ({len(data)} of {length} data bytes)", index, offset)
            yield index, data if masked_crc(data) == _FOOTER.unpack(footer)[0] else TFRecordDataCorruption("data CRC mismatch")
        else:
            stream.seek(length + _FOOTER.size, os.SEEK_CUR)
        offset += _HEADER.size + length + _FOOTER.size
        index += 1


def _skip(stream: BinaryIO, length: int, max_bytes: int, index: int, offset: int) -> RecordTooLarge:
    """Move past a record too large to read; raises `TFRecordCorruption` if the file ends first."""
    try:
        stream.seek(length, os.SEEK_CUR)
    except (OverflowError, OSError, ValueError) as exc:
        raise TFRecordCorruption(f"record of {length} bytes cannot be skipped ({exc})", index, offset) from None
    if len(stream.read(_FOOTER.size)) < _FOOTER.size:
        raise TFRecordCorruption(f"truncated record ({length} data bytes declared)", index, offset)
    return RecordTooLarge(f"record of {length} bytes is larger than --max_record_bytes ({max_bytes})")


def write_record(stream: BytesWriter, data: bytes) -> None:
    length = struct.pack("<Q", len(data))
    stream.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))
