"""Throughput of a repeated step: warm up, then run for a fixed time, synchronizing the GPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def throughput(step: Callable[[], int], seconds: float, warmup: int = 2) -> dict[str, float]:
    """Items per second of `step` (which returns how many items it did), timed over about `seconds`.

    The GPU is synchronized before the clock starts and before it is read, so queued work
    counts; per-step times are host times (they include any wait for the GPU).
    """
    for _ in range(warmup):
        step()
    sync()
    items, steps = 0, 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or steps < 2:
        items += step()
        steps += 1
    sync()
    elapsed = time.perf_counter() - started
    return {"items_per_s": round(items / elapsed, 1), "items": items, "steps": steps, "seconds": round(elapsed, 2)}
