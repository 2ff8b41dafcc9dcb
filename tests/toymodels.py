"""A small real model for tests of the job's machinery, where what a model finds does not matter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from batch_predict.records import Detections, Record


class MeanColourModel:
    """A real, if trivial, detector: one whole-image box scored by mean brightness.

    Fails any batch holding a record whose key starts with "poison", as a model fails on
    an input it cannot handle. Like a GPU with little memory, raises torch's own
    out-of-memory error for batches larger than `memory`, or holding a key that starts
    with "too-big". Counts its calls, and runs `on_predict` before each (to make things
    happen mid-job).
    """

    input_kind = "image"
    labels = {1: "image"}

    def __init__(
        self,
        memory: int | None = None,
        on_predict: Callable[[Sequence[Record]], None] | None = None,
        same_size_batches: bool = True,
    ) -> None:
        self.memory, self.on_predict, self.same_size_batches = memory, on_predict, same_size_batches
        self.batch_sizes: list[int] = []

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        self.batch_sizes.append(len(records))
        if self.on_predict is not None:
            self.on_predict(records)
        if (self.memory is not None and len(records) > self.memory) or any(r.key.startswith("too-big") for r in records):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(r.key.startswith("poison") for r in records):
            raise ValueError("cannot handle poison")
        return [
            Detections(
                boxes=np.array([[0, 0, r.width, r.height]], np.float32),
                scores=np.array([r.array.mean() / 255], np.float32),
                classes=np.array([1]),
            )
            for r in records
        ]

    def describe(self) -> dict[str, object]:
        return {"backend": "test"}


class StagedMeanColourModel(MeanColourModel):
    """`MeanColourModel` that runs in stages as `TensorModel` does, so that the pipeline prepares
    batches ahead and collects them on its collecting thread; failures and out-of-memory happen
    when a batch is launched (`fail_at="launch"`) or only when it is collected (`"collect"`).
    Records which stage each batch went through, and on which thread and when it was collected.
    It declares no `launch_threads`, as a staged model written before that attribute did not."""

    def __init__(self, *args, fail_at: str = "launch", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at
        self.prepared: list[int] = []
        self.launched: list[int] = []
        self.collected_on: set[str] = set()
        self.collected_at: list[float] = []

    def prepare(self, records: Sequence[Record]) -> list[Record]:
        self.prepared.append(len(records))
        return list(records)

    def launch(self, prepared: list[Record]) -> list[Record] | list[Detections]:
        self.launched.append(len(prepared))
        return prepared if self.fail_at == "collect" else MeanColourModel.predict(self, prepared)

    def collect(self, launched: list) -> list[Detections]:
        self.collected_on.add(threading.current_thread().name)
        self.collected_at.append(time.perf_counter())
        return MeanColourModel.predict(self, launched) if self.fail_at == "collect" else launched

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        return self.collect(self.launch(self.prepare(records)))
