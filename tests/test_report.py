"""The report page: tallies from a job's lines, sample images read back from their sources, a
self-contained page, and that page rendered by a real headless Chromium."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_predict.tools.report import collect, load_samples, render, sniff_format, throughput
from batch_predict.inputs.sources import expand_patterns
from batch_predict.inputs.tfrecord import write_record

from input_writers import write_file_list, write_folder, write_parquet, write_webdataset
from conftest import shared_file
from images import encode, gradient
from test_cli import batch_predict

PIXEL = encode(gradient(64, 48))


def detection(score: float, label: str, box=(4, 4, 40, 30)) -> dict:
    return {"box": list(box), "score": score, "class_id": {"person": 1, "dog": 18}.get(label, 3), "label": label}


def write_job(root: Path, results: list[dict], errors: list[dict], summary: dict | None = None) -> str:
    """Output files under the job's naming, as a job that ran with two shards leaves them."""
    (root / "out").mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        lines = [json.dumps(r) for r in results[shard::2]]
        (root / "out" / f"results-0000{shard}-of-00002.jsonl").write_text("".join(l + "\n" for l in lines))
        (root / "out" / f"errors-0000{shard}-of-00002.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in errors[shard::2]))
    if summary is not None:
        files = {k: [str(root / "out" / f"{k[:-6]}s-0000{i}-of-00002.jsonl") for i in range(2)]
                 for k in ("result_files", "error_files")}
        (root / "out" / "results-summary.json").write_text(json.dumps({**summary, **files}))
    return str(root / "out" / "results")


@pytest.fixture
def job(tmp_path) -> str:
    with open(tmp_path / "imgs.tfrecord", "wb") as f:
        for _ in range(6):
            write_record(f, PIXEL)
    source = str(tmp_path / "imgs.tfrecord")
    results = [{"key": f"{source}:{i}", "source": source, "record_index": i, "width": 64, "height": 48,
                "detections": found}
               for i, found in enumerate([[detection(0.91, "person"), detection(0.42, "dog")], [],
                                          [detection(0.30, "person")], [], [detection(0.99, "dog")], []])]
    errors = [{"key": f"k{i}", "source": source, "record_index": 10 + i, "error_type": t, "message": f"bad {i}",
               "stage": "decode"} for i, t in enumerate(["ImageDecodeError"] * 4 + ["InvalidArgumentError"])]
    return write_job(tmp_path, results, errors, {"files": 1, "records_read": 11, "predicted": 6, "failed": 5,
                                                 "wall_time_s": 2.0, "images_per_second": 3.0})


def test_collect_tallies_scores_classes_and_errors_with_a_few_examples_each(job):
    data = collect(job, num_samples=2)
    assert (data.predicted, data.with_detections, data.detections, data.failed) == (6, 3, 4, 5)
    assert data.classes == {"person": 2, "dog": 2}
    assert data.score_bins[18] == 1 and data.score_bins[8] == 1 and data.score_bins[6] == 1 and data.score_bins[19] == 1
    assert data.error_types == {"ImageDecodeError": 4, "InvalidArgumentError": 1}
    assert len(data.error_examples["ImageDecodeError"]) == 3


def test_the_sample_prefers_results_with_detections_and_is_reproducible(job):
    picked = collect(job, num_samples=3).samples
    assert all(s["detections"] for s in picked)
    assert picked == collect(job, num_samples=3).samples
    assert len(collect(job, num_samples=5).samples) == 5  # topped up from results without detections


def test_without_a_summary_the_shards_are_found_by_name_and_errors_need_their_prefix(tmp_path, job):
    os.remove(f"{job}-summary.json")
    assert collect(job).predicted == 6 and not collect(job).error_files_known
    assert collect(job, error_prefix=str(tmp_path / "out" / "errors")).failed == 5


def test_throughput_buckets_the_timeline_into_records_per_second():
    xs, ys = throughput([{"t": 1.0, "predicted": 30, "failed": 2}, {"t": 2.0, "predicted": 32},
                         {"t": 4.0, "predicted": 16}], buckets=4)
    assert xs == [1.0, 2.0, 3.0, 4.0] and ys == [0.0, 32.0, 32.0, 16.0]
    assert throughput([]) == ([], [])


def test_sample_images_are_read_back_from_tfrecord_json_and_gzip_sources(tmp_path):
    array = gradient(80, 60)
    with open(tmp_path / "a.tfrecord", "wb") as f:
        write_record(f, b"junk")
        write_record(f, encode(array, "PNG"))
    (tmp_path / "b.json").write_text(json.dumps({"key": "arr", "inputs": array.tolist()}) + "\n")
    with gzip.open(tmp_path / "c.tfrecord.gz", "wb") as f:
        write_record(f, PIXEL)
    found = [detection(0.8, "dog", (10, 10, 50, 40))]
    samples = load_samples([
        {"key": f"{tmp_path}/a.tfrecord:1", "source": str(tmp_path / "a.tfrecord"), "record_index": 1, "detections": found},
        {"key": "arr", "source": str(tmp_path / "b.json"), "record_index": 0, "detections": found},
        {"key": f"{tmp_path}/c.tfrecord.gz:0", "source": str(tmp_path / "c.tfrecord.gz"), "record_index": 0,
         "detections": []},
    ])
    assert [s.problem for s in samples] == ["", "", ""]
    pictures = [Image.open(io.BytesIO(s.jpeg)) for s in samples]
    assert [p.size for p in pictures] == [(80, 60), (80, 60), (64, 48)]
    assert [sniff_format(f) for f in expand_patterns([str(tmp_path / n) for n in ("a.tfrecord", "b.json", "c.tfrecord.gz")])
            ] == ["tfrecord", "json", "tfrecord_gzip"]


def test_sample_images_are_read_back_from_image_files_file_lists_webdataset_and_parquet(tmp_path):
    png = encode(gradient(80, 60), "PNG")
    write_folder({"a.png": png}, tmp_path)
    write_file_list(["a.png"], tmp_path / "list.txt")
    write_webdataset({"w.png": png}, tmp_path / "s.tar")
    write_parquet({"p": png}, tmp_path / "t.parquet")
    found = [detection(0.8, "dog", (10, 10, 50, 40))]
    results = [{"key": key, "source": str(tmp_path / source), "record_index": 0, "detections": found}
               for key, source in ((str(tmp_path / "a.png"), "a.png"), ("a.png", "list.txt"), ("w", "s.tar"), ("p", "t.parquet"))]
    samples = load_samples(results)
    assert [s.problem for s in samples] == ["", "", "", ""]
    assert [Image.open(io.BytesIO(s.jpeg)).size for s in samples] == [(80, 60)] * 4
    assert [sniff_format(f) for f in expand_patterns([str(tmp_path / n) for n in ("a.png", "list.txt", "s.tar", "t.parquet")])
            ] == ["image_files", "file_list", "webdataset", "parquet"]


def test_a_sample_whose_source_moved_or_changed_says_why_instead_of_failing(tmp_path):
    with open(tmp_path / "a.tfrecord", "wb") as f:
        write_record(f, PIXEL)
    missing, changed, beyond = load_samples([
        {"key": "x", "source": str(tmp_path / "gone.tfrecord"), "record_index": 0, "detections": []},
        {"key": "old-key", "source": str(tmp_path / "a.tfrecord"), "record_index": 0, "detections": []},
        {"key": "y", "source": str(tmp_path / "a.tfrecord"), "record_index": 5, "detections": []},
    ])
    assert "cannot read" in missing.problem and "not 'old-key'" in changed.problem
    assert beyond.problem == f"record 5 not found in {tmp_path / 'a.tfrecord'}"


def test_the_page_is_self_contained_and_escapes_what_the_data_says(job, tmp_path):
    data = collect(job)
    data.error_examples["ImageDecodeError"][0]["message"] = "<script>alert(1)</script>"
    page = render(data, load_samples(data.samples))
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert all(src.startswith("data:image/jpeg;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert set(re.findall(r"https?://[^\"' )]+", page)) == {"http://www.w3.org/2000/svg"}  # a namespace, not a fetch
    for section in ("Summary", "Throughput", "Scores", "Classes", "Errors", "Samples"):
        assert f"<h2>{section}</h2>" in page
    assert "InvalidArgumentError" in page and "2.0 s" in page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (Debian: apt-get install chromium; `make test` does it where apt works)")
    return found


def screenshot(page: Path, png: Path, profile: Path) -> Image.Image:
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2400", page.as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    return Image.open(png).convert("RGB")


def test_a_real_jobs_report_renders_in_headless_chromium(tmp_path):
    _chromium()
    photos = shared_file("data/photos")
    batch_predict("pack", str(photos / "bus.jpg"), str(photos / "darknet_dog.jpg"), str(photos / "zidane.jpg"),
                  "--output_prefix", str(tmp_path / "imgs"))
    with open(tmp_path / "bad.tfrecord", "wb") as f:
        write_record(f, b"this record is text, not an image")
    batch_predict(
        "--input_file_patterns", f"{tmp_path}/*.tfrecord", "--input_file_format", "tfrecord",
        "--model_dir", str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
        "--label_map", str(shared_file("models/yolox_nano/labels.txt")),
        "--output_result_prefix", str(tmp_path / "out" / "results"),
        "--output_error_prefix", str(tmp_path / "out" / "errors"), "--max_error_rate", "1",
    )
    timeline = [{"t": 0.5 * (i + 1), "predicted": 4} for i in range(20)]
    (tmp_path / "out" / "results-timeline.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timeline))
    written = batch_predict("report", str(tmp_path / "out" / "results"))
    page = tmp_path / "out" / "results-report.html"
    assert f"wrote {page}" in written.stdout
    html = page.read_text()
    assert html.count("<figure>") == 3 and "ImageDecodeError" in html and "bus.jpg" in html

    shot = np.asarray(screenshot(page, tmp_path / "report.png", tmp_path / "profile"))
    assert shot.shape[:2] == (2400, 1280)
    assert tuple(shot[10, 10]) == (0x1F, 0x2D, 0x3D)  # the header's CSS applied
    bar_blue = (shot == (0x3B, 0x6F, 0xB6)).all(axis=2)
    assert bar_blue[300:1400].sum() > 2000  # the SVG charts drew their bars and lines
    photo_colors = {tuple(c) for c in shot[1000:].reshape(-1, 3)[::7]}
    assert len(photo_colors) > 5000  # the embedded JPEGs decoded into photos, not placeholders
