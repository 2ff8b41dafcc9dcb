"""Fault injection through the real `batch-predict` command: kills, stops, bad setups.

Every run here is a subprocess of the CLI on real TFRecords of real photos with the
YOLOX-Nano TF OD API SavedModel, so what is checked is what a user or Kubernetes sees.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from batch_predict.example import build_example
from batch_predict.tfrecord import write_record

from conftest import REPO, shared_file

UNITS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "batch_predict", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), env=_env(), capture_output=True, text=True, timeout=300)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(_command(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def read_outputs(out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(result keys, (error key, error type)) of every shard, duplicates kept."""
    results = [json.loads(line)["key"] for p in sorted(out.glob("results-*-of-*.jsonl")) for line in p.open()]
    errors = [
        (e["key"], e["error_type"])
        for p in sorted(out.glob("errors-*-of-*.jsonl"))
        for e in map(json.loads, p.open())
    ]
    return results, errors


def committed(out: Path) -> int:
    """How many units are committed under `out` (0 before the job has started)."""
    return len(list((out / "results-job" / "committed").glob("*.json")))


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(shared_file("models/yolox_nano/tfod_encoded_savedmodel"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Five TFRecord files of the 16 real JPEG photos, with a non-image, a truncated JPEG and a bad CRC."""
    images = [p.read_bytes() for p in sorted(shared_file("data/photos").glob("*.jpg"))]
    images += [p.read_bytes() for p in sorted(shared_file("data/coco8/images").glob("*/*.jpg"))]
    folder = tmp_path_factory.mktemp("dataset")
    streams = [io.BytesIO() for _ in range(5)]
    for i, data in enumerate(images):
        write_record(streams[i % 5], data)
    write_record(streams[1], b"this is not an image")
    write_record(streams[3], images[0][: len(images[0]) // 2])
    for i, stream in enumerate(streams):
        data = bytearray(stream.getvalue())
        if i == 4:
            data[30] ^= 0xFF  # inside the first record's data: a bad data CRC
        (folder / f"part-{i}.tfrecord").write_bytes(bytes(data))
    return folder


def job_args(dataset: Path, model_dir: str, out: Path, *extra: str) -> list[str]:
    return [
        "--input_file_patterns", str(dataset / "part-*.tfrecord"),
        "--input_file_format", "tfrecord",
        "--model_dir", model_dir,
        "--batch_size", "2",
        "--num_output_shards", str(UNITS),
        "--output_result_prefix", str(out / "results"),
        "--output_error_prefix", str(out / "errors"),
        "--max_error_rate", "0.5",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(dataset, model_dir, tmp_path_factory) -> dict:
    """An uninterrupted run: what every interrupted-and-rerun job must end with."""
    out = tmp_path_factory.mktemp("reference")
    done = run_cli(*job_args(dataset, model_dir, out))
    assert done.returncode == 0, done.stderr
    results, errors = read_outputs(out)
    summary = json.loads((out / "results-summary.json").read_text())
    assert len(results) == len(set(results)) == 16 - 1  # one photo has the bad CRC
    assert sorted(t for _, t in errors) == ["ImageDecodeError", "InvalidArgumentError", "TFRecordDataCorruption"]
    assert summary["records_read"] == summary["predicted"] + summary["failed"] == 16 + 2
    return {"out": out, "results": results, "errors": errors, "summary": summary}


def assert_same_as_reference(out: Path, reference: dict) -> None:
    results, errors = read_outputs(out)
    assert not [k for k, n in Counter(results).items() if n > 1], "a record was written twice"
    assert sorted(results) == sorted(reference["results"])
    assert sorted(errors) == sorted(reference["errors"])
    summary = json.loads((out / "results-summary.json").read_text())
    for name in ("records_read", "predicted", "failed", "error_types", "units", "units_committed"):
        assert summary[name] == reference["summary"][name], name
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(p.name for p in reference["out"].glob("*.jsonl"))
    assert list(out.glob("*.partial")) == []


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_output(seed, dataset, model_dir, reference, tmp_path):
    rng = random.Random(seed)
    args = job_args(dataset, model_dir, tmp_path)
    kills = 0
    while kills < 2 and committed(tmp_path) < UNITS - 1:
        # Kill while a unit is being written, after a random number of units committed.
        target = rng.randint(committed(tmp_path), UNITS - 2)
        job = start_cli(*args)
        wait_for(lambda: committed(tmp_path) >= target and list(tmp_path.glob("*.partial")) or job.poll() is not None,
                 "a unit in progress")
        time.sleep(rng.uniform(0, 0.15))
        job.send_signal(signal.SIGKILL)
        job.communicate()
        kills += job.returncode == -signal.SIGKILL
    assert kills >= 1
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr
    assert_same_as_reference(tmp_path, reference)


@pytest.mark.parametrize("grace", ["0", "60"])
def test_sigterm_abandons_or_finishes_the_unit_cleanly_and_rerun_completes(grace, dataset, model_dir, reference, tmp_path):
    args = job_args(dataset, model_dir, tmp_path, "--termination_grace_seconds", grace)
    job = start_cli(*args)
    wait_for(lambda: (tmp_path / "results-job" / "committed").exists() and committed(tmp_path) >= 2 or job.poll() is not None, "commits")
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    if job.returncode == 0:
        pytest.skip("the job finished before SIGTERM arrived")  # 8 units cannot all commit in one poll interval
    assert job.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received" in stderr and "rerun the same command to resume" in stderr
    # Clean: nothing half-written under a shard name, and every shard there is committed.
    assert list(tmp_path.glob("*.partial")) == []
    shards = {p.name.split("-", 1)[1] for p in tmp_path.glob("results-*-of-*.jsonl")}
    records = {p.name.replace(".json", ".jsonl") for p in (tmp_path / "results-job" / "committed").glob("*.json")}
    assert shards == records and 2 <= len(records) < UNITS
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr
    assert f"{len(records)} of this run's {UNITS} units already committed" in final.stderr
    assert_same_as_reference(tmp_path, reference)


def test_rerun_of_a_finished_job_redoes_nothing_and_other_arguments_are_refused(dataset, model_dir, reference):
    again = run_cli(*job_args(dataset, model_dir, reference["out"]))
    assert again.returncode == 0, again.stderr
    assert f"{UNITS} of this run's {UNITS} units already committed" in again.stderr
    assert "model {" not in again.stderr  # not even loaded
    other = run_cli(*job_args(dataset, model_dir, reference["out"], "--score_threshold", "0.6"))
    assert other.returncode == 2
    assert "records a different job" in other.stderr and "--score_threshold was 0.3, now 0.6" in other.stderr
    assert_same_as_reference(reference["out"], reference)


def test_unwritable_output_fails_before_the_model_is_loaded_or_input_read(dataset, model_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    done = run_cli(*job_args(dataset, model_dir, tmp_path / "a-file"))
    assert done.returncode == 2
    assert "batch-predict: error: cannot write output files under" in done.stderr
    assert "model {" not in done.stderr


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_missing_or_corrupt_model_dir_is_one_clear_message_and_exit_2(damage, dataset, model_dir, tmp_path):
    model = tmp_path / "model"
    if damage != "missing":
        model.mkdir()
    if damage == "truncated":
        real = Path(model_dir) / "saved_model.pb"
        (model / "saved_model.pb").write_bytes(real.read_bytes()[: real.stat().st_size // 3])
    done = run_cli(*job_args(dataset, str(model), tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    expected = {"missing": "does not exist", "empty": "holds no model", "truncated": "cannot load SavedModel"}[damage]
    (message,) = [line for line in done.stderr.splitlines() if line.startswith("batch-predict: error:")]
    assert "--model_dir" in message and expected in message
    assert "Traceback" not in done.stderr
