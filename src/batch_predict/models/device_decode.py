"""JPEG batches decoded on the model's GPU.

The GPU decodes with torchvision's nvjpeg, which sends every baseline JPEG of a batch to the
GPU's hardware JPEG engines where it has them (A100, H100, H200, L4...), leaving the SMs to the
model, and decodes the others (progressive) with its CUDA decoder. An image it refuses (CMYK) is
decoded on the CPU; only an image that no decoder can read fails. nvImageCodec's decoder on the
same engines was slower in the job and reads nothing that nvjpeg refuses (docs/benchmarks.md);
where it is installed (`pip install 'batch-predict[nvimgcodec]'`), its CPU decoder decodes the
CPU's share of JPEGs (`decode_split`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ..errors import RecordFailure
from .vision_ops import decode_image, decode_jpegs_on, encode_jpeg


log = logging.getLogger("batch_predict")

#: Decodes JPEG bytes into 3xHxW uint8 RGB tensors on the device; None where it could not.
#: A Sequence, not a list: callers only read it, and a decoder that reads every image returns a list of tensors.
JpegDecoder = Callable[[Sequence[bytes]], Sequence["torch.Tensor | None"]]


class DeviceDecodeError(RecordFailure, RuntimeError):
    """An image in a batch that no decoder can read; bisecting the batch makes it one error line."""


def as_tensor(data: bytes) -> torch.Tensor:
    """The bytes as a uint8 tensor, without a copy: torch only reads them."""
    return torch.frombuffer(memoryview(data), dtype=torch.uint8)


# torch warns once per process that a tensor over read-only bytes could write to them: said here,
# silenced, rather than to the user at the first batch. Silencing it around each call instead took
# a third of the interpreter time of the thread that prepares batches on the GPU machine
# (docs/benchmarks.md): `catch_warnings` rebuilds the warning filters twice a call.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    as_tensor(b"\0")


def nvjpeg_decoder(device: torch.device) -> JpegDecoder:
    """torchvision's batched `decode_jpeg`: nvjpeg, on the hardware JPEG engines where the GPU has
    them, else (and for progressive JPEGs) its CUDA decoder on the SMs."""

    def decode(jpegs: Sequence[bytes]) -> Sequence[torch.Tensor | None]:
        try:
            return decode_jpegs_on(device, [as_tensor(j) for j in jpegs])
        except RuntimeError:  # one bad image fails the call: decode one by one to find it
            return [_one(j, device) for j in jpegs] if len(jpegs) > 1 else [None]

    return decode


def _one(jpeg: bytes, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpegs_on(device, [as_tensor(jpeg)])[0]
    except RuntimeError:
        return None


def open_nvimgcodec(
    device_id: int | None, backends: Callable[[Any], list], threads: int, *, sample_format: str, **params: Any
) -> tuple[Any, Any, Any] | None:
    """The nvimgcodec module, its decoder on GPU `device_id` (None: the CPU only) with the `backends`
    (made from the module) and `threads` CPU threads (0: one per core), and the `DecodeParams` for
    RGB in `sample_format` (a `SampleFormat` name) with the fields given, EXIF orientation ignored as
    by every other decoder here; None where nvImageCodec is not installed or cannot make that decoder."""
    try:
        from nvidia import nvimgcodec
    except (ImportError, OSError):  # not installed, or its CUDA libraries are missing
        return None
    where = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if device_id is None else device_id
    try:
        decoder = nvimgcodec.Decoder(device_id=where, max_num_cpu_threads=threads, backends=backends(nvimgcodec))
    except RuntimeError as exc:
        log.info("nvImageCodec: no such JPEG decoder on %s (%s); decoding without it",
                 "the CPU" if device_id is None else f"GPU {device_id}", exc)
        return None
    decode_params = nvimgcodec.DecodeParams(**{
        "apply_exif_orientation": False, "color_spec": nvimgcodec.ColorSpec.SRGB,
        "sample_format": getattr(nvimgcodec.SampleFormat, sample_format), **params,
    })
    return nvimgcodec, decoder, decode_params


#: (height, width) of the JPEG the decoders are primed with at load: noise, which compresses worse
#: than any photo, so that nvjpeg's buffers for each image of a batch start larger than those of
#: most photos this size or smaller (COCO's are 640 wide). Unprimed, they grow over a job's first
#: few hundred batches whenever a larger JPEG comes to an image's place: the first 40 batches'
#: nvjpeg calls took twice as long, and a process's first job ran 10% slower (docs/benchmarks.md).
#: What grows is most likely pinned host memory, whose every growth waits for the whole GPU: the
#: device memory nvjpeg held did not change. The cost: buffers for a 360 KB JPEG for each image of
#: a batch.
PRIMING_SIZE = (480, 640)


def device_decoder(device: torch.device, batch: int = 1) -> JpegDecoder:
    """The device's JPEG decoder: nvjpeg, falling back image by image to the CPU. On a GPU it has
    decoded a `batch` of `PRIMING_SIZE` JPEGs already: its first call sets the library up (about
    0.6 s on an H200), and its first call at a larger batch takes about 0.2 s more, which the job's
    first batches then do not pay."""
    decoder = nvjpeg_decoder(device)
    if device.type == "cuda":
        decoder([noise_jpeg(*PRIMING_SIZE)] * batch)
        torch.cuda.current_stream(device).synchronize()
    return falling_back([decoder], device)


def noise_jpeg(height: int, width: int) -> bytes:
    """A JPEG of random pixels (the same each time), at quality 95: larger than any photo its size."""
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return encode_jpeg(pixels, quality=95)


def falling_back(decoders: Sequence[JpegDecoder], device: torch.device) -> JpegDecoder:
    """Each image through the first of `decoders` that reads it, in one batched call per decoder
    for the images still undecoded, then on the CPU; None only where nothing can read it."""

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        found: list[torch.Tensor | None] = [None] * len(jpegs)
        for decoder in decoders:
            missing = [i for i, image in enumerate(found) if image is None]
            if not missing:
                break
            for i, image in zip(missing, decoder([jpegs[i] for i in missing])):
                found[i] = image
        return [image if image is not None else on_cpu(jpegs[i], device) for i, image in enumerate(found)]

    return decode


def on_cpu(data: bytes, device: torch.device) -> torch.Tensor | None:
    """Any encoded image decoded by torchvision on the CPU and copied to `device`; None if it is unreadable."""
    try:
        pixels = decode_image(as_tensor(data))
    except RuntimeError:
        return None
    return pixels.to(device, non_blocking=True)
