"""Where a job's outcomes go: the sink interface every output format implements, and the
accounting each unit commits.

A sink, in the manner of Ray Data's `Datasink`, opens one output per unit; the unit writes its
outcomes into it as they come, and commits it once every record it read has its outcome, or
discards it. Whatever a sink writes becomes visible whole at commit or not at all, so a job
killed at any moment leaves whole units or none, and a rerun redoes exactly the units without
a commit record (`jobstate`). The formats and their sinks are listed in `formats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import SetupError
from ..inputs.units import Unit
from ..records import FailedRecord, Outcome, Prediction
from .layout import OutputLayout


class OutputError(SetupError, OSError):
    """An output location cannot be written."""


#: What a value that a format cannot hold raises (orjson, pyarrow and sqlite3 alike), as
#: opposed to an I/O failure (OSError), which fails the unit.
_UNWRITABLE = (ValueError, TypeError, OverflowError)


def write_each(write: Callable[[list[Outcome]], None], outcomes: list[Outcome]) -> None:
    """`write(outcomes)`; when that fails on a value, each outcome on its own, and a prediction that
    still cannot be written becomes its record's error line. One record's unwritable line (a
    value a format cannot hold) so never fails its neighbours or its unit. `write` must write all
    of the outcomes it is given or none."""
    try:
        write(outcomes)
        return
    except _UNWRITABLE:
        if len(outcomes) == 1 and isinstance(outcomes[0], FailedRecord):
            raise  # an error line is made writable (`FailedRecord`): nothing smaller to fall back to
    for outcome in outcomes:
        try:
            write([outcome])
        except _UNWRITABLE as exc:
            if isinstance(outcome, FailedRecord):
                raise
            write([FailedRecord.of(outcome.record, exc, "write")])


class CountingOutput:
    """What every sink's `UnitOutput` shares: outcomes split into predictions and failed records
    and handed to `_write` (which writes them all or none), written record by record where that
    fails (`write_each`), and counted for the commit."""

    def __init__(self) -> None:
        self.predicted = 0
        self.detections = 0
        self.error_types: Counter[str] = Counter()

    def write(self, outcomes: list[Outcome]) -> None:
        write_each(self._write_counted, outcomes)

    def _write_counted(self, outcomes: list[Outcome]) -> None:
        predictions = [o for o in outcomes if isinstance(o, Prediction)]
        errors = [o for o in outcomes if isinstance(o, FailedRecord)]
        self._write(predictions, errors)
        self.predicted += len(predictions)
        self.detections += sum(len(p.detections.scores) for p in predictions)
        self.error_types.update(e.error_type for e in errors)

    def _write(self, predictions: list[Prediction], errors: list[FailedRecord]) -> None:
        raise NotImplementedError

    def _counts(self, records_read: int) -> "UnitCounts":
        """The unit's counts at commit; when a record has no outcome, what was written is discarded."""
        try:
            return UnitCounts.checked(records_read, self.predicted, self.detections, self.error_types)
        except RuntimeError:
            self.discard()
            raise

    def discard(self) -> None:
        raise NotImplementedError


class UnitOutput(Protocol):
    """One unit's output, invisible to readers until `commit`."""

    def write(self, outcomes: list[Outcome]) -> None:
        """Add outcomes (predictions and failed records), in the order they came."""

    def commit(self, records_read: int) -> "UnitCounts":
        """Make the unit's outcomes visible, whole, once all `records_read` have one; its counts."""

    def discard(self) -> None:
        """Drop what was written: the unit stays uncommitted and a rerun redoes it."""


class Sink(Protocol):
    """Where one job's outcomes go, unit by unit."""

    layout: OutputLayout

    def check(self) -> None:
        """Raise `OutputError` now, before any input is read, if the outputs cannot be written."""

    def open(self, unit: Unit, labels: Mapping[int, str]) -> UnitOutput:
        """The output `unit` writes, with the model's class names for its detections."""

    def locations(self, unit: Unit) -> tuple[str, str]:
        """Where a committed unit's results and its errors are, for its commit record and the summary."""

    def fingerprint(self, unit: Unit) -> dict[str, Any]:
        """What a committed unit left on disk, for its commit record (`verify.problems` checks it)."""

    def remove(self) -> None:
        """Remove every output an earlier job left here (`--overwrite`)."""

    def tidy(self) -> None:
        """Remove what attempts that were killed left behind, once the job is complete."""


@dataclass
class UnitCounts:
    """What one unit committed: every record it read is either predicted or failed."""

    records_read: int = 0
    predicted: int = 0
    failed: int = 0
    detections: int = 0
    error_types: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "UnitCounts":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    @classmethod
    def checked(cls, records_read: int, predicted: int, detections: int, error_types: Counter[str]) -> "UnitCounts":
        """A unit's counts at commit; raises if a record read has no outcome, or one too many."""
        failed = sum(error_types.values())
        if predicted + failed != records_read:
            raise RuntimeError(
                f"accounting mismatch: {records_read} records read but {predicted} predicted + {failed} failed"
            )
        return cls(records_read, predicted, failed, detections, dict(sorted(error_types.items())))


@dataclass
class JobSummary:
    """The job's accounting over all its committed units: records read = predicted + failed."""

    files: int = 0
    units: int = 0
    units_committed: int = 0
    records_read: int = 0
    predicted: int = 0
    failed: int = 0
    detections: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    images_per_second: float = 0.0
    result_files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.units_committed == self.units

    @property
    def error_rate(self) -> float:
        return self.failed / self.records_read if self.records_read else 0.0

    @classmethod
    def of_units(cls, counts: Iterable[UnitCounts], **fields: Any) -> "JobSummary":
        """The sum of the units' counts, plus the job-level `fields`."""
        summary = cls(**fields)
        error_types: Counter[str] = Counter()
        for unit in counts:
            summary.units_committed += 1
            summary.records_read += unit.records_read
            summary.predicted += unit.predicted
            summary.failed += unit.failed
            summary.detections += unit.detections
            error_types.update(unit.error_types)
        summary.error_types = dict(sorted(error_types.items()))
        return summary

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 6)}
