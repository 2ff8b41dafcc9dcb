"""Throughput of a repeated step: warm up, then run for a fixed time, synchronizing the GPU; and
the garbage collector's passes, timed."""

from __future__ import annotations

import collections
import gc
import sys
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


def collections_timer(found: list[tuple], census: bool = False) -> Callable[[str, dict], None]:
    """A `gc.callbacks` entry that appends (generation, milliseconds, objects collected, when it started)
    for each collection to `found`; with `census`, before each full one also (-1, objects in the
    oldest generation, objects frozen, modules imported, the oldest generation's most common types)."""
    started = [0.0]

    def timer(phase: str, info: dict) -> None:
        if phase == "start":
            if census and info["generation"] == 2:
                objects = gc.get_objects(2)
                kinds = collections.Counter(type(o).__name__ for o in objects).most_common(8)
                found.append((-1, len(objects), gc.get_freeze_count(), len(sys.modules), kinds))
                del objects
            started[0] = time.perf_counter()
        else:
            found.append((info["generation"], (time.perf_counter() - started[0]) * 1e3, info["collected"], started[0]))

    return timer
