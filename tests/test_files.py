"""Result and error shards as files: invisible until committed, whole or not at all."""

import json
import uuid

import fsspec
import numpy as np
import pytest

from batch_predict.records import Detections, Prediction, Record, FailedRecord
from batch_predict.inputs.units import Unit
from batch_predict.outputs.files import FileSink, ensure_writable, write_atomically
from batch_predict.outputs.layout import OutputLayout, find_shards, shard
from batch_predict.outputs.result_formats import JsonlResults
from batch_predict.outputs.sinks import OutputError


def _prediction(key="k", boxes=((10, 20, 110, 70),), scores=(0.9,), classes=(3,)):
    record = Record(key, "gs://b/f.tfrecord", 4, width=200, height=100)
    return Prediction(record, Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes)))


def _error(key):
    return FailedRecord(key, "f", 1, "ValueError", "bad", "decode")


@pytest.fixture(params=["local", "memory"])
def prefix(request, tmp_path) -> str:
    """An output prefix on a local disk, and on an object-store-like file system (no real rename)."""
    if request.param == "local":
        return str(tmp_path / "out" / "results")
    return f"memory://{uuid.uuid4().hex}/out/results"


def _names(prefix):
    found = find_shards(prefix) + find_shards(prefix, partial_only=True)
    return sorted(path.rsplit("/", 1)[1] for path in found)


def _unit_output(prefix, index=0, count=1):
    sink = FileSink(OutputLayout(prefix, prefix + "-err"), JsonlResults)
    sink.check()
    unit = Unit(index, count, ())
    return sink.open(unit, {}), sink.locations(unit)


def test_unit_shards_appear_only_when_committed_and_account_for_each_record(prefix):
    outputs, (result, error) = _unit_output(prefix, 2, 5)
    assert (result, error) == (shard(prefix, 2, 5), shard(prefix + "-err", 2, 5))
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
    outputs, _ = _unit_output(prefix)
    outputs.write([_prediction("a")])
    outputs.discard()
    assert _names(prefix) == []


def test_a_lost_record_is_an_accounting_error_and_nothing_is_committed(prefix):
    outputs, _ = _unit_output(prefix)
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


def test_a_line_that_cannot_be_written_fails_its_record_alone(tmp_path):
    outputs, (result, error) = _unit_output(str(tmp_path / "results"))
    outputs.write([_prediction("a"), _prediction("bad-\ud800"), _prediction("c")])
    counts = outputs.commit(records_read=3)
    assert (counts.predicted, counts.failed) == (2, 1)
    assert [json.loads(line)["key"] for line in open(result)] == ["a", "c"]
    (failure,) = [json.loads(line) for line in open(error)]
    assert failure["key"] == "bad-\\ud800" and failure["stage"] == "write"
