"""Run a job in this process: the function behind the `batch-predict` command.

The job is resumable: units already committed under the output prefixes (by an earlier,
interrupted run with the same arguments, or by other workers) are skipped.
"""

from __future__ import annotations

import logging

from ..models import Model, load_model
from ..observe import JobObserver
from ..pipeline import BatchLimit, Stopped
from ..sinks import JobSummary, OutputError
from ..spec import JobSpec
from .plan import finish_run, plan_run
from .stopping import Stopping
from .unit import run_unit
from .watch import job_observers

log = logging.getLogger("batch_predict")


def run(
    spec: JobSpec,
    *,
    model: Model | None = None,
    worker_index: int = 0,
    worker_count: int = 1,
    stopping: Stopping | None = None,
    observer: JobObserver | None = None,
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
    `observer` (progress, metrics) hears how the run goes, beside the job's own timeline
    and `--visualize` pictures; its `job_ended` comes only when the run gets to its summary.
    """
    if spec.num_workers != 1 and model is None:
        from .workers import run_workers

        return run_workers(spec, worker_index=worker_index, worker_count=worker_count, stopping=stopping,
                           observer=observer)
    plan = plan_run(spec, worker_index, worker_count)
    watchers = job_observers(spec, observer)
    watchers.job_started(plan.pending)
    if plan.pending:
        model = model or load_model(spec.model_settings())
        log.info("batch-predict: model %s", model.describe())
        watchers.model_loaded(model)
        plan.state.begin()
        limit = BatchLimit()
        for unit in plan.pending:
            if stopping is not None and stopping.requested.is_set():
                raise Stopped(f"stopped before unit {unit.index} of {unit.count}; rerun the same command to resume")
            try:
                counts = run_unit(
                    spec, model, plan.state, unit, limit=limit, abandon=stopping.abandon if stopping else None,
                    observer=watchers,
                )
            except Stopped:
                raise Stopped(f"unit {unit.index} of {unit.count} abandoned; rerun the same command to resume") from None
            except OutputError:
                raise
            except Exception as exc:  # one unit's failure must not lose the other units' work
                plan.unit_failed(unit, f"{type(exc).__name__}: {exc}")
                continue
            plan.predicted_now += counts.predicted
    return finish_run(plan, watchers)
