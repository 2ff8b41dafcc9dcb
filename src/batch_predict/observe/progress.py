"""How a running job shows its progress: a bar on a terminal, one log line every so often in a pod,
and a table at the end.

Records are not known until read, so progress is measured in input bytes: a unit's bytes
count whole once it commits, and while it runs, by the size of the records read so far
(an estimate: framing, base64 and compression make it inexact, and the commit corrects it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from tqdm import tqdm

from .observers import JobObserver, unit_bytes
from ..records import Outcome, Prediction, Record, FailedRecord
from ..outputs.sinks import JobSummary, UnitCounts
from ..inputs.units import Unit

log = logging.getLogger("batch_predict")

#: TFRecord framing around each record's bytes: length, its CRC, the data's CRC.
_RECORD_OVERHEAD = 16


@dataclass(frozen=True)
class Snapshot:
    """This run's progress at one moment."""

    elapsed_s: float
    records_read: int
    predicted: int
    failed: int
    bytes_done: int
    bytes_total: int
    units_committed: int
    units: int

    @property
    def records_per_s(self) -> float:
        return (self.predicted + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the byte rate so far; None before anything is done."""
        if self.bytes_done <= 0 or self.elapsed_s <= 0:
            return None
        return max(0.0, self.bytes_total - self.bytes_done) * self.elapsed_s / self.bytes_done

    def to_json(self) -> dict[str, object]:
        eta = self.eta_s
        return {
            "elapsed_s": round(self.elapsed_s, 1), "records_read": self.records_read, "predicted": self.predicted,
            "failed": self.failed, "records_per_s": round(self.records_per_s, 2), "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "percent": round(100 * self.bytes_done / self.bytes_total, 1) if self.bytes_total else None,
            "eta_s": None if eta is None else round(eta), "units_committed": self.units_committed, "units": self.units,
        }


class Tally(JobObserver):
    """This run's counts, kept from the events of every thread; `snapshot` reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._bytes_total = self._bytes_committed = self._units = self._units_started = self._units_committed = 0
        self._running: dict[int, list[int]] = {}  # unit index -> [bytes read (estimate), unit bytes]
        self._read = self._predicted = self._failed = 0
        self.error_types: Counter[str] = Counter()

    def job_started(self, units: Sequence[Unit]) -> None:
        with self._lock:
            self._units = len(units)
            self._bytes_total = sum(unit_bytes(u) for u in units)

    def unit_started(self, unit: Unit) -> None:
        with self._lock:
            # Rates count from the first unit, not from before the model loaded, so the ETA is not skewed.
            if not self._units_started:
                self._started = time.perf_counter()
            self._units_started += 1
            self._running[unit.index] = [0, unit_bytes(unit)]

    def record_read(self, unit: Unit, item: Record | FailedRecord) -> None:
        size = len(item.encoded) + _RECORD_OVERHEAD if isinstance(item, Record) and item.encoded is not None else 0
        with self._lock:
            self._read += 1
            if unit.index in self._running:
                self._running[unit.index][0] += size

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        predicted = sum(isinstance(o, Prediction) for o in outcomes)
        with self._lock:
            self._predicted += predicted
            self._failed += len(outcomes) - predicted
            self.error_types.update(o.error_type for o in outcomes if isinstance(o, FailedRecord))

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        with self._lock:
            self._running.pop(unit.index, None)
            self._bytes_committed += unit_bytes(unit)
            self._units_committed += 1

    def unit_abandoned(self, unit: Unit) -> None:
        with self._lock:
            self._running.pop(unit.index, None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            running = sum(min(done, size) for done, size in self._running.values())
            return Snapshot(time.perf_counter() - self._started, self._read, self._predicted, self._failed,
                            self._bytes_committed + running, self._bytes_total, self._units_committed, self._units)


class TerminalProgress(Tally):
    """A live bar on a terminal: input bytes done, records per second, failures, time left."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self._stream = stream
        self._bar: tqdm | None = None

    def job_started(self, units: Sequence[Unit]) -> None:
        super().job_started(units)
        self._bar = tqdm(total=self.snapshot().bytes_total, unit="B", unit_scale=True, unit_divisor=1024,
                         file=self._stream, desc="batch-predict", dynamic_ncols=True, mininterval=0.5,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        super().written(unit, outcomes)
        self._show()

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        super().unit_committed(unit, counts)
        self._show()

    def _show(self) -> None:
        if self._bar is None:
            return
        now = self.snapshot()
        self._bar.set_postfix_str(f"{now.records_per_s:.1f} records/s, {now.predicted} predicted, "
                                  f"{now.failed} failed", refresh=False)
        self._bar.update(now.bytes_done - self._bar.n)

    def job_ended(self, summary: JobSummary) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._show()
            self._bar.close()
            self._bar = None


class LogProgress(Tally):
    """One progress log line every `interval_s` seconds while the run works, and one at its end.

    The line's numbers go in the log record's `fields`, which `logformat.JsonFormatter` writes
    as JSON keys; plain-text logs get them in the message.
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def unit_started(self, unit: Unit) -> None:
        super().unit_started(unit)
        # From the first unit on, not while the model loads: a line saying nothing is done yet is noise.
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._tick, name="batch-predict-progress", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.log_line()

    def log_line(self) -> None:
        now = self.snapshot()
        eta = now.eta_s
        percent = f"{100 * now.bytes_done / now.bytes_total:.1f}%" if now.bytes_total else "-"
        log.info("progress %s: %d read, %d predicted, %d failed, %.1f records/s, %d of %d units, eta %s",
                 percent, now.records_read, now.predicted, now.failed, now.records_per_s, now.units_committed,
                 now.units, "-" if eta is None else f"{eta:.0f} s",
                 extra={"fields": {"event": "progress", **now.to_json()}})

    def job_ended(self, summary: JobSummary) -> None:
        if self._thread is not None:
            self.close()
            self.log_line()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def summary_table(summary: JobSummary) -> str:
    """The job's numbers as a small table, for the end of a run."""
    rows = [
        ("records read", f"{summary.records_read:,}"),
        ("predicted", f"{summary.predicted:,}"),
        ("failed", f"{summary.failed:,} ({summary.error_rate:.2%})"),
        *((f"  {kind}", f"{count:,}") for kind, count in sorted(summary.error_types.items(), key=lambda kv: -kv[1])),
        ("detections", f"{summary.detections:,}"),
        ("units committed", f"{summary.units_committed} of {summary.units}"),
        ("input files", f"{summary.files:,}"),
        ("this run", f"{summary.wall_time_s:.1f} s, {summary.images_per_second:.1f} images/s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
