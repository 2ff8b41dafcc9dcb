import json
import uuid

import fsspec
import numpy as np
import pytest

from batch_predict.records import Detections, Prediction, Record, FailedRecord
from batch_predict.outputs.sinks import (
    OutputError, UnitOutputs, ensure_writable, result_lines, shard_files, shard_name, write_atomically,
)


def _prediction(key="k", boxes=((10, 20, 110, 70),), scores=(0.9,), classes=(3,)):
    record = Record(key, "gs://b/f.tfrecord", 4, width=200, height=100)
    return Prediction(record, Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes)))


def test_shards_are_named_like_beam_and_vertex_ai():
    assert shard_name("out/results", 3, 12) == "out/results-00003-of-00012.jsonl"


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


def _error(key):
    return FailedRecord(key, "f", 1, "ValueError", "bad", "decode")


@pytest.fixture(params=["local", "memory"])
def prefix(request, tmp_path) -> str:
    """An output prefix on a local disk, and on an object-store-like file system (no real rename)."""
    if request.param == "local":
        return str(tmp_path / "out" / "results")
    return f"memory://{uuid.uuid4().hex}/out/results"


def _names(prefix):
    return sorted(path.rsplit("/", 1)[1] for path in shard_files(prefix))


def test_unit_shards_appear_only_when_committed_and_account_for_each_record(prefix):
    ensure_writable(prefix)
    result, error = shard_name(prefix, 2, 5), shard_name(prefix + "-err", 2, 5)
    outputs = UnitOutputs(result, error, {})
    outputs.write([_prediction("a"), _error("b")])
    outputs.write([_prediction("c", boxes=np.zeros((0, 4)), scores=(), classes=())])
    fs = fsspec.core.url_to_fs(prefix)[0]
    assert not fs.exists(result) and not fs.exists(error)
    assert [name.endswith(".partial") for name in _names(prefix)] == [True]
    counts = outputs.commit(records_read=3)
    assert (counts.records_read, counts.predicted, counts.failed, counts.detections) == (3, 2, 1, 1)
    assert counts.error_types == {"ValueError": 1}
    assert _names(prefix) == ["results-00002-of-00005.jsonl"]
    with fsspec.open(result, "rt") as f:
        assert [json.loads(line)["key"] for line in f] == ["a", "c"]
    with fsspec.open(error, "rt") as f:
        assert [json.loads(line) for line in f] == [{"key": "b", "source": "f", "record_index": 1,
                                                     "error_type": "ValueError", "message": "bad", "stage": "decode"}]


def test_a_discarded_unit_leaves_nothing(prefix):
    ensure_writable(prefix)
    outputs = UnitOutputs(shard_name(prefix, 0, 1), shard_name(prefix + "-err", 0, 1), {})
    outputs.write([_prediction("a")])
    outputs.discard()
    assert _names(prefix) == []


def test_a_lost_record_is_an_accounting_error_and_nothing_is_committed(prefix):
    ensure_writable(prefix)
    outputs = UnitOutputs(shard_name(prefix, 0, 1), shard_name(prefix + "-err", 0, 1), {})
    outputs.write([_prediction("a")])
    with pytest.raises(RuntimeError, match="accounting mismatch: 2 records read but 1 predicted"):
        outputs.commit(records_read=2)
    assert _names(prefix) == []


def test_write_atomically_replaces_whole_files(prefix):
    path = prefix + "-job/job.json"
    write_atomically(path, "first")
    write_atomically(path, "second")
    with fsspec.open(path, "rt") as f:
        assert f.read() == "second"
    fs, root = fsspec.core.url_to_fs(path)
    assert fs.ls(root.rsplit("/", 1)[0], detail=False) == [fs._strip_protocol(path)]


def test_an_unwritable_location_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write output files under"):
        ensure_writable(str(blocker / "results"))


def test_shard_files_matches_only_this_prefixs_shards(tmp_path):
    for name in ["results-00000-of-00002.jsonl", "results-00001-of-00002.jsonl.0a1b.partial", "results-summary.json",
                 "results2-00000-of-00001.jsonl", "other-00000-of-00001.jsonl"]:
        (tmp_path / name).write_text("")
    prefix = str(tmp_path / "results")
    assert _names(prefix) == ["results-00000-of-00002.jsonl", "results-00001-of-00002.jsonl.0a1b.partial"]
    assert [p.rsplit("/", 1)[1] for p in shard_files(prefix, partial_only=True)] == ["results-00001-of-00002.jsonl.0a1b.partial"]
