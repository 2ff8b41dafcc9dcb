import io

import pytest

from batch_predict.tfrecord import TFRecordCorruption, TFRecordDataCorruption, read_records, write_record


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
