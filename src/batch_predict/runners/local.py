"""Run a job's units in this process (`runners.run` picks this runner, or another).

The job is resumable: units already committed under the output prefixes (by an earlier,
interrupted run with the same arguments, or by other workers) are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..outputs.jobstate import JobState
from ..models import Model, load_model, load_runtime_in_background
from ..observe.observers import JobObserver
from ..pipeline import BatchLimit, Stopped
from ..outputs.sinks import JobSummary
from ..spec import JobSpec
from .plan import finish_run, plan_run
from .stopping import Stopping
from .unit import run_units
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
    begin: Callable[[JobState], None] = JobState.begin,
    write_summary: bool = True,
) -> JobSummary:
    """Predict every record matched by `spec`, write results, errors and a summary.

    Fails before reading any record when the inputs, the model or the outputs are wrong
    (`NoInputError`, `ModelLoadError`, `OutputError`) or when the output prefixes hold a
    different job (`JobConflict`); afterwards, bad records become error lines and the job
    goes on. `model`, if given, is used instead of loading `spec.model_dir` (a notebook
    that runs several jobs loads it once). Worker `worker_index` of `worker_count` runs only its share of the units
    (`units_for_worker`); the summary file is written by whichever run commits the last
    unit, unless `write_summary` is false (a worker process whose parent writes it once all its
    workers are done: two workers ending together would each tidy away the other's summary file
    while it was being written). `stopping` (set from signal handlers) stops starting units, or abandons
    those in progress, raising `Stopped`. A unit that fails as a whole (an input that cannot be read) is
    left uncommitted, the other units go on, and `UnitsFailed` is raised at the end.
    `observer` (progress, metrics) hears how the run goes, beside the job's own timeline
    and `--visualize` pictures; its `job_ended` comes only when the run gets to its summary.
    `begin` records the job's start once the model has loaded (a worker process leaves that to
    its parent, `runners/workers.py`). The model's framework is imported and its GPU opened on a
    thread while the inputs are listed and the outputs checked (`load_runtime_in_background`);
    a plan that fails is raised before a model that fails to load.
    """
    if model is None:
        load_runtime_in_background(spec.model_settings())
    plan = plan_run(spec, worker_index, worker_count)
    watchers = job_observers(spec, observer)
    watchers.job_started(plan.pending)
    if plan.pending:
        model = model or load_model(spec.model_settings())
        log.info("batch-predict: model %s", model.describe())
        watchers.model_loaded(model)
        begin(plan.state)
        stop = stopping.requested if stopping else None
        try:
            results = run_units(spec, model, plan.state, plan.pending, limit=BatchLimit(), stop=stop,
                               abandon=stopping.abandon if stopping else None, observer=watchers)
        except Stopped:
            raise Stopped("the units in progress were abandoned; rerun the same command to resume") from None
        decoding = model.describe().get("jpeg_decoding")
        if decoding:
            log.info("batch-predict: JPEG decoding %s", decoding)
        for unit, result in results:
            if isinstance(result, Exception):
                plan.unit_failed(unit, f"{type(result).__name__}: {result}")
            else:
                plan.predicted_now += result.predicted
        if len(results) < len(plan.pending):
            unit = plan.pending[len(results)]
            raise Stopped(f"stopped before unit {unit.index} of {unit.count}; rerun the same command to resume")
    return finish_run(plan, watchers, write_summary=write_summary)
