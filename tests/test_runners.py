"""The local runner: resuming, sharing units among workers, stopping, and a unit that fails whole."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from batch_predict import models
from batch_predict.inputs.sources import NoInputError
from batch_predict.inputs.units import Unit
from batch_predict.models import ModelLoadError
from batch_predict.observe.observers import JobObserver
from batch_predict.outputs.sinks import OutputError, UnitCounts
from batch_predict.pipeline import Stopped
from batch_predict.runners import local
from batch_predict.runners.local import run
from batch_predict.runners.plan import UnitsFailed
from batch_predict.records import Detections, Prediction, Record, UnitEnd
from batch_predict.runners.stopping import Stopping
from batch_predict.runners.unit import UnitSinks
from batch_predict.spec import JobSpec
from batch_predict.inputs.tfrecord import write_record

from conftest import REPO, shared_file
from toymodels import MeanColourModel


@pytest.fixture
def job(tmp_path) -> JobSpec:
    """Four TFRecord files of the real photos (PNG and JPEG), one unit each."""
    photos = sorted(shared_file("data/photos").iterdir())
    for i in range(4):
        stream = io.BytesIO()
        for photo in photos[i::4]:
            write_record(stream, photo.read_bytes())
        (tmp_path / f"in-{i}.tfrecord").write_bytes(stream.getvalue())
    return JobSpec(
        input_file_patterns=(str(tmp_path / "in-*.tfrecord"),),
        input_file_format="tfrecord",
        model_dir="unused: the model is given",
        output_result_prefix=str(tmp_path / "out" / "results"),
        output_error_prefix=str(tmp_path / "out" / "errors"),
        batch_size=2,
        num_decode_workers=2,
    )


def _keys(spec: JobSpec) -> list[str]:
    folder = Path(spec.output_result_prefix).parent
    return sorted(json.loads(line)["key"] for p in folder.glob("results-*-of-*.jsonl") for line in p.open())


def _committed(spec: JobSpec) -> list[str]:
    return sorted(p.stem for p in Path(spec.output_result_prefix + "-job", "committed").glob("*.json"))


def test_workers_each_run_their_share_and_the_last_writes_the_whole_summary(job):
    first = run(job, model=MeanColourModel(), worker_index=0, worker_count=3)
    assert (first.units_committed, first.units, first.complete) == (2, 4, False)
    assert not Path(job.output_result_prefix + "-summary.json").exists()
    run(job, model=MeanColourModel(), worker_index=2, worker_count=3)
    last = run(job, model=MeanColourModel(), worker_index=1, worker_count=3)
    assert last.complete and last.records_read == last.predicted == len(list(shared_file("data/photos").iterdir()))
    written = json.loads(Path(job.output_result_prefix + "-summary.json").read_text())
    assert written["records_read"] == written["predicted"] + written["failed"] == last.records_read
    keys = _keys(job)
    assert len(keys) == len(set(keys)) == last.records_read


def test_rerun_predicts_only_the_records_of_uncommitted_units(job):
    run(job, model=MeanColourModel(), worker_index=1, worker_count=2)  # units 1 and 3
    model = MeanColourModel()
    summary = run(job, model=model)
    photos = sorted(shared_file("data/photos").iterdir())
    assert summary.complete and summary.records_read == len(photos)
    assert sum(model.batch_sizes) == len(photos[0::4]) + len(photos[2::4])


class _WhenStarting(JobObserver):
    """Does `action` as the reader starts unit `index`."""

    def __init__(self, index, action):
        self.index, self.action = index, action

    def unit_started(self, unit):
        if unit.index == self.index:
            self.action()


def test_an_input_that_vanishes_fails_its_unit_only_and_a_rerun_retries_it(job, tmp_path):
    vanishing = tmp_path / "in-2.tfrecord"
    kept = vanishing.read_bytes()
    with pytest.raises(UnitsFailed, match=r"1 of 4 units failed.*unit 2: FileNotFoundError.*rerun the same command"):
        run(job, model=MeanColourModel(), observer=_WhenStarting(1, lambda: vanishing.unlink(missing_ok=True)))
    assert _committed(job) == ["00000-of-00004", "00001-of-00004", "00003-of-00004"]
    assert not Path(job.output_result_prefix + "-summary.json").exists()
    vanishing.write_bytes(kept)
    assert run(job, model=MeanColourModel()).complete


def test_stop_request_lets_the_units_in_progress_commit_then_stops(job):
    stopping = Stopping()
    # Asked to stop as unit 1 starts being read: unit 0 is under way and commits; unit 1 too if
    # its records reached the model first; no later unit starts, however far the reader got.
    with pytest.raises(Stopped, match=r"stopped before unit [12]") as stopped:
        run(job, model=MeanColourModel(), stopping=stopping, observer=_WhenStarting(1, stopping.requested.set))
    first_left = int(str(stopped.value).split("stopped before unit ")[1].split()[0])
    assert _committed(job) == [f"{i:05d}-of-00004" for i in range(first_left)]


def test_abandon_discards_the_units_in_progress(job):
    stopping = Stopping()
    with pytest.raises(Stopped, match="units in progress were abandoned"):
        run(job, model=MeanColourModel(on_predict=lambda _: stopping.request(0)), stopping=stopping)
    out = Path(job.output_result_prefix).parent
    assert _committed(job) == [] and list(out.glob("*.jsonl*")) == []


def test_a_unit_with_no_record_among_others_commits_its_empty_shards(tmp_path):
    # More units than records: byte ranges of one file, some of which no record begins in.
    stream = io.BytesIO()
    photos = sorted(shared_file("data/photos").iterdir())[:2]
    for photo in photos:
        write_record(stream, photo.read_bytes())
    (tmp_path / "in.tfrecord").write_bytes(stream.getvalue())
    spec = JobSpec(
        input_file_patterns=(str(tmp_path / "in.tfrecord"),), input_file_format="tfrecord", model_dir="unused",
        output_result_prefix=str(tmp_path / "out" / "results"), output_error_prefix=str(tmp_path / "out" / "errors"),
        num_output_shards=6,
    )
    summary = run(spec, model=MeanColourModel())
    assert summary.complete and summary.units == 6 and summary.records_read == 2
    empty = [p for p in (tmp_path / "out").glob("results-*-of-00006.jsonl") if not p.read_text()]
    assert len(empty) == 4


def test_the_one_entry_point_refuses_a_runner_it_lacks_and_another_runners_settings(job):
    from batch_predict import runners
    from batch_predict.spec import SpecError

    with pytest.raises(SpecError, match="must be one of local, ray"):
        runners.run(job, runner="spark")
    with pytest.raises(SpecError, match="settings of --runner ray"):
        runners.run(job, ray_num_actors=2)
    assert not list(Path(job.output_result_prefix).parent.glob("*.jsonl"))  # refused before any work


def test_objects_alive_before_the_run_are_frozen_during_it_and_unfrozen_after(job):
    seen: list[int] = []
    assert gc.get_freeze_count() == 0
    run(job, model=MeanColourModel(on_predict=lambda records: seen.append(gc.get_freeze_count())))
    assert seen and min(seen) > 0 and gc.get_freeze_count() == 0


def test_a_run_freezes_what_is_alive_even_after_a_callers_small_freeze_and_leaves_that_freeze_in_place(job):
    """A Python that froze a few objects at start-up (the GPU machine's does) must not leave the
    model and the modules, made after, for the full collections to walk during the run."""
    gc.freeze()
    early = gc.get_freeze_count()
    made_after = [[n] for n in range(20_000)]  # lists: always tracked by the collector
    seen: list[int] = []
    try:
        run(job, model=MeanColourModel(on_predict=lambda records: seen.append(gc.get_freeze_count())))
        assert seen and min(seen) >= early + len(made_after)
        assert gc.get_freeze_count() >= len(made_after)  # the caller's freeze is not undone
    finally:
        gc.unfreeze()


def test_full_collections_are_rarer_during_a_run_and_as_before_after_it(job):
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    run(job, model=MeanColourModel(on_predict=lambda records: seen.append(gc.get_threshold())))
    assert seen and all(t[:2] == before[:2] and t[2] >= 100 * before[2] for t in seen)
    assert gc.get_threshold() == before


class _SlowDisk:
    """A job state whose units' outputs take `seconds` to commit, as syncs on a busy disk do; it
    notes what happened, in order, from whichever thread."""

    def __init__(self, seconds: float) -> None:
        self.sink, self.seconds, self.events = self, seconds, []

    def open(self, unit, labels):
        disk = self

        class Output:
            def write(self, outcomes):
                disk.events.append(("written", unit.index))

            def commit(self, records_read):
                time.sleep(disk.seconds)
                disk.events.append(("committed", unit.index))
                return UnitCounts(records_read, records_read)

            def discard(self):
                disk.events.append(("discarded", unit.index))

        return Output()

    def commit(self, unit, counts):
        self.events.append(("recorded", unit.index))


def test_the_next_unit_is_written_while_the_last_one_commits():
    units = [Unit(0, 2, ()), Unit(1, 2, ())]
    disk = _SlowDisk(0.3)
    sinks = UnitSinks(MeanColourModel(), disk, units, JobObserver())
    nothing = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for unit in units:
        sinks.write([Prediction(Record(f"k{unit.index}", "src", 0), nothing)])
        sinks.end(UnitEnd(unit, 1))
    assert disk.events[:2] == [("written", 0), ("written", 1)]  # unit 1 written while unit 0 commits
    results = sinks.finish()
    assert disk.events[2:] == [("committed", 0), ("recorded", 0), ("committed", 1), ("recorded", 1)]
    assert [(unit.index, counts.predicted) for unit, counts in results] == [(0, 1), (1, 1)]


def test_a_run_told_not_to_write_the_summary_leaves_it_to_its_parent(job):
    summary = run(job, model=MeanColourModel(), write_summary=False)
    assert summary.complete and not Path(job.output_result_prefix + "-summary.json").exists()
    assert run(job, model=MeanColourModel()).complete and Path(job.output_result_prefix + "-summary.json").exists()


class _FullDisk(_SlowDisk):
    """A job state whose units' outputs cannot be committed: the disk is full."""

    def open(self, unit, labels):
        output = super().open(unit, labels)

        def commit(records_read):
            raise OutputError(f"cannot commit unit {unit.index}: no space left on device")

        output.commit = commit
        return output


def test_a_commit_that_cannot_write_fails_the_run_at_the_next_unit_end_or_at_the_finish():
    units = [Unit(0, 3, ()), Unit(1, 3, ()), Unit(2, 3, ())]
    disk = _FullDisk(0.0)
    sinks = UnitSinks(MeanColourModel(), disk, units, JobObserver())
    with contextlib.suppress(OutputError):  # said here already if the commit was quick enough
        sinks.end(UnitEnd(units[0], 0))
    sinks._committer.submit(lambda: None).result()  # unit 0's commit has failed by now
    with pytest.raises(OutputError, match="unit 0"):
        sinks.end(UnitEnd(units[1], 0))
    with pytest.raises(OutputError, match="unit 0"):
        sinks.finish()
    assert ("discarded", 0) in disk.events and ("recorded", 0) not in disk.events


def _with_yolox(job: JobSpec, **changes: object) -> JobSpec:
    """`job` with the real YOLOX-Nano TorchScript model to load, on the CPU."""
    return dataclasses.replace(job, model_dir=str(shared_file("models/yolox_nano/yolox_nano_torchscript.pt")),
                               model_spec=str(REPO / "examples/specs/yolox_nano.yaml"), device="cpu", **changes)


def test_the_models_framework_loads_while_the_inputs_are_listed(job, monkeypatch):
    """The plan waits for the framework's load to begin: run in turn, as before, the two would never
    meet. The model itself still loads on the thread that runs the job, after the plan."""
    began = threading.Event()
    load_runtime, plan_run, load_model = models.load_runtime, local.plan_run, local.load_model
    threads = {}

    def runtime_watched(settings):
        began.set()
        threads["runtime"] = threading.current_thread()
        return load_runtime(settings)

    def plan_once_loading(*args):
        assert began.wait(30), "the framework had not begun to load while the inputs were listed"
        return plan_run(*args)

    def model_watched(settings):
        threads["model"] = threading.current_thread()
        return load_model(settings)

    monkeypatch.setattr(models, "load_runtime", runtime_watched)
    monkeypatch.setattr(local, "plan_run", plan_once_loading)
    monkeypatch.setattr(local, "load_model", model_watched)
    summary = run(_with_yolox(job))
    photos = list(shared_file("data/photos").iterdir())
    assert summary.complete and summary.records_read == summary.predicted == len(photos)
    assert threads["model"] is threading.current_thread() is not threads["runtime"]


def test_a_plan_that_fails_is_raised_before_a_model_that_fails_to_load(job, tmp_path):
    missing = dataclasses.replace(_with_yolox(job), model_dir=str(tmp_path / "no-model"))
    with pytest.raises(NoInputError):
        run(dataclasses.replace(missing, input_file_patterns=(str(tmp_path / "nothing-*.tfrecord"),)))
    with pytest.raises(ModelLoadError, match="does not exist"):
        run(missing)
    assert not list(tmp_path.glob("out/results-*"))
