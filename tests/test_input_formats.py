"""`--input_file_format`: one table of formats; image files read where they lie."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import tarfile

import pytest

from batch_predict.cli import cli
from batch_predict.inputs.fetch import fetch_all, fetch_one
from batch_predict.inputs.formats import MissingReaderError, ReadOptions, input_formats, read_file
from batch_predict.inputs.sources import expand_patterns
from batch_predict.inputs.units import num_units, plan_units, read_unit
from batch_predict.records import Record
from batch_predict.runners.local import run

from conftest import photo_job
from input_writers import write_file_list, write_folder, write_parquet, write_webdataset
from toymodels import MeanColourModel


def test_the_flag_offers_exactly_the_formats_of_the_registry():
    (flag,) = [p for p in cli.commands["predict"].params if p.name == "input_file_format"]
    assert list(flag.type.choices) == list(input_formats())
    assert {"json", "tfrecord", "tfrecord_gzip", "image_files", "file_list", "webdataset", "parquet"} <= set(input_formats())


def _results(prefix) -> dict[str, dict]:
    lines = (json.loads(line) for p in sorted(prefix.parent.glob(prefix.name + "-*-of-*.jsonl")) for line in p.open())
    return {line["key"].rsplit("/", 1)[-1]: line for line in lines}


def test_image_files_give_what_the_same_images_packed_as_json_lines_give(tmp_path, photos_dir):
    folder = tmp_path / "images"
    shutil.copytree(photos_dir, folder)
    (folder / "junk.jpg").write_bytes(b"no image")
    packed = run(photo_job(tmp_path / "packed"), model=MeanColourModel())
    spec = dataclasses.replace(photo_job(tmp_path / "files"), input_file_patterns=(str(folder / "*"),),
                               input_file_format="image_files", num_output_shards=3)
    found = run(spec, model=MeanColourModel())
    assert (found.records_read, found.units_committed) == (len(list(photos_dir.iterdir())) + 1, 3)
    assert found.predicted == packed.predicted
    by_name = _results(tmp_path / "files" / "out" / "results")
    reference = _results(tmp_path / "packed" / "out" / "results")
    assert {k: v["detections"] for k, v in by_name.items()} == {k: v["detections"] for k, v in reference.items()}
    assert all(line["key"] == line["source"] == str(folder / name) for name, line in by_name.items())
    (error,) = [json.loads(line) for p in (tmp_path / "files" / "out").glob("errors-*.jsonl") for line in p.open()]
    assert (error["key"], error["error_type"]) == (str(folder / "junk.jpg"), "ImageDecodeError")


def test_an_image_file_over_the_record_limit_is_an_error_line_unread(tmp_path, photos_dir):
    (file,) = expand_patterns([str(photos_dir / "bus.jpg")])
    (fetch,) = read_file(file, "image_files")
    failed = fetch_one(fetch, max_bytes=1000)
    assert (failed.key, failed.error_type) == (str(photos_dir / "bus.jpg"), "RecordTooLarge")


def test_image_files_are_cut_into_units_of_whole_files(photos_dir):
    files = expand_patterns([str(photos_dir / "*")])
    units = plan_units(files, "image_files", 4)
    assert len(units) == 4
    assert sorted(piece.file.url for unit in units for piece in unit.slices) == [f.url for f in files]
    assert all(piece.start == 0 and piece.end is None for unit in units for piece in unit.slices)


def _detections_by_stem(out) -> dict[str, list]:
    lines = (json.loads(line) for p in sorted(out.glob("results-*-of-*.jsonl")) for line in p.open())
    return {line["key"].rsplit("/", 1)[-1].split(".")[0]: line["detections"] for line in lines}


def test_the_same_photos_give_the_same_results_whichever_format_carries_them(tmp_path, photos_dir):
    images = {p.name: p.read_bytes() for p in sorted(photos_dir.iterdir())}
    folder = write_folder(images, tmp_path / "folder")
    carriers = {
        "image_files": str(tmp_path / "folder" / "*"),
        "file_list": str(write_file_list([str(p) for p in folder], tmp_path / "list.txt")),
        "webdataset": str(write_webdataset(images, tmp_path / "shard-0.tar")),
        "parquet": str(write_parquet(images, tmp_path / "table.parquet", as_struct=True)),
    }
    base = photo_job(tmp_path / "json")
    found = {"json": run(base, model=MeanColourModel())}
    expected = _detections_by_stem(tmp_path / "json" / "out")
    for fmt, pattern in carriers.items():
        spec = dataclasses.replace(base, input_file_patterns=(pattern,), input_file_format=fmt, num_output_shards=2,
                                   output_result_prefix=str(tmp_path / fmt / "results"),
                                   output_error_prefix=str(tmp_path / fmt / "errors"))
        found[fmt] = run(spec, model=MeanColourModel())
        assert found[fmt].predicted == len(images) and found[fmt].failed == 0, fmt
        got = _detections_by_stem(tmp_path / fmt)
        assert got == {stem: expected[stem] for stem in got} and len(got) == len(images), fmt


def _read(path, fmt: str, **options) -> list:
    (file,) = expand_patterns([str(path)])
    items = read_file(file, fmt, options=ReadOptions(**options))
    return list(fetch_all(items, workers=4, max_bytes=ReadOptions(**options).max_record_bytes, retry_wait=0.01))


def test_a_file_list_reads_paths_relative_to_itself_and_keys_from_its_csv_column(tmp_path, photos_dir):
    write_folder({"bus.jpg": (photos_dir / "bus.jpg").read_bytes()}, tmp_path / "imgs")
    text = _read(write_file_list(["imgs/bus.jpg", "imgs/missing.jpg", "nosuch://x/y.jpg"], tmp_path / "a.txt"), "file_list")
    by_key = {item.key: item for item in text}
    assert isinstance(by_key["imgs/bus.jpg"], Record) and by_key["imgs/bus.jpg"].index == 0
    assert (by_key["imgs/missing.jpg"].error_type, by_key["imgs/missing.jpg"].index) == ("FileNotFoundError", 1)
    assert by_key["nosuch://x/y.jpg"].error_type == "ValueError" and "not a path or URL" in by_key["nosuch://x/y.jpg"].message
    rows = _read(write_file_list([str(tmp_path / "imgs" / "bus.jpg"), ""], tmp_path / "b.csv", keys=["first", "second"]), "file_list")
    assert sorted((item.key, type(item).__name__) for item in rows) == [("first", "Record"), ("second", "FailedRecord")]


def test_webdataset_samples_without_an_image_and_a_truncated_shard_are_error_lines(tmp_path, photos_dir):
    images = {"a.jpg": (photos_dir / "bus.jpg").read_bytes(), "b.jpg": (photos_dir / "zidane.jpg").read_bytes()}
    shard = write_webdataset(images, tmp_path / "s.tar")
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("c.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    items = _read(shard, "webdataset")
    assert [(item.key, type(item).__name__) for item in items] == [("a", "Record"), ("b", "Record"), ("c", "FailedRecord")]
    assert items[2].error_type == "NoImageMember" and items[0].encoded == images["a.jpg"]
    gzipped = write_webdataset(images, tmp_path / "g.tar.gz", gzip=True)
    assert [item.key for item in _read(gzipped, "webdataset")] == ["a", "b"]
    with tarfile.open(shard) as tar:
        second = tar.getmember("b.jpg")
    (tmp_path / "t.tar").write_bytes(shard.read_bytes()[: second.offset_data + second.size // 2])
    cut = _read(tmp_path / "t.tar", "webdataset")
    assert [type(item).__name__ for item in cut] == ["Record", "FailedRecord"]
    assert cut[1].index == 1 and "unreadable from this record on" in cut[1].message


def test_parquet_rows_null_and_non_image_cells_and_a_missing_column(tmp_path, photos_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bus = (photos_dir / "bus.jpg").read_bytes()
    pq.write_table(pa.table({"name": ["x", "y", "z"], "image": [bus, None, b"abc"]}), tmp_path / "t.parquet", row_group_size=2)
    items = _read(tmp_path / "t.parquet", "parquet", key_column="name")
    assert [(item.key, item.index, type(item).__name__) for item in items] == [
        ("x", 0, "Record"), ("y", 1, "FailedRecord"), ("z", 2, "Record")]
    assert items[1].error_type == "NotAnImage"
    missing = _read(tmp_path / "t.parquet", "parquet", image_column="pixels")
    assert [(item.key, item.error_type) for item in missing] == [(f"{tmp_path / 't.parquet'}:{i}", "KeyError") for i in range(3)]


def test_a_parquet_file_is_cut_into_units_of_whole_row_groups(tmp_path, photos_dir):
    images = {p.name: p.read_bytes() for p in sorted(photos_dir.iterdir())}
    path = write_parquet(images, tmp_path / "t.parquet", row_group_size=2)
    units = plan_units(expand_patterns([str(path)]), "parquet", 3)
    pieces = [[item.key for item in read_unit(unit, "parquet")] for unit in units]
    assert all(pieces) and sorted(k for piece in pieces for k in piece) == sorted(images)
    assert all(len(piece) % 2 == 0 for piece in pieces[:-1])  # whole row groups of two


def test_a_folder_of_image_files_makes_units_of_a_thousand_files_by_default():
    assert (num_units(0, 2_500, one_record_per_file=True), num_units(0, 2_500)) == (3, 2_500)


def test_a_format_whose_library_is_missing_fails_before_any_work_with_the_pip_command(tmp_path, photos_dir, monkeypatch):
    path = write_parquet({"bus.jpg": (photos_dir / "bus.jpg").read_bytes()}, tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as where pyarrow is not installed
    spec = dataclasses.replace(photo_job(tmp_path), input_file_patterns=(str(path),), input_file_format="parquet")
    with pytest.raises(MissingReaderError, match=r"pip install 'batch-predict\[parquet\]'"):
        run(spec, model=MeanColourModel())
    assert not (tmp_path / "out").exists()


def test_a_record_over_the_size_limit_is_an_error_line_in_each_new_format(tmp_path, photos_dir):
    bus = (photos_dir / "bus.jpg").read_bytes()
    small = 1000  # bytes: the photo is larger
    listed = write_file_list(["x" * 2 * small, str(photos_dir / "bus.jpg")], tmp_path / "list.txt")
    shard = write_webdataset({"a.jpg": bus}, tmp_path / "s.tar")
    table = write_parquet({"p": bus}, tmp_path / "t.parquet")
    found = {fmt: _read(path, fmt, max_record_bytes=small) for fmt, path in
             (("file_list", listed), ("webdataset", shard), ("parquet", table))}
    assert {fmt: [(item.index, getattr(item, "error_type", None)) for item in items] for fmt, items in found.items()} == {
        "file_list": [(0, "RecordTooLarge"), (1, "RecordTooLarge")],  # a line too long, then the photo itself
        "webdataset": [(0, "RecordTooLarge")],
        "parquet": [(0, "RecordTooLarge")],
    }
    assert all(f"--max_record_bytes ({small})" in item.message for items in found.values() for item in items)
