"""Small real models for tests of the job's machinery, where what a model finds does not matter."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from batch_predict.records import Detections, Record


class BrightnessModel:
    """A real, if simple, detector: one whole-image box scored by mean brightness.

    Raises on records whose key is in `poison`; like a GPU with little memory, raises
    torch's out-of-memory error for batches larger than `memory` or holding a key in
    `too_big`; calls `on_predict` before each batch (to make things happen mid-job).
    """

    input_kind = "image"
    same_size_batches = False
    labels: dict[int, str] = {}

    def __init__(
        self,
        poison: frozenset[str] = frozenset(),
        memory: int | None = None,
        too_big: frozenset[str] = frozenset(),
        on_predict: Callable[[Sequence[Record]], None] | None = None,
    ) -> None:
        self.poison, self.memory, self.too_big, self.on_predict = poison, memory, too_big, on_predict
        self.calls: list[int] = []

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        self.calls.append(len(records))
        if self.on_predict is not None:
            self.on_predict(records)
        keys = {r.key for r in records}
        if (self.memory is not None and len(records) > self.memory) or self.too_big & keys:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if bad := self.poison & keys:
            raise ValueError(f"cannot handle {sorted(bad)}")
        return [
            Detections(
                boxes=np.array([[0, 0, r.width, r.height]], np.float32),
                scores=np.array([r.array.mean() / 255], np.float32),
                classes=np.array([1]),
            )
            for r in records
        ]

    def describe(self) -> dict[str, object]:
        return {"backend": "brightness"}
