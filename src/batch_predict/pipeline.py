"""The stages of a job, overlapped through bounded queues.

    read (thread) -> decode (thread pool) -> batch -> predict (caller's thread) -> write (thread)

Each queue holds a few items, so memory stays bounded however large the input, and the
model never waits for I/O or decoding that could have been done ahead of it.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from . import decode
from .models import Model
from .records import Outcome, Prediction, Record, RecordError
from .sinks import JobOutputs

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()
_DECODE_CHUNK = 16


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def background(items: Iterable[T], depth: int) -> Iterator[T]:
    """Iterate `items` in a thread, at most `depth` ahead of the consumer."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(_Failure(exc))

    thread = threading.Thread(target=produce, name="batch-predict-producer", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()


def ordered_map(fn: Callable[[T], U], items: Iterable[T], pool: ThreadPoolExecutor, depth: int) -> Iterator[U]:
    """`map(fn, items)` on a pool, in order, with at most `depth` chunks in flight."""
    pending: list[Future] = []
    for chunk in _chunks(items, _DECODE_CHUNK):
        pending.append(pool.submit(lambda c=chunk: [fn(x) for x in c]))
        if len(pending) >= depth:
            yield from pending.pop(0).result()
    for future in pending:
        yield from future.result()


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prepare_for(model: Model, max_pixels: int) -> Callable[[Record | RecordError], Record | RecordError]:
    """The decode step this model needs: sizes only when it decodes for itself, pixels otherwise."""
    if model.input_kind == "encoded":
        def step(record: Record) -> Record:
            return decode.probe(decode.encode_png(record), max_pixels)
    else:
        step = partial(decode.decode, max_pixels=max_pixels)

    def prepare(item: Record | RecordError) -> Record | RecordError:
        if isinstance(item, RecordError):
            return item
        try:
            return step(item)
        except (ValueError, OSError) as exc:
            return RecordError.of(item, exc, "decode")

    return prepare


def form_batches(
    items: Iterable[Record | RecordError], batch_size: int, same_size: bool
) -> Iterator[list[Record] | RecordError]:
    """Batches of up to `batch_size` records; errors pass straight through.

    With `same_size`, a batch holds images of one size only (the model stacks them into one
    tensor): records wait in a group per size, a full group leaves at once, and when more
    than four batches' worth are waiting the largest group leaves early, bounding memory.
    """
    groups: dict[tuple[int, int], list[Record]] = {}
    waiting = 0
    for item in items:
        if isinstance(item, RecordError):
            yield item
            continue
        size = (item.height, item.width) if same_size else (0, 0)
        group = groups.setdefault(size, [])
        group.append(item)
        waiting += 1
        if len(group) >= batch_size:
            waiting -= len(group)
            yield groups.pop(size)
        elif waiting > 4 * batch_size:
            largest = max(groups, key=lambda k: len(groups[k]))
            waiting -= len(groups[largest])
            yield groups.pop(largest)
    yield from groups.values()


def predict_isolating(model: Model, batch: Sequence[Record]) -> list[Outcome]:
    """Predict a batch; when it fails, bisect it so that only the failing records fail.

    A batch with one bad record costs about 2*log2(batch) extra calls, and every good
    record in it is still predicted.
    """
    try:
        found = model.predict(batch)
    except Exception as exc:  # any failure of one batch is data about its records
        if len(batch) == 1:
            return [RecordError.of(batch[0], exc, "predict")]
        middle = len(batch) // 2
        return predict_isolating(model, batch[:middle]) + predict_isolating(model, batch[middle:])
    return [Prediction(record, detections) for record, detections in zip(batch, found, strict=True)]


class _Writer:
    """Writes outcomes in a thread, so formatting JSON never delays the next batch."""

    def __init__(self, outputs: JobOutputs, depth: int) -> None:
        self._outputs = outputs
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="batch-predict-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (outcomes := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self._outputs.write(outcomes)
                except BaseException as exc:  # re-raised in the job's thread
                    self._error = exc

    def put(self, outcomes: list[Outcome]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(outcomes)

    def finish(self) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error


def run_pipeline(
    records: Iterable[Record | RecordError],
    model: Model,
    outputs: JobOutputs,
    *,
    batch_size: int,
    max_image_pixels: int,
    num_decode_workers: int,
    queue_depth: int,
) -> int:
    """Push every record through decode, predict and write. Returns how many were read."""
    read = 0

    def counted(items: Iterable[Record | RecordError]) -> Iterator[Record | RecordError]:
        nonlocal read
        for item in items:
            read += 1
            yield item

    workers = num_decode_workers or os.cpu_count() or 1
    writer = _Writer(outputs, queue_depth)
    with ThreadPoolExecutor(workers, thread_name_prefix="batch-predict-decode") as pool:
        source = background(counted(records), queue_depth * batch_size)
        prepared = ordered_map(prepare_for(model, max_image_pixels), source, pool, depth=2 * workers)
        for batch in form_batches(background(prepared, queue_depth * batch_size), batch_size, model.same_size_batches):
            writer.put([batch] if isinstance(batch, RecordError) else predict_isolating(model, batch))
    writer.finish()
    return read
