"""Decoders: the YOLOX grid, class-aware NMS over a whole batch, padding per image, and the
box-row, torchvision and TF OD output conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from batch_predict.models.decoders import DecodeContext, decode_boxes, decode_tfod, decode_torchvision, decode_yolox
from batch_predict.models.model_spec import build_spec

# 64x64 input, strides 8, 16, 32: grids of 8x8, 4x4, 2x2 cells = 84 rows.
ANCHORS = 84


def _context(count: int, **fields) -> DecodeContext:
    spec = build_spec({"input.size": 64, "output.decoder": "yolox", **fields}, {}, source="test", base=None)
    return DecodeContext(count, (64, 64), np.tile([64.0, 64.0], (count, 1)), spec)


def _head(count: int, classes: int = 2) -> torch.Tensor:
    return torch.zeros((count, ANCHORS, 5 + classes))


def _set(head, image, row, xy, objectness, class_scores):
    head[image, row, 0:2] = torch.tensor(xy)
    head[image, row, 4] = objectness
    head[image, row, 5:] = torch.tensor(class_scores)


def test_yolox_decodes_a_cell_of_the_stride_16_grid_to_its_box():
    head = _head(1)
    # Stride 16 rows start at 64; cell (x 1, y 2) is row 64 + 2 * 4 + 1. w = h = exp(0) * 16.
    _set(head, 0, 73, (0.5, 0.5), 0.9, (0.1, 0.8))
    padded = decode_yolox(head, _context(1))
    assert padded.counts.tolist() == [1]
    np.testing.assert_allclose(padded.boxes[0, 0], [16, 32, 32, 48])
    np.testing.assert_allclose(padded.scores[0, 0], 0.72, rtol=1e-6)  # objectness x class; 0.09 is below 0.3
    assert padded.classes[0, 0] == 1


def test_yolox_nms_is_per_image_and_per_class():
    head = _head(2)
    # Rows 10, 11 and 12 are cells x = 2, 3 and 4 of the stride 8 grid; offsets put all three
    # boxes at about centre x 20.
    _set(head, 0, 10, (0.5, 0.5), 1.0, (0.9, 0.0))
    _set(head, 0, 11, (-0.4, 0.5), 1.0, (0.8, 0.0))  # same class, overlapping: suppressed
    _set(head, 0, 12, (-1.4, 0.5), 1.0, (0.0, 0.7))  # other class, same place: kept
    _set(head, 1, 11, (-0.4, 0.5), 1.0, (0.5, 0.0))  # same place, other image: kept
    padded = decode_yolox(head, _context(2))
    assert padded.counts.tolist() == [2, 1]
    np.testing.assert_allclose(padded.scores[0, :2], [0.9, 0.7])
    assert padded.classes[0, :2].tolist() == [0, 1] and padded.classes[1, 0] == 0


def test_yolox_keeps_every_class_a_box_scores_for_as_combined_nms_does():
    head = _head(1)
    _set(head, 0, 5, (0.5, 0.5), 1.0, (0.6, 0.5))
    padded = decode_yolox(head, _context(1))
    assert padded.counts.tolist() == [1 + 1] and padded.classes[0, :2].tolist() == [0, 1]


def test_yolox_keeps_the_best_max_detections_per_image():
    head = _head(1)
    for row in range(0, 60, 3):  # far-apart cells of the stride 8 grid
        _set(head, 0, row, (0.5, 0.5), 1.0, (0.31 + row / 100, 0.0))
    padded = decode_yolox(head, _context(1, **{"thresholds.max_detections": 5}))
    assert padded.counts.tolist() == [5] and padded.scores.shape == (1, 5)
    np.testing.assert_allclose(padded.scores[0], [0.88, 0.85, 0.82, 0.79, 0.76], rtol=1e-5)


def test_yolox_ranks_at_most_pre_nms_top_k_candidates_per_image_before_nms():
    head = _head(2)
    for row in range(0, 18, 3):  # six far-apart cells of the stride 8 grid in image 0
        _set(head, 0, row, (0.5, 0.5), 1.0, (0.4 + row / 100, 0.0))
    _set(head, 1, 0, (0.5, 0.5), 1.0, (0.0, 0.5))
    _set(head, 1, 9, (0.5, 0.5), 1.0, (0.6, 0.0))
    padded = decode_yolox(head, _context(2, **{"thresholds.pre_nms_top_k": 3}))
    assert padded.counts.tolist() == [3, 2]
    np.testing.assert_allclose(padded.scores[0, :3], [0.55, 0.52, 0.49], rtol=1e-6)
    np.testing.assert_allclose(padded.scores[1, :2], [0.6, 0.5], rtol=1e-6)


def test_yolox_scores_a_head_of_signed_values_by_their_products():
    head = _head(1)
    _set(head, 0, 5, (0.5, 0.5), -1.0, (-0.5, 0.2))  # -1 x -0.5 scores 0.5; -1 x 0.2 does not count
    padded = decode_yolox(head, _context(1))
    assert padded.counts.tolist() == [1] and padded.classes[0, 0] == 0
    np.testing.assert_allclose(padded.scores[0, 0], 0.5)


def test_yolox_says_when_the_head_does_not_fit_the_input_size():
    with pytest.raises(ValueError, match=r"output shape \[1, 100, 7\] does not fit input \[64, 64\].*\[N, 84, 5 \+ classes\]"):
        decode_yolox(torch.zeros((1, 100, 7)), _context(1))


def test_box_rows_per_image_or_led_by_the_image_index():
    rows = torch.tensor([[[1, 2, 3, 4, 0.9, 7], [0, 0, 0, 0, 0.0, 0]], [[5, 6, 7, 8, 0.5, 2], [1, 1, 2, 2, 0.4, 3]]])
    padded = decode_boxes(rows, _context(2))
    assert padded.counts.tolist() == [1, 2] and padded.classes[1, :2].tolist() == [2, 3]
    flat = torch.tensor([[1, 5, 6, 7, 8, 0.5, 2], [0, 1, 2, 3, 4, 0.9, 7]])
    padded = decode_boxes(flat, _context(2))
    assert padded.counts.tolist() == [1, 1]
    np.testing.assert_allclose(padded.boxes[:, 0], [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_box_rows_are_taken_as_final_unless_nms_is_asked_for():
    rows = torch.tensor([[[0, 0, 10, 10, 0.9, 1], [0, 0, 10, 11, 0.8, 1]]])
    assert decode_boxes(rows, _context(1)).counts.tolist() == [2]
    assert decode_boxes(rows, _context(1, **{"output.nms": True})).counts.tolist() == [1]


def test_torchvision_dicts_also_from_a_scripted_models_pair():
    outputs = [
        {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.2]), "labels": torch.tensor([5])},
        {"boxes": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "scores": torch.tensor([0.6, 0.9]), "labels": torch.tensor([1, 2])},
    ]
    for given in (outputs, ({}, outputs)):
        padded = decode_torchvision(given, _context(2))
        assert padded.counts.tolist() == [0, 2] and padded.classes[1, :2].tolist() == [2, 1]


def test_tfod_outputs_by_name():
    outputs = {
        "detection_boxes": torch.tensor([[[0.0, 0.0, 0.5, 0.25]]]),
        "detection_scores": torch.tensor([[0.8]]),
        "detection_classes": torch.tensor([[3.0]]),
        "num_detections": torch.tensor([1.0]),
    }
    padded = decode_tfod(outputs, _context(1))
    np.testing.assert_allclose(padded.boxes[0, 0], [0, 0, 16, 32])
    with pytest.raises(ValueError, match="detection_boxes and detection_scores"):
        decode_tfod(torch.zeros(1), _context(1))


def test_a_half_precision_yolox_head_decodes_exactly_as_its_float32_copy():
    rng = torch.Generator().manual_seed(0)
    head = torch.rand((3, ANCHORS, 7), generator=rng).half()
    head[..., 2:4] -= 0.5  # log sizes either side of the cell
    half, full = decode_yolox(head, _context(3)), decode_yolox(head.float(), _context(3))
    assert half.counts.tolist() == full.counts.tolist() and half.counts.sum() > 3
    for field in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(getattr(half, field), getattr(full, field))


class _Readbacks(TorchDispatchMode):
    """Records each op that, on a GPU, makes the host wait for the GPU: those whose output's
    size or value is read back (nonzero, boolean indexing, `.item()`, NMS's kept count...)."""

    WAITING = {"aten.nonzero.default", "aten.masked_select.default", "aten._local_scalar_dense.default",
               "aten.bincount.default", "aten.unique_consecutive.default", "aten._unique2.default", "torchvision.nms.default"}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masks = [i for i in (args[1] if name.startswith(("aten.index.", "aten.index_put")) else [])
                 if isinstance(i, torch.Tensor) and i.dtype == torch.bool]
        if name in self.WAITING or masks:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_yolox_reads_the_gpu_back_a_few_times_a_batch_however_many_candidates():
    """Each readback waits for the collecting stream's queue to run beside the model; the
    collection's count of them once made it slower than the model (docs/benchmarks.md, 0a)."""
    rng = torch.Generator().manual_seed(1)
    counts = []
    for images in (2, 16):
        head = torch.rand((images, ANCHORS, 7), generator=rng)  # most anchors score above 0.3
        head[..., 2:4] -= 0.5
        with _Readbacks() as readbacks:
            padded = decode_yolox(head, _context(images, **{"thresholds.max_detections": 5, "thresholds.pre_nms_top_k": 50}))
        assert (padded.counts == 5).all()
        counts.append(readbacks.ops)
    # The two candidate selections, the pre-NMS cut and NMS itself.
    assert len(counts[0]) == len(counts[1]) <= 4, counts
