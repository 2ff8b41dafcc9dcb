"""Several worker processes on one machine, one per GPU, sharing one job's units.

One process per GPU rather than threads: each has its own Python interpreter (no GIL
shared between the GPUs' pipelines) and its own CUDA context. The units are divided as
between the pods of an Indexed Job (`units_for_worker`), and the job state merges their
commits, so the outputs and the summary are those of one process running them all. Each
worker's events reach the parent's watchers (progress bar, metrics) through `Relay`.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..models.cuda_driver import device_count
from ..outputs.jobstate import JobState
from ..observe.observers import JobObserver
from ..pipeline import Stopped
from ..records import Detections, FailedRecord, Outcome, Prediction, Record
from ..outputs.sinks import JobSummary, UnitCounts
from ..spec import JobSpec
from ..inputs.units import Unit
from .local import run
from .plan import finish_run, plan_run
from .stopping import Stopping

log = logging.getLogger("batch_predict")


def local_gpu_count(spec: JobSpec) -> int:
    """The GPUs this machine's workers share: those the CUDA driver shows this process, where
    `--device` names none in particular; else 0. Counted through the driver rather than PyTorch,
    whose import kept every worker waiting seconds (docs/benchmarks.md, 0)."""
    return device_count() if spec.device in ("auto", "cuda") else 0


def local_worker_count(spec: JobSpec, gpus: int) -> int:
    """`--num_workers`, with 0 meaning one per GPU of the `gpus` (one when there is none)."""
    return spec.num_workers or max(1, gpus)


def worker_device(requested: str, local_index: int, gpus: int) -> str:
    """The device of the `local_index`-th worker of `gpus` GPUs, set up in its process before CUDA
    starts there: where `--device` names no particular GPU, its own GPU made the only one the
    process sees (`auto` stays `auto`, so a PyTorch without CUDA still runs on the CPU).

    A process that sees every GPU makes a CUDA context on the first one for any thread that has
    not chosen a device: two H200 workers ran at 1.6x one GPU, the second holding a context of
    518 MiB on the first worker's GPU, where two processes that each saw one GPU ran at 1.9-2.0x
    (docs/benchmarks.md). CUDA reads CUDA_VISIBLE_DEVICES when it starts in the process.
    """
    if requested not in ("auto", "cuda") or gpus == 0:
        return requested
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late to narrow its view (a caller's process)
        return f"cuda:{local_index % gpus}"
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()] or [str(i) for i in range(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[local_index % min(gpus, len(visible))]
    return "cuda:0" if requested == "cuda" else requested


class Relay(JobObserver):
    """A worker's unit events, sent to the parent process every `interval_s` and at each commit.

    What the parent's watchers (progress, metrics) do with records is count them, so a record
    read travels as its unit's index alone and a prediction as its number of detections; only
    records that failed travel whole, for their error types. Pickling each prediction's
    arrays cost 30 µs a record of the worker's CPU, and a worker's hot threads share it.
    """

    def __init__(self, messages: Any, interval_s: float = 0.5) -> None:
        self._messages = messages
        self._interval_s = interval_s
        self._events: list[tuple] = []
        self._lock = threading.Lock()
        self._sent = time.monotonic()

    def _add(self, event: tuple, send: bool = False) -> None:
        with self._lock:
            self._events.append(event)
            if send or time.monotonic() - self._sent >= self._interval_s:
                self._send()

    def _send(self) -> None:
        if self._events:
            self._messages.put(("events", self._events))
            self._events = []
        self._sent = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._send()

    def unit_started(self, unit: Unit) -> None:
        self._add(("unit_started", unit.index))

    def record_read(self, unit: Unit, item: Record | FailedRecord) -> None:
        self._add(("record_read", unit.index, item if isinstance(item, FailedRecord) else None))

    def batch_predicted(self, size: int, seconds: float) -> None:
        self._add(("batch_predicted", size, seconds))

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        detections = [len(o.detections.scores) for o in outcomes if isinstance(o, Prediction)]
        self._add(("written", unit.index, detections, [o for o in outcomes if isinstance(o, FailedRecord)]))

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        self._add(("unit_committed", unit.index, counts), send=True)

    def unit_abandoned(self, unit: Unit) -> None:
        self._add(("unit_abandoned", unit.index), send=True)


#: What a relayed record read is in the parent: a record of its unit, key and contents unknown.
_RELAYED = Record("", "", -1)


def _relayed_prediction(detections: int) -> Prediction:
    return Prediction(_RELAYED, Detections(np.zeros((detections, 4), np.float32), np.zeros(detections, np.float32),
                                           np.zeros(detections, np.int64)))


def replay(events: list[tuple], units: Mapping[int, Unit], observer: JobObserver) -> None:
    """Call `observer` as a `Relay` in another process was called, with records as the relay
    kept them (`_RELAYED` for each record read, predictions holding only their detection count)."""
    for name, *args in events:
        if name == "batch_predicted":
            observer.batch_predicted(*args)
        elif name == "record_read":
            index, failed = args
            observer.record_read(units[index], failed or _RELAYED)
        elif name == "written":
            index, detections, failed = args
            observer.written(units[index], [*map(_relayed_prediction, detections), *failed])
        else:
            getattr(observer, name)(units[args[0]], *args[1:])


def _work(spec: JobSpec, local_index: int, gpus: int, index: int, count: int, messages: Any, go: Any) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [worker {index}] %(message)s")
    # The parent evaluates against the ground truth once, when all workers are done.
    device = worker_device(spec.device, local_index, gpus)
    if gpus:
        log.info("batch-predict: worker %d on %s (CUDA_VISIBLE_DEVICES=%s)", index, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    worker_spec = dataclasses.replace(spec, num_workers=1, device=device, ground_truth=None)
    relay = Relay(messages)

    def begin_in_parent(state: JobState) -> None:
        """Tell the parent this worker's model loaded; it starts the job over once, then lets every worker on."""
        messages.put(("loaded", index, None))
        while not go.wait(1.0):
            if os.getppid() == 1:  # the parent is gone: nobody will start the job
                raise Stopped("the parent process ended before the job began")
        state.joined()

    try:
        run(worker_spec, worker_index=index, worker_count=count, observer=relay,
            begin=begin_in_parent if spec.overwrite else JobState.begin, write_summary=False)
        relay.flush()
        messages.put(("done", index, None))
    except BaseException as exc:  # handed to the parent, which raises it
        relay.flush()
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that cannot cross processes is sent as its text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        messages.put(("done", index, exc))


def run_workers(
    spec: JobSpec,
    *,
    worker_index: int = 0,
    worker_count: int = 1,
    stopping: Stopping | None = None,
    observer: JobObserver | None = None,
) -> JobSummary:
    """Run the job's share of (`worker_index`, `worker_count`) in `local_worker_count` processes.

    Worker i of this machine is worker `worker_index * n + i` of `worker_count * n` overall,
    so machines of several GPUs in an Indexed Job divide the units as one list of workers.
    The first failure of a worker (bad setup, failed units) is raised here after all have
    ended; a stop request ends the workers at once, leaving their units in progress
    uncommitted for a rerun. `observer` hears the run start and end here, and every unit's
    events as the workers relay them; the workers write the job's timeline and pictures.
    """
    gpus = local_gpu_count(spec)
    count = local_worker_count(spec, gpus)
    plan = plan_run(spec, worker_index, worker_count)
    watchers = observer or JobObserver()
    watchers.job_started(plan.pending)
    units = {unit.index: unit for unit in plan.units}
    predicted_before = sum(c.predicted for c in plan.state.committed().values())
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    messages = context.Queue()
    # Under --overwrite the earlier job's outputs are removed once, here, when the first worker's
    # model has loaded: workers starting over each would delete each other's commits, and a
    # model that fails to load must leave the earlier outputs in place.
    go = context.Event()
    processes = [
        context.Process(
            target=_work,
            args=(spec, i, gpus, worker_index * count + i, worker_count * count, messages, go),
            name=f"batch-predict-worker-{i}",
        )
        for i in range(count)
    ]
    log.info("batch-predict: %d worker processes", count)
    for process in processes:
        process.start()
    failures: dict[int, BaseException] = {}
    reported = 0
    while reported < count:
        if stopping is not None and stopping.requested.is_set():
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()
            raise Stopped("workers stopped; rerun the same command to resume")
        if not any(p.is_alive() for p in processes) and messages.empty():
            failures[-1] = RuntimeError("a worker process died without reporting (killed, or out of host memory?)")
            break
        try:
            kind, *message = messages.get(timeout=0.2)
        except queue.Empty:
            continue
        if kind == "events":
            replay(message[0], units, watchers)
            continue
        if kind == "loaded":
            if not go.is_set():
                plan.state.begin()
                go.set()
            continue
        index, failure = message
        reported += 1
        if failure is not None:
            failures[index] = failure
    for process in processes:
        process.join()
    if failures:
        raise failures[min(failures)]
    plan.predicted_now = sum(c.predicted for c in plan.state.committed().values()) - predicted_before
    return finish_run(plan, watchers)
