import io

import pytest

from batch_predict.inputs.tfrecord import TFRecordCorruption, TFRecordDataCorruption, read_record_range, read_records, write_record


def _framed(*payloads: bytes) -> bytes:
    stream = io.BytesIO()
    for payload in payloads:
        write_record(stream, payload)
    return stream.getvalue()


def test_round_trip_keeps_every_record_in_order():
    payloads = [b"", b"a", b"\x00" * 1000, bytes(range(256))]
    assert list(read_records(io.BytesIO(_framed(*payloads)))) == payloads


def test_bad_data_crc_spoils_only_that_record():
    data = bytearray(_framed(b"first", b"second", b"third"))
    data[12 + 5 + 4 + 12 + 2] ^= 0xFF  # a byte inside "second"
    items = list(read_records(io.BytesIO(bytes(data))))
    assert items[0] == b"first" and items[2] == b"third"
    assert isinstance(items[1], TFRecordDataCorruption)


def test_bad_length_crc_stops_reading():
    data = bytearray(_framed(b"first", b"second"))
    data[12 + 5 + 4 + 8] ^= 0xFF  # the second record's length CRC
    reader = read_records(io.BytesIO(bytes(data)))
    assert next(reader) == b"first"
    with pytest.raises(TFRecordCorruption, match="length CRC"):
        next(reader)


@pytest.mark.parametrize("cut", [3, 14, 20])
def test_truncated_file_raises_after_the_complete_records(cut):
    data = _framed(b"complete", b"truncated-record")
    reader = read_records(io.BytesIO(data[: len(_framed(b"complete")) + cut]))
    assert next(reader) == b"complete"
    with pytest.raises(TFRecordCorruption, match="truncated"):
        next(reader)


def test_reads_what_tensorflow_writes_and_tensorflow_reads_what_we_write(tmp_path):
    tf = pytest.importorskip("tensorflow")
    theirs = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for payload in (b"alpha", b"beta" * 100):
            writer.write(payload)
    with open(theirs, "rb") as f:
        assert list(read_records(f)) == [b"alpha", b"beta" * 100]

    ours = tmp_path / "ours.tfrecord"
    ours.write_bytes(_framed(b"one", b"two"))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == [b"one", b"two"]


# Byte ranges: a file split into units is read once in all, every record once.

PAYLOADS = [bytes([i]) * (10 + 7 * i) for i in range(12)]


def _read_in_ranges(data: bytes, cuts: list[int]) -> list[tuple[int, object]]:
    bounds = [0, *cuts, None]
    found = []
    for start, end in zip(bounds, bounds[1:]):
        try:
            found += read_record_range(io.BytesIO(data), start, end)
        except TFRecordCorruption as exc:
            found.append((exc.index, "corrupt"))
    return found


@pytest.mark.parametrize("cuts", [[], [1], [50, 51, 52], [100, 300, 600], list(range(5, 900, 37))])
def test_byte_ranges_yield_every_record_once_with_its_index_in_the_file(cuts):
    assert _read_in_ranges(_framed(*PAYLOADS), cuts) == list(enumerate(PAYLOADS))


@pytest.mark.parametrize("damage", ["length_crc", "truncated_last"])
def test_framing_break_is_reported_once_by_the_range_it_lies_in(damage):
    data = bytearray(_framed(*PAYLOADS))
    broken_index = 7
    broken_at = len(_framed(*PAYLOADS[:broken_index]))
    if damage == "length_crc":
        data[broken_at + 8] ^= 0xFF
    else:
        broken_index, broken_at = len(PAYLOADS) - 1, len(_framed(*PAYLOADS[:-1]))
        del data[-5:]
    for cuts in ([], [broken_at - 1, broken_at + 1], [broken_at, broken_at + 40], [10, broken_at + 3]):
        found = _read_in_ranges(bytes(data), cuts)
        assert found == [*enumerate(PAYLOADS[:broken_index]), (broken_index, "corrupt")], cuts
