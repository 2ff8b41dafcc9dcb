"""Helpers for the model backend tests: real TFRecords of the shared photos, the real CLI in a
subprocess, and matching of two runs' detections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from batch_predict.inputs.tf_example import build_example
from batch_predict.inputs.tfrecord import write_record

REPO = Path(__file__).resolve().parents[1]


def write_tfrecord(path: Path, images: dict[str, bytes]) -> Path:
    """A TFRecord of tf.train.Examples: image/encoded, keyed by image/source_id."""
    with open(path, "wb") as f:
        for key, data in images.items():
            write_record(f, build_example({"image/encoded": data, "image/source_id": key.encode()}))
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m batch_predict ARGS` in a subprocess, on this checkout's sources."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "batch_predict", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def predict(inputs: list[Path], model: Path, out: Path, *extra: str) -> dict[str, dict]:
    """Run the CLI on TFRecords; the result lines by key. Fails the test on a non-zero exit."""
    result = run_cli(
        "--input_file_patterns", ",".join(str(p) for p in inputs), "--input_file_format", "tfrecord",
        "--model_dir", str(model), "--output_result_prefix", str(out / "results"),
        "--output_error_prefix", str(out / "errors"), "--device", "cpu", *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for path in sorted(out.glob("results-*.jsonl")) for line in path.read_text().splitlines()]
    return {line["key"]: line for line in lines}


def summary(out: Path) -> dict:
    return json.loads((out / "results-summary.json").read_text())


def largest_differences(expected: list[dict], found: list[dict], min_score: float) -> tuple[float, float]:
    """(largest score difference, largest box coordinate difference in pixels) between each
    detection of `expected` scoring at least `min_score` and its counterpart in `found`: the
    detection of the same class whose box is closest. Fails when one has no counterpart."""
    worst_score = worst_box = 0.0
    for detection in expected:
        if detection["score"] < min_score:
            continue
        same_class = [d for d in found if d["class_id"] == detection["class_id"]]
        assert same_class, f"no class {detection['class_id']} detection matches {detection}"
        distances = [np.abs(np.subtract(d["box"], detection["box"])).max() for d in same_class]
        match = same_class[int(np.argmin(distances))]
        worst_score = max(worst_score, abs(match["score"] - detection["score"]))
        worst_box = max(worst_box, float(min(distances)))
    return worst_score, worst_box
