"""Where a job's units run: in this process (`local`), in one process per GPU (`workers`), or
on a Ray cluster (`ray`); `run` picks one.

Each plans the job and fails before any work as `plan` says, loads its model before it
writes anything, streams units through `unit.run_units`, and sums the job up alike.
"""

from __future__ import annotations

from ..errors import SetupError
from ..models import Model
from ..observe.observers import JobObserver
from ..outputs.sinks import JobSummary
from ..spec import JobSpec, SpecError
from . import local, workers
from .stopping import Stopping

RUNNERS = ("local", "ray")


def run(
    spec: JobSpec,
    *,
    model: Model | None = None,
    runner: str = "local",
    ray_address: str | None = None,
    ray_num_actors: int = 0,
    worker_index: int = 0,
    worker_count: int = 1,
    stopping: Stopping | None = None,
    observer: JobObserver | None = None,
) -> JobSummary:
    """Predict every record matched by `spec`, write results, errors and a summary.

    `runner` "local" runs in this process, or, with `spec.num_workers` other than 1 (and no
    `model` given), in one process per GPU; "ray" on a Ray cluster (`ray_address`, else
    `RAY_ADDRESS`, else a local instance; `ray_num_actors` model actors). The arguments after
    it are those of `runners.local.run`, which says how setup fails, resumes and stops.
    """
    if runner not in RUNNERS:
        raise SpecError(f"--runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if runner != "ray" and (ray_address or ray_num_actors):
        raise SpecError("--ray_address and --ray_num_actors are settings of --runner ray")
    if runner == "ray":
        if model is not None:
            raise SetupError("--runner ray loads the model in each Ray actor; it cannot take a loaded model")
        from . import ray  # Ray is an optional extra: imported only for its runner

        return ray.run(spec, address=ray_address, num_actors=ray_num_actors, worker_index=worker_index,
                       worker_count=worker_count, stopping=stopping, observer=observer)
    if spec.num_workers != 1 and model is None:
        return workers.run_workers(spec, worker_index=worker_index, worker_count=worker_count, stopping=stopping,
                                   observer=observer)
    return local.run(spec, model=model, worker_index=worker_index, worker_count=worker_count, stopping=stopping,
                     observer=observer)
