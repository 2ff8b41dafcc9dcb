"""Model outputs to padded detections, batched on the model's device.

One function per output convention (`tfod`, `torchvision`, `yolox`, `boxes`). Each ends in
`_pad`, which selects, runs class-aware NMS over the whole batch in few calls
(`vision_ops.batched_nms`), keeps the best `max_detections` per image, and copies
the result to the host once per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .detections import PaddedDetections, tfod_to_padded
from .model_spec import ModelSpec, Thresholds
from .vision_ops import batched_nms


@dataclass(frozen=True)
class DecodeContext:
    """What a decoder needs besides the outputs: the batch size and input size, and the spec."""

    count: int
    input_size: tuple[int, int] | None  # (height, width); None when images went in as a list
    image_sizes: np.ndarray  # (N, 2) width, height of each model input
    spec: ModelSpec


Decoder = Callable[[Any, DecodeContext], PaddedDetections]


def pick_output(outputs: Any, name: str | None) -> Any:
    """The output named `name`, else the only (or first) one."""
    if isinstance(outputs, Mapping):
        if name is not None:
            if name not in outputs:
                raise ValueError(f"output.name: the model has no output {name!r}; it has {sorted(outputs)}")
            return outputs[name]
        return next(iter(outputs.values()))
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return outputs


def decode_yolox(outputs: Any, context: DecodeContext) -> PaddedDetections:
    """The raw YOLOX head (N, anchors, 5 + classes): grid decode, objectness x class score, NMS.

    Only the anchors where some class scores at least the threshold are scored class by class:
    a handful of the head's anchors (3,549 an image at 416x416). Scoring every (anchor, class) pair and ranking
    them all took the collecting stream about 4 ms of a 27 ms batch of 256 on an H200
    (docs/benchmarks.md), SMs and memory traffic taken from the model running beside it. The
    scores are the same float32 products either way, of a half-precision head too."""
    head = pick_output(outputs, context.spec.output.name)
    if context.input_size is None:
        raise ValueError("decoder yolox needs a fixed input size (input.resize letterbox, stretch or keep_ratio)")
    cells, strides = _yolox_grid(tuple(context.input_size), tuple(context.spec.output.strides), head.device)
    if head.ndim != 3 or head.shape[1] != len(cells) or head.shape[2] < 6:
        raise ValueError(
            f"decoder yolox: output shape {list(head.shape)} does not fit input {list(context.input_size)} with "
            f"strides {list(context.spec.output.strides)}: expected [N, {len(cells)}, 5 + classes]"
        )
    thresholds = context.spec.thresholds
    objectness, classes = head[..., 4].float(), head[..., 5:]
    # An anchor's best product is objectness x its highest class score, or x its lowest where the
    # objectness is negative (a head of logits): multiplying by a number keeps the order, rounding too.
    lowest, highest = torch.aminmax(classes, dim=-1)
    best = torch.where(objectness >= 0, objectness * highest, objectness * lowest)
    image, anchor = (best >= thresholds.score).nonzero(as_tuple=True)
    scores = objectness[image, anchor, None] * classes[image, anchor]  # float32 x float16 multiplies in float32
    pair, label = (scores >= thresholds.score).nonzero(as_tuple=True)
    image, anchor, scores = image[pair], anchor[pair], scores[pair, label]
    ranked, rank, _ = _ranked(image, torch.argsort(scores, descending=True, stable=True), context.count)
    ranked = ranked[rank < thresholds.pre_nms_top_k]  # as TF's CombinedNonMaxSuppression, per image
    geometry = head[image[ranked], anchor[ranked], :4].float()
    centres = (geometry[:, :2] + cells[anchor[ranked]]) * strides[anchor[ranked]]
    half = torch.exp(geometry[:, 2:4]) * strides[anchor[ranked]] / 2
    boxes = torch.cat([centres - half, centres + half], dim=-1)
    return _pad_candidates(image[ranked], boxes, scores[ranked], label[ranked], context.count, thresholds, nms=True)


@functools.lru_cache(maxsize=8)
def _yolox_grid(size: tuple[int, int], strides: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, 2) cell x, y and (anchors, 1) strides, for each stride's grid in row-major order;
    made once per input size, not a dozen small kernels per batch."""
    cells, scales = [], []
    for stride in strides:
        rows, cols = size[0] // stride, size[1] // stride
        y, x = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        cells.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=1))
        scales.append(torch.full((rows * cols, 1), stride, device=device))
    return torch.cat(cells).float(), torch.cat(scales).float()


def decode_boxes(outputs: Any, context: DecodeContext) -> PaddedDetections:
    """Rows of x1, y1, x2, y2, score, class: (N, K, 6), or (M, 7) led by the image index.

    Rows are taken as final detections; `output.nms: true` runs class-aware NMS over them too.
    """
    rows = pick_output(outputs, context.spec.output.name).float()
    if rows.ndim == 3 and rows.shape[2] == 6:
        image = torch.arange(rows.shape[0], device=rows.device).repeat_interleave(rows.shape[1])
        rows = rows.reshape(-1, 6)
    elif rows.ndim == 2 and rows.shape[1] == 7:
        image, rows = rows[:, 0].long(), rows[:, 1:]
    else:
        raise ValueError(f"decoder boxes: expected output [N, K, 6] or [M, 7]; got {list(rows.shape)}")
    thresholds = context.spec.thresholds
    candidates = _above(thresholds.score, image, rows[:, :4], rows[:, 4], rows[:, 5].long())
    return _pad_candidates(*candidates, context.count, thresholds, context.spec.output.nms)


def decode_torchvision(outputs: Any, context: DecodeContext) -> PaddedDetections:
    """torchvision detection outputs: a list of {"boxes", "scores", "labels"} per image (also as
    the second item of the `(losses, detections)` pair that scripted torchvision models return)."""
    if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
        outputs = outputs[1]
    if not isinstance(outputs, list) or len(outputs) != context.count or not all(isinstance(o, Mapping) for o in outputs):
        raise ValueError("decoder torchvision: expected one dict with boxes, scores and labels per image")
    image = torch.cat([torch.full((len(o["scores"]),), i, dtype=torch.long) for i, o in enumerate(outputs)])
    found = {key: torch.cat([o[key] for o in outputs]) for key in ("boxes", "scores", "labels")}
    thresholds = context.spec.thresholds
    candidates = _above(
        thresholds.score, image.to(found["scores"].device), found["boxes"].float(), found["scores"].float(),
        found["labels"].long(),
    )
    return _pad_candidates(*candidates, context.count, thresholds, context.spec.output.nms)


def decode_tfod(outputs: Any, context: DecodeContext) -> PaddedDetections:
    """TF OD API outputs: normalized ymin, xmin, ymax, xmax boxes of the model input."""
    if not isinstance(outputs, Mapping) or "detection_boxes" not in outputs or "detection_scores" not in outputs:
        raise ValueError("decoder tfod: expected named outputs detection_boxes and detection_scores")
    arrays = {k: v.detach().cpu().numpy() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    return tfod_to_padded(arrays, context.image_sizes)


DECODERS: dict[str, Decoder] = {
    "tfod": decode_tfod, "torchvision": decode_torchvision, "yolox": decode_yolox, "boxes": decode_boxes,
}


def _pad_candidates(
    image: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    thresholds: Thresholds,
    nms: bool,
) -> PaddedDetections:
    """Flat candidates of a whole batch, each scoring at least the threshold, to padded
    (N, max_detections) rows, best first.

    The host reads the GPU back once here, for the result: NMS aside, no step depends on how many
    candidates there are. Every readback waits for the collecting stream's queue to run beside
    the model, then for the interpreter; with 17 of them a batch, the collecting thread set the
    job's pace on an H200 (docs/benchmarks.md, 0b and 0a)."""
    if nms:
        order = batched_nms(boxes, scores, image, labels, thresholds.nms_iou)
    else:
        order = torch.argsort(scores, descending=True)
    order, rank, per_image = _ranked(image, order, count)
    slots = thresholds.max_detections
    # Candidates past their image's slots all go to one spare row past the end, dropped with it:
    # selecting those that fit would be a readback.
    slot = torch.where(rank < slots, image[order] * slots + rank, count * slots)
    rows = torch.zeros((count * slots + 1, 6), dtype=torch.float32, device=boxes.device)
    rows[slot] = torch.cat([boxes[order], scores[order, None], labels[order, None].float()], dim=1)
    # Counts ride along in float32, exact to 2**24, so that one copy brings both.
    host = torch.cat([rows[:-1].reshape(-1), per_image.clamp(max=slots).float()]).cpu().numpy()
    rows_host = host[: count * slots * 6].reshape(count, slots, 6)
    counts = host[count * slots * 6 :].astype(np.int64)
    return PaddedDetections(rows_host[:, :, :4], rows_host[:, :, 4], rows_host[:, :, 5].astype(np.int64), counts)


def _above(
    threshold: float, image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates scoring at least `threshold`, found in one readback."""
    keep = (scores >= threshold).nonzero().squeeze(1)
    return image[keep], boxes[keep], scores[keep], labels[keep]


def _ranked(image: torch.Tensor, order: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`order` (indices, best first) regrouped by image, best first within each; each one's rank in
    its image; and how many each of the `count` images has. No readback: `torch.bincount` on a
    GPU reads its input's maximum back to size its output."""
    order = order[torch.sort(image[order], stable=True).indices]
    grouped = image[order]
    per_image = torch.zeros(count, dtype=torch.int64, device=image.device)
    per_image.index_add_(0, grouped, torch.ones_like(grouped))
    starts = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(len(order), device=image.device) - starts[grouped]
    return order, rank, per_image
