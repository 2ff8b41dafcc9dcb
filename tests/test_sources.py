"""Reading input files: each kind of damaged input becomes the error line it should, once."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import pytest

from batch_predict.records import Record, RecordError
from batch_predict.sources import expand_patterns, read_file
from batch_predict.tfrecord import write_record

from conftest import shared_file


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    photos = shared_file("data/photos")
    return [(photos / name).read_bytes() for name in ("bus.jpg", "zidane.jpg", "darknet_dog.jpg")]


def _tfrecord(records: list[bytes]) -> bytes:
    stream = io.BytesIO()
    for data in records:
        write_record(stream, data)
    return stream.getvalue()


def _read(path: Path, input_format: str, start: int = 0, end: int | None = None) -> list[Record | RecordError]:
    (file,) = expand_patterns([str(path)])
    return list(read_file(file, input_format, start, end))


def _errors(items: list[Record | RecordError]) -> list[RecordError]:
    return [i for i in items if isinstance(i, RecordError)]


def test_expand_patterns_gives_sizes_and_fails_on_a_pattern_matching_nothing(tmp_path):
    (tmp_path / "a.tfrecord").write_bytes(b"x" * 7)
    (tmp_path / "b.tfrecord").write_bytes(b"")
    files = expand_patterns([str(tmp_path / "*.tfrecord")])
    assert [(Path(f.url).name, f.size) for f in files] == [("a.tfrecord", 7), ("b.tfrecord", 0)]
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        expand_patterns([str(tmp_path / "missing-*.tfrecord")])


@pytest.mark.parametrize("name, input_format", [("empty.tfrecord", "tfrecord"), ("empty.json", "json")])
def test_zero_byte_input_file_has_no_records_and_no_error(tmp_path, name, input_format):
    (tmp_path / name).write_bytes(b"")
    assert _read(tmp_path / name, input_format) == []


def test_tfrecord_bad_data_crc_is_one_error_line_and_reading_goes_on(tmp_path, jpegs):
    data = bytearray(_tfrecord(jpegs))
    data[len(_tfrecord(jpegs[:1])) + 12 + 100] ^= 0xFF
    (tmp_path / "in.tfrecord").write_bytes(bytes(data))
    items = _read(tmp_path / "in.tfrecord", "tfrecord")
    assert [type(i).__name__ for i in items] == ["Record", "RecordError", "Record"]
    assert (items[1].index, items[1].error_type, items[1].message) == (1, "TFRecordDataCorruption", "data CRC mismatch")


def test_tfrecord_bad_length_crc_ends_the_file_with_one_error_line(tmp_path, jpegs):
    data = bytearray(_tfrecord(jpegs))
    data[len(_tfrecord(jpegs[:1])) + 8] ^= 0x01
    (tmp_path / "in.tfrecord").write_bytes(bytes(data))
    items = _read(tmp_path / "in.tfrecord", "tfrecord")
    assert [type(i).__name__ for i in items] == ["Record", "RecordError"]
    assert items[1].index == 1 and items[1].error_type == "TFRecordCorruption"
    assert "length CRC mismatch" in items[1].message


def test_tfrecord_truncated_last_record_is_one_error_line(tmp_path, jpegs):
    (tmp_path / "in.tfrecord").write_bytes(_tfrecord(jpegs)[:-1000])
    items = _read(tmp_path / "in.tfrecord", "tfrecord")
    assert [type(i).__name__ for i in items] == ["Record", "Record", "RecordError"]
    assert items[2].key.endswith("in.tfrecord:2") and "truncated record" in items[2].message


def test_gzip_format_on_a_file_that_is_not_gzip_is_one_error_line(tmp_path, jpegs):
    (tmp_path / "in.tfrecord.gz").write_bytes(_tfrecord(jpegs))
    (error,) = _read(tmp_path / "in.tfrecord.gz", "tfrecord_gzip")
    assert (error.index, error.error_type, error.stage) == (0, "BadGzipFile", "read")


def test_truncated_gzip_keeps_the_records_before_the_cut(tmp_path, jpegs):
    packed = gzip.compress(_tfrecord(jpegs))
    (tmp_path / "in.tfrecord.gz").write_bytes(packed[: len(packed) * 9 // 10])
    items = _read(tmp_path / "in.tfrecord.gz", "tfrecord_gzip")
    assert [type(i).__name__ for i in items] == ["Record", "Record", "RecordError"]
    assert items[2].index == 2


def test_gzip_files_are_never_read_from_a_byte_range(tmp_path, jpegs):
    (tmp_path / "in.tfrecord.gz").write_bytes(gzip.compress(_tfrecord(jpegs)))
    with pytest.raises(ValueError, match="compressed"):
        _read(tmp_path / "in.tfrecord.gz", "tfrecord_gzip", 10, 20)


BAD_JSON_LINES = {
    "not json": "JSONDecodeError",
    '{"key": "only-a-key"}': "expected one image field besides 'key', got none",
    '{"b64": 12}': "'b64' must be a base64 string",
    '{"b64": "@@@not base64"}': "invalid base64",
    '{"inputs": [1, 2, 3]}': "expected an HxWx3 image array, got shape [3]",
    '{"inputs": [[[1, 2], [3, 4]]]}': "expected an HxWx3 image array, got shape [1, 2, 2]",
    '{"inputs": [[[1, 2, 3]], [[4, 5]]]}': "not rectangular",
    '{"inputs": [[[1, 2, 256]]]}': "values must be in 0..255",
    '{"inputs": [[[-1, 2, 3]]]}': "values must be in 0..255",
    '{"inputs": [[[1.5, 2, 3]]]}': "non-integer or NaN",
    '{"inputs": [[[NaN, 2, 3]]]}': "non-integer or NaN",
    '{"inputs": [[["a", "b", "c"]]]}': "must hold numbers",
    '{"inputs": [[[true, false, true]]]}': "must hold numbers",
    '{"inputs": []}': "must hold numbers",
    '"just a string"': "unrecognised instance",
}


def test_error_line_of_a_bad_json_instance_keeps_its_given_key(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"key": "mine", "inputs": [1, 2]}) + "\n")
    (error,) = _read(tmp_path / "in.json", "json")
    assert (error.key, error.index, error.stage) == ("mine", 0, "read")


def test_each_bad_json_line_is_one_error_line_naming_the_problem(tmp_path, jpegs):
    good = json.dumps({"key": "good", "b64": base64.b64encode(jpegs[0]).decode()})
    lines = [good, *BAD_JSON_LINES, good.replace('"good"', '"good2"')]
    (tmp_path / "in.json").write_text("\n".join(lines) + "\n")
    items = _read(tmp_path / "in.json", "json")
    assert [i.key for i in items if isinstance(i, Record)] == ["good", "good2"]
    errors = _errors(items)
    assert [e.index for e in errors] == list(range(1, len(BAD_JSON_LINES) + 1))
    for error, expected in zip(errors, BAD_JSON_LINES.values()):
        assert expected in error.message or expected == error.error_type, (error.message, expected)
        assert error.stage == "read"


@pytest.mark.parametrize("channels", [1, 4])
def test_json_arrays_with_one_or_four_channels_become_rgb(tmp_path, channels):
    pixel = [7] * channels
    (tmp_path / "in.json").write_text(json.dumps({"inputs": [[pixel, pixel]] * 3}) + "\n")
    (record,) = _read(tmp_path / "in.json", "json")
    assert record.array.shape == (3, 2, 3) and record.array.dtype.name == "uint8"
    assert record.array.tolist()[0][0] == [7, 7, 7]


def test_json_byte_ranges_keep_line_indices_and_read_each_line_once(tmp_path):
    lines = [json.dumps({"inputs": [[[i, i, i]]]}) if i % 4 else "" for i in range(40)]
    text = "\n".join(lines) + "\n"
    (tmp_path / "in.json").write_text(text)
    whole = [(r.key, r.index) for r in _read(tmp_path / "in.json", "json")]
    size = len(text.encode())
    for cuts in ([size // 2], [1, 2, 3, 100, 101, size - 2], list(range(7, size, 53))):
        bounds = [0, *cuts, None]
        pieces = [(r.key, r.index) for s, e in zip(bounds, bounds[1:]) for r in _read(tmp_path / "in.json", "json", s, e)]
        assert pieces == whole


def test_tfrecord_byte_ranges_read_each_record_once_with_file_keys(tmp_path, jpegs):
    data = _tfrecord(jpegs * 3)
    (tmp_path / "in.tfrecord").write_bytes(data)
    whole = [r.key for r in _read(tmp_path / "in.tfrecord", "tfrecord")]
    pieces = [r.key for s, e in [(0, 1), (1, len(data) // 2), (len(data) // 2, None)] for r in _read(tmp_path / "in.tfrecord", "tfrecord", s, e)]
    assert pieces == whole and len(whole) == 9


def test_an_input_file_that_vanished_raises_rather_than_becoming_error_lines(tmp_path, jpegs):
    (tmp_path / "in.tfrecord").write_bytes(_tfrecord(jpegs))
    (file,) = expand_patterns([str(tmp_path / "in.tfrecord")])
    (tmp_path / "in.tfrecord").unlink()
    with pytest.raises(FileNotFoundError):
        list(read_file(file, "tfrecord"))
