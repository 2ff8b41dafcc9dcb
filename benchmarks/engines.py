"""nvImageCodec's JPEG decoder on the GPU, measured against the job's nvjpeg; not the job's.

On an H200 its hardware decoder (the JPEG engines alone) made the job slower than torchvision's
nvjpeg, which uses the same engines, and it reads no JPEG that nvjpeg refuses: progressive, 4:1:1
and CMYK JPEGs it refuses too (`gpu_jpeg_kinds.py`, docs/benchmarks.md). So the job decodes with
nvjpeg, and the benchmarks that compare the two take this one from here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from batch_predict.models.device_decode import JpegDecoder, open_nvimgcodec

log = logging.getLogger("bench")


#: Sets of output images the hardware decoder keeps handed out before it reuses the oldest: those
#: the GPU may still be copying batches out of.
_IMAGE_SETS = 2


def hardware_decoder(device: torch.device) -> JpegDecoder | None:
    """nvImageCodec's decoder on the GPU's JPEG engines, or None where nvImageCodec is not
    installed or the GPU has no engines."""
    return nvimgcodec_decoder(device, lambda nvimgcodec: [nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])


def nvimgcodec_decoder(
    device: torch.device, backends: Callable[[Any], list], *, threads: int = 0, **params: Any
) -> JpegDecoder | None:
    """nvImageCodec's decoder with the `backends` (made from the nvimgcodec module), `threads` CPU
    threads (0: one per core) and the `DecodeParams` fields given (planar RGB by default), or None
    where nvImageCodec is not installed or cannot make that decoder on this device."""
    if device.type != "cuda":
        return None
    # Planar RGB is the model's layout already.
    opened = open_nvimgcodec(device.index or 0, backends, threads, **{"sample_format": "P_RGB", **params})
    if opened is None:
        return None
    nvimgcodec, decoder, decode_params = opened

    # Output images are reused, as nvImageCodec advises: allocating device memory for every image
    # of every batch would hold the whole GPU up. A set of images handed to a thread is reused once
    # that thread has called again (it has then queued its batch's preprocessing, the set's last
    # reader, on its stream) and the work queued before that call is done (`consumed`); each
    # preparing thread keeps its last set apart, so two threads never share one.
    handed_out: deque[tuple[torch.cuda.Event, list]] = deque()
    last = threading.local()
    lock = threading.Lock()  # other threads decode meanwhile: preparing threads, a batch bisected

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        with lock:
            return _decode(jpegs)

    def _decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        stream = torch.cuda.current_stream(device)
        previous = getattr(last, "images", None)
        if previous:
            consumed = torch.cuda.Event()
            consumed.record(stream)  # after that thread's previous batch's preprocessing, queued on this stream
            handed_out.append((consumed, previous))
        reuse = None
        if len(handed_out) >= _IMAGE_SETS:
            consumed, images = handed_out.popleft()
            consumed.synchronize()
            if len(images) >= len(jpegs) and all(image is not None for image in images):
                reuse = images[: len(jpegs)]
        try:
            last.images = decoder.decode(
                [nvimgcodec.CodeStream(j) for j in jpegs], images=reuse, params=decode_params, cuda_stream=stream.cuda_stream
            )
        except (RuntimeError, ValueError) as exc:  # a stream it cannot even parse: the next decoder tries each image
            log.debug("nvImageCodec refused a batch of %d: %s", len(jpegs), exc)
            last.images = []
            return [None] * len(jpegs)
        return [None if image is None else torch.as_tensor(image, device=device) for image in last.images]

    return decode
