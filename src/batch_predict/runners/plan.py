"""What every runner does before and after running units: plan the run, then sum it up.

The runners differ only in where units run (this process, Ray actors); the checks before
any work and the summary after it are one piece of code, so every runner fails, resumes and
reports alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..tools import evaluate
from ..inputs import sources
from ..inputs.fetch import filesystem_options
from ..inputs.formats import check_installed
from ..errors import JobFailed
from ..outputs.jobstate import JobState
from ..observe.observers import JobObserver
from ..outputs.formats import open_sink
from ..outputs.layout import OutputLayout, canonical
from ..outputs.sinks import JobSummary, OutputError
from ..spec import JobSpec
from ..inputs.units import Unit, plan_units, units_for_worker

log = logging.getLogger("batch_predict")


class UnitsFailed(JobFailed, RuntimeError):
    """Some units could not be run (an input became unreadable); the others are committed."""


@dataclass
class RunPlan:
    """One run's share of a job: the units still to do, and what its summary needs."""

    spec: JobSpec
    files: list[sources.InputFile]
    units: list[Unit]
    pending: list[Unit]
    state: JobState
    ground_truth: Any
    started: float = field(default_factory=time.perf_counter)
    predicted_now: int = 0
    failures: list[str] = field(default_factory=list)

    def unit_failed(self, unit: Unit, reason: str) -> None:
        """A unit that failed whole stays uncommitted; the run goes on and reports it at the end."""
        log.error("unit %d of %d failed and stays uncommitted: %s", unit.index, unit.count, reason)
        self.failures.append(f"unit {unit.index}: {reason}")


def plan_run(spec: JobSpec, worker_index: int, worker_count: int) -> RunPlan:
    """Everything that can fail before any work: inputs, ground truth, output format, job state."""
    sink = open_sink(spec)  # a missing library fails now, not after the model loaded
    check_installed(spec.input_file_format)
    def storage(url: str) -> dict:
        return filesystem_options(url, spec.num_read_workers, spec.read_timeout_seconds)

    files = inputs_apart_from_outputs(sources.expand_patterns(spec.input_file_patterns, storage), sink.layout, spec)
    ground_truth = evaluate.load_ground_truth(spec.ground_truth) if spec.ground_truth else None
    units = plan_units(files, spec.input_file_format, spec.num_output_shards)
    state = JobState.open(spec, files, units, sink)
    done = state.committed(verify=True)
    mine = units_for_worker(units, worker_index, worker_count)
    pending = [unit for unit in mine if unit.index not in done]
    log.info(
        "batch-predict: %d input files in %d units; %d of this run's %d units already committed",
        len(files), len(units), len(mine) - len(pending), len(mine),
    )
    return RunPlan(spec, files, units, pending, state, ground_truth)


def inputs_apart_from_outputs(
    files: list[sources.InputFile], layout: OutputLayout, spec: JobSpec
) -> list[sources.InputFile]:
    """The input files that are not this job's own outputs. A job must never read what it writes
    (a rerun would predict its own results) nor write over what it reads; the two prefixes must
    differ, or results and errors would share files."""
    if canonical(spec.output_result_prefix) == canonical(spec.output_error_prefix):
        raise OutputError("--output_result_prefix and --output_error_prefix are the same; results and errors "
                          "need prefixes of their own")
    kept = [f for f in files if not layout.owns(f.url)]
    if len(kept) < len(files):
        log.warning("%d of the %d input files are named as this job's outputs (under %s); they are left out "
                    "of its inputs", len(files) - len(kept), len(files), spec.output_result_prefix)
    if not kept:
        raise sources.NoInputError(
            f"every input file matched by {list(spec.input_file_patterns)} is named as this job's own output "
            f"(under {spec.output_result_prefix!r} or {spec.output_error_prefix!r}); choose other output prefixes"
        )
    return kept


def finish_run(plan: RunPlan, observer: JobObserver, *, write_summary: bool = True) -> JobSummary:
    """The job's summary from every commit record, written once complete if `write_summary`;
    `UnitsFailed` if this run left units undone."""
    summary = plan.state.summarize(len(plan.files), time.perf_counter() - plan.started, plan.predicted_now,
                                   write=write_summary)
    observer.job_ended(summary)
    if plan.failures:
        raise UnitsFailed(
            f"{len(plan.failures)} of {len(plan.units)} units failed and were not committed "
            f"({'; '.join(plan.failures[:3])}); rerun the same command to retry them"
        )
    log.info(
        "batch-predict: %d of %d units committed; %d records read, %d predicted, %d failed, %d detections; "
        "this run %.1f s (%.1f images/s)",
        summary.units_committed, summary.units, summary.records_read, summary.predicted, summary.failed,
        summary.detections, summary.wall_time_s, summary.images_per_second,
    )
    if plan.ground_truth is not None and summary.complete:
        try:
            evaluate.evaluate_job(plan.spec.output_result_prefix, plan.ground_truth)
        except evaluate.EvaluationError as exc:
            raise evaluate.EvaluationError(f"the job ran, but its results cannot be evaluated: {exc}") from None
    return summary
