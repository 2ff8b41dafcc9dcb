"""The real `batch-predict` command, as a subprocess, on real photos and the real YOLOX-Nano exports."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_predict.inputs.tf_example import build_example
from batch_predict.inputs.tfrecord import write_record

from backend_helpers import REPO
from conftest import shared_file

PHOTOS = ["bus.jpg", "darknet_dog.jpg", "zidane.jpg", "skimage_coffee.png", "darknet_horses.jpg"]


def batch_predict(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "batch_predict", *args], capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def job_args(inputs: str, fmt: str, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--input_file_patterns", inputs, "--input_file_format", fmt, "--model_dir", str(model),
        "--output_result_prefix", str(out / "results"), "--output_error_prefix", str(out / "errors"),
        "--label_map", str(shared_file("models/yolox_nano/labels.txt")), "--batch_size", "4", *extra,
    ]


def read_jsonl(pattern_dir: Path, prefix: str) -> list[dict]:
    return [json.loads(line) for path in sorted(pattern_dir.glob(f"{prefix}-*-of-*.jsonl")) for line in path.open()]


def labels_of(result: dict) -> list[str]:
    return [d["label"] for d in result["detections"]]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_known_detections(by_name: dict[str, dict], scale: float = 1.0) -> None:
    """What shared/README.md says YOLOX-Nano finds in bus.jpg and darknet_dog.jpg."""
    bus = by_name["bus.jpg"]
    assert labels_of(bus).count("person") >= 3
    (bus_box,) = [d["box"] for d in bus["detections"] if d["label"] == "bus"]
    assert iou(bus_box, [c * scale for c in (12, 231, 801, 734)]) > 0.9
    assert {"dog", "bicycle", "car"} <= set(labels_of(by_name["darknet_dog.jpg"]))


@pytest.fixture(scope="module")
def photo_bytes() -> dict[str, bytes]:
    root = shared_file("data/photos")
    return {name: (root / name).read_bytes() for name in PHOTOS}


@pytest.fixture(scope="module")
def tfrecord_job(tmp_path_factory, photo_bytes):
    """Two plain TFRecord files: photos, a non-image record, a truncated JPEG, and one record with a bad CRC."""
    root = tmp_path_factory.mktemp("tfrecord_job")
    names = list(photo_bytes)
    with open(root / "imgs-0.tfrecord", "wb") as f:
        for name in names[:3]:
            write_record(f, photo_bytes[name])
        write_record(f, b"this record is text, not an image")
        write_record(f, photo_bytes["bus.jpg"][:40_000])
    with open(root / "imgs-1.tfrecord", "wb") as f:
        for name in names[3:]:
            write_record(f, photo_bytes[name])
        write_record(f, photo_bytes["zidane.jpg"])
    data = bytearray((root / "imgs-1.tfrecord").read_bytes())
    data[-100] ^= 0xFF  # inside the last record's data: its data CRC no longer matches
    (root / "imgs-1.tfrecord").write_bytes(bytes(data))
    model = shared_file("models/yolox_nano/tfod_encoded_savedmodel")
    run = batch_predict(*job_args(f"{root}/imgs-*.tfrecord", "tfrecord", model, root / "out", "--max_error_rate", "1",
                                  "--num_output_shards", "2"))
    return root, run


def test_tfrecord_job_finds_what_the_model_card_says(tfrecord_job):
    root, _ = tfrecord_job
    results = read_jsonl(root / "out", "results")
    by_index = {(Path(r["source"]).name, r["record_index"]): r for r in results}
    by_name = {PHOTOS[i]: by_index[("imgs-0.tfrecord", i)] for i in range(3)}
    by_name |= {PHOTOS[3 + i]: by_index[("imgs-1.tfrecord", i)] for i in range(2)}
    assert_known_detections(by_name)
    assert by_name["bus.jpg"]["width"] == 810 and by_name["bus.jpg"]["height"] == 1080


def test_tfrecord_job_writes_one_error_line_per_bad_record_and_predicts_the_rest(tfrecord_job):
    root, run = tfrecord_job
    errors = {(Path(e["source"]).name, e["record_index"]): e for e in read_jsonl(root / "out", "errors")}
    assert set(errors) == {("imgs-0.tfrecord", 3), ("imgs-0.tfrecord", 4), ("imgs-1.tfrecord", 2)}
    assert errors[("imgs-0.tfrecord", 3)]["error_type"] == "ImageDecodeError"
    assert errors[("imgs-0.tfrecord", 4)]["error_type"] == "InvalidArgumentError"  # truncated: found by the model
    assert errors[("imgs-1.tfrecord", 2)]["error_type"] == "TFRecordDataCorruption"
    assert all(e["key"] == f"{e['source']}:{e['record_index']}" and e["message"] for e in errors.values())
    summary = json.loads((root / "out" / "results-summary.json").read_text())
    assert summary["records_read"] == 8 and summary["predicted"] == 5 and summary["failed"] == 3
    assert summary["records_read"] == summary["predicted"] + summary["failed"]
    assert summary["detections"] == sum(len(r["detections"]) for r in read_jsonl(root / "out", "results"))
    assert len(summary["result_files"]) == 2 and "records read 8, predicted 5, failed 3" in run.stdout


def test_gzip_tfrecords_of_examples_are_keyed_by_source_id(tmp_path, photo_bytes):
    with gzip.open(tmp_path / "examples.tfrecord.gz", "wb") as f:
        for name in ("bus.jpg", "darknet_dog.jpg"):
            write_record(f, build_example({"image/encoded": photo_bytes[name], "image/source_id": name.encode()}))
    model = shared_file("models/yolox_nano/tfod_encoded_savedmodel")
    batch_predict(*job_args(str(tmp_path / "examples.tfrecord.gz"), "tfrecord_gzip", model, tmp_path / "out"))
    assert_known_detections({r["key"]: r for r in read_jsonl(tmp_path / "out", "results")})


def test_json_b64_instances_in_every_form_with_a_line_that_is_not_json(tmp_path, photo_bytes):
    b64 = {name: base64.b64encode(data).decode() for name, data in photo_bytes.items()}
    lines = [
        json.dumps({"key": "bus.jpg", "b64": b64["bus.jpg"]}),
        json.dumps({"key": "darknet_dog.jpg", "inputs": {"b64": b64["darknet_dog.jpg"]}}),
        json.dumps({"key": "zidane.jpg", "image_bytes": {"b64": b64["zidane.jpg"]}}),
        '{"key": "broken", "b64": ',
    ]
    (tmp_path / "instances.json").write_text("\n".join(lines) + "\n")
    model = shared_file("models/yolox_nano/tfod_encoded_savedmodel")
    batch_predict(*job_args(str(tmp_path / "instances.json"), "json", model, tmp_path / "out", "--max_error_rate", "0.5"))
    results = {r["key"]: r for r in read_jsonl(tmp_path / "out", "results")}
    assert_known_detections(results)
    assert labels_of(results["zidane.jpg"]).count("person") == 2
    (error,) = read_jsonl(tmp_path / "out", "errors")
    assert error["record_index"] == 3 and error["error_type"] == "JSONDecodeError"


def test_json_arrays_feed_an_image_tensor_model_in_same_size_batches(tmp_path, photo_bytes):
    def half(name: str) -> list:
        image = Image.open(io.BytesIO(photo_bytes[name])).convert("RGB")
        return np.asarray(image.resize((image.width // 2, image.height // 2))).tolist()

    lines = [
        json.dumps({"key": "bus.jpg", "inputs": half("bus.jpg")}),
        json.dumps({"key": "darknet_dog.jpg", "inputs": half("darknet_dog.jpg")}),
        json.dumps({"key": "bus-again", "inputs": half("bus.jpg")}),
        json.dumps({"key": "wrong-shape", "inputs": [[[1, 2, 3, 4, 5]] * 4] * 4}),
    ]
    (tmp_path / "arrays.json").write_text("\n".join(lines) + "\n")
    model = shared_file("models/yolox_nano/tfod_image_savedmodel")
    batch_predict(*job_args(str(tmp_path / "arrays.json"), "json", model, tmp_path / "out", "--max_error_rate", "0.5"))
    results = {r["key"]: r for r in read_jsonl(tmp_path / "out", "results")}
    assert_known_detections(results, scale=0.5)
    assert results["bus-again"]["detections"] == results["bus.jpg"]["detections"]
    (error,) = read_jsonl(tmp_path / "out", "errors")
    assert error["key"] == "wrong-shape" and "HxWx3" in error["message"]


def test_too_many_failures_exit_non_zero_after_writing_everything(tmp_path, photo_bytes):
    with open(tmp_path / "mostly-bad.tfrecord", "wb") as f:
        write_record(f, photo_bytes["bus.jpg"])
        write_record(f, b"junk")
    model = shared_file("models/yolox_nano/tfod_encoded_savedmodel")
    run = batch_predict(*job_args(str(tmp_path / "mostly-bad.tfrecord"), "tfrecord", model, tmp_path / "out"), check=False)
    assert run.returncode == 1
    assert "1 of 2 records failed" in run.stderr and "--max_error_rate" in run.stderr
    assert len(read_jsonl(tmp_path / "out", "results")) == 1 and len(read_jsonl(tmp_path / "out", "errors")) == 1


def test_a_job_run_to_its_end_exits_without_the_interpreters_teardown_having_flushed_everything(tmp_path, photo_bytes):
    """The console entry point skips the seconds PyTorch's and TensorFlow's teardown take, once a
    job ran in its process: an `atexit` handler never runs, yet the outputs, the summary, the printed
    counts and the exit status are all there. So does a job whose plan fails while its model's
    framework loads on a thread; bad flags, found before any job, exit as usual."""
    with open(tmp_path / "one.tfrecord", "wb") as f:
        write_record(f, photo_bytes["bus.jpg"])
        write_record(f, b"junk")
    marked = ("import atexit, sys; atexit.register(print, 'interpreter teardown', file=sys.stderr); "
              "from batch_predict.cli import main; main()")

    def entry_point(out: str, *extra: str) -> subprocess.CompletedProcess:
        args = job_args(str(tmp_path / "one.tfrecord"), "tfrecord", shared_file("models/yolox_nano/yolox_nano_torchscript.pt"),
                        tmp_path / out, "--model_spec", str(REPO / "examples/specs/yolox_nano.yaml"), *extra)
        return subprocess.run([sys.executable, "-c", marked, *args], capture_output=True, text=True, timeout=600)

    done = entry_point("done", "--max_error_rate", "1")
    assert done.returncode == 0, done.stderr
    assert "records read 2, predicted 1, failed 1" in done.stdout and "interpreter teardown" not in done.stderr
    assert json.loads((tmp_path / "done" / "results-summary.json").read_text())["predicted"] == 1
    failed = entry_point("failed")
    assert failed.returncode == 1 and "1 of 2 records failed" in failed.stderr and "interpreter teardown" not in failed.stderr
    nothing = entry_point("nothing", "--input_file_patterns", str(tmp_path / "nothing-*.tfrecord"))
    assert nothing.returncode == 2 and "no input file matches" in nothing.stderr
    assert "Traceback" not in nothing.stderr and "interpreter teardown" not in nothing.stderr
    bad = entry_point("bad", "--batch_size", "0")
    assert bad.returncode == 2 and "--batch_size" in bad.stderr and "interpreter teardown" in bad.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"inputs": "{root}/nothing-*.tfrecord"}, "no input file matches"),
        ({"model": "{root}/no-model"}, "does not exist"),
        ({"model": "{root}"}, "holds no SavedModel"),
        ({"out": "{root}/blocker/out"}, "cannot write output files"),
        ({"fmt": "csv"}, "'csv' is not one of"),
        ({"extra": ["--batch_size", "0"]}, "--batch_size"),
        ({"extra": ["--signature_name", "nope"]}, "'nope' is not in the SavedModel"),
    ],
    ids=["no-input", "missing-model", "not-a-model", "unwritable-output", "unknown-format", "bad-batch-size",
         "unknown-signature"],
)
def test_bad_setup_fails_fast_with_one_clear_message(tmp_path, photo_bytes, change, message):
    with open(tmp_path / "one.tfrecord", "wb") as f:
        write_record(f, photo_bytes["bus.jpg"])
    (tmp_path / "blocker").write_text("a file where a directory should be")
    args = {"inputs": str(tmp_path / "one.tfrecord"), "fmt": "tfrecord",
            "model": str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")), "out": str(tmp_path / "out")}
    args |= {k: v.format(root=tmp_path) for k, v in change.items() if k != "extra"}
    run = batch_predict(*job_args(args["inputs"], args["fmt"], Path(args["model"]), Path(args["out"]),
                                  *change.get("extra", [])), check=False)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not list((tmp_path / "out").glob("results-*")) or change.get("extra") == ["--signature_name", "nope"]


def test_help_documents_every_flag():
    help_text = batch_predict("--help").stdout
    for flag in ("input_file_patterns", "input_file_format", "model_dir", "batch_size", "output_result_prefix",
                 "output_error_prefix", "signature_name", "label_map", "score_threshold", "num_output_shards",
                 "device", "max_error_rate", "output_raw", "max_image_pixels", "output_format", "visualize",
                 "log_format", "progress_interval_seconds", "metrics_port"):
        assert f"--{flag}" in help_text


def test_a_pod_gets_json_log_lines_with_progress_a_table_and_pictures(tmp_path, photo_bytes):
    with (tmp_path / "imgs.tfrecord").open("wb") as f:
        for name in PHOTOS[:3]:
            write_record(f, photo_bytes[name])
    model = shared_file("models/yolox_nano/tfod_encoded_savedmodel")
    run = batch_predict(*job_args(str(tmp_path / "imgs.tfrecord"), "tfrecord", model, tmp_path / "out",
                                  "--log_format", "json", "--visualize", "2", "--output_format", "parquet"))
    # stderr is not a terminal here: no bar; TensorFlow's own C++ lines are not ours to format.
    ours = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert ours and all(line["level"] in ("INFO", "WARNING") and line["message"] for line in ours)
    (last,) = [line for line in ours if line.get("event") == "progress"]
    assert (last["records_read"], last["predicted"], last["percent"], last["units"]) == (3, 3, 100.0, 1)
    assert "%|" not in run.stderr
    table = run.stdout.splitlines()
    assert table[0].split() == ["records", "read", "3"] and table[-1].startswith("records read 3, predicted 3")
    assert len(list((tmp_path / "out" / "results-visualized").glob("*.jpg"))) == 2
    assert (tmp_path / "out" / "results-00000-of-00001.parquet").exists()


def test_a_taken_metrics_port_fails_before_any_work(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        run = batch_predict(*job_args(str(tmp_path / "none-*.tfrecord"), "tfrecord", tmp_path, tmp_path / "out",
                                      "--metrics_port", str(taken.getsockname()[1])), check=False)
    assert run.returncode == 2 and "--metrics_port" in run.stderr and "Traceback" not in run.stderr
