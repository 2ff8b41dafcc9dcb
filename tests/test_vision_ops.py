"""torchvision's operators without its package: the same results as torchvision's own functions,
and a model loaded without importing torchvision at all."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from batch_predict.models import vision_ops

from backend_helpers import REPO


def _boxes(count: int, images: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand((count, 2), generator=generator) * 300
    sides = torch.rand((count, 2), generator=generator) * 80 + 10
    scores = torch.rand(count, generator=generator)
    image = torch.sort(torch.randint(0, images, (count,), generator=generator)).values
    labels = torch.randint(0, 3, (count,), generator=generator)
    return torch.cat([corners, corners + sides], dim=1), scores, image, labels


def test_batched_nms_keeps_what_torchvisions_keeps():
    boxes, scores, image, labels = _boxes(400, 4)
    kept = vision_ops.batched_nms(boxes, scores, image, labels, 0.45)
    expected = torchvision.ops.batched_nms(boxes, scores, image * 3 + labels, 0.45)
    assert set(kept.tolist()) == set(expected.tolist())


def test_batched_nms_in_several_calls_keeps_what_one_call_keeps(monkeypatch):
    boxes, scores, image, labels = _boxes(600, 12, seed=1)
    shuffled = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(2))
    boxes, scores, image, labels = boxes[shuffled], scores[shuffled], image[shuffled], labels[shuffled]
    whole = vision_ops.batched_nms(boxes, scores, image, labels, 0.45)
    monkeypatch.setattr(vision_ops, "_BOXES_PER_CALL", 70)
    calls = []
    nms = torch.ops.torchvision.nms
    monkeypatch.setattr(vision_ops.torch.ops.torchvision, "nms", lambda *a: calls.append(len(a[0])) or nms(*a), raising=False)
    split = vision_ops.batched_nms(boxes, scores, image, labels, 0.45)
    assert len(calls) > 1 and max(calls) <= 70
    assert set(split.tolist()) == set(whole.tolist())
    for i in range(12):  # within each image, best first
        mine = scores[split][image[split] == i]
        assert torch.equal(mine, torch.sort(mine, descending=True).values)


@pytest.mark.parametrize(
    ("ends", "most", "cuts"),
    [
        ([3, 5, 9], 10, [9]),
        ([3, 5, 9], 5, [5, 9]),
        ([12, 14], 5, [12, 14]),  # an image larger than a call is a call of its own
        ([2, 4, 6, 8], 4, [4, 8]),
    ],
)
def test_calls_hold_whole_images(ends, most, cuts):
    assert vision_ops._cuts(ends, most) == cuts


def test_no_boxes_keep_none():
    empty = torch.zeros((0, 4))
    assert vision_ops.batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


def test_decode_image_gives_torchvisions_pixels(photos_dir):
    for path in sorted(photos_dir.iterdir())[:3]:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        expected = torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)
        assert torch.equal(vision_ops.decode_image(data), expected)


def test_a_torchscript_model_loads_and_predicts_without_importing_torchvision(yolox_dir, photos_dir):
    photo = next(p for p in sorted(photos_dir.iterdir()) if p.suffix == ".jpg")
    script = f"""
import sys
from batch_predict.decode import decode
from batch_predict.models import load_model
from batch_predict.records import Record
from batch_predict.spec import ModelSettings
model = load_model(ModelSettings(model_dir={str(yolox_dir / "yolox_nano_torchscript.pt")!r},
                                 model_spec={str(REPO / "examples" / "specs" / "yolox_nano.yaml")!r}, device="cpu"))
found = model.predict([decode(Record("p", "s", 0, encoded=open({str(photo)!r}, "rb").read()), 1 << 30)])
print(len(found[0].scores), sorted(m for m in ("torchvision", "torch._dynamo", "sympy") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    count, imported = done.stdout.split(" ", 1)
    assert int(count) > 0
    assert imported.strip() == "[]"
