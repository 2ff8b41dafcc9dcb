"""The speed options of PyTorch models: same detections within tolerance, and refusals that
name the flag. (fp16 and CUDA graphs need a GPU: docs/benchmarks.md has their check.)"""

from __future__ import annotations

import numpy as np
import torch
import pytest

from batch_predict.decode import decode
from batch_predict.models import ModelLoadError, load_model
from batch_predict.records import Record
from batch_predict.spec import ModelSettings

from backend_helpers import REPO

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")
# bfloat16 keeps 8 bits of mantissa: scores move by a few hundredths, box sides by up to a
# few percent of the box (17 px on a 540 px box seen), so boxes are compared by overlap.
BF16_SCORE, BF16_IOU = 0.1, 0.9


def _job(model_dir, **options) -> ModelSettings:
    return ModelSettings(model_dir=str(model_dir), device="cpu", **options)


@pytest.fixture(scope="module")
def photos(photos_dir):
    paths = sorted(p for p in photos_dir.iterdir() if p.suffix in (".jpg", ".png"))
    return [decode(Record(p.name, "photos", i, encoded=p.read_bytes()), 1 << 30) for i, p in enumerate(paths)]


@pytest.fixture(scope="module")
def torchscript(yolox_dir):
    return yolox_dir / "yolox_nano_torchscript.pt"


@pytest.fixture(scope="module")
def reference(torchscript, photos):
    return load_model(_job(torchscript, model_spec=SPEC)).predict(photos)


def _iou(box, boxes):
    low, high = np.maximum(boxes[:, :2], box[:2]), np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(boxes) + area(box) - inter)


def test_bf16_finds_what_fp32_finds_within_tolerance(torchscript, photos, reference):
    model = load_model(_job(torchscript, model_spec=SPEC, precision="bf16"))
    assert model.prepare(photos[:1]).inputs.dtype == torch.bfloat16  # made in the dtype the scripted model takes
    found = model.predict(photos)
    compared = 0
    for ref, got in zip(reference, found, strict=True):
        for box, score, cls in zip(ref.boxes, ref.scores, ref.classes):
            if score < 0.5:
                continue
            same = np.flatnonzero(got.classes == cls)
            assert same.size, f"class {cls} (score {score:.2f}) not found in bf16"
            overlap = _iou(box, got.boxes[same])
            best = same[overlap.argmax()]
            assert overlap.max() >= BF16_IOU
            assert abs(got.scores[best] - score) <= BF16_SCORE
            compared += 1
    assert compared >= 10


def test_channels_last_changes_nothing_but_the_memory_layout(torchscript, photos, reference):
    found = load_model(_job(torchscript, model_spec=SPEC, channels_last=True)).predict(photos)
    for ref, got in zip(reference, found, strict=True):
        np.testing.assert_array_equal(got.classes, ref.classes)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-2)


def test_describe_names_the_speed_options(torchscript):
    described = load_model(_job(torchscript, model_spec=SPEC, precision="bf16", channels_last=True)).describe()
    assert (described["precision"], described["channels_last"], described["compile"]) == ("bf16", True, "none")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp16"}, r"--precision fp16: not on the CPU .* use bf16"),
        ({"compile": "cuda_graphs"}, r"--compile cuda_graphs: needs a CUDA device"),
        ({"compile": "torch_compile"}, r"--compile torch_compile: torch.compile cannot compile a TorchScript module"),
    ],
)
def test_options_that_cannot_be_honoured_are_refused_at_load(torchscript, options, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(_job(torchscript, model_spec=SPEC, **options))


def test_speed_options_are_refused_for_runtimes_they_do_not_reach(yolox_dir):
    with pytest.raises(ModelLoadError, match=r"--precision, --channels_last and --compile apply to PyTorch models; .* is a onnx model"):
        load_model(_job(yolox_dir / "yolox_nano.onnx", model_spec=SPEC, precision="bf16"))
