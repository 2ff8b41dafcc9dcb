"""The Ray runner on a real local Ray instance (CPU only): the local runner's outputs, and its job.

A real TorchScript YOLOX-Nano on real photos, in Ray Data actors; the local runner's run of
the same job is the reference. The cluster is small (2 CPUs) and the job tiny (4 photos and
one bad record in 3 units), so that starting Ray and its actors dominates the time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from batch_predict.outputs.formats import open_sink
from batch_predict.outputs.jobstate import JobState
from batch_predict.models import ModelLoadError
from batch_predict.pipeline import Stopped
from batch_predict.runners import local
from batch_predict.runners import ray as ray_runner
from batch_predict.runners.stopping import Stopping
from batch_predict.inputs.sources import expand_patterns
from batch_predict.spec import JobSpec
from batch_predict.inputs.units import plan_units

from backend_helpers import REPO, largest_differences, run_cli, write_tfrecord
from conftest import shared_file
from toymodels import MeanColourModel

UNITS = 3
COUNTS = ("records_read", "predicted", "failed", "detections", "error_types", "units", "units_committed")


@pytest.fixture(scope="module")
def local_ray():
    on_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; later tests get it back
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, on_sigterm)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two TFRecord files: four photos, and one record that is not an image."""
    photos = sorted(shared_file("data/photos").glob("*.jpg"))[:4]
    folder = tmp_path_factory.mktemp("inputs")
    write_tfrecord(folder / "part-0.tfrecord", {f"photo/{p.name}": p.read_bytes() for p in photos[:2]})
    write_tfrecord(folder / "part-1.tfrecord",
                   {f"photo/{p.name}": p.read_bytes() for p in photos[2:]} | {"not-an-image": b"plain text"})
    return folder


def job(inputs: Path, out: Path, model_dir: str | None = None) -> JobSpec:
    return JobSpec(
        input_file_patterns=(str(inputs / "part-*.tfrecord"),),
        input_file_format="tfrecord",
        model_dir=model_dir or str(shared_file("models/yolox_nano/yolox_nano_torchscript.pt")),
        model_spec=str(REPO / "examples" / "specs" / "yolox_nano.yaml"),
        output_result_prefix=str(out / "results"),
        output_error_prefix=str(out / "errors"),
        batch_size=2,
        num_output_shards=UNITS,
        device="cpu",
        num_decode_workers=1,
    )


def outputs(out: Path) -> dict:
    """Result lines by key, (key, error type) pairs, shard file names and the summary's counts."""
    results = [json.loads(line) for p in sorted(out.glob("results-*-of-*.jsonl")) for line in p.open()]
    errors = [json.loads(line) for p in sorted(out.glob("errors-*-of-*.jsonl")) for line in p.open()]
    summary = json.loads((out / "results-summary.json").read_text())
    assert len({r["key"] for r in results}) == len(results), "a record was written twice"
    return {
        "results": {r["key"]: r for r in results},
        "errors": sorted((e["key"], e["error_type"]) for e in errors),
        "shards": sorted(p.name for p in out.glob("*.jsonl")),
        "counts": {name: summary[name] for name in COUNTS},
    }


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("local")
    local.run(job(inputs, out))
    return outputs(out)


def test_ray_runner_writes_what_the_local_runner_writes(local_ray, inputs, reference, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="batch_predict")
    summary = ray_runner.run(job(inputs, tmp_path), num_actors=2)
    assert summary.complete and summary.records_read == summary.predicted + summary.failed == 5
    found = outputs(tmp_path)
    assert found["shards"] == reference["shards"] and len(found["shards"]) == 2 * UNITS
    assert found["results"].keys() == reference["results"].keys() and len(found["results"]) == 4
    assert found["errors"] == reference["errors"] == [("not-an-image", "ImageDecodeError")]
    assert found["counts"] == reference["counts"]
    for key, expected in reference["results"].items():
        score, box = largest_differences(expected["detections"], found["results"][key]["detections"], min_score=0)
        assert score < 1e-3 and box < 0.1, key
    assert "3 units on 2 Ray actors (CPU only each)" in caplog.text
    # The local runner takes the job over from the Ray runner as its own: nothing left to do.
    model = MeanColourModel()
    again = local.run(job(inputs, tmp_path), model=model)
    assert again.complete and model.batch_sizes == [] and outputs(tmp_path) == found


def test_ray_runner_resumes_a_job_the_local_runner_began(local_ray, inputs, reference, tmp_path, caplog):
    local.run(job(inputs, tmp_path), worker_index=0, worker_count=UNITS)  # commits unit 0 only
    caplog.set_level(logging.INFO, logger="batch_predict")
    summary = ray_runner.run(job(inputs, tmp_path))
    assert "1 of this run's 3 units already committed" in caplog.text
    assert "2 units on 2 Ray actors" in caplog.text  # no GPUs: one actor per CPU
    assert "unit 00000-of-00003 committed" not in caplog.text
    assert summary.complete
    found = outputs(tmp_path)
    assert (found["shards"], found["errors"], found["counts"]) == (
        reference["shards"], reference["errors"], reference["counts"]
    )
    assert found["results"].keys() == reference["results"].keys()


def test_a_model_that_cannot_load_fails_as_in_the_local_runner_before_anything_is_written(local_ray, inputs, tmp_path):
    with pytest.raises(ModelLoadError, match="--model_dir"):
        ray_runner.run(job(inputs, tmp_path / "out", model_dir=str(tmp_path / "no-such-model.pt")))
    assert [path for path in (tmp_path / "out").rglob("*") if path.is_file()] == []


def test_the_driver_stops_while_units_still_run_once_told_to_abandon_them(local_ray, tmp_path):
    # Defined in here so that Ray pickles it by value: its workers cannot import this tests folder.
    def _unit_that_runs_until_released(row: dict, folder: Path) -> dict:
        deadline = time.monotonic() + 60
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (folder / f"done-{row['id']}").touch()
        return row

    stopping = Stopping()
    threading.Timer(1.0, stopping.request, args=(0,)).start()  # SIGTERM with no grace, as the CLI makes it
    units = ray.data.range(2, override_num_blocks=2).map(_unit_that_runs_until_released, fn_kwargs={"folder": tmp_path})
    with pytest.raises(Stopped, match="units in progress were abandoned; rerun the same command"):
        list(ray_runner._rows(units, stopping))
    assert list(tmp_path.iterdir()) == []  # the driver did not wait for them
    # Let the abandoned units end, so that no dataset is still running when this module shuts Ray down.
    (tmp_path / "release").touch()
    for thread in [t for t in threading.enumerate() if t.name == "ray-rows"]:
        thread.join(timeout=60)
        assert not thread.is_alive()


def test_an_actor_returns_a_unit_that_fails_whole_as_an_error_row_and_leaves_it_uncommitted(inputs, tmp_path):
    copied = tmp_path / "in"
    copied.mkdir()
    for path in inputs.glob("part-*.tfrecord"):
        shutil.copy(path, copied)
    spec = job(copied, tmp_path / "out")
    files = expand_patterns(spec.input_file_patterns)
    units = plan_units(files, spec.input_file_format, UNITS)
    assert [piece.file.url for piece in units[2].slices] == [str(copied / "part-1.tfrecord")]
    state = JobState.open(spec, files, units, open_sink(spec))
    state.begin()
    actor = ray_runner.UnitRunner(spec, state, {unit.index: unit for unit in units})
    (copied / "part-1.tfrecord").unlink()
    failed, done = actor({"unit": np.array([2])}), actor({"unit": np.array([0])})
    assert failed["error"][0].startswith("FileNotFoundError") and failed["counts"][0] == ""
    assert done["error"][0] == "" and json.loads(done["counts"][0]) == dataclasses.asdict(state.committed()[0])
    assert list(state.committed()) == [0] and state.committed()[0].predicted == 2


def test_the_cli_runs_the_ray_runner_which_finds_a_finished_job_with_nothing_to_do(inputs, tmp_path):
    spec = job(inputs, tmp_path)
    local.run(spec)
    args = [
        "--input_file_patterns", spec.input_file_patterns[0], "--input_file_format", "tfrecord",
        "--model_dir", spec.model_dir, "--model_spec", spec.model_spec, "--batch_size", "2",
        "--num_output_shards", str(UNITS), "--device", "cpu", "--num_decode_workers", "1", "--max_error_rate", "0.5",
        "--output_result_prefix", spec.output_result_prefix, "--output_error_prefix", spec.output_error_prefix,
    ]
    done = run_cli("--runner", "ray", "--ray_num_actors", "2", *args)
    assert done.returncode == 0, done.stderr
    assert "3 of this run's 3 units already committed" in done.stderr
    misplaced = run_cli("--ray_num_actors", "2", *args)
    assert misplaced.returncode == 2
    assert "--ray_address and --ray_num_actors are settings of --runner ray" in misplaced.stderr
