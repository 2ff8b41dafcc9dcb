"""The job's timeline: one line per batch written, kept per unit, so the report can plot throughput.

A unit's lines are written when it commits, beside its commit record, and never appended
to: object stores cannot append, and a unit that is abandoned and redone must not count
twice. Reruns and concurrent workers each write their own units' files; `job_outputs.
read_timeline` merges them on the clock.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import Any

from ..observe.observers import JobObserver
from ..records import Outcome, Prediction
from .files import write_atomically
from .layout import OutputLayout
from .sinks import UnitCounts
from ..inputs.units import Unit


class TimelineWriter(JobObserver):
    """Collects each unit's batch lines (`t` since this run started, `time` on the wall clock) and
    writes them at its commit."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        self._started = time.time()
        self._lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def job_started(self, units) -> None:
        self._started = time.time()

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        now = time.time()
        predicted = sum(isinstance(o, Prediction) for o in outcomes)
        line = {"t": round(now - self._started, 3), "predicted": predicted, "failed": len(outcomes) - predicted,
                "time": round(now, 3)}
        with self._lock:
            self._lines[unit.index].append(line)

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        with self._lock:
            lines = self._lines.pop(unit.index, [])
        write_atomically(self.layout.unit_timeline(unit.index, unit.count),
                         "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))

    def unit_abandoned(self, unit: Unit) -> None:
        with self._lock:
            self._lines.pop(unit.index, None)
