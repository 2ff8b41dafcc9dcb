"""Unit outputs: a shard name only ever holds a whole unit's lines."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import pytest

from batch_predict.records import Detections, Prediction, Record, RecordError
from batch_predict.sinks import OutputError, UnitOutputs, ensure_writable, shard_files, shard_name, write_atomically


def _prediction(key: str) -> Prediction:
    record = Record(key, "src", 0, width=100, height=50)
    found = Detections(np.array([[10, 5, 60, 45]], np.float32), np.array([0.9], np.float32), np.array([3]))
    return Prediction(record, found)


def _error(key: str) -> RecordError:
    return RecordError(key, "src", 1, "ImageDecodeError", "not an image", "decode")


@pytest.fixture(params=["local", "memory"])
def prefix(request, tmp_path) -> str:
    """An output prefix on a local disk, and on an object-store-like file system (no real rename)."""
    if request.param == "local":
        return str(tmp_path / "out" / "results")
    return f"memory://{uuid.uuid4().hex}/out/results"


def _names(prefix: str) -> list[str]:
    return sorted(path.rsplit("/", 1)[1] for path in shard_files(prefix))


def test_unit_shards_appear_only_when_committed(prefix):
    ensure_writable(prefix)
    result, error = shard_name(prefix, 2, 5), shard_name(prefix + "-err", 2, 5)
    outputs = UnitOutputs(result, error, {3: "car"})
    outputs.write([_prediction("a"), _error("b")])
    outputs.write([_prediction("c")])
    fs = fsspec.core.url_to_fs(prefix)[0]
    assert not fs.exists(result) and not fs.exists(error)
    assert [n.endswith(".partial") for n in _names(prefix)] == [True]
    counts = outputs.commit(records_read=3)
    assert (counts.records_read, counts.predicted, counts.failed, counts.detections) == (3, 2, 1, 2)
    assert counts.error_types == {"ImageDecodeError": 1}
    assert _names(prefix) == ["results-00002-of-00005.jsonl"]
    with fsspec.open(result, "rt") as f:
        lines = [json.loads(line) for line in f]
    assert [line["key"] for line in lines] == ["a", "c"]
    assert lines[0]["detections"][0] == {"box": [10.0, 5.0, 60.0, 45.0], "box_normalized": [0.1, 0.1, 0.6, 0.9],
                                         "score": 0.9, "class_id": 3, "label": "car"}
    with fsspec.open(error, "rt") as f:
        assert [json.loads(line)["key"] for line in f] == ["b"]


def test_discarded_unit_leaves_nothing(prefix):
    ensure_writable(prefix)
    outputs = UnitOutputs(shard_name(prefix, 0, 1), shard_name(prefix, 0, 1) + "-errors", {})
    outputs.write([_prediction("a")])
    outputs.discard()
    assert _names(prefix) == []


def test_accounting_mismatch_refuses_to_commit(prefix):
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


def test_unwritable_location_is_an_output_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="cannot write output files under"):
        ensure_writable(str(tmp_path / "a-file" / "results"))


def test_shard_files_matches_only_this_prefixs_shards(tmp_path):
    for name in ["results-00000-of-00002.jsonl", "results-00001-of-00002.jsonl.0a1b.partial", "results-summary.json",
                 "results2-00000-of-00001.jsonl", "other-00000-of-00001.jsonl"]:
        (tmp_path / name).write_text("")
    prefix = str(tmp_path / "results")
    assert _names(prefix) == ["results-00000-of-00002.jsonl", "results-00001-of-00002.jsonl.0a1b.partial"]
    assert [p.rsplit("/", 1)[1] for p in shard_files(prefix, partial_only=True)] == ["results-00001-of-00002.jsonl.0a1b.partial"]
