"""Images to a model's input tensor, batched, on the model's device.

Decode (JPEGs in one batched call, on the GPU when the device is CUDA: `device_decode`),
resize, pad, reorder channels, normalize, lay out. Images of one size are resized together
in one call, so a batch of same-size photos costs one interpolation, not one per image.

Resizing follows TensorFlow's `ResizeBilinear` with half-pixel centres and no antialiasing
(what `F.interpolate(..., align_corners=False)` computes), and letterbox sizes round half to
even in float32 as TF does, so the same image becomes the same tensor as in a TF OD export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..decode import is_jpeg
from .detections import Geometry
from .device_decode import DeviceDecodeError, JpegDecoder, device_decoder, on_cpu
from .model_spec import InputSpec

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "uint8": torch.uint8}


@dataclass(frozen=True)
class Prepared:
    """A batch ready for the model, and where each image was placed in it."""

    inputs: torch.Tensor | list[torch.Tensor]
    geometry: Geometry
    input_size: tuple[int, int] | None  # (height, width) of the batch tensor; None for lists
    image_sizes: np.ndarray  # (N, 2) width, height of each original image
    ready: torch.cuda.Event | None = None  # the batch is ready once it has happened


def placements(sizes: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For (N, 2) original (height, width): resized (height, width), (y, x) offsets, canvas size.

    All in integer pixels. The canvas is the model input's (height, width); for resize
    `none` it is each image's own size.
    """
    sizes = sizes.astype(np.int64)
    if spec.resize == "none":
        return sizes, np.zeros_like(sizes), sizes
    if spec.resize == "stretch":
        target = np.broadcast_to(np.array(spec.size, np.int64), sizes.shape)
        return target.copy(), np.zeros_like(sizes), target.copy()
    if spec.resize == "letterbox":
        canvas = np.array(spec.size, np.int64)
        ratio = np.min(canvas.astype(np.float32) / sizes.astype(np.float32), axis=1)
    else:  # keep_ratio: shrink so the longest side is at most max_side; never enlarge
        canvas = np.array(spec.size or (spec.max_side, spec.max_side), np.int64)
        ratio = np.minimum(np.float32(1.0), np.float32(spec.max_side) / sizes.max(axis=1).astype(np.float32))
    resized = np.rint(sizes.astype(np.float32) * ratio[:, None]).astype(np.int64)
    resized = np.clip(resized, 1, canvas)
    offsets = (canvas - resized) // 2 if spec.placement == "center" else np.zeros_like(sizes)
    return resized, offsets, np.broadcast_to(canvas, sizes.shape).copy()


class Preprocessor:
    """Turns decoded images (or encoded bytes) into the model's input as `InputSpec` says.

    `dtype`, where given, replaces the spec's float32: the dtype the runner casts its input to
    anyway (`speed.input_dtype`), so the batch is made in it rather than made and cast.
    """

    def __init__(
        self, spec: InputSpec, device: torch.device, jpeg_decoder: JpegDecoder | None = None, *, dtype: torch.dtype | None = None
    ) -> None:
        self.spec = spec
        self.device = device
        self._jpeg_decoder = jpeg_decoder
        self._dtype = dtype if dtype is not None and spec.dtype in (None, "float32") else _DTYPES[spec.dtype or "float32"]
        self._channels = (2, 1, 0) if spec.channels == "BGR" else (0, 1, 2)  # the source channel of each
        low, high = spec.value_range
        std = torch.tensor(spec.std, dtype=torch.float32, device=device)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
        # pixel p in 0..255 -> ((low + p / 255 * (high - low)) - mean) / std, folded into p * a + b.
        self._a = ((high - low) / 255.0 / std).view(1, 3, 1, 1)
        self._b = ((low - mean) / std).view(1, 3, 1, 1)
        # Models fed 0..255 as they are (YOLOX) skip a pass over the batch.
        self._scales = bool((self._a != 1).any() or (self._b != 0).any())
        self._work = working_dtype(self._dtype, self._scales, device)

    @property
    def jpeg_decoder(self) -> JpegDecoder:
        """The batched JPEG decoder it uses: the one given, else the device's best (`device_decoder`),
        made on first use."""
        if self._jpeg_decoder is None:
            self._jpeg_decoder = device_decoder(self.device)
        return self._jpeg_decoder

    @jpeg_decoder.setter
    def jpeg_decoder(self, decoder: JpegDecoder) -> None:
        self._jpeg_decoder = decoder

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the batches it makes."""
        return self._dtype

    def from_images(self, images: Sequence[bytes | np.ndarray]) -> Prepared:
        """Encoded images and HxWx3 uint8 RGB arrays, mixed as a batch comes (`device_images`)."""
        return self.prepare(device_images(images, self.device, self.jpeg_decoder))

    def prepare(self, images: Sequence[torch.Tensor]) -> Prepared:
        """3xHxW uint8 RGB images on the device to the model's input."""
        sizes = np.array([image.shape[1:] for image in images], dtype=np.int64).reshape(-1, 2)
        resized, offsets, canvas = placements(sizes, self.spec)
        geometry = Geometry(
            scale=(sizes / resized)[:, ::-1].astype(np.float32),
            offset=offsets[:, ::-1].astype(np.float32),
        )
        if self.spec.resize == "none":
            inputs = [self._finish(self._ordered(image[None]).to(self._work))[0] for image in images]
            return Prepared(inputs, geometry, None, sizes[:, ::-1])
        height, width = (int(v) for v in canvas[0])
        batch = torch.empty((len(images), 3, height, width), dtype=self._work, device=self.device)
        groups = _groups(sizes, resized, offsets)
        if len(groups) == 1:  # the usual batch: the padding around its one placement is all to fill
            _, size, offset = next(iter(groups))
            _fill_around(batch, size, offset, float(self.spec.pad_value))
        else:  # everything placed on one canvas of the padding value: no padded copy of any group
            batch.fill_(float(self.spec.pad_value))
        for key, members in groups.items():
            rows = slice(None) if len(groups) == 1 else torch.tensor(members, device=self.device)
            self._place(batch, rows, [images[i] for i in members], key)
        return Prepared(self._finish(batch), geometry, (height, width), sizes[:, ::-1])

    def _ordered(self, images: torch.Tensor) -> torch.Tensor:
        return images.flip(1) if self._channels == (2, 1, 0) else images

    def _place(self, batch: torch.Tensor, rows: slice | torch.Tensor, images: Sequence[torch.Tensor], key: tuple) -> None:
        """Images of one size and placement (`_groups`) resized together onto their rows of the
        canvas, in the model's channel order.

        Each pass over a batch's pixels is memory traffic taken from the model running beside it
        (preprocessing cost YOLOX-Nano a tenth of its speed on an H200, docs/benchmarks.md), so the
        passes are few: the images are copied into one batch in the working dtype by one
        multi-tensor copy (where stacking them as they came and converting the stack were two
        passes, and stacking into the dtype was one copy kernel per image), resized, and copied
        onto the canvas channel by channel in the model's order, once the resize has made them smaller.
        """
        (source_h, source_w), (new_h, new_w), (top, left) = key
        group = torch.empty((len(images), 3, source_h, source_w), dtype=self._work, device=self.device)
        torch._foreach_copy_(list(group.unbind(0)), list(images))
        if (new_h, new_w) != (source_h, source_w):
            group = F.interpolate(group, size=(new_h, new_w), mode="bilinear", align_corners=False)
        if self._channels == (0, 1, 2):
            batch[rows, :, top : top + new_h, left : left + new_w] = group
            return
        for channel, source in enumerate(self._channels):
            batch[rows, channel, top : top + new_h, left : left + new_w] = group[:, source]

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        """Value range and normalization, dtype and layout of a 0..255 batch."""
        if self._dtype == torch.uint8:
            batch = batch.round_().clamp_(0, 255).to(torch.uint8)
        else:
            if self._scales:
                batch = batch * self._a + self._b
            batch = batch.to(self._dtype)
        if self.spec.layout == "NHWC":
            batch = batch.permute(0, 2, 3, 1)
        return batch.contiguous()


def working_dtype(dtype: torch.dtype, scales: bool, device: torch.device) -> torch.dtype:
    """The dtype images are resized and placed in. float16 where the model takes float16 on a GPU
    with no normalization after: the CUDA resize computes in float32 and rounds once to float16,
    and uint8 pixels are exact in float16, so the batch is bit for bit the float32 path's cast to
    float16, at half its memory traffic (a large share of the preprocessing of a small model).
    float32 everywhere else, where a second rounding would change the model's input."""
    if dtype == torch.float16 and not scales and device.type == "cuda":
        return torch.float16
    return torch.float32


def _fill_around(batch: torch.Tensor, size: tuple[int, int], offset: tuple[int, int], value: float) -> None:
    """Fill the canvas outside the `size` rectangle at `offset` (top, left) with `value`."""
    (height, width), (top, left) = size, offset
    batch[:, :, :top] = value
    batch[:, :, top + height :] = value
    batch[:, :, top : top + height, :left] = value
    batch[:, :, top : top + height, left + width :] = value


def _groups(sizes: np.ndarray, resized: np.ndarray, offsets: np.ndarray) -> dict[tuple, list[int]]:
    """Image indices by (original size, resized size, offset): each group is one resize call."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(map(tuple, sizes.tolist()), map(tuple, resized.tolist()), map(tuple, offsets.tolist()))):
        groups.setdefault(key, []).append(i)
    return groups


def device_images(
    images: Sequence[bytes | np.ndarray],
    device: torch.device,
    jpeg_decoder: JpegDecoder,
) -> list[torch.Tensor]:
    """3xHxW uint8 RGB images on `device`. Arrays (decoded by the pipeline's CPU workers) are
    copied over, those of one size together (`arrays_to_device`); JPEG bytes go through one
    batched call of `jpeg_decoder` (the device's best: `device_decoder`); other
    encoded formats decode on the CPU here. Raises `DeviceDecodeError` if an image cannot be
    decoded at all."""
    jpegs = {i: image for i, image in enumerate(images) if isinstance(image, bytes) and is_jpeg(image)}
    found: list[torch.Tensor | None] = [None] * len(images)
    if jpegs:
        for i, decoded in zip(jpegs, jpeg_decoder(list(jpegs.values()))):
            found[i] = decoded
    arrays = {i: image for i, image in enumerate(images) if isinstance(image, np.ndarray)}
    for i, copied in zip(arrays, arrays_to_device(list(arrays.values()), device)):
        found[i] = copied
    tensors: list[torch.Tensor] = []
    for i, image in enumerate(images):
        tensor = found[i]
        if tensor is None and isinstance(image, bytes):  # every array was copied
            tensor = on_cpu(image, device)
        if tensor is None:
            raise DeviceDecodeError(f"image {i} of the batch: no decoder can read it")
        tensors.append(tensor)
    return tensors


def arrays_to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """HxWx3 uint8 arrays as 3xHxW tensors on `device`. On CUDA, arrays of one size are stacked into
    one pinned host buffer and copied in one transfer that does not wait: one copy per image from
    pageable memory would each wait for the copy engine, and hold the preparing thread."""
    found: dict[int, torch.Tensor] = {}
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(i)
    for shape, members in groups.items():
        host = torch.empty((len(members), *shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
        np.stack([arrays[i] for i in members], out=host.numpy())
        stacked = host.to(device, non_blocking=True).permute(0, 3, 1, 2)
        for i, image in zip(members, stacked):
            found[i] = image
    return [found[i] for i in range(len(arrays))]
