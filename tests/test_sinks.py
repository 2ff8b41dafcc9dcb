import json

import numpy as np
import pytest

from batch_predict.records import Detections, Prediction, Record, RecordError
from batch_predict.sinks import JobOutputs, OutputError, result_line, shard_name, summary_path


def _prediction(key="k", boxes=((10, 20, 110, 70),), scores=(0.9,), classes=(3,)):
    record = Record(key, "gs://b/f.tfrecord", 4, width=200, height=100)
    return Prediction(record, Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes)))


def test_shards_are_named_like_beam_and_vertex_ai():
    assert shard_name("out/results", 3, 12) == "out/results-00003-of-00012.jsonl"


def test_a_result_line_has_pixel_and_normalized_boxes_and_labels():
    line = json.loads(result_line(_prediction(), {3: "car"}))
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
    (detection,) = json.loads(result_line(_prediction(), {}))["detections"]
    assert "label" not in detection and detection["class_id"] == 3


def test_outputs_fill_every_shard_and_account_for_each_record(tmp_path):
    outputs = JobOutputs(str(tmp_path / "out/results"), str(tmp_path / "out/errors"), 3, {})
    outputs.write([_prediction("a"), RecordError("b", "f", 1, "ValueError", "bad", "decode")])
    outputs.write([_prediction("c", boxes=np.zeros((0, 4)), scores=(), classes=())])
    summary = outputs.close(files=1, records_read=3, wall_time_s=2.0)
    results = [json.loads(line) for p in summary.result_files for line in open(p)]
    errors = [json.loads(line) for p in summary.error_files for line in open(p)]
    assert sorted(r["key"] for r in results) == ["a", "c"]
    assert errors == [{"key": "b", "source": "f", "record_index": 1, "error_type": "ValueError",
                       "message": "bad", "stage": "decode"}]
    assert len(summary.result_files) == 3 and all(open(p) for p in summary.result_files)
    on_disk = json.load(open(summary_path(str(tmp_path / "out/results"))))
    assert on_disk["records_read"] == 3 and on_disk["predicted"] == 2 and on_disk["failed"] == 1
    assert on_disk["detections"] == 1 and on_disk["images_per_second"] == 1.0


def test_a_lost_record_is_an_accounting_error(tmp_path):
    outputs = JobOutputs(str(tmp_path / "r"), str(tmp_path / "e"), 1, {})
    outputs.write([_prediction("a")])
    with pytest.raises(RuntimeError, match="accounting mismatch"):
        outputs.close(files=1, records_read=2, wall_time_s=1.0)


def test_an_unwritable_location_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write"):
        JobOutputs(str(blocker / "results"), str(tmp_path / "e"), 1, {})
