"""Acceptance: YOLOX-Nano as TorchScript, ONNX and a raw SavedModel, each run through the CLI
with the spec in examples/specs, finds what the TF OD API export finds.

The export decodes JPEGs with TensorFlow's fast integer IDCT; Pillow (the pipeline's decoder),
torchvision and nvjpeg use the accurate one, which alone moves scores by a few hundredths and
boxes by a few pixels (docs/models.md). So each backend is compared on the pixels the export
sees (TensorFlow's decode, stored as lossless PNG) with the export on the original JPEGs;
and on the original JPEGs the three backends must agree with one another.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend_helpers import REPO, largest_differences, predict, summary, write_tfrecord
from conftest import shared_file

SPEC = REPO / "examples" / "specs" / "yolox_nano.yaml"
BACKENDS = {
    "torchscript": "yolox_nano_torchscript.pt",
    "onnx": "yolox_nano.onnx",
    "raw_savedmodel": "raw_savedmodel",
}
# Results are written from 0.25 and compared from 0.3, so that a detection near the
# threshold in one run still finds its counterpart in the other.
WRITE_FROM, COMPARE_FROM = "0.25", 0.3
MAX_SCORE_DIFFERENCE, MAX_BOX_DIFFERENCE = 0.02, 2.0

_TF_DECODE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from PIL import Image
for source in sys.argv[2:]:
    pixels = tf.io.decode_image(open(source, "rb").read(), channels=3, expand_animations=False).numpy()
    Image.fromarray(pixels).save(os.path.join(sys.argv[1], os.path.basename(source) + ".png"))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photos_dir) -> list[Path]:
    """Two TFRecords: the photos as they are (keys jpeg/NAME), and the pixels TensorFlow decodes
    from them as PNG (keys tfpixels/NAME)."""
    folder = tmp_path_factory.mktemp("yolox_inputs")
    photos = sorted(photos_dir.iterdir())
    pixels = folder / "tf_pixels"
    pixels.mkdir()
    subprocess.run([sys.executable, "-c", _TF_DECODE, str(pixels), *map(str, photos)], check=True, timeout=300)
    return [
        write_tfrecord(folder / "jpeg.tfrecord", {f"jpeg/{p.name}": p.read_bytes() for p in photos}),
        write_tfrecord(
            folder / "tf_pixels.tfrecord", {f"tfpixels/{p.name}": (pixels / f"{p.name}.png").read_bytes() for p in photos}
        ),
    ]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("tfod")
    return predict(
        inputs, shared_file("models/yolox_nano/tfod_encoded_savedmodel"), out,
        "--label_map", str(shared_file("models/yolox_nano/labels.txt")), "--score_threshold", WRITE_FROM,
    )


@pytest.fixture(scope="module")
def backend_results(inputs, tmp_path_factory):
    """Each backend's results by key, run once per module through the CLI."""
    runs: dict[str, tuple[dict[str, dict], dict]] = {}

    def results(backend: str) -> tuple[dict[str, dict], dict]:
        if backend not in runs:
            out = tmp_path_factory.mktemp(backend)
            lines = predict(
                inputs, shared_file(f"models/yolox_nano/{BACKENDS[backend]}"), out,
                "--model_spec", str(SPEC), "--label_map", str(shared_file("models/yolox_nano/labels.txt")),
                "--score_threshold", WRITE_FROM,
            )
            runs[backend] = lines, summary(out)
        return runs[backend]

    return results


def _compare(expected: dict[str, dict], found: dict[str, dict], keys: dict[str, str]) -> tuple[float, float]:
    worst = (0.0, 0.0)
    for expected_key, found_key in keys.items():
        for a, b in ((expected[expected_key], found[found_key]), (found[found_key], expected[expected_key])):
            assert (a["width"], a["height"]) == (b["width"], b["height"])
            score, box = largest_differences(a["detections"], b["detections"], COMPARE_FROM)
            worst = (max(worst[0], score), max(worst[1], box))
    return worst


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_matches_the_tfod_export_given_the_same_pixels(backend, backend_results, reference, photos_dir):
    found, counts = backend_results(backend)
    names = sorted(p.name for p in photos_dir.iterdir())
    assert counts["records_read"] == counts["predicted"] == 2 * len(names) and counts["failed"] == 0
    score, box = _compare(reference, found, {f"jpeg/{n}": f"tfpixels/{n}" for n in names})
    assert score <= MAX_SCORE_DIFFERENCE and box <= MAX_BOX_DIFFERENCE, (score, box)


def test_backends_agree_with_one_another_on_the_original_jpegs(backend_results, photos_dir):
    names = sorted(p.name for p in photos_dir.iterdir())
    torchscript, _ = backend_results("torchscript")
    for other in ("onnx", "raw_savedmodel"):
        found, _ = backend_results(other)
        score, box = _compare(torchscript, found, {f"jpeg/{n}": f"jpeg/{n}" for n in names})
        assert score <= MAX_SCORE_DIFFERENCE and box <= MAX_BOX_DIFFERENCE, (other, score, box)


def test_known_objects_are_found_in_the_original_jpegs(backend_results):
    """The README's known results, through every backend: a bus and three persons in bus.jpg,
    the bus at about x 12-801, y 231-734; a dog, a bicycle and a car in darknet_dog.jpg."""
    for backend in sorted(BACKENDS):
        found, _ = backend_results(backend)
        bus = [d for d in found["jpeg/bus.jpg"]["detections"] if d["score"] >= COMPARE_FROM]
        assert sorted(d["label"] for d in bus) == ["bus", "person", "person", "person"], backend
        (box,) = [d["box"] for d in bus if d["label"] == "bus"]
        assert max(abs(a - b) for a, b in zip(box, [12, 231, 801, 734])) < 6, (backend, box)
        dog = {d["label"] for d in found["jpeg/darknet_dog.jpg"]["detections"] if d["score"] >= 0.5}
        assert dog == {"dog", "bicycle", "car"}, backend
