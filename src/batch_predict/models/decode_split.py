"""Each batch's JPEGs shared between CPU threads and the GPU's decoders, the share found by measuring.

Decoding on the GPU takes SMs from the model; decoding on the CPU takes cores, memory bandwidth
and, around each call, the interpreter. Which costs the job less depends on the machine, the
model and the images, and shows only in the job's own rate (docs/benchmarks.md), so
`DecodeSplit` climbs on that rate. The split is made inside the batch being prepared
(`split_decoder`): a share changed holds from the next batch prepared, not after the pipeline's
queues have drained, and the CPU's images land in one pinned buffer, copied over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
import torch

from ..decode import jpeg_size, usable_cpus
from .device_decode import JpegDecoder, open_nvimgcodec

log = logging.getLogger("batch_predict")


class DecodeSplit:
    """How many of each batch's JPEGs CPU threads decode, for a model that decodes on its GPU.

    It climbs: it measures images per second over a window of batches at one share, tries a
    neighbouring share, keeps it if it was faster by `margin`, and otherwise goes back. A try holds
    a share that may be slower for a settle and a window, and on the GPU machine a share the CPU
    did not pay for ran 13-44% slower (docs/benchmarks.md), so tries are paid from a `budget`: the
    batches of tries that lost stay within that fraction of the job's batches so far. A short job
    (a few hundred batches, seconds on a GPU) then keeps every JPEG on the GPU, where a try could
    not pay for itself; a long one tries its neighbours every few hundred batches, following a job
    whose images change, at a cost of `budget` times a try's loss at most.
    The first `settle` batches after a change are not counted: the batches prepared ahead at the
    share before, and those the GPU runs back to back from the queues while the
    pipeline finds its new pace. The decoder asks `cpu_count(n)` of each batch; the model
    reports each batch it finished to `batch_done`, with the GPU's own time of it.
    """

    #: The shares tried, from all on the GPU to mostly on the CPU.
    SHARES = (0.0, 0.125, 0.25, 0.5, 0.75)

    def __init__(
        self, window: int = 12, settle: int = 8, budget: float = 0.05, shares: tuple[float, ...] = SHARES,
        margin: float = 0.1,
    ) -> None:
        self.shares = shares
        self._window, self._settle, self._budget, self._margin = window, settle, budget, margin
        self._index = 0  # the share in force
        self._home = 0  # the share held, which `_index` leaves while a neighbour is tried
        self._rates: dict[int, float] = {}
        self._measured_at: dict[int, int] = {}  # when each share's rate was last measured, in batches seen
        self._settling = settle
        self._seen = 0  # batches finished, all told
        self._lost = 0  # batches spent on tries that lost
        self._trying = 0  # batches spent on the try under way
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
            self._seen += 1
            self._trying += self._index != self._home
            if self._settling:
                self._settling -= 1
                self._since = now
                return
            self._batches += 1
            self._images += images
            if self._batches < self._window:
                return
            self._rates[self._index] = self._images / max(now - (self._since or now), 1e-9)
            self._measured_at[self._index] = self._seen
            self._batches = self._images = 0
            self._since = now
            self._choose()

    def _choose(self) -> None:
        # Each step towards the CPU must be `margin` faster than the step before to be taken: a
        # window's rate varies by a tenth or more from one window to the next on the GPU machine
        # (docs/benchmarks.md), and a share taken on noise costs the job for as long as it holds.
        here = self._index
        best = max(self._rates, key=lambda i: self._rates[i] / (1 + self._margin) ** i)
        if here != self._home:  # a try ends
            self._lost += self._trying if best != here else 0
            self._trying = 0
        self._move(best)
        if best != here or self._lost + self._settle + self._window > self._budget * self._seen:
            return
        # The neighbour measured longest ago (one never measured first, the larger share first).
        neighbours = [i for i in (here + 1, here - 1) if 0 <= i < len(self.shares)]
        tried = min(neighbours, key=lambda i: self._measured_at.get(i, -1))
        self._rates.pop(tried, None)  # measured again, not judged by a rate from another time
        self._move(tried, home=here)

    def _move(self, index: int, home: int | None = None) -> None:
        """Put share `index` in force, holding share `home` (`index` itself unless `index` is tried)."""
        self._home = index if home is None else home
        if index != self._index:
            self._index, self._settling = index, self._settle

    def describe(self) -> dict[str, object]:
        return {"cpu_share": self.cpu_share,
                "images_per_s_by_share": {self.shares[i]: round(r) for i, r in sorted(self._rates.items())}}


#: Pixels of one batch's CPU share held in pinned host memory at most: 570 photos of 640x480, but only
#: two of 8000x8000, whose share of a batch of 256 would otherwise pin 6 GB of the host's memory.
HOST_BYTES = 1 << 29

#: Decodes each JPEG into its place of one host buffer, as HxWx3 RGB: `host[start : start + height * width * 3]`
#: for its start and (height, width) from its header; says whether each could be decoded.
HostDecoder = Callable[[Sequence[bytes], torch.Tensor, Sequence[int], Sequence[tuple[int, int]]], list[bool]]


def split_decoder(
    on_device: JpegDecoder, split: DecodeSplit, device: torch.device, threads: int | None = None,
    host_bytes: int = HOST_BYTES, on_host: HostDecoder | None = None,
) -> JpegDecoder:
    """A `JpegDecoder` that sends `split`'s share of each call's JPEGs to the CPU while `on_device`
    decodes the rest, at the same time. The CPU's images are decoded by `on_host` (by default
    nvImageCodec's CPU decoder where it is installed, else simplejpeg; `threads` threads, half the
    usable cores by default) into one pinned host buffer of at most `host_bytes` (the share stops
    at the image that would not fit), copied to `device` in one transfer that does not wait; a
    JPEG the CPU cannot read goes to `on_device` with the rest, and so does the whole share if
    `on_host` fails (said once, in a warning)."""
    # Half the cores: the job's own threads (reading, preparing, launching, collecting, writing)
    # need the rest. With a decoding thread on every core, a share of an eighth cost the job 7% on
    # the GPU machine, against 2% with half of them (docs/benchmarks.md): the threads that feed the
    # GPU waited for a core.
    workers = threads or max(1, usable_cpus() // 2)
    on_host = on_host or nvimgcodec_host_decoder(workers) or simplejpeg_host_decoder(workers)
    # The CPU's share is decoded on a thread of its own while this one calls `on_device`.
    beside = ThreadPoolExecutor(1, thread_name_prefix="batch-predict-host-jpegs")
    warned = False

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        nonlocal warned
        sizes = [_size(jpeg) for jpeg in jpegs[: split.cpu_count(len(jpegs))]]
        lengths = np.array([height * width * 3 for height, width in sizes], dtype=np.int64)
        ends = np.cumsum(lengths)
        count = int(np.searchsorted(ends, host_bytes, side="right"))
        if not count:
            return list(on_device(jpegs))
        sizes, ends = sizes[:count], ends[:count]
        starts = ends - lengths[:count]
        host = torch.empty(int(ends[-1]), dtype=torch.uint8, pin_memory=device.type == "cuda")
        task = beside.submit(on_host, jpegs[:count], host, starts.tolist(), sizes)
        found: list[torch.Tensor | None] = [None] * count
        if count < len(jpegs):
            found += on_device(jpegs[count:])  # while the CPU decodes its share
        try:
            decoded = task.result()
        except Exception as exc:  # a way to go faster, not to fail: `on_device` decodes what it would have
            if not warned:
                log.warning("decoding JPEGs on the CPU failed (%s: %s); the GPU decodes them", type(exc).__name__, exc)
                warned = True
            decoded = [False] * count
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


def simplejpeg_host_decoder(threads: int) -> HostDecoder:
    """simplejpeg on `threads` threads, each image straight into its place (the GIL released while it
    decodes, taken again for the next image)."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="batch-predict-jpeg")

    def decode(jpegs: Sequence[bytes], host: torch.Tensor, starts: Sequence[int], sizes: Sequence[tuple[int, int]]) -> list[bool]:
        pixels = host.numpy()
        outs = [pixels[start : start + height * width * 3].reshape(height, width, 3) for start, (height, width) in zip(starts, sizes)]
        # A few tasks, not one per image: each hand-over to a thread costs the GIL some microseconds.
        tasks = [pool.submit(_decode_into, jpegs[i::threads], outs[i::threads]) for i in range(min(threads, len(jpegs)))]
        decoded = [False] * len(jpegs)
        for i, task in enumerate(tasks):
            decoded[i::threads] = task.result()
        return decoded

    return decode


def nvimgcodec_host_decoder(threads: int) -> HostDecoder | None:
    """nvImageCodec's CPU decoder (libjpeg-turbo on threads of its own: `threads` less one, the core
    it leaves to the threads that feed the GPU), a call a batch; None where nvImageCodec is not
    installed.

    One call a batch takes the interpreter once: a thread that takes it again after each image
    waits, beside the job's other threads, up to a switch interval each time, and decoded half
    as fast in `benchmarks/host.py`'s `gil_convoy` (docs/benchmarks.md)."""
    opened = open_nvimgcodec(None, lambda m: [m.Backend(m.BackendKind.CPU_ONLY)], max(1, threads - 1), sample_format="I_RGB")
    if opened is None:
        return None
    nvimgcodec, decoder, params = opened
    lock = threading.Lock()  # a batch bisected on another thread decodes again meanwhile

    def decode(jpegs: Sequence[bytes], host: torch.Tensor, starts: Sequence[int], sizes: Sequence[tuple[int, int]]) -> list[bool]:
        readable = [i for i, (height, width) in enumerate(sizes) if height and width]  # those with a header
        images: list = [None] * len(jpegs)
        try:
            with lock:
                found = decoder.decode([nvimgcodec.CodeStream(jpegs[i]) for i in readable], params=params)
        except (RuntimeError, ValueError):  # a stream it cannot even parse: `on_device` tries each image
            found = []
        for i, image in zip(readable, found):
            images[i] = image
        decoded = [image is not None and tuple(image.shape) == (height, width, 3) for image, (height, width) in zip(images, sizes)]
        # Into the buffer in one copy, for the same reason; an image that failed leaves its place unwritten.
        parts = [torch.from_numpy(np.asarray(image).reshape(-1)) if ok else torch.empty(height * width * 3, dtype=torch.uint8)
                 for image, ok, (height, width) in zip(images, decoded, sizes)]
        # The buffer was made in the preparing thread, under the model's inference mode, which does
        # not reach this thread: writing it here needs the mode too.
        with torch.inference_mode():
            torch.cat(parts, out=host)
        return decoded

    return decode


def _size(jpeg: bytes) -> tuple[int, int]:
    """(height, width) from the header, or (0, 0) where it has none (then `on_device` tries)."""
    width, height = jpeg_size(jpeg) or (0, 0)
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
