"""The demo end to end: generated samples, the real CLI, the bundled detector, exact ground truth.

The scenes' sizes and aspect ratios vary, so boxes only match their ground truth if the job
and the model handle the resize, the normalized-to-pixel conversion and the ymin/xmin order
right. The detector's two forms (SavedModel, TorchScript) are checked to be one model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "demo" / "model"
SCENES = 20
PHOTOS = 4  # demo.make_samples.PHOTOS
MIN_SCORE = 0.3


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _iou(box: list[float], boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + areas - inter)


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory) -> dict:
    """make_samples, then the batch-predict CLI on its TFRecords, as `make demo` runs them."""
    out = tmp_path_factory.mktemp("demo")
    made = _run(["-m", "demo.make_samples", "--out_dir", str(out / "samples"), "--scenes", str(SCENES)])
    assert made.returncode == 0, made.stderr
    job = _run([
        "-m", "batch_predict", "--input_file_patterns", str(out / "samples" / "*.tfrecord"),
        "--input_file_format", "tfrecord", "--model_dir", str(MODEL / "saved_model"), "--batch_size", "8",
        "--output_result_prefix", str(out / "predictions"), "--output_error_prefix", str(out / "errors"),
    ])
    assert job.returncode == 0, job.stderr
    def read_lines(prefix: str) -> list[dict]:
        return [json.loads(line) for path in sorted(out.glob(f"{prefix}-*-of-*.jsonl")) for line in path.open()]

    return {
        "truth": json.loads((out / "samples" / "ground_truth.json").read_text()),
        "results": {r["key"]: r for r in read_lines("predictions")},
        "errors": read_lines("errors"),
        "summary": json.loads((out / "predictions-summary.json").read_text()),
    }


def test_detections_match_the_generated_ground_truth(demo_job):
    found, total, wrong_size = 0, 0, []
    for key, truth in demo_job["truth"]["images"].items():
        result = demo_job["results"][key]
        if (result["width"], result["height"]) != (truth["width"], truth["height"]):
            wrong_size.append(key)
        detections = [d for d in result["detections"] if d["score"] >= MIN_SCORE]
        boxes = np.array([d["box"] for d in detections], dtype=np.float64).reshape(-1, 4)
        for obj in truth["objects"]:
            total += 1
            same_class = np.array([d["class_id"] == obj["class_id"] and d["label"] == obj["label"] for d in detections])
            found += bool(same_class.size and ((_iou(obj["box"], boxes) >= 0.5) & same_class).any())
    assert not wrong_size
    assert total >= 3 * SCENES
    assert found / total >= 0.8, f"only {found} of {total} objects found with IoU >= 0.5 and the right class"


def test_scene_scores_stand_above_the_photos_false_alarms(demo_job):
    """Most scenes' objects score well above the threshold; no photo holds a confident shape."""
    scene_scores = [d["score"] for k, r in demo_job["results"].items() if k.startswith("scene-") for d in r["detections"]]
    photo_scores = [d["score"] for k, r in demo_job["results"].items() if k.startswith("photo-") for d in r["detections"]]
    assert np.median(scene_scores) >= 0.5
    assert max(photo_scores, default=0.0) < 0.6


def test_the_bad_record_is_one_error_line_and_counts_add_up(demo_job):
    (error,) = demo_job["errors"]
    assert error["key"] == "not-an-image"
    assert error["source"].endswith("photos.tfrecord") and error["record_index"] == PHOTOS
    assert error["error_type"] == "ImageDecodeError"
    summary = demo_job["summary"]
    assert summary["records_read"] == SCENES + PHOTOS + 1
    assert summary["predicted"] == len(demo_job["results"]) == SCENES + PHOTOS
    assert summary["failed"] == 1
    assert summary["detections"] == sum(len(r["detections"]) for r in demo_job["results"].values())


@pytest.fixture(scope="module")
def both_forms():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch  # before TensorFlow: the other order can crash on loading both
    import tensorflow as tf

    return tf, tf.saved_model.load(str(MODEL / "saved_model")), torch, torch.jit.load(str(MODEL / "detector_torchscript.pt"))


def _model_input(tf, encoded: bytes) -> np.ndarray:
    """The documented pre-processing: decode, antialiased bilinear resize to 128x128, RGB in [0, 1]."""
    image = tf.cast(tf.io.decode_image(encoded, channels=3), tf.float32)
    return (tf.image.resize(image, [128, 128], method="bilinear", antialias=True) / 255.0).numpy()


def _scene_jpegs(count: int) -> list[bytes]:
    from demo.scenes import JPEG_QUALITY, SAMPLES_SPLIT, encode_jpeg, job_scene, load_backgrounds

    photos = load_backgrounds()
    return [encode_jpeg(job_scene(SAMPLES_SPLIT, i, photos).image, JPEG_QUALITY) for i in range(count)]


def test_torchscript_gives_the_saved_models_raw_outputs(both_forms):
    tf, saved, torch, scripted = both_forms
    images = np.stack([_model_input(tf, jpeg) for jpeg in _scene_jpegs(2)])
    expected = saved.signatures["raw_outputs"](images=tf.constant(images))
    with torch.inference_mode():
        scores, boxes = scripted(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(scores.permute(0, 2, 3, 1).numpy(), expected["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes.permute(0, 2, 3, 1).numpy(), expected["boxes"].numpy(), atol=1e-3)
    assert float(scores.max()) > 0.5  # a scene, so the comparison covers confident cells too


def _per_class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS within each class, best first: the indices kept, by falling score."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        rivals = [k for k in kept if classes[k] == classes[i]]
        if not rivals or _iou(boxes[i].tolist(), boxes[rivals]).max() <= iou:
            kept.append(int(i))
    return kept


def test_torchscript_with_documented_postprocessing_finds_what_the_saved_model_finds(both_forms):
    """demo/model/README.md's post-processing of the TorchScript outputs reproduces serving_default."""
    tf, saved, torch, scripted = both_forms
    (jpeg,) = _scene_jpegs(1)
    served = saved.signatures["serving_default"](encoded_image_string_tensor=tf.constant([jpeg]))
    served = {k: v.numpy()[0] for k, v in served.items()}
    with torch.inference_mode():
        scores, boxes = scripted(torch.from_numpy(_model_input(tf, jpeg)[None]).permute(0, 3, 1, 2))
        peaks = scores * (scores == torch.nn.functional.max_pool2d(scores, 3, 1, 1))
        num_classes = scores.shape[1]
        top_scores, top = peaks[0].permute(1, 2, 0).reshape(-1).topk(100)
        cell_boxes = boxes[0].permute(1, 2, 0).reshape(-1, 4)[top // num_classes] / 128.0
    top_scores, classes, cell_boxes = top_scores.numpy(), (top % num_classes).numpy(), cell_boxes.numpy()
    keep = [i for i in _per_class_nms(cell_boxes, top_scores, classes, 0.5) if top_scores[i] >= MIN_SCORE]
    count = int((served["detection_scores"] >= MIN_SCORE).sum())
    assert count == len(keep) > 0
    np.testing.assert_allclose(top_scores[keep], served["detection_scores"][:count], atol=1e-5)
    np.testing.assert_array_equal(classes[keep] + 1, served["detection_classes"][:count])
    yxyx = cell_boxes[keep][:, [1, 0, 3, 2]].clip(0, 1)
    np.testing.assert_allclose(yxyx, served["detection_boxes"][:count], atol=1e-5)
