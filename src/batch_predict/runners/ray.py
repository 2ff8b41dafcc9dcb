"""Run a job on a Ray cluster: Ray Data hands the job's units to a pool of model actors.

Each pending unit is one row, in its own block, of a Ray Data dataset. An actor pool
(one model per actor; one GPU per actor when the cluster has GPUs) maps each row through
`run_unit`, the step every runner repeats, so shards, formats and commit records are the
local runner's, and a job may be resumed by either runner. An actor takes the next unit
when it has finished one, so a slow node simply does fewer; a unit whose actor dies is
uncommitted and Ray Data gives it to another actor.

Units, not records, travel through Ray: a unit is committed whole by the process that
wrote it, and inside an actor the pipeline already overlaps reading, decoding and
inference with bounded queues. Streaming records between Ray stages instead would move
every image through the object store and need a distributed step to gather each unit's
lines before its commit (see docs/scaling.md). Memory stays bounded: a row is a unit
number, and an actor holds only its pipeline's queues.

Ray is imported here only, when this runner is used: it is an optional extra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from ..outputs.jobstate import JobState
from ..models import load_model
from ..observe.observers import JobObserver, Observers
from ..pipeline import BatchLimit, Stopped
from ..outputs.sinks import JobSummary, UnitCounts
from ..spec import JobSpec, SpecError
from ..inputs.units import Unit
from .plan import finish_run, plan_run
from .stopping import Stopping
from .unit import run_unit
from .watch import job_observers

log = logging.getLogger("batch_predict")

#: How often the driver, waiting for a unit to finish, looks whether it was told to stop.
_STOP_POLL_S = 0.5


def run(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_actors: int = 0,
    worker_index: int = 0,
    worker_count: int = 1,
    stopping: Stopping | None = None,
    observer: JobObserver | None = None,
) -> JobSummary:
    """Predict every record matched by `spec` on a Ray cluster; outputs as `runners.local.run`.

    Connects to the cluster at `address`, else at `RAY_ADDRESS` (a Ray job submission sets
    it), else starts a local Ray instance; a caller that has already called `ray.init`
    keeps its session. `num_actors` model actors run at once (0: one per GPU of the
    cluster, or one per CPU without GPUs). Setup fails fast as in the local runner; the
    model is loaded once in a Ray task before anything is written. A unit that fails as a
    whole stays uncommitted and `UnitsFailed` is raised at the end. When `stopping.abandon`
    is set the driver stops at once, leaving the units in progress uncommitted. `observer`
    (progress, metrics) hears of each unit as the driver learns it was committed; the job's
    timeline and `--visualize` pictures are written by the actors.
    """
    ray = _import_ray()
    plan = plan_run(spec, worker_index, worker_count)
    watchers = Observers([observer] if observer else [])
    watchers.job_started(plan.pending)
    if plan.pending:
        _connect(ray, address)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        # Without GPUs, one actor per core: Ray gives an actor as many math-library threads
        # (OMP_NUM_THREADS) as the CPUs it holds, which is one.
        actors = min(len(plan.pending), num_actors or gpus or max(1, int(resources.get("CPU", 1))))
        per_actor = {"num_gpus": 1 if gpus else 0, "num_cpus": 1}
        log.info("batch-predict: model %s", _check_model(ray, spec, per_actor))
        plan.state.begin()
        log.info("batch-predict: %d units on %d Ray actors (%s each)", len(plan.pending), actors,
                 "one GPU" if gpus else "CPU only")
        by_index = {unit.index: unit for unit in plan.pending}
        for row in _rows(_unit_counts(ray, spec, plan.state, plan.pending, actors, per_actor), stopping):
            unit = by_index[row["unit"]]
            if row["error"]:
                plan.unit_failed(unit, row["error"])
                continue
            counts = UnitCounts.from_json(json.loads(row["counts"]))
            plan.predicted_now += counts.predicted
            watchers.unit_committed(unit, counts)
            log.info("unit %05d-of-%05d committed: %d records read, %d predicted, %d failed",
                     unit.index, unit.count, counts.records_read, counts.predicted, counts.failed)
    return finish_run(plan, watchers)


class UnitRunner:
    """A Ray Data actor: loads the model once, then runs and commits the units it is given.

    A unit that fails comes back as a row with its error rather than as an exception, so
    that one bad input fails its unit only, as in the local runner, instead of the dataset.
    """

    def __init__(self, spec: JobSpec, state: JobState, units: dict[int, Unit]) -> None:
        self.spec, self.state, self.units = spec, state, units
        self.model = load_model(spec.model_settings())
        self.limit = BatchLimit()
        self.watchers = job_observers(spec)  # the job's timeline and --visualize pictures
        self.watchers.model_loaded(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{"unit": its number, "counts": its committed counts as JSON, or "error": why it failed}."""
        rows: list[dict[str, Any]] = []
        for index in batch["unit"].tolist():
            row: dict[str, Any] = {"unit": index, "counts": "", "error": ""}
            try:
                counts = run_unit(self.spec, self.model, self.state, self.units[index], limit=self.limit,
                                  observer=self.watchers)
            except Exception as exc:  # one unit's failure must not lose the other units' work
                row["error"] = f"{type(exc).__name__}: {exc}"
            else:
                row["counts"] = json.dumps(dataclasses.asdict(counts))
            rows.append(row)
        return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (the submodule, so that `ray.data` is there)
    except ImportError:
        raise SpecError("--runner ray: Ray is not installed: pip install 'batch-predict[ray]'") from None
    return ray


def _connect(ray: ModuleType, address: str | None) -> None:
    """Join the cluster (or start a local instance) unless the caller already has."""
    if ray.is_initialized():
        return
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise SpecError(f"--runner ray: cannot join the Ray cluster at {address or 'RAY_ADDRESS'}: {exc}") from None
    if in_main_thread:
        # ray.init replaces the SIGTERM handler with an immediate exit; the caller's own
        # handler (the CLI's, which stops the job cleanly) must keep working.
        signal.signal(signal.SIGTERM, previous)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver logs each unit


def _describe_model(spec: JobSpec) -> dict[str, object]:
    return load_model(spec.model_settings()).describe()


def _check_model(ray: ModuleType, spec: JobSpec, per_actor: dict[str, int]) -> dict[str, object]:
    """The model's description, from loading it once where an actor would.

    A model that cannot load fails the job here with the local runner's error
    (`ModelLoadError` and the like), before the job's outputs are touched, rather than as
    actors dying one after another.
    """
    task = ray.remote(**per_actor)(_describe_model)
    try:
        return ray.get(task.remote(spec))
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None


def _unit_counts(ray: ModuleType, spec: JobSpec, state: JobState, pending: list[Unit], actors: int,
                 per_actor: dict[str, int]) -> Any:
    """A dataset of one row per pending unit, mapped by the actor pool to the unit's counts."""
    # One block per unit: a block is what one actor call receives, and several units in one
    # block would be run one after another by a single actor.
    rows = ray.data.from_items([{"unit": unit.index} for unit in pending], override_num_blocks=len(pending))
    return rows.map_batches(
        UnitRunner,
        batch_size=1,
        # An actor is given its next unit only once it has finished one, so that work is
        # never queued behind a slow actor while another idles.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"spec": spec, "state": state, "units": {unit.index: unit for unit in pending}},
        **per_actor,
    )


def _rows(dataset: Any, stopping: Stopping | None) -> Iterator[dict[str, Any]]:
    """The dataset's rows as units finish; raises `Stopped` once `stopping.abandon` is set.

    The rows are pulled in a thread, so that a stop is noticed while a unit still runs.
    """
    if stopping is None:
        yield from dataset.iter_rows()
        return
    arrived: queue.Queue[Any] = queue.Queue()
    end = object()

    def pull() -> None:
        try:
            for row in dataset.iter_rows():
                arrived.put(row)
            arrived.put(end)
        except BaseException as exc:  # handed to the driver's thread, which raises it
            arrived.put(exc)

    threading.Thread(target=pull, name="ray-rows", daemon=True).start()
    while True:
        try:
            item = arrived.get(timeout=_STOP_POLL_S)
        except queue.Empty:
            if stopping.abandon.is_set():
                raise Stopped("the units in progress were abandoned; rerun the same command to resume") from None
            continue
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
