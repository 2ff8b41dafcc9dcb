"""Units of work, from reading to commit: the step every runner repeats.

The local runner streams all its units through one pipeline (`run_units`); a Ray actor runs
the units it is given the same way. Each unit is committed on its own, when every one of its
records has its line, so a job stopped at any moment leaves whole units or none.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..outputs.jobstate import JobState
from ..models import Model
from ..observe.observers import JobObserver, timed
from ..pipeline import BatchLimit, run_pipeline
from ..records import Outcome, Record, FailedRecord, UnitEnd
from ..outputs.sinks import OutputError, UnitCounts, UnitOutput
from ..spec import JobSpec
from ..inputs.units import Unit, read_unit

log = logging.getLogger("batch_predict")

#: What became of a unit: its committed counts, or why it failed (it stays uncommitted).
UnitResult = tuple[Unit, UnitCounts | Exception]


def read_units(
    units: Sequence[Unit], spec: JobSpec, observer: JobObserver, stop: threading.Event | None = None
) -> Iterator[Record | FailedRecord | UnitEnd]:
    """The records of each unit in turn, each unit followed by its `UnitEnd`.

    A unit whose input cannot be read to its end (an I/O failure, not damaged data, which is
    an error line) ends early with the failure in its `UnitEnd`, and the next unit goes on.
    Once `stop` is set, no further unit is started.
    """
    for unit in units:
        if stop is not None and stop.is_set():
            return
        observer.unit_started(unit)
        read = 0
        try:
            for item in read_unit(unit, spec.input_file_format, spec.read_options()):
                observer.record_read(unit, item)
                read += 1
                yield item
        except Exception as exc:  # one unit's unreadable input must not stop the others
            yield UnitEnd(unit, read, exc)
            continue
        yield UnitEnd(unit, read)


class UnitSinks:
    """The pipeline's `OutcomeSink` for a stream of units: each unit's outcomes go to its own
    output of the job's sink, committed at its end; a unit whose outcomes cannot be written fails alone.

    Commits run on a thread of their own, in order: on a local disk a commit syncs each shard, the
    commit record and its folder, and one in eight or so took 0.2 s on the GPU machine (its first,
    1.3 s: docs/benchmarks.md), time in which the next unit's outcomes are written meanwhile instead
    of holding up the collecting, and with it the device. `finish` waits for them.
    """

    def __init__(self, model: Model, state: JobState, units: Sequence[Unit], observer: JobObserver) -> None:
        self._labels, self._state, self._observer = model.labels, state, observer
        self._waiting = deque(units)
        self._outputs: UnitOutput | None = None
        self._failure: Exception | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="batch-predict-commit")
        self._commits: list[Future[UnitResult]] = []
        self._seen = 0  # commits looked at for an `OutputError` so far

    def _open(self, unit: Unit) -> UnitOutput:
        """The output of `unit`, the one being written, opened at its first outcome (or at its end,
        for a unit with no record)."""
        if self._outputs is None:
            self._outputs = self._state.sink.open(unit, self._labels)
        return self._outputs

    def write(self, outcomes: list[Outcome]) -> None:
        if self._failure is not None:
            return
        try:
            self._open(self._waiting[0]).write(outcomes)
        except OutputError:
            raise
        except Exception as exc:  # a line that cannot be written fails its unit, not the job
            self._failure = exc
            return
        self._observer.written(self._waiting[0], outcomes)

    def end(self, mark: UnitEnd) -> None:
        unit = self._waiting.popleft()
        if mark.unit is not unit:
            raise AssertionError(f"unit {mark.unit.index} ended while unit {unit.index} was being written")
        failure = mark.error or self._failure
        try:
            outputs = self._outputs if failure is not None else self._open(unit)
        except Exception as exc:  # outputs that cannot be opened fail the unit, or the run (`_commit`)
            outputs, failure = None, exc
        finally:
            self._outputs, self._failure = None, None
        self._commits.append(self._committer.submit(self._commit, unit, outputs, failure, mark.records_read))
        # A commit that could not write fails the run: say so now. Commits end in order.
        while self._seen < len(self._commits) and self._commits[self._seen].done():
            if isinstance(self._commits[self._seen].exception(), OutputError):
                self._commits[self._seen].result()
            self._seen += 1

    def _commit(self, unit: Unit, outputs: UnitOutput | None, failure: BaseException | None,
                records_read: int) -> UnitResult:
        """Commit `unit`'s outputs; or, where the unit failed, discard what was opened of them."""
        try:
            if failure is not None:
                raise failure
            assert outputs is not None  # opened at the unit's end, if not before
            counts = outputs.commit(records_read)
            self._state.commit(unit, counts)
        except OutputError:
            self._discard(unit, outputs)
            raise
        except Exception as exc:  # this unit stays uncommitted; the others go on
            self._discard(unit, outputs)
            return unit, exc
        self._observer.unit_committed(unit, counts)
        log.info(
            "unit %05d-of-%05d committed: %d records read, %d predicted, %d failed",
            unit.index, unit.count, counts.records_read, counts.predicted, counts.failed,
        )
        return unit, counts

    def _discard(self, unit: Unit, outputs: UnitOutput | None) -> None:
        if outputs is not None:
            outputs.discard()
        self._observer.unit_abandoned(unit)

    def finish(self) -> list[UnitResult]:
        """What became of each unit ended, in order, once its commit is done; raises the first
        `OutputError`."""
        self._committer.shutdown(wait=True)
        return [commit.result() for commit in self._commits]

    def discard_open(self) -> None:
        """The run broke off: the commits under way finish (their units were whole), and the unit
        being written is discarded, uncommitted."""
        self._committer.shutdown(wait=True)
        if self._outputs is not None and self._waiting:
            self._discard(self._waiting[0], self._outputs)
        self._outputs = None


def run_units(
    spec: JobSpec,
    model: Model,
    state: JobState,
    units: Sequence[Unit],
    *,
    limit: BatchLimit | None = None,
    stop: threading.Event | None = None,
    abandon: threading.Event | None = None,
    observer: JobObserver | None = None,
) -> list[UnitResult]:
    """Predict every record of `units` into their shards, committing each unit as it completes.

    Returns what became of each unit started, in order: its counts, or the exception that
    failed it alone (an unreadable input, a line that cannot be written). Once `stop` is set
    no further unit reaches the model; the units under way still commit. When `abandon` is set, or
    the run breaks off, the unit being written is discarded and the exception raised; the
    units committed before stay committed. An `OutputError` fails the run.
    """
    observer = observer or JobObserver()
    sinks = UnitSinks(model, state, units, observer)
    try:
        with _collector_set_for_the_run():
            run_pipeline(
                read_units(units, spec, observer, stop),
                timed(model, observer),
                sinks,
                batch_size=spec.batch_size,
                max_image_pixels=spec.max_image_pixels,
                num_decode_workers=spec.num_decode_workers,
                queue_depth=spec.queue_depth,
                limit=limit,
                stop=stop,
                abandon=abandon,
                max_decoded_bytes=spec.max_decoded_bytes,
            )
    except BaseException:
        sinks.discard_open()
        raise
    return sinks.finish()


#: How many times rarer the collector's full passes are during a run: one came every 40-50 batches
#: of 256 images on the GPU machine, and the GPU stopped for 60-170 ms at each.
_FULL_PASSES_RARER = 100


@contextlib.contextmanager
def _collector_set_for_the_run() -> Iterator[None]:
    """The garbage collector's full passes made cheap and rare for the run.

    Everything alive now (the model, the modules imported) lives through the run: frozen, the full
    passes do not walk it. With PyTorch imported that is some 290,000 objects, and each full pass
    over them stopped every thread of the job for 0.13-0.17 s on the GPU machine, once or twice a
    40,000-image job. Frozen even where something froze a few objects before (the GPU machine's
    Python starts with 375 frozen), and then left frozen after: unfreezing would also unfreeze
    what the caller froze.

    With that alone the passes took 2-6 ms there, yet the GPU still stopped for 60-90 ms about as
    often as they came (three times a job); with them `_FULL_PASSES_RARER`, no stop of 50 ms or
    more was left after the first batch (docs/benchmarks.md). The young passes still free the
    short-lived cycles, and the rare full pass the long-lived ones.
    """
    already_frozen = gc.get_freeze_count() > 0
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], thresholds[2] * _FULL_PASSES_RARER)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not already_frozen:
            gc.unfreeze()


def run_unit(
    spec: JobSpec,
    model: Model,
    state: JobState,
    unit: Unit,
    *,
    limit: BatchLimit | None = None,
    abandon: threading.Event | None = None,
    observer: JobObserver | None = None,
) -> UnitCounts:
    """Predict every record of `unit` into its shards and commit them; return its counts.

    On any failure, or when `abandon` is set, the unit's partial output is discarded and the
    exception raised: the unit stays uncommitted, and a rerun redoes it whole.
    """
    ((_, result),) = run_units(spec, model, state, [unit], limit=limit, abandon=abandon, observer=observer)
    if isinstance(result, Exception):
        raise result
    return result
