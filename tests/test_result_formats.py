"""`--output_format`: Parquet rows and COCO results hold what JSON lines hold, and commit and resume alike."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from batch_predict.tools.evaluate import evaluate_outputs, load_ground_truth
from batch_predict.outputs.reading import JobOutputsError, read_lines, read_results
from batch_predict.outputs.jobstate import JobConflict
from batch_predict.models import load_model
from batch_predict.tools.pack import find_images, pack
from batch_predict.tools.report import collect
from batch_predict.outputs.result_formats import image_id_of_key, result_lines
from batch_predict.records import Detections, Prediction, Record
from batch_predict.runners.local import run
from batch_predict.spec import JobSpec

from conftest import photo_job, shared_file
from toymodels import MeanColourModel


def test_parquet_rows_hold_the_result_lines_with_nested_detections(tmp_path):
    lines_job = photo_job(tmp_path / "jsonl")
    parquet_job = dataclasses.replace(photo_job(tmp_path / "parquet"), output_format="parquet", output_raw=True)
    run(lines_job, model=MeanColourModel())
    summary = run(parquet_job, model=MeanColourModel())
    assert [Path(f).name for f in summary.result_files] == ["results-00000-of-00002.parquet",
                                                            "results-00001-of-00002.parquet"]
    table = pq.read_table(summary.result_files[0])
    detection = table.schema.field("detections").type.value_type
    assert [detection.field(i).name for i in range(detection.num_fields)] == [
        "box", "box_normalized", "score", "class_id", "label"]
    frame = pd.concat([pd.read_parquet(f) for f in summary.result_files])
    assert len(frame) == summary.predicted == 11 and frame["key"].is_unique
    bus = frame.set_index("key").loc["bus.jpg"]
    assert (bus["width"], bus["height"]) == (810, 1080)
    assert list(bus["detections"][0]["box"]) == [0, 0, 810, 1080] and bus["detections"][0]["label"] == "image"
    as_lines = [{k: v for k, v in line.items() if k != "source"} for line in read_lines(
        sorted(str(p) for p in (tmp_path / "jsonl" / "out").glob("results-*.jsonl")))]
    assert [{k: v for k, v in row.items() if k != "source"} for row in read_results(summary.result_files)] == as_lines
    # Error shards stay JSON lines; the report reads Parquet results as it reads lines.
    assert len(list(read_lines(summary.error_files))) == 2
    assert collect(parquet_job.output_result_prefix).predicted == 11


def test_parquet_shards_commit_and_resume_by_unit_and_a_format_change_is_refused(tmp_path):
    spec = dataclasses.replace(photo_job(tmp_path), output_format="parquet")
    first = run(spec, model=MeanColourModel(), worker_index=0, worker_count=2)
    assert (first.units_committed, first.complete) == (1, False)
    model = MeanColourModel()
    last = run(spec, model=model)
    assert last.complete and last.predicted == 11 and len(model.batch_sizes) < 10  # only the second unit ran
    assert sorted(p.name for p in (tmp_path / "out").glob("results-*")) == [
        "results-00000-of-00002.parquet", "results-00001-of-00002.parquet", "results-job", "results-summary.json"]
    with pytest.raises(JobConflict, match="output_format"):
        run(dataclasses.replace(spec, output_format="jsonl"), model=MeanColourModel())


def test_coco_image_ids_follow_the_evaluate_key_rule():
    assert image_id_of_key("images/train/000000000009.jpg") == 9
    assert image_id_of_key("gs://b/x/bus.jpg") == "gs://b/x/bus.jpg"


def test_coco_results_of_yolox_on_coco8_score_as_its_result_lines_do(tmp_path):
    items = find_images([str(shared_file("data/coco8/images"))], ())
    pack(items, str(tmp_path / "coco8"), "tfrecord", num_shards=2)
    ground_truth = load_ground_truth(str(shared_file("data/coco8/instances_coco8.json")))
    spec = JobSpec(
        input_file_patterns=(str(tmp_path / "coco8-*"),), input_file_format="tfrecord",
        model_dir=str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
        output_result_prefix=str(tmp_path / "jsonl" / "results"), output_error_prefix=str(tmp_path / "jsonl" / "errors"),
        score_threshold=0.01, batch_size=4,
    )
    model = load_model(spec.model_settings())
    run(spec, model=model)
    coco = dataclasses.replace(spec, output_format="coco", output_result_prefix=str(tmp_path / "coco" / "results"),
                               output_error_prefix=str(tmp_path / "coco" / "errors"))
    summary = run(coco, model=model)
    entries = [e for f in summary.result_files for e in json.loads(Path(f).read_text())]
    assert len(entries) == summary.detections and {e["image_id"] for e in entries} <= {9, 25, 30, 34, 36, 42, 49, 61}
    assert all(set(e) == {"image_id", "category_id", "bbox", "score"} and len(e["bbox"]) == 4 for e in entries)
    from_coco = evaluate_outputs(coco.output_result_prefix, ground_truth)
    from_lines = evaluate_outputs(spec.output_result_prefix, ground_truth)
    assert from_coco.images == from_lines.images == 8
    assert abs(from_coco.mAP - from_lines.mAP) < 1e-3 and from_coco.per_class_AP.keys() == from_lines.per_class_AP.keys()
    with pytest.raises(JobOutputsError, match="COCO results"):
        collect(coco.output_result_prefix)


def _prediction(key="k", boxes=((10, 20, 110, 70),), scores=(0.9,), classes=(3,)):
    record = Record(key, "gs://b/f.tfrecord", 4, width=200, height=100)
    return Prediction(record, Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes)))


def test_a_result_line_has_pixel_and_normalized_boxes_and_labels():
    line = json.loads(result_lines([_prediction()], {3: "car"}))
    assert line == {
        "key": "k",
        "source": "gs://b/f.tfrecord",
        "record_index": 4,
        "width": 200,
        "height": 100,
        "detections": [{"box": [10.0, 20.0, 110.0, 70.0], "box_normalized": [0.05, 0.2, 0.55, 0.7], "score": 0.9,
                        "class_id": 3, "label": "car"}],
    }


def test_without_a_label_map_detections_carry_ids_only():
    (detection,) = json.loads(result_lines([_prediction()], {}))["detections"]
    assert "label" not in detection and detection["class_id"] == 3


