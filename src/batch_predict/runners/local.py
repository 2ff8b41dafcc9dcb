"""Run a job in this process: the function behind the `batch-predict` command.

The job is resumable: units already committed under the output prefixes (by an earlier,
interrupted run with the same arguments, or by other workers) are skipped.
"""

from __future__ import annotations

import logging
import time

from .. import evaluate, sources
from ..jobstate import JobState
from ..models import Model, load_model
from ..pipeline import BatchLimit, Stopped
from ..sinks import JobSummary, OutputError
from ..spec import JobSpec
from ..units import plan_units, units_for_worker
from .stopping import Stopping
from .unit import run_unit

log = logging.getLogger("batch_predict")


class UnitsFailed(RuntimeError):
    """Some units could not be run (an input became unreadable); the others are committed."""


def run(
    spec: JobSpec,
    *,
    model: Model | None = None,
    worker_index: int = 0,
    worker_count: int = 1,
    stopping: Stopping | None = None,
) -> JobSummary:
    """Predict every record matched by `spec`, write results, errors and a summary.

    Fails before reading any record when the inputs, the model or the outputs are wrong
    (`NoInputError`, `ModelLoadError`, `OutputError`) or when the output prefixes hold a
    different job (`JobConflict`); afterwards, bad records become error lines and the job
    goes on. `model`, if given, is used instead of loading `spec.model_dir` (a notebook
    that runs several jobs loads it once). Worker `worker_index` of `worker_count` runs only its share of the units
    (`units_for_worker`); the summary file is written by whichever run commits the last
    unit. With `spec.num_workers` other than 1, the share runs in that many processes, one
    per GPU (`runners/workers.py`). `stopping` (set from signal handlers) stops between units, or abandons one,
    raising `Stopped`. A unit that fails as a whole (an input that cannot be read) is
    left uncommitted, the other units go on, and `UnitsFailed` is raised at the end.
    """
    if spec.num_workers != 1 and model is None:
        from .workers import run_workers

        return run_workers(spec, worker_index=worker_index, worker_count=worker_count, stopping=stopping)
    started = time.perf_counter()
    files = sources.expand_patterns(spec.input_file_patterns)
    ground_truth = evaluate.load_ground_truth(spec.ground_truth) if spec.ground_truth else None
    units = plan_units(files, spec.input_file_format, spec.num_output_shards)
    state = JobState.open(spec, files, units)
    done = state.committed()
    mine = units_for_worker(units, worker_index, worker_count)
    pending = [unit for unit in mine if unit.index not in done]
    log.info(
        "batch-predict: %d input files in %d units; %d of this run's %d units already committed",
        len(files), len(units), len(mine) - len(pending), len(mine),
    )
    predicted_now = 0
    failures: list[str] = []
    if pending:
        model = model or load_model(spec)
        log.info("batch-predict: model %s", model.describe())
        state.begin()
        limit = BatchLimit()
        for unit in pending:
            if stopping is not None and stopping.requested.is_set():
                raise Stopped(f"stopped before unit {unit.index} of {unit.count}; rerun the same command to resume")
            try:
                counts = run_unit(
                    spec, model, state, unit, limit=limit, abandon=stopping.abandon if stopping else None
                )
            except Stopped:
                raise Stopped(f"unit {unit.index} of {unit.count} abandoned; rerun the same command to resume") from None
            except OutputError:
                raise
            except Exception as exc:  # one unit's failure must not lose the other units' work
                log.error("unit %d of %d failed and stays uncommitted: %s: %s", unit.index, unit.count, type(exc).__name__, exc)
                failures.append(f"unit {unit.index}: {type(exc).__name__}: {exc}")
                continue
            predicted_now += counts.predicted
    summary = state.summarize(len(files), time.perf_counter() - started, predicted_now)
    if failures:
        raise UnitsFailed(
            f"{len(failures)} of {len(units)} units failed and were not committed ({'; '.join(failures[:3])}); "
            "rerun the same command to retry them"
        )
    log.info(
        "batch-predict: %d of %d units committed; %d records read, %d predicted, %d failed, %d detections; "
        "this run %.1f s (%.1f images/s)",
        summary.units_committed, summary.units, summary.records_read, summary.predicted, summary.failed,
        summary.detections, summary.wall_time_s, summary.images_per_second,
    )
    if ground_truth is not None and summary.complete:
        evaluate.evaluate_job(spec.output_result_prefix, ground_truth)
    return summary
