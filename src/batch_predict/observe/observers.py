"""What a running job tells its watchers: progress bars, log lines, metrics, the timeline.

The pipeline knows nothing of them: a runner wraps what it hands the pipeline (the record
stream, the model, the sink) so that each step reports to one `JobObserver`, and several
watchers listen through `Observers`. Events of one unit may come from different threads
(reading, predicting, writing), so an observer guards what it keeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..models import InputKind, Model
from ..pipeline import StagedModel, launch_threads_of
from ..records import Outcome, Record, FailedRecord
from ..outputs.sinks import JobSummary, UnitCounts
from ..inputs.units import Unit


class JobObserver:
    """Hooks called as a job runs; each does nothing unless a watcher overrides it."""

    def job_started(self, units: Sequence[Unit]) -> None:
        """This run is about to work on `units` (those not committed yet)."""

    def model_loaded(self, model: Model) -> None:
        """The run's model is ready (a run with nothing left to do loads none)."""

    def unit_started(self, unit: Unit) -> None:
        """`unit` starts reading."""

    def record_read(self, unit: Unit, item: Record | FailedRecord) -> None:
        """One record (or one record that could not be read) left the reader."""

    def batch_predicted(self, size: int, seconds: float) -> None:
        """One model call over `size` records took `seconds`, whether it succeeded or not (a failing batch
        is bisected: several calls)."""

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        """The lines of `outcomes` went to the unit's (uncommitted) shards."""

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        """`unit`'s shards are in place and its commit record written."""

    def unit_abandoned(self, unit: Unit) -> None:
        """`unit` failed or was stopped; what it wrote was discarded."""

    def job_ended(self, summary: JobSummary) -> None:
        """This run got to its summary."""

    def close(self) -> None:
        """Let go of threads, servers and terminals; called by whoever made the observer, however the run ended."""


class Observers(JobObserver):
    """Several observers heard as one, in order."""

    def __init__(self, observers: Iterable[JobObserver]) -> None:
        self.observers = list(observers)

    def job_started(self, units: Sequence[Unit]) -> None:
        for o in self.observers:
            o.job_started(units)

    def model_loaded(self, model: Model) -> None:
        for o in self.observers:
            o.model_loaded(model)

    def unit_started(self, unit: Unit) -> None:
        for o in self.observers:
            o.unit_started(unit)

    def record_read(self, unit: Unit, item: Record | FailedRecord) -> None:
        for o in self.observers:
            o.record_read(unit, item)

    def batch_predicted(self, size: int, seconds: float) -> None:
        for o in self.observers:
            o.batch_predicted(size, seconds)

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        for o in self.observers:
            o.written(unit, outcomes)

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        for o in self.observers:
            o.unit_committed(unit, counts)

    def unit_abandoned(self, unit: Unit) -> None:
        for o in self.observers:
            o.unit_abandoned(unit)

    def job_ended(self, summary: JobSummary) -> None:
        for o in self.observers:
            o.job_ended(summary)

    def close(self) -> None:
        for o in self.observers:
            o.close()


class TimedModel:
    """A model whose `predict` calls are timed and reported; its attributes are the model's own."""

    def __init__(self, model: Model, observer: JobObserver) -> None:
        self._model, self._observer = model, observer

    @property
    def input_kind(self) -> InputKind:
        return self._model.input_kind

    @property
    def same_size_batches(self) -> bool:
        return self._model.same_size_batches

    @property
    def labels(self) -> Mapping[int, str]:
        return self._model.labels

    def predict(self, records: Sequence[Record]) -> list[Any]:
        started = time.perf_counter()
        try:
            return self._model.predict(records)
        finally:
            self._observer.batch_predicted(len(records), time.perf_counter() - started)

    def describe(self) -> dict[str, object]:
        return self._model.describe()


class TimedStagedModel(TimedModel):
    """`TimedModel` for a `StagedModel`: each batch's time runs from its launch to its collection.

    The stages are declared, not forwarded through `__getattr__`: since Python 3.12 an
    `isinstance` check against a runtime-checkable protocol sees only attributes that exist
    on the class, and a forwarding wrapper would silently lose the staged path.
    """

    _model: StagedModel

    @property
    def launch_threads(self) -> int:
        return launch_threads_of(self._model)

    def prepare(self, records: Sequence[Record]) -> tuple[Any, int]:
        return self._model.prepare(records), len(records)

    def launch(self, prepared: tuple[Any, int]) -> tuple[Any, int, float]:
        inner, size = prepared
        started = time.perf_counter()
        return self._model.launch(inner), size, started

    def collect(self, launched: tuple[Any, int, float]) -> list[Any]:
        inner, size, started = launched
        try:
            return self._model.collect(inner)
        finally:
            self._observer.batch_predicted(size, time.perf_counter() - started)


def timed(model: Model, observer: JobObserver) -> TimedModel:
    """`model` with its batches timed for `observer`, keeping its stages if it has them."""
    if isinstance(model, StagedModel):
        return TimedStagedModel(model, observer)
    return TimedModel(model, observer)


def unit_bytes(unit: Unit) -> int:
    """How many input bytes `unit` covers: the measure of progress, since records are not known up front."""
    return sum((piece.end if piece.end is not None else piece.file.size) - piece.start for piece in unit.slices)
