"""Each batch's JPEGs shared between CPU threads and the GPU's decoders, the share found by measuring.

Decoding on the GPU takes SMs from the model; decoding on the CPU takes cores, memory bandwidth
and, around each call, the interpreter. Which costs the job less depends on the machine, the
model and the images, and shows only in the job's own rate (docs/benchmarks.md), so
`DecodeSplit` climbs on that rate. The split is made inside the batch being prepared
(`split_decoder`): a share changed holds from the next batch prepared, not after the pipeline's
queues have drained, and the CPU's images go straight into one pinned buffer, copied over at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
import torch

from ..decode import usable_cpus
from .device_decode import JpegDecoder


class DecodeSplit:
    """How many of each batch's JPEGs CPU threads decode, for a model that decodes on its GPU.

    It climbs: it measures images per second over a window of batches at one share, tries the
    next larger share, keeps it if it was faster by `margin`, and tries its neighbours again, soon
    at first (the first windows run while the GPU and its allocator warm up) and then ever less often, so
    that it follows a job whose images change, at a cost of a few percent at most where the CPU
    never pays. The first `settle` batches after a change are not counted: the batches prepared
    ahead at the share before, and those the GPU runs back to back from the queues while the
    pipeline finds its new pace. The decoder asks `cpu_count(n)` of each batch; the model
    reports each batch it finished to `batch_done`, with the GPU's own time of it.
    """

    #: The shares tried, from all on the GPU to mostly on the CPU.
    SHARES = (0.0, 0.125, 0.25, 0.5, 0.75)

    def __init__(
        self, window: int = 12, settle: int = 8, recheck_every: int = 32, shares: tuple[float, ...] = SHARES,
        margin: float = 0.1,
    ) -> None:
        self.shares = shares
        self._window, self._settle, self._recheck_every, self._margin = window, settle, recheck_every, margin
        self._index = 0
        self._rates: dict[int, float] = {}
        self._settling = settle
        self._settled_windows = 0
        self._recheck_in = min(2, recheck_every)  # early rates include warm-up: recheck soon, then ever less often
        self._batches = self._images = 0
        self._since: float | None = None
        self._credit = 0.0
        self._lock = threading.Lock()

    @property
    def cpu_share(self) -> float:
        return self.shares[self._index]

    def cpu_count(self, jpegs: int) -> int:
        """How many of a batch of `jpegs` go to the CPU: `cpu_share` of them, the fractions carried
        over to the next batch."""
        with self._lock:
            self._credit += self.shares[self._index] * jpegs
            count = min(jpegs, int(self._credit))
            self._credit -= count
            return count

    def batch_done(self, images: int, now: float | None = None) -> None:
        """The model finished a batch of `images` at `now`, in seconds on one clock throughout: when
        the GPU finished it (`DeviceStreams.seconds_at`), or by default `time.perf_counter()`."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            if self._settling:
                self._settling -= 1
                self._since = now
                return
            self._batches += 1
            self._images += images
            if self._batches < self._window:
                return
            self._rates[self._index] = self._images / max(now - (self._since or now), 1e-9)
            self._batches = self._images = 0
            self._since = now
            self._choose()

    def _choose(self) -> None:
        # Each step towards the CPU must be `margin` faster than the step before to be taken: a
        # window's rate varies by a tenth or more from one window to the next on the GPU machine
        # (docs/benchmarks.md), and a share taken on noise costs the job for as long as it holds.
        here = self._index
        best = max(self._rates, key=lambda i: self._rates[i] / (1 + self._margin) ** i)
        if best != here:
            self._move(best)
        elif here + 1 < len(self.shares) and here + 1 not in self._rates:
            self._move(here + 1)  # the best so far: see whether more on the CPU is faster still
        else:
            self._settled_windows += 1
            if self._settled_windows >= self._recheck_in:
                self._settled_windows = 0
                self._recheck_in = min(2 * self._recheck_in, self._recheck_every)
                for neighbour in (here - 1, here + 1):
                    self._rates.pop(neighbour, None)
                self._move(here - 1 if here > 0 else min(here + 1, len(self.shares) - 1))

    def _move(self, index: int) -> None:
        if index != self._index:
            self._index, self._settling = index, self._settle

    def describe(self) -> dict[str, object]:
        return {"cpu_share": self.cpu_share,
                "images_per_s_by_share": {self.shares[i]: round(r) for i, r in sorted(self._rates.items())}}


#: Pixels of one batch's CPU share held in pinned host memory at most: 570 photos of 640x480, but only
#: two of 8000x8000, whose share of a batch of 256 would otherwise pin 6 GB of the host's memory.
HOST_BYTES = 1 << 29


def split_decoder(
    on_device: JpegDecoder, split: DecodeSplit, device: torch.device, threads: int | None = None,
    host_bytes: int = HOST_BYTES,
) -> JpegDecoder:
    """A `JpegDecoder` that sends `split`'s share of each call's JPEGs to `threads` CPU threads (one per
    usable core by default) while `on_device` decodes the rest, at the same time. The CPU's images
    are decoded by simplejpeg (the GIL released throughout) into one pinned host buffer of at most
    `host_bytes` (the share stops at the image that would not fit), copied to `device` in one
    transfer that does not wait; a JPEG simplejpeg cannot read goes to `on_device` with the rest."""
    workers = threads or usable_cpus()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="batch-predict-jpeg")

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        sizes = [_size(jpeg) for jpeg in jpegs[: split.cpu_count(len(jpegs))]]
        lengths = np.array([height * width * 3 for height, width in sizes], dtype=np.int64)
        ends = np.cumsum(lengths)
        count = int(np.searchsorted(ends, host_bytes, side="right"))
        if not count:
            return list(on_device(jpegs))
        sizes, ends = sizes[:count], ends[:count]
        starts = ends - lengths[:count]
        host = torch.empty(int(ends[-1]), dtype=torch.uint8, pin_memory=device.type == "cuda")
        pixels = host.numpy()
        outs = [pixels[s:e].reshape(h, w, 3) for s, e, (h, w) in zip(starts, ends, sizes)]
        # A few tasks, not one per image: each hand-over to a thread costs the GIL some microseconds.
        tasks = [pool.submit(_decode_into, jpegs[i:count:workers], outs[i::workers]) for i in range(min(workers, count))]
        found: list[torch.Tensor | None] = [None] * count
        if count < len(jpegs):
            found += on_device(jpegs[count:])  # while the threads decode theirs
        decoded = [False] * count
        for i, task in enumerate(tasks):
            decoded[i::workers] = task.result()
        copied = host.to(device, non_blocking=True)
        for i, (start, end, (height, width)) in enumerate(zip(starts, ends, sizes)):
            if decoded[i]:
                found[i] = copied[start:end].view(height, width, 3).permute(2, 0, 1)
        failed = [i for i, ok in enumerate(decoded) if not ok]
        if failed:
            for i, image in zip(failed, on_device([jpegs[i] for i in failed])):
                found[i] = image
        return found

    return decode


def _size(jpeg: bytes) -> tuple[int, int]:
    """(height, width) from the header, or (0, 0) where simplejpeg cannot read it (then `on_device` tries)."""
    try:
        height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
    except ValueError:
        return 0, 0
    return height, width


def _decode_into(jpegs: Sequence[bytes], outs: Sequence[np.ndarray]) -> list[bool]:
    """Each JPEG's RGB pixels into its out array; whether each could be decoded."""
    return [_decode_one(jpeg, out) for jpeg, out in zip(jpegs, outs)]


def _decode_one(jpeg: bytes, out: np.ndarray) -> bool:
    if not out.size:
        return False
    try:
        simplejpeg.decode_jpeg(jpeg, colorspace="RGB", buffer=out)
    except ValueError:
        return False
    return True
