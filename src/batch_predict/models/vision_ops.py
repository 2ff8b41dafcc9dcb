"""torchvision's C++ operators the job calls (NMS, JPEG and image decoding), without its Python package.

`import torchvision` imports its model zoo and, through `torchvision.ops.roi_align`,
`torch._dynamo` and sympy: 2 s here, 4 s on the GPU machine (docs/benchmarks.md), of a job
that needs three operators. Those live in torchvision's extension libraries, and loading the
libraries registers them under `torch.ops` exactly as torchvision's own import does. Where the
libraries are not where torchvision keeps them, torchvision is imported instead; where it is not
installed, importing this module raises ImportError, which names it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
from collections.abc import Sequence

import torch

#: Each extension library's names, newest first: torchvision 0.29 added the "_stable" builds.
_LIBRARIES = (("_C_stable", "_C"), ("image_stable", "image"))
#: `torchvision.io.ImageReadMode.RGB`.
_RGB = 3
#: Boxes in one NMS call at most: its work grows with the square of its boxes (torchvision
#: calls NMS once per group above the same count on a GPU).
_BOXES_PER_CALL = 5_000


def _load() -> None:
    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'torchvision'", name="torchvision")
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    paths = []
    for names in _LIBRARIES:
        found = [s.origin for s in map(finder.find_spec, names) if s is not None and s.origin]
        if not found:
            importlib.import_module("torchvision")  # it knows where its libraries are
            return
        paths.append(found[0])
    for path in paths:
        torch.ops.load_library(path)


_load()


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Indices of the boxes NMS keeps, each (image, label) pair on its own; within an image, best first.

    Each pair's boxes are moved clear of every other pair's (in float64, where the moved
    coordinates stay exact), so that one call serves many pairs; a call holds whole images and
    at most `_BOXES_PER_CALL` boxes where the images allow, since its work grows with the
    square of its boxes.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # The shift is computed where the boxes are: reading their maximum back would wait for the GPU.
    groups = images * (labels.max() + 1) + labels
    moved = boxes.double() + (groups.double() * (boxes.max().double() + 1))[:, None]
    scores = scores.double()  # NMS takes boxes and scores of one type
    if len(boxes) <= _BOXES_PER_CALL:
        return torch.ops.torchvision.nms(moved, scores, iou_threshold)
    order = torch.argsort(images, stable=True)
    moved, scores, images = moved[order], scores[order], images[order]
    # Where each image's boxes end, in one readback.
    ends = torch.cat([(images[1:] != images[:-1]).nonzero().squeeze(1) + 1, images.new_tensor([len(images)])])
    kept, start = [], 0
    for end in _cuts(ends.tolist(), _BOXES_PER_CALL):
        kept.append(torch.ops.torchvision.nms(moved[start:end], scores[start:end], iou_threshold) + start)
        start = end
    return order[torch.cat(kept)]


def _cuts(ends: Sequence[int], most: int) -> list[int]:
    """Where to cut a run of images (`ends`: where each image's boxes end) into calls of at most
    `most` boxes, each holding whole images; an image larger than `most` is a call of its own."""
    cuts, start = [], 0
    for previous, end in zip([0, *ends], ends):
        if end - start > most and previous > start:
            cuts.append(previous)
            start = previous
    if not cuts or cuts[-1] != ends[-1]:
        cuts.append(ends[-1])
    return cuts


def decode_jpegs_on(device: torch.device, jpegs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """JPEGs (1-D uint8 tensors) to 3xHxW RGB tensors on `device`: on a GPU in one batched
    nvjpeg call, on the CPU one by one (libjpeg-turbo).

    torchvision's GPU decoder takes its output memory from the caching allocator as the caller's
    stream's, but writes it from a stream of its own that does not wait for the caller's; the
    allocator hands out a block as soon as it is freed on its stream, so kernels still queued there
    could read the decoder's pixels instead of theirs (pytorch/vision#9606; on an H200, whole
    batches predicted on other images' pixels: docs/benchmarks.md, 0d). The caller's stream is
    drained first, leaving nothing queued on memory the decoder may be given."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
        return list(torch.ops.image.decode_jpegs_cuda(list(jpegs), _RGB, device))
    return [torch.ops.image.decode_jpeg(jpeg, _RGB, False) for jpeg in jpegs]


def decode_image(data: torch.Tensor) -> torch.Tensor:
    """Any image format torchvision reads (1-D uint8 tensor) to a 3xHxW RGB tensor, on the CPU."""
    return torch.ops.image.decode_image(data, _RGB, False)


def encode_jpeg(image: torch.Tensor, quality: int = 90) -> bytes:
    """A 3xHxW uint8 RGB tensor on the CPU as JPEG bytes (libjpeg-turbo)."""
    return torch.ops.image.encode_jpeg(image, quality).numpy().tobytes()
