import base64
import gzip
import io
import json

import fsspec
import numpy as np
import pytest

from batch_predict.inputs.tf_example import build_example
from batch_predict.records import Record, FailedRecord
from batch_predict.inputs.formats import ReadOptions, read_file
from batch_predict.inputs.formats.json_lines import parse_instance
from batch_predict.inputs.formats.tfrecord import image_from_tfrecord
from batch_predict.inputs.sources import NoInputError, expand_patterns
from batch_predict.inputs.tfrecord import write_record

from images import encode, gradient

JPEG = encode(gradient())
_PNG = encode(gradient(), "PNG")
_B64_PNG = base64.b64encode(_PNG).decode()


def _records(path, fmt, start=0, end=None):
    (file,) = expand_patterns([str(path)])
    return list(read_file(file, fmt, start, end))


def _tfrecord(path, payloads):
    with open(path, "wb") as f:
        for payload in payloads:
            write_record(f, payload)
    return path.read_bytes()


def test_patterns_expand_globs_commas_and_dedupe(tmp_path):
    for name in ("a-1.tfrecord", "a-2.tfrecord", "b.tfrecord", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files = expand_patterns([f"{tmp_path}/a-*.tfrecord", f"{tmp_path}/a-[12].tfrecord", str(tmp_path / "b.tfrecord")])
    assert [f.url.rsplit("/", 1)[1] for f in files] == ["a-1.tfrecord", "a-2.tfrecord", "b.tfrecord"]


def test_a_pattern_matching_nothing_fails_naming_it(tmp_path):
    (tmp_path / "x.tfrecord").write_bytes(b"")
    with pytest.raises(NoInputError, match="missing-"):
        expand_patterns([str(tmp_path / "x.tfrecord"), str(tmp_path / "missing-*.tfrecord")])


def test_expanded_files_carry_their_sizes(tmp_path):
    (tmp_path / "a.tfrecord").write_bytes(b"x" * 7)
    (tmp_path / "b.tfrecord").write_bytes(b"")
    files = expand_patterns([str(tmp_path / "*.tfrecord")])
    assert [(f.url.rsplit("/", 1)[1], f.size) for f in files] == [("a.tfrecord", 7), ("b.tfrecord", 0)]


@pytest.mark.parametrize("name, fmt", [("empty.tfrecord", "tfrecord"), ("empty.json", "json")])
def test_a_zero_byte_input_file_has_no_records_and_no_error(tmp_path, name, fmt):
    (tmp_path / name).write_bytes(b"")
    assert _records(tmp_path / name, fmt) == []


def test_fsspec_urls_are_read_through_their_file_system():
    with fsspec.open("memory://bucket/imgs-0.tfrecord", "wb") as f:
        write_record(f, JPEG)
    (file,) = expand_patterns(["memory://bucket/imgs-*.tfrecord"])
    assert file.url.startswith("memory://") and file.url.endswith("/bucket/imgs-0.tfrecord")
    (record,) = read_file(file, "tfrecord")
    assert record.encoded == JPEG and record.key == f"{file.url}:0"


def test_tfrecords_hold_raw_bytes_or_examples_keyed_by_source_id(tmp_path):
    path = tmp_path / "mixed.tfrecord.gz"
    with gzip.open(path, "wb") as f:
        write_record(f, JPEG)
        write_record(f, build_example({"image/encoded": JPEG, "image/source_id": b"photo-7"}))
        write_record(f, build_example({"image/encoded": JPEG, "image/filename": b"cat.jpg"}))
    records = _records(path, "tfrecord_gzip")
    assert [r.key for r in records] == [f"{path}:0", "photo-7", "cat.jpg"]
    assert all(r.encoded == JPEG for r in records)


def test_bytes_that_are_neither_image_nor_example_pass_through_for_the_decoder_to_judge():
    assert image_from_tfrecord(b"plain text") == (b"plain text", None)


def test_a_corrupt_data_crc_is_one_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "crc.tfrecord"
    with open(path, "wb") as f:
        for _ in range(3):
            write_record(f, JPEG)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    items = _records(path, "tfrecord")
    assert [type(i) for i in items] == [Record, FailedRecord, Record]
    assert items[1].error_type == "TFRecordDataCorruption" and items[1].index == 1


def test_a_truncated_file_yields_its_complete_records_then_one_error(tmp_path):
    path = tmp_path / "cut.tfrecord"
    with open(path, "wb") as f:
        write_record(f, JPEG)
        write_record(f, JPEG)
    path.write_bytes(path.read_bytes()[:-10])
    first, error = _records(path, "tfrecord")
    assert isinstance(first, Record)
    assert isinstance(error, FailedRecord) and error.index == 1 and error.error_type == "TFRecordCorruption"


def test_a_bad_length_crc_ends_the_file_with_one_error(tmp_path):
    data = bytearray(_tfrecord(tmp_path / "len.tfrecord", [JPEG, JPEG, JPEG]))
    data[12 + len(JPEG) + 4 + 8] ^= 0x01  # the second record's length CRC
    (tmp_path / "len.tfrecord").write_bytes(bytes(data))
    first, error = _records(tmp_path / "len.tfrecord", "tfrecord")
    assert isinstance(first, Record)
    assert (error.index, error.error_type) == (1, "TFRecordCorruption") and "length CRC mismatch" in error.message


def test_a_truncated_gzip_file_yields_the_records_before_the_cut_then_one_error(tmp_path):
    packed = gzip.compress(_tfrecord(tmp_path / "plain.tfrecord", [JPEG] * 30))
    (tmp_path / "cut.tfrecord.gz").write_bytes(packed[: len(packed) * 9 // 10])
    items = _records(tmp_path / "cut.tfrecord.gz", "tfrecord_gzip")
    assert all(isinstance(i, Record) for i in items[:-1]) and 0 < len(items) - 1 < 30
    assert isinstance(items[-1], FailedRecord) and items[-1].index == len(items) - 1


def test_a_gzip_file_is_never_read_from_a_byte_range(tmp_path):
    (tmp_path / "in.tfrecord.gz").write_bytes(gzip.compress(_tfrecord(tmp_path / "in.tfrecord", [JPEG])))
    with pytest.raises(ValueError, match="tfrecord_gzip cannot be read from a byte range"):
        _records(tmp_path / "in.tfrecord.gz", "tfrecord_gzip", 10, 20)


def test_a_gzip_format_file_that_is_not_gzip_is_one_error(tmp_path):
    path = tmp_path / "plain.tfrecord"
    with open(path, "wb") as f:
        write_record(f, JPEG)
    (error,) = _records(path, "tfrecord_gzip")
    assert isinstance(error, FailedRecord) and error.error_type == "BadGzipFile" and error.stage == "read"


def test_json_lines_accept_every_cloud_ml_instance_form(tmp_path):
    b64 = base64.b64encode(JPEG).decode()
    pixels = gradient(4, 3)
    lines = [
        {"b64": b64},
        {"key": "given", "inputs": {"b64": b64}},
        {"image_bytes": {"b64": b64}, "key": 17},
        {"inputs": pixels.tolist()},
        pixels.tolist(),
    ]
    path = tmp_path / "instances.json"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    records = _records(path, "json")
    assert [r.key for r in records] == [f"{path}:0", "given", "17", f"{path}:3", f"{path}:4"]
    assert all(r.encoded == JPEG for r in records[:3])
    for record in records[3:]:
        np.testing.assert_array_equal(record.array, pixels)
        assert (record.width, record.height) == (4, 3)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "Expecting property name"),
        ('{"b64": "###"}', "invalid base64"),
        ('{"b64": 12}', "'b64' must be a base64 string"),
        ('{"inputs": [[1, 2], [3]]}', "not rectangular"),
        ('{"inputs": [1, 2, 3]}', "HxWx3"),
        ('{"inputs": [[[1, 2], [3, 4]]]}', "HxWx3"),
        ('{"inputs": [[[1, 2, 3, 4, 5]]]}', "HxWx3"),
        ('{"inputs": [[[1, 2, 300]]]}', "0..255"),
        ('{"inputs": [[[-1, 2, 3]]]}', "0..255"),
        ('{"inputs": [[[1.5, 2, 3]]]}', "non-integer"),
        ('{"inputs": [[[NaN, 2, 3]]]}', "NaN"),
        ('{"inputs": [[["a", "b", "c"]]]}', "numbers"),
        ('{"inputs": [[[true, false, true]]]}', "numbers"),
        ('{"inputs": []}', "numbers"),
        ('{"a": 1, "b": 2}', "one image field"),
        ('{"key": "only a key"}', "one image field"),
        ('"a string"', "unrecognised instance"),
    ],
)
def test_each_bad_json_line_is_one_error_naming_the_problem(tmp_path, line, message):
    path = tmp_path / "bad.json"
    path.write_text(f'{{"b64": "{base64.b64encode(JPEG).decode()}"}}\n{line}\n')
    good, error = _records(path, "json")
    assert isinstance(good, Record)
    assert isinstance(error, FailedRecord) and error.index == 1 and message in error.message


def test_nan_in_an_array_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        parse_instance({"inputs": [[[float("nan"), 0, 0]]]})


def test_the_error_line_of_a_bad_json_instance_keeps_its_given_key(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"key": "mine", "inputs": [1, 2]}) + "\n")
    (error,) = _records(tmp_path / "in.json", "json")
    assert (error.key, error.index, error.stage) == ("mine", 0, "read")


@pytest.mark.parametrize("channels", [1, 4])
def test_json_arrays_with_one_or_four_channels_become_rgb(tmp_path, channels):
    pixel = [7] * channels
    (tmp_path / "in.json").write_text(json.dumps({"inputs": [[pixel, pixel]] * 3}) + "\n")
    (record,) = _records(tmp_path / "in.json", "json")
    assert record.array.shape == (3, 2, 3) and record.array.dtype == np.uint8
    assert record.array.tolist()[0][0] == [7, 7, 7]


# Byte ranges: records keep their index (and key) in the whole file, and each is read once.

def test_json_byte_ranges_keep_line_indices_and_read_each_line_once(tmp_path):
    lines = [json.dumps({"inputs": [[[i, i, i]]]}) if i % 4 else "" for i in range(40)]
    text = "\n".join(lines) + "\n"
    (tmp_path / "in.json").write_text(text)
    whole = [(r.key, r.index) for r in _records(tmp_path / "in.json", "json")]
    size = len(text.encode())
    for cuts in ([size // 2], [1, 2, 3, 100, 101, size - 2], list(range(7, size, 53))):
        bounds = [0, *cuts, None]
        pieces = [(r.key, r.index) for s, e in zip(bounds, bounds[1:]) for r in _records(tmp_path / "in.json", "json", s, e)]
        assert pieces == whole


def test_tfrecord_byte_ranges_read_each_record_once_with_its_file_key(tmp_path):
    data = _tfrecord(tmp_path / "in.tfrecord", [JPEG] * 9)
    whole = [r.key for r in _records(tmp_path / "in.tfrecord", "tfrecord")]
    bounds = [(0, 1), (1, len(data) // 2), (len(data) // 2, None)]
    pieces = [r.key for s, e in bounds for r in _records(tmp_path / "in.tfrecord", "tfrecord", s, e)]
    assert pieces == whole and len(whole) == 9


def test_an_input_file_that_vanished_raises_rather_than_becoming_error_lines(tmp_path):
    _tfrecord(tmp_path / "in.tfrecord", [JPEG])
    (file,) = expand_patterns([str(tmp_path / "in.tfrecord")])
    (tmp_path / "in.tfrecord").unlink()
    with pytest.raises(FileNotFoundError):
        list(read_file(file, "tfrecord"))


def test_a_record_that_breaks_the_parser_fails_alone(tmp_path):
    lines = ['{"key": "a", "b64": "%s"}' % _B64_PNG, '{"key": "\\ud800", "b64": "AAAA"}', "[" * 1200 + "]" * 1200,
             '{"key": "big", "b64": "%s"}' % ("A" * 4000), '{"key": "d", "b64": "%s"}' % _B64_PNG]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (file,) = expand_patterns([str(path)])
    found = list(read_file(file, "json", options=ReadOptions(max_record_bytes=3000)))
    assert [type(item).__name__ for item in found] == ["Record", "FailedRecord", "FailedRecord", "FailedRecord", "Record"]
    assert found[1].key == "\\ud800" and "lone surrogate" in found[1].message
    assert found[2].error_type == "RecursionError"
    assert found[3].error_type == "RecordTooLarge" and [found[0].key, found[4].key] == ["a", "d"]


@pytest.mark.parametrize("length", [1 << 62, (1 << 64) - 1])
def test_an_absurd_tfrecord_length_with_a_valid_crc_is_one_error_line(length, tmp_path):
    import struct

    from batch_predict.inputs.tfrecord import masked_crc

    stream = io.BytesIO()
    write_record(stream, _PNG)
    header = struct.pack("<Q", length)
    stream.write(header + struct.pack("<I", masked_crc(header)) + b"rest of the file")
    path = tmp_path / "in.tfrecord"
    path.write_bytes(stream.getvalue())
    (file,) = expand_patterns([str(path)])
    found = list(read_file(file, "tfrecord"))
    assert [type(item).__name__ for item in found] == ["Record", "FailedRecord"]
    assert found[1].error_type == "TFRecordCorruption" and found[1].index == 1


@pytest.mark.parametrize("compressed", [False, True])
def test_a_record_over_the_limit_is_skipped_unread_and_the_file_goes_on(compressed, tmp_path):
    stream = io.BytesIO()
    for data in (_PNG, bytes(4 << 20), _PNG):  # the middle one: 4 MiB of zeros, a few KiB gzipped
        write_record(stream, data)
    path = tmp_path / ("in.tfrecord.gz" if compressed else "in.tfrecord")
    path.write_bytes(gzip.compress(stream.getvalue()) if compressed else stream.getvalue())
    (file,) = expand_patterns([str(path)])
    found = list(read_file(file, "tfrecord_gzip" if compressed else "tfrecord", options=ReadOptions(max_record_bytes=1 << 20)))
    assert [type(item).__name__ for item in found] == ["Record", "FailedRecord", "Record"]
    assert found[1].error_type == "RecordTooLarge" and "4194304 bytes" in found[1].message


def test_an_input_that_cannot_be_named_or_reached_fails_at_setup_saying_which(tmp_path):
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    with pytest.raises(NoInputError, match="cannot read input .*loop-a"):
        expand_patterns([str(tmp_path / "loop-a")])
    with open(bytes(tmp_path / "bad") + b"\xff.jsonl", "wb") as f:
        f.write(b"{}\n")
    with pytest.raises(NoInputError, match=r"bad\\\\udcff.jsonl' is not valid UTF-8"):
        expand_patterns([str(tmp_path / "bad*.jsonl")])
