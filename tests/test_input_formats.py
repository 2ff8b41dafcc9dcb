"""`--input_file_format`: one table of formats; image files read where they lie."""

from __future__ import annotations

import dataclasses
import json
import shutil

from batch_predict.inputs.formats import INPUT_FORMATS, read_file
from batch_predict.inputs.sources import expand_patterns
from batch_predict.inputs.units import plan_units
from batch_predict.runners.local import run
from batch_predict.spec import INPUT_FORMATS as FLAG_CHOICES

from conftest import photo_job
from toymodels import MeanColourModel


def test_the_flag_offers_exactly_the_formats_of_the_table():
    assert set(FLAG_CHOICES) == set(INPUT_FORMATS)


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
    (failed,) = read_file(file, "image_files", max_record_bytes=1000)
    assert (failed.key, failed.error_type) == (str(photos_dir / "bus.jpg"), "RecordTooLarge")


def test_image_files_are_cut_into_units_of_whole_files(photos_dir):
    files = expand_patterns([str(photos_dir / "*")])
    units = plan_units(files, "image_files", 4)
    assert len(units) == 4
    assert sorted(piece.file.url for unit in units for piece in unit.slices) == [f.url for f in files]
    assert all(piece.start == 0 and piece.end is None for unit in units for piece in unit.slices)
