"""A detector that takes tensors and returns tensors: every backend but the TF OD API one.

A backend only loads its weights and calls them (a `Runner`). Everything around the call is
here and the same for all: decode and preprocess the batch on the device, run, decode the
head with NMS, copy back once, map boxes to original pixels. The stages are separate methods
so that a pipeline can overlap them (preparing batch n+1 while batch n runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..records import Detections, Record
from ..spec import ModelSettings
from .base import InputKind, ModelLoadError
from .decode_split import DecodeSplit, split_decoder
from .decoders import DECODERS, DecodeContext
from .detections import PaddedDetections, to_detections
from .device_decode import device_decoder
from .model_spec import ModelSpec
from .preprocess import Prepared, Preprocessor


class Runner(Protocol):
    """Calls the loaded weights on a prepared batch (a tensor, or a list for resize `none`)."""

    def __call__(self, inputs: Any) -> Any: ...

    def describe(self) -> dict[str, object]: ...


class ModuleRunner:
    """Calls a PyTorch module (scripted, exported or eager) on a prepared batch.

    torchvision's detection models take a list of images, so with `images_as_list` a batch
    tensor is handed over as one.
    """

    def __init__(self, module: Any, description: Mapping[str, object], *, images_as_list: bool = False) -> None:
        self.module = module
        self._description = dict(description)
        self._images_as_list = images_as_list

    def __call__(self, inputs: Any) -> Any:
        if self._images_as_list and isinstance(inputs, torch.Tensor):
            inputs = list(inputs)
        if isinstance(self.module, torch.jit.ScriptModule):
            # TorchScript's optimizing executor profiles the first calls of every new input
            # shape and compiles fusions for it: seconds per shape, for no gain on a GPU
            # (docs/benchmarks.md). Unoptimized, it runs the graph as loaded, from the first call.
            with torch.jit.optimized_execution(False):
                return self.module(inputs)
        return self.module(inputs)

    def describe(self) -> dict[str, object]:
        return dict(self._description)


def torch_device(requested: str) -> torch.device:
    """The torch device for `--device`: `auto` is the first GPU when PyTorch sees one."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    index = requested.partition(":")[2] or "0"
    if not torch.cuda.is_available():
        raise ModelLoadError(f"--device {requested}: PyTorch sees no GPU")
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {requested}: PyTorch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(f"cuda:{index}")


def open_device(device: torch.device) -> None:
    """Open `device`'s CUDA context, if it is a GPU: 0.8 s on an H200, which a job spends while it
    lists its inputs (`models.load_runtime`)."""
    if device.type == "cuda":
        torch.zeros(1, device=device)


def open_torch_runtime(settings: ModelSettings) -> None:
    """A PyTorch backend's hook for `models.load_runtime`: the GPU `settings.device` names opened."""
    open_device(torch_device(settings.device))


@dataclasses.dataclass(frozen=True)
class Launched:
    """A batch the model runs on: its outputs, once `done` (a CUDA event) has happened."""

    outputs: Any
    prepared: Prepared
    done: torch.cuda.Event | None


class TensorModel:
    """`Model` for any `Runner`, with pre- and post-processing as its `ModelSpec` says.

    On CUDA the model takes JPEGs encoded (`input_kind` "jpeg") and decodes each batch's on the
    GPU, but for the share its `decode_split` gives its CPU threads, while the pipeline's CPU
    workers decode every other image; on the CPU the workers decode all and it takes pixels
    ("image"). `input_dtype` is the dtype its runner casts batches to, if any
    (`speed.input_dtype`): batches are prepared in it.
    """

    same_size_batches = False

    def __init__(
        self,
        runner: Runner,
        spec: ModelSpec,
        labels: Mapping[int, str],
        device: torch.device,
        *,
        backend: str,
        decode_on_device: bool | None = None,
        input_dtype: torch.dtype | None = None,
    ) -> None:
        self.labels = dict(labels)
        self.spec = spec
        self.device = device
        self._runner = runner
        self._backend = backend
        self._decoder_name = spec.require_decoder()
        self._decoder = DECODERS[self._decoder_name]
        on_device = device.type == "cuda" if decode_on_device is None else decode_on_device
        self.input_kind: InputKind = "jpeg" if on_device else "image"
        self.decode_split = DecodeSplit() if on_device else None
        self._preprocessor = Preprocessor(spec.input, device, dtype=input_dtype)
        self._streams = DeviceStreams(device)
        self._class_ids = np.array(list(self.labels), np.int64) if spec.class_ids == "label_order" else None
        with ThreadPoolExecutor(1, thread_name_prefix="batch-predict-setup") as setup:
            # Setting the GPU's JPEG decoders up takes about a second (nvjpeg's handle, nvImageCodec's
            # engines): it runs beside the fit check, which spends as long planning the model's kernels.
            decoder = setup.submit(device_decoder, device, self._largest_batch()) if on_device else None
            self._check_fit()
            if decoder is not None and self.decode_split is not None:
                self._preprocessor.jpeg_decoder = split_decoder(decoder.result(), self.decode_split, device)
        self.launch_threads = 2 if self._launch_waits_for_device() else 1

    def _check_fit(self) -> None:
        """Run blank images through every stage, so a spec that does not fit the model fails at
        load, with one message, rather than as an error line for every record.

        Where the runner pads batches to a few sizes because each new input shape is costly (a
        GPU, a compiled model: `PaddingRunner`), the blanks are one batch of the largest, the size
        the job runs at: its first call, about a second of kernel planning on a GPU
        (docs/benchmarks.md), is paid here, beside the decoders' set-up, instead of by the first
        batch. If that batch runs out of memory, one image checks the fit, and the pipeline's
        splitting later finds the size that fits.
        """
        largest = self._largest_batch()
        try:
            try:
                self._run_blanks(largest)
            except torch.cuda.OutOfMemoryError:
                if largest == 1:
                    raise
                torch.cuda.empty_cache()
                self._run_blanks(1)
        except Exception as exc:  # any failure here means the spec and the model disagree
            message = " ".join(str(exc).split())[:600]
            raise ModelLoadError(
                f"{self._backend}: the model and its spec ({self.spec.source}) do not fit: {type(exc).__name__}: {message}"
            ) from None

    def _largest_batch(self) -> int:
        """The batch size the job runs at where the runner pads to a few sizes, else 1."""
        return self._runner.sizes[-1] if isinstance(self._runner, PaddingRunner) else 1

    def _launch_waits_for_device(self) -> bool:
        """Whether calling the model on a batch holds the calling thread about as long as the GPU
        takes to run it: a model that waits on the GPU inside its forward (torchvision's detectors
        read box counts back before each NMS, an ONNX session returns its outputs on the host) or
        whose host work is as long as its GPU work. One thread launching such a model leaves the
        GPU idle while it works towards the next batch's kernels; two at once, each on a CUDA stream
        of its own, ran Faster R-CNN's forward 1.4x as fast on an H200 (docs/benchmarks.md, 0d).
        Timed on one more call, once the fit check has paid for the first call's set-up: one blank
        image, which a runner that pads batches pads to the size the fit check ran (the job's)."""
        if self.device.type != "cuda":
            return False
        began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            prepared = self._preprocessor.prepare(self._blanks(1))
            torch.cuda.synchronize(self.device)
            began.record()
            started = time.perf_counter()
            self._runner(prepared.inputs)
            held = time.perf_counter() - started
            ended.record()
            ended.synchronize()
        return held >= 0.9 * began.elapsed_time(ended) / 1e3

    def _blanks(self, count: int) -> list[torch.Tensor]:
        return [torch.zeros((3, 64, 64), dtype=torch.uint8, device=self.device)] * count

    def _run_blanks(self, count: int) -> None:
        with torch.inference_mode():
            prepared = self._preprocessor.prepare(self._blanks(count))
            self.decode(self._runner(prepared.inputs), prepared)

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """Decode and preprocess a batch. On CUDA this runs on a stream of its own, so that a
        pipeline thread can prepare batch n+1 while batch n runs on the default stream."""
        with torch.inference_mode(), self._streams.preparing():
            prepared = self._preprocessor.from_images([r.array if r.array is not None else r.encoded or b"" for r in records])
            return self._streams.hand_over(prepared)

    def launch(self, prepared: Prepared) -> Launched:
        """Start the model on a prepared batch, on the current stream, without waiting for it."""
        try:
            with torch.inference_mode(), self._streams.launching(own_stream=self.launch_threads > 1):
                self._streams.receive(prepared)
                outputs = self.infer(prepared)
                done = self._streams.mark_done()
        except torch.cuda.OutOfMemoryError:
            # The allocator keeps the failed batch's blocks cached; free them, so that the
            # halves the pipeline retries with get that memory.
            del prepared
            torch.cuda.empty_cache()
            raise
        return Launched(outputs, prepared, done)

    def collect(self, launched: Launched) -> list[Detections]:
        """Wait for a launched batch and decode its detections (one copy to the host), on a
        stream of its own, so that the next batch runs on the GPU meanwhile."""
        prepared = launched.prepared
        with torch.inference_mode(), self._streams.collecting(launched.done):
            padded = self.decode(launched.outputs, prepared)
        if self.decode_split is not None:
            self.decode_split.batch_done(len(prepared.image_sizes), self._streams.seconds_at(launched.done))
        return to_detections(padded, prepared.geometry, prepared.image_sizes, self.spec.thresholds.score, self._class_ids)

    def infer(self, prepared: Prepared) -> Any:
        return self._runner(prepared.inputs)

    def decode(self, outputs: Any, prepared: Prepared) -> PaddedDetections:
        count = len(prepared.geometry.scale)
        if prepared.input_size is None:
            input_sizes = np.array([image.shape[-1:-3:-1] for image in prepared.inputs], np.float32)
        else:
            input_sizes = np.tile(np.array(prepared.input_size[::-1], np.float32), (count, 1))
        context = DecodeContext(count, prepared.input_size, input_sizes, self.spec)
        return self._decoder(outputs, context)

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        return self.collect(self.launch(self.prepare(records)))

    def describe(self) -> dict[str, object]:
        spec = self.spec
        return {
            "backend": self._backend,
            **self._runner.describe(),
            "device": str(self.device),
            "input_kind": self.input_kind,
            "input": {
                "size": spec.input.size, "resize": spec.input.resize, "layout": spec.input.layout,
                "dtype": spec.input.dtype, "channels": spec.input.channels,
            },
            "decoder": self._decoder_name,
            "launch_threads": self.launch_threads,
            "thresholds": vars(spec.thresholds),
            "labels": len(self.labels),
            "spec": spec.source,
            **({"jpeg_decoding": self.decode_split.describe()} if self.decode_split is not None else {}),
        }


class DeviceStreams:
    """The CUDA streams a batch moves through: prepared on one, run on the caller's, its
    detections collected on a third; and the hand-overs between them. On the CPU, nothing.

    The collecting stream is of high priority: its kernels are few and small, and the host reads
    each one's result back before it queues the next, so at the model's priority each waited for
    the model's blocks to leave room, and on an H200 the collecting thread found every batch long
    done on the GPU when it came to it; at high priority, YOLOX-Nano's job ran 2-10% faster there
    (docs/benchmarks.md, 0b).
    """

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._prepare = torch.cuda.Stream(device) if cuda else None
        # -1: above the model's stream, of PyTorch's default priority 0.
        self._collect = torch.cuda.Stream(device, priority=-1) if cuda else None
        self._epoch = torch.cuda.Event(enable_timing=True) if cuda else None
        self._launching = threading.local()
        if self._epoch is not None:
            self._epoch.record(torch.cuda.current_stream(device))

    def preparing(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self._prepare) if self._prepare is not None else contextlib.nullcontext()

    def launching(self, *, own_stream: bool) -> contextlib.AbstractContextManager:
        """The stream a batch runs on: the calling thread's current one, or, with `own_stream`,
        one kept for the calling thread, so that batches launched from several threads run side by side."""
        if not own_stream or self._prepare is None:
            return contextlib.nullcontext()
        stream = getattr(self._launching, "stream", None)
        if stream is None:
            stream = self._launching.stream = torch.cuda.Stream(self._prepare.device)
        return torch.cuda.stream(stream)

    def hand_over(self, prepared: Prepared) -> Prepared:
        if self._prepare is None:
            return prepared
        ready = torch.cuda.Event()
        ready.record(self._prepare)
        return dataclasses.replace(prepared, ready=ready)

    def receive(self, prepared: Prepared) -> None:
        """Make the current stream wait for the batch, and keep its memory from being reused by
        the prepare stream until the current stream is done with it."""
        if prepared.ready is None or self._prepare is None:  # both None on the CPU
            return
        current = torch.cuda.current_stream(self._prepare.device)
        current.wait_event(prepared.ready)
        for tensor in prepared.inputs if isinstance(prepared.inputs, list) else [prepared.inputs]:
            tensor.record_stream(current)

    def mark_done(self) -> torch.cuda.Event | None:
        """An event that happens when the work queued so far on the current stream is done."""
        if self._collect is None:
            return None
        done = torch.cuda.Event(enable_timing=True)
        done.record(torch.cuda.current_stream(self._collect.device))
        return done

    def seconds_at(self, done: torch.cuda.Event | None) -> float | None:
        """When `done` happened on the GPU, in seconds from these streams' making; None on the CPU.
        A batch's own finishing time, where the host's view of it (when collected) bunches up
        whenever the collecting thread falls behind and catches up: a rate measured over a few
        batches by the host could be off by half (`DecodeSplit`, docs/benchmarks.md)."""
        if self._epoch is None or done is None:
            return None
        return self._epoch.elapsed_time(done) / 1e3

    @contextlib.contextmanager
    def collecting(self, done: torch.cuda.Event | None) -> Iterator[None]:
        """Run on the collect stream, after `done`. Every decoder ends by copying its result to
        the host, which waits for this stream, so the batch's outputs are no longer in use when
        their memory goes back to the stream that made them."""
        if self._collect is None or done is None:
            yield
            return
        self._collect.wait_event(done)
        with torch.cuda.stream(self._collect):
            yield


def halvings(batch_size: int) -> tuple[int, ...]:
    """`batch_size` and its halves, rounded up, down to 1: the sizes that bisecting a failing
    batch and splitting one that ran out of memory cut batches to."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return tuple(sizes)


class PaddingRunner:
    """Runs tensor batches only at the given batch sizes: chunks of the largest, the last one
    padded with zeros up to a size that holds it, outputs joined and trimmed back to the real
    images.

    A model exported with a fixed batch dimension takes one size. On a GPU each new input
    shape costs about a second (cuDNN plans every convolution anew: 1.4 s for YOLOX-Nano's
    first call at 256 on an H200, 1.2 s at 64, 0.02 s after; docs/benchmarks.md), and a job
    meets a new one in its last batch and wherever a batch is bisected. So a short chunk is
    padded to the smallest size already run that holds it, computing blank images instead of
    paying for a shape, and to the smallest of `sizes` only where none has run. A size that ran
    out of memory is not padded to again: the smaller halves the pipeline retries with must fit.
    Lists of differently sized images pass through.
    """

    def __init__(self, runner: Runner, sizes: Sequence[int]) -> None:
        self._runner = runner
        self._sizes = sorted(set(sizes))
        self._ran: set[int] = set()
        self._too_big: int | None = None  # the smallest size that ran out of memory

    @property
    def inner(self) -> Runner:
        return self._runner

    @property
    def sizes(self) -> list[int]:
        """The batch sizes it runs at, smallest first."""
        return list(self._sizes)

    def __call__(self, inputs: Any) -> Any:
        if not isinstance(inputs, torch.Tensor):
            return self._runner(inputs)
        count, largest = inputs.shape[0], self._sizes[-1]
        outputs = []
        for start in range(0, count, largest):
            chunk = inputs[start : start + largest]
            size = self._size_for(len(chunk))
            if size > len(chunk):
                chunk = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
            try:
                outputs.append(self._runner(chunk))
            except torch.cuda.OutOfMemoryError:
                self._too_big = min(size, self._too_big or size)
                raise
            self._ran.add(size)
        return _join(outputs, count)

    def _size_for(self, count: int) -> int:
        """The smallest size run before that holds `count` and fits, else the smallest of all that holds it."""
        fits = [s for s in self._sizes if s >= count and (self._too_big is None or s < self._too_big)]
        ran = [s for s in fits if s in self._ran]
        return min(ran) if ran else min(fits or [s for s in self._sizes if s >= count])

    def describe(self) -> dict[str, object]:
        return {**self._runner.describe(), "batch_sizes": self.sizes}


def at_few_batch_sizes(runner: Runner, batch_size: int, *, export_batch: int | None, costly_shapes: bool) -> Runner:
    """`runner` called only at `export_batch` when the model was exported with one, else, when
    new shapes are `costly_shapes` (a GPU, a compiled model), at `halvings(batch_size)`."""
    if export_batch is not None:
        return PaddingRunner(runner, (export_batch,))
    if costly_shapes:
        return PaddingRunner(runner, halvings(batch_size))
    return runner


def _join(chunks: list[Any], count: int) -> Any:
    """The outputs of chunks as of one call on the first `count` images: batched tensors (alone, or in
    a dict, tuple or list of outputs) joined along the batch; a list of one dict per image
    (torchvision's detection models) joined as a list."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)[:count]
    if isinstance(first, Mapping):
        return {key: _join([c[key] for c in chunks], count) for key in first}
    if isinstance(first, list) and first and all(isinstance(item, Mapping) for item in first):
        return [image for chunk in chunks for image in chunk][:count]
    if isinstance(first, (tuple, list)):
        return type(first)(_join([c[i] for c in chunks], count) for i in range(len(first)))
    raise TypeError(f"cannot join model outputs of type {type(first).__name__}")
