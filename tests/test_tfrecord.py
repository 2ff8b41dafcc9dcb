"""TFRecord framing read in byte ranges: every record once, whatever the cut points."""

from __future__ import annotations

import io
import struct

import pytest

from batch_predict.tfrecord import TFRecordCorruption, TFRecordDataCorruption, read_records, write_record


def _framed(payloads: list[bytes]) -> bytes:
    stream = io.BytesIO()
    for payload in payloads:
        write_record(stream, payload)
    return stream.getvalue()


def _read_in_ranges(data: bytes, cuts: list[int]) -> list[tuple[int, object]]:
    bounds = [0, *cuts, None]
    found = []
    for start, end in zip(bounds, bounds[1:]):
        try:
            found += read_records(io.BytesIO(data), start, end)
        except TFRecordCorruption as exc:
            found.append((exc.index, "corrupt"))
    return found


PAYLOADS = [bytes([i]) * (10 + 7 * i) for i in range(12)]


@pytest.mark.parametrize("cuts", [[], [1], [50, 51, 52], [100, 300, 600], list(range(5, 900, 37))])
def test_byte_ranges_yield_every_record_once_with_its_index_in_the_file(cuts):
    found = _read_in_ranges(_framed(PAYLOADS), cuts)
    assert found == list(enumerate(PAYLOADS))


def test_bad_data_crc_spoils_that_record_only():
    data = bytearray(_framed(PAYLOADS[:3]))
    data[len(_framed(PAYLOADS[:1])) + 12] ^= 0xFF  # first data byte of record 1
    found = list(read_records(io.BytesIO(bytes(data))))
    assert [i for i, _ in found] == [0, 1, 2]
    assert isinstance(found[1][1], TFRecordDataCorruption)
    assert found[2][1] == PAYLOADS[2]


@pytest.mark.parametrize("damage", ["length_crc", "truncated_last"])
def test_framing_break_is_reported_once_by_the_range_it_lies_in(damage):
    data = bytearray(_framed(PAYLOADS))
    broken_index = 7
    broken_at = len(_framed(PAYLOADS[:broken_index]))
    if damage == "length_crc":
        data[broken_at + 8] ^= 0xFF
    else:
        broken_index, broken_at = len(PAYLOADS) - 1, len(_framed(PAYLOADS[:-1]))
        del data[-5:]
    for cuts in ([], [broken_at - 1, broken_at + 1], [broken_at, broken_at + 40], [10, broken_at + 3]):
        found = _read_in_ranges(bytes(data), cuts)
        assert found == [*enumerate(PAYLOADS[:broken_index]), (broken_index, "corrupt")], cuts


def test_truncated_header_is_a_framing_break():
    data = _framed(PAYLOADS[:2]) + struct.pack("<Q", 5)[:6]
    with pytest.raises(TFRecordCorruption, match="truncated record header") as caught:
        list(read_records(io.BytesIO(data)))
    assert caught.value.index == 2
