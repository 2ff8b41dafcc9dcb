"""Several worker processes on one machine (one per GPU there; on the CPU here) divide a
job's units and leave the outputs and summary of one process."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch_predict import run
from batch_predict.observe.progress import Tally
from batch_predict.inputs.units import Unit
from batch_predict.observe.observers import JobObserver
from batch_predict.records import Detections, FailedRecord, Prediction, Record
from batch_predict.runners.workers import Relay, local_gpu_count, local_worker_count, replay, worker_device
from batch_predict.spec import JobSpec

from backend_helpers import REPO, write_tfrecord

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")


def _job(inputs: str, prefix: Path, model: Path, workers: int) -> JobSpec:
    return JobSpec(
        input_file_patterns=(inputs,), input_file_format="tfrecord", model_dir=str(model), model_spec=SPEC,
        output_result_prefix=str(prefix), output_error_prefix=f"{prefix}-errors", device="cpu", batch_size=2,
        num_workers=workers,
    )


def _outputs(prefix: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(prefix.parent.glob(f"{prefix.name}*-of-*.jsonl"))}


def test_two_workers_write_what_one_writes(tmp_path, photos_dir, yolox_dir):
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix in (".jpg", ".png"))
    for shard in range(3):
        write_tfrecord(tmp_path / f"in-{shard}.tfrecord",
                       {p.name: p.read_bytes() for p in photos[shard::3]} | {f"broken-{shard}": b"not an image"})
    model = yolox_dir / "yolox_nano_torchscript.pt"
    one = run(_job(str(tmp_path / "in-*.tfrecord"), tmp_path / "one" / "r", model, 1))
    tally = Tally()
    two = run(_job(str(tmp_path / "in-*.tfrecord"), tmp_path / "two" / "r", model, 2), observer=tally)
    assert _outputs(tmp_path / "one" / "r") == _outputs(tmp_path / "two" / "r")
    assert len(_outputs(tmp_path / "two" / "r")) == 6  # results and errors of 3 units
    assert (two.records_read, two.predicted, two.failed, two.units_committed) == (
        one.records_read, one.predicted, one.failed, one.units_committed)
    assert two.failed == 3 and two.predicted == len(photos)
    summary = json.loads((tmp_path / "two" / "r-summary.json").read_text())
    assert summary["records_read"] == one.records_read
    # The parent's watchers heard every unit of both workers, as a progress bar needs.
    seen = tally.snapshot()
    assert (seen.records_read, seen.predicted, seen.failed, seen.units_committed, seen.units) == (
        two.records_read, two.predicted, two.failed, 3, 3)
    assert seen.bytes_done == seen.bytes_total > 0 and tally.error_types == {"ImageDecodeError": 3}


class _Heard(JobObserver):
    def __init__(self) -> None:
        self.read, self.detections, self.failed = [], [], []

    def record_read(self, unit, item):
        self.read.append((unit.index, item))

    def written(self, unit, outcomes):
        self.detections += [len(o.detections.scores) for o in outcomes if isinstance(o, Prediction)]
        self.failed += [o for o in outcomes if isinstance(o, FailedRecord)]


def test_the_relay_carries_counts_and_whole_failures_to_the_parents_watchers():
    """Through a real process queue: what progress and metrics count arrives, the images and
    detections themselves stay in the worker."""
    messages = multiprocessing.get_context("spawn").Queue()
    relay, unit = Relay(messages, interval_s=3600), Unit(4, 9, ())
    records = [Record(f"k{i}", "in.tfrecord", i, encoded=b"\xff\xd8" * 1000) for i in range(3)]
    bad = FailedRecord("k3", "in.tfrecord", 3, "ImageDecodeError", "not an image", "decode")
    for item in [*records, bad]:
        relay.record_read(unit, item)
    found = Detections(np.zeros((2, 4), np.float32), np.ones(2, np.float32), np.ones(2, np.int64))
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    relay.written(unit, [Prediction(records[0], found), bad, Prediction(records[1], none)])
    relay.flush()
    kind, events = messages.get(timeout=10)
    heard = _Heard()
    replay(events, {4: unit}, heard)
    assert kind == "events" and len(pickle.dumps(events)) < 1000
    assert [index for index, _ in heard.read] == [4, 4, 4, 4] and heard.read[3][1] == bad
    assert heard.detections == [2, 0] and heard.failed == [bad]


def test_a_worker_failing_at_setup_fails_the_run_with_its_error(tmp_path, photos_dir):
    from batch_predict.models import ModelLoadError

    write_tfrecord(tmp_path / "in.tfrecord", {"bus": (photos_dir / "bus.jpg").read_bytes()})
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        run(_job(str(tmp_path / "in.tfrecord"), tmp_path / "r", tmp_path / "model.pt", 2))


def test_workers_take_one_gpu_each_unless_a_device_is_named():
    assert worker_device("cpu", 1, gpus=2) == "cpu"
    assert worker_device("cuda:3", 1, gpus=2) == "cuda:3"
    assert worker_device("auto", 1, gpus=0) == "auto"
    spec = JobSpec(input_file_patterns=("x",), input_file_format="tfrecord", model_dir="m",
                   output_result_prefix="r", output_error_prefix="e", device="cpu", num_workers=0)
    assert local_gpu_count(spec) == 0
    assert local_worker_count(spec, 0) == 1
    assert local_worker_count(dataclasses.replace(spec, device="auto"), 2) == 2
    assert local_worker_count(dataclasses.replace(spec, num_workers=3), 2) == 3


@pytest.mark.parametrize("visible, index, seen", [(None, 1, "1"), (None, 2, "0"), ("4,6", 1, "6"), ("4,6", 0, "4")])
@pytest.mark.parametrize("requested, device", [("auto", "auto"), ("cuda", "cuda:0")])
def test_a_worker_process_sees_only_its_own_gpu(monkeypatch, visible, index, seen, requested, device):
    """Two GPUs counted by the parent (CI has none): a worker makes its own the only one CUDA will
    see, and keeps `auto` so that a PyTorch without CUDA still runs it on the CPU."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # a spawned worker, before it imports PyTorch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible or "")  # restored afterwards, whatever the worker sets
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert worker_device(requested, index, gpus=2) == device
    assert os.environ["CUDA_VISIBLE_DEVICES"] == seen


def test_a_worker_in_a_process_whose_cuda_started_keeps_every_gpu_and_picks_its_own(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert worker_device("cuda", 3, gpus=2) == "cuda:1"


def test_counting_the_gpus_for_the_workers_imports_no_framework():
    """The parent of the workers counts GPUs through the CUDA driver: it never imports PyTorch."""
    code = ("import sys; from batch_predict.runners.workers import local_gpu_count; from batch_predict.spec import JobSpec; "
            "spec = JobSpec(input_file_patterns=('x',), input_file_format='tfrecord', model_dir='m', "
            "output_result_prefix='r', output_error_prefix='e', num_workers=0); "
            "print(local_gpu_count(spec) >= 0, 'torch' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert shown.stdout.split() == ["True", "False"], shown.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_overwrite_with_a_model_that_fails_to_load_leaves_the_earlier_outputs(workers, tmp_path, photos_dir, yolox_dir):
    from batch_predict.models import ModelLoadError

    write_tfrecord(tmp_path / "in.tfrecord", {"bus": (photos_dir / "bus.jpg").read_bytes()})
    prefix = tmp_path / "out" / "r"
    run(_job(str(tmp_path / "in.tfrecord"), prefix, yolox_dir / "yolox_nano_torchscript.pt", 1))
    before = _outputs(prefix) | {"summary": (tmp_path / "out" / "r-summary.json").read_text()}
    (tmp_path / "model.pt").write_bytes(b"not a model")
    broken = dataclasses.replace(_job(str(tmp_path / "in.tfrecord"), prefix, tmp_path / "model.pt", workers), overwrite=True)
    with pytest.raises(ModelLoadError):
        run(broken)
    assert _outputs(prefix) | {"summary": (tmp_path / "out" / "r-summary.json").read_text()} == before
    assert (tmp_path / "out" / "r-job" / "committed").is_dir()


def test_overwrite_with_workers_starts_over_once_and_every_worker_commits(tmp_path, photos_dir, yolox_dir):
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix == ".jpg")[:4]
    for shard in range(2):
        write_tfrecord(tmp_path / f"in-{shard}.tfrecord", {p.name: p.read_bytes() for p in photos[shard::2]})
    prefix = tmp_path / "out" / "r"
    model = yolox_dir / "yolox_nano_torchscript.pt"
    first = run(_job(str(tmp_path / "in-*.tfrecord"), prefix, model, 1))
    again = run(dataclasses.replace(_job(str(tmp_path / "in-*.tfrecord"), prefix, model, 2), overwrite=True))
    assert again.complete and again.units_committed == 2 and again.predicted == first.predicted == 4
