"""The stages of a job, overlapped through bounded queues.

    read (thread) -> decode (thread pool) -> batch -> [prepare (threads)]
      -> predict/launch (caller's thread, or [launch threads]) -> [collect] (thread) -> write (thread)

Each queue holds a few items, so memory stays bounded however large the input, and the
model never waits for I/O or decoding that could have been done ahead of it. A model that
runs in stages (`StagedModel`: `TensorModel` on a GPU) gets two more overlaps: batch n+1 is
decoded and preprocessed while batch n runs, and the caller's thread only launches a batch,
leaving its detections to be collected by another thread, so the device always has the
next batch queued while the host waits for the last one's results; and the writing thread,
which may wait on a disk, holds up neither. (The sink commits units on a thread of its own:
`runners/unit.py`.)

One pipeline serves many units: the record stream carries a `UnitEnd` after each unit's
records, batches run across unit boundaries (no unit pays for a partial last batch or for
filling and draining the stages), and the sink hears of each end once every record before
it has its outcome.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar, Union, cast, runtime_checkable

from . import decode
from .errors import BatchPredictError
from .models import Model
from .records import Detections, Outcome, Prediction, Record, FailedRecord, UnitEnd

log = logging.getLogger("batch_predict")

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()
class _Flush:
    """In the decoded stream: pixel memory is short, so the batches being filled leave now."""


_FLUSH = _Flush()
_DECODE_CHUNK = 16
#: Decode threads by default for a model that decodes for itself: reading an image's size from
#: its header takes microseconds, and more threads only take the GIL from the thread that
#: feeds the GPU (each of its waits for the GPU then costs a GIL hand-over).
_PROBE_WORKERS = 2
#: Batches prepared ahead of the one running: enough to hide preparing, few enough that
#: their device memory stays small beside the model's.
_PREPARED_AHEAD = 2
#: Threads preparing batches for a staged model that decodes JPEGs on its device (one prepares
#: for any other). The device's batched JPEG decode holds its thread until the images are there
#: (torchvision's nvjpeg call waits for its stream, under a lock of its own): with two, one
#: thread preprocesses and hands over a batch while the other waits there, and batches come as
#: fast as the decoder and the model allow (docs/benchmarks.md).
_JPEG_PREPARING_THREADS = 2
#: Batches launched on the device and not yet collected.
_LAUNCHED_AHEAD = 2
#: Batches collected and not yet written: enough that a write held up for a while (a disk flushing
#: its cache; the GPU machine's job paused 0.17-0.24 s around unit commits, nine batches of
#: YOLOX-Nano there: docs/benchmarks.md) does not reach back to the device. Their pixels stay within
#: the budget (given back once written); their encoded bytes add to the few thousand records the
#: readers keep ahead.
_COLLECTED_AHEAD = 16


#: Error types of a device or host running out of memory: torch.cuda.OutOfMemoryError,
#: TensorFlow's ResourceExhaustedError, Python's MemoryError.
_OUT_OF_MEMORY_TYPES = frozenset({"OutOfMemoryError", "ResourceExhaustedError", "MemoryError"})


class OutcomeSink(Protocol):
    """Where outcomes go, in the order they were produced, with the end of each unit among them."""

    def write(self, outcomes: list[Outcome]) -> None: ...

    def end(self, mark: UnitEnd) -> None: ...


@runtime_checkable
class StagedModel(Model, Protocol):
    """A model whose `predict(records)` is `collect(launch(prepare(records)))`.

    `prepare` (decode, preprocess) runs on a thread of its own; `launch` starts the model on a
    prepared batch and returns without waiting for it; `collect` waits for and returns its
    detections, on the collecting thread. Each may raise: the batch is then predicted again,
    bisected, through `predict`. A model may also say how many batches to launch at once, each
    from a thread of its own, in a `launch_threads` attribute (`launch_threads_of`).
    """

    def prepare(self, records: Sequence[Record]) -> Any: ...

    def launch(self, prepared: Any) -> Any: ...

    def collect(self, launched: Any) -> list[Detections]: ...


def launch_threads_of(model: StagedModel) -> int:
    """How many threads launch `model`'s batches at once: its `launch_threads`, else one. More than
    one suits a model whose launch holds its thread until the device is done (one that waits on its
    device inside its forward), so that the device runs one batch while the next is launched. Not
    part of `StagedModel`: a staged model written without it must not lose its staged path."""
    return getattr(model, "launch_threads", 1)


Mark = Union[FailedRecord, UnitEnd]


class Batch(list):
    """Records predicted together, and the errors and unit ends that came among them: each mark
    in `marks` is `(n, mark)`, to be delivered after the outcomes of the first n records."""

    __slots__ = ("marks",)

    def __init__(self, records: Iterable[Record] = (), marks: list[tuple[int, Mark]] | None = None) -> None:
        super().__init__(records)
        self.marks = marks or []

    def segments(self, outcomes: list[Outcome]) -> list[list[Outcome] | UnitEnd]:
        """`outcomes` (one per record, in order) with the marks put back where they came: runs of
        outcomes to write, split where a unit ends."""
        if not self.marks:
            return [outcomes]
        found: list[list[Outcome] | UnitEnd] = []
        run: list[Outcome] = []
        at = 0
        for position, mark in self.marks:
            run += outcomes[at:position]
            at = position
            if isinstance(mark, UnitEnd):
                found += [run, mark]
                run = []
            else:
                run.append(mark)
        return found + [run + outcomes[at:]]


class Stopped(BatchPredictError):
    """The run was asked to stop; what it was doing is abandoned, uncommitted."""


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class PixelBudget:
    """At most `limit` bytes of decoded pixels held at once, however large the images and the
    batches: a decode waits for room, except into an empty budget (an image larger than the whole
    budget is decoded alone). Bytes are given back once the record's batch has its outcomes.
    Without it, memory follows the record count: twelve 8000x8000 PNGs of 2.4 MB decode to 2.3 GB.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._waiting = 0
        self._closed = False
        self._room = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._room:
            self._waiting += 1
            try:
                while self._held and self._held + size > self.limit and not self._closed:
                    self._room.wait()
            finally:
                self._waiting -= 1
            self._held += size

    def try_acquire(self, size: int) -> bool:
        """Take `size` bytes if there is room now; never waits."""
        with self._room:
            if self._held and self._held + size > self.limit:
                return False
            self._held += size
            return True

    def release(self, size: int) -> None:
        if size:
            with self._room:
                self._held -= size
                self._room.notify_all()

    def starved(self) -> bool:
        """Whether a decode is waiting for room: the batches being filled must leave to make it."""
        return self._waiting > 0

    def close(self) -> None:
        """The pipeline is ending: no decode waits any longer."""
        with self._room:
            self._closed = True
            self._room.notify_all()


def background(items: Iterable[T], depth: int, idle: Callable[[], bool] | None = None) -> Generator[T, None, None]:
    """Iterate `items` in a thread, at most `depth` ahead of the consumer. With `idle`, while
    nothing new has come, `_FLUSH` is yielded each time `idle()` is true."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))
        finally:
            # Closed here, in the thread that iterates it (a generator cannot be closed
            # from another thread while it runs).
            _close(items)

    thread = threading.Thread(target=produce, name="batch-predict-producer", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = buffer.get(timeout=0.05) if idle is not None else buffer.get()
            except queue.Empty:
                if idle is not None and idle():
                    yield cast(T, _FLUSH)  # a consumer that passes `idle` takes flushes among its items
                continue
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()


def ordered_map(
    fn: Callable[[T], U], chunks: Iterable[list[T]], pool: ThreadPoolExecutor, depth: int,
    admit: Callable[[list[T], bool], bool] | None = None,
) -> Generator[list[U], None, None]:
    """`fn` over each chunk of items on a pool, chunks in order, at most `depth` in flight.

    With `admit`, each chunk must first be admitted, here, in order: while `admit(chunk, False)`
    refuses it, the chunks in flight are yielded, and with none left `admit(chunk, True)` waits.

    Chunks, not items, cross threads: each hand-over through a queue costs a few
    microseconds of the GIL, which at thousands of records a second is worth sharing.
    """
    pending: list[Future[list[U]]] = []
    try:
        for chunk in chunks:
            while admit is not None and not admit(chunk, not pending):
                yield pending.pop(0).result()
            pending.append(pool.submit(lambda c: [fn(x) for x in c], chunk))
            if len(pending) >= depth:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
    finally:
        _close(chunks)


def _flattened(chunks: Iterable[list[Record | Mark] | _Flush]) -> Iterator[Record | Mark | _Flush]:
    """The items of the chunks, in order, flushes among them."""
    for chunk in chunks:
        if isinstance(chunk, _Flush):
            yield chunk
        else:
            yield from chunk


def _close(items: Iterable) -> None:
    """Close a generator left mid-way, so that the threads feeding it stop too."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prepare_for(model: Model, max_pixels: int, budget: PixelBudget | None = None) -> Callable[[Record | Mark], Record | Mark]:
    """The decode step this model needs: sizes only for what it decodes itself, pixels otherwise.

    Pixels are decoded within `budget`: for a model fed pixels, records come charged
    (`admit_pixels`); one that decodes JPEGs on its device (and shares them out between its GPU
    and CPU threads itself) has every other image decoded here where there is room.
    """
    if model.input_kind == "encoded":
        def step(record: Record) -> Record:
            return decode.probe(decode.encode_png(record), max_pixels)
    elif model.input_kind == "jpeg":
        def step(record: Record) -> Record:
            data = record.encoded or b""
            if record.array is None and decode.is_jpeg(data):
                return decode.probe(record, max_pixels, whole_jpeg=True)
            if budget is not None and record.array is None:
                decode.probe(record, max_pixels)
                if not budget.try_acquire(record.width * record.height * 3):
                    return record  # no room: the device decodes it (`TensorModel` takes encoded images)
                record.charged = record.width * record.height * 3
            return charged_decode(record)
    else:
        def step(record: Record) -> Record:
            return charged_decode(record)

    def charged_decode(record: Record) -> Record:
        try:
            return decode.decode(record, max_pixels)
        except BaseException:
            if budget is not None:
                budget.release(record.charged)
            record.charged = 0
            raise

    def prepare(item: Record | Mark) -> Record | Mark:
        if not isinstance(item, Record):
            return item
        try:
            return step(item)
        except (ValueError, OSError) as exc:
            return FailedRecord.of(item, exc, "decode")

    return prepare


def admit_pixels(budget: PixelBudget, max_pixels: int) -> Callable[[list[Record | Mark], bool], bool]:
    """Take the pixel bytes of a chunk's undecoded records from `budget`, in stream order, all or
    none; with `wait`, waiting for room. In order, so that records further on never take the room
    the next record in line needs: the records ahead of a wait can always reach the model and
    give theirs back."""

    def admit(chunk: list[Record | Mark], wait: bool) -> bool:
        taken: list[Record] = []
        for item in chunk:
            if not isinstance(item, Record) or item.array is not None or item.charged:
                continue
            if not item.width:  # not probed on an earlier try of this chunk
                try:
                    decode.probe(item, max_pixels)
                except (ValueError, OSError):
                    continue  # not charged: its decode fails with its error line
            size = item.width * item.height * 3
            if wait:
                budget.acquire(size)
            elif not budget.try_acquire(size):
                for record in taken:
                    budget.release(record.charged)
                    record.charged = 0
                return False
            item.charged = size
            taken.append(item)
        return True

    return admit


def form_batches(
    items: Iterable[Record | Mark | _Flush], batch_size: int, same_size: bool, stop: threading.Event | None = None
) -> Generator[Batch | Mark, None, None]:
    """Batches of up to `batch_size` records; errors and unit ends pass straight through,
    or ride in the batch being filled when a unit ended while it was open.

    A batch may hold the end of one unit and the start of the next, so that units do not
    each end in a partial batch; the unit's end is then one of the batch's marks. With
    `same_size`, a batch holds images of one size only (the model stacks them into one
    tensor): records wait in a group per size, a full group leaves at once, when more than
    four batches' worth are waiting the largest group leaves early, bounding memory, and a
    unit's end sends every group on its way first. Once `stop` is set, the stream ends at the
    next unit's end: the units whose records have reached the model finish, however far
    ahead the readers have gone. A `_FLUSH` in the stream sends every group on its way.
    """
    groups: dict[tuple[int, int], Batch] = {}
    waiting = 0
    for item in items:
        if isinstance(item, _Flush):
            yield from groups.values()
            groups.clear()
            waiting = 0
            continue
        if isinstance(item, Record):
            size = (item.height, item.width) if same_size else (0, 0)
            group = groups.get(size)
            if group is None:
                group = groups[size] = Batch()
            group.append(item)
            waiting += 1
            if len(group) >= batch_size:
                waiting -= len(group)
                yield groups.pop(size)
            elif waiting > 4 * batch_size:
                largest = max(groups, key=lambda k: len(groups[k]))
                waiting -= len(groups[largest])
                yield groups.pop(largest)
            continue
        if same_size and isinstance(item, UnitEnd):
            yield from groups.values()
            groups.clear()
            waiting = 0
            yield item
        elif groups and (isinstance(item, UnitEnd) or next(iter(groups.values())).marks):
            # Only without `same_size` is there a group here, and it holds an earlier unit's
            # records: the mark must come after them.
            (group,) = groups.values()
            group.marks.append((len(group), item))
        else:
            yield item
        if stop is not None and stop.is_set() and isinstance(item, UnitEnd):
            break
    yield from groups.values()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure says the device (or host) ran out of memory, whatever the framework."""
    kind = getattr(exc, "error_type", type(exc).__name__)
    return kind in _OUT_OF_MEMORY_TYPES or "out of memory" in str(exc).lower()


class BatchLimit:
    """The largest batch the device has shown it can take, learnt from running out of memory.

    Unlimited at first. A batch that runs out of memory is bisected like any failing
    batch; the largest part of it that then succeeds becomes the size later batches are
    cut to, so the job pays for running out of memory about once, not on every batch. A
    record too large on its own becomes an error line, and since the other half of its
    batch still succeeds whole, it halves the batch size once at most.
    """

    def __init__(self) -> None:
        self.size: int | None = None
        self._recovering = False
        self._largest_success = 0
        #: Held while a batch is cut and bisected: where several threads launch, two batches are
        #: never bisected at once, so what the limit learns from running out of memory is one batch's.
        self.isolating = threading.Lock()

    def chunks(self, batch: Sequence[Record]) -> list[Sequence[Record]]:
        step = self.size or len(batch) or 1
        return [batch[i : i + step] for i in range(0, len(batch), step)]

    def failed(self, size: int, exc: BaseException) -> None:
        if size > 1 and is_out_of_memory(exc) and not self._recovering:
            self._recovering, self._largest_success = True, 0
            log.warning("batch of %d ran out of memory (%s); splitting it", size, exc)

    def succeeded(self, size: int) -> None:
        if self._recovering:
            self._largest_success = max(self._largest_success, size)

    def settle(self) -> None:
        """End of one batch: adopt what its out-of-memory recovery, if any, found to work."""
        if self._recovering and self._largest_success:
            self.size = self._largest_success
            log.warning("batches are now cut to %d records; a lower --batch_size avoids the retries", self.size)
        self._recovering = False


def predict_isolating(model: Model, batch: Sequence[Record], limit: BatchLimit | None = None) -> list[Outcome]:
    """Predict a batch; when it fails, bisect it so that only the failing records fail.

    A batch with one bad record costs about 2*log2(batch) extra calls, and every good
    record in it is still predicted. With a `limit`, batches are first cut to the size
    that has worked since the device last ran out of memory.
    """
    limit = limit or BatchLimit()
    outcomes: list[Outcome] = []
    with limit.isolating:
        for chunk in limit.chunks(batch):
            outcomes += _bisect(model, chunk, limit)
            limit.settle()
    return outcomes


def _bisect(model: Model, batch: Sequence[Record], limit: BatchLimit) -> list[Outcome]:
    try:
        found = model.predict(batch)
    except Exception as exc:  # any failure of one batch is data about its records
        if len(batch) == 1:
            return [FailedRecord.of(batch[0], exc, "predict")]
        limit.failed(len(batch), exc)
        middle = len(batch) // 2
        return _bisect(model, batch[:middle], limit) + _bisect(model, batch[middle:], limit)
    limit.succeeded(len(batch))
    return [Prediction(record, detections) for record, detections in zip(batch, found, strict=True)]


def prepare_ahead(
    model: StagedModel, batches: Iterable[Batch | Mark], threads: int
) -> Generator[tuple[Batch | Mark, Any], None, None]:
    """Each batch with its prepared form (None for a mark, or a batch that failed to prepare:
    it is then predicted through `predict_isolating`, which finds the bad records), in order,
    `threads` batches prepared at once."""
    with ThreadPoolExecutor(threads, thread_name_prefix="batch-predict-prepare") as pool:
        pending: deque[tuple[Batch | Mark, Future | None]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(_prepared, model, batch) if isinstance(batch, Batch) else None))
            while len(pending) >= threads:
                yield _ready(pending.popleft())
        while pending:
            yield _ready(pending.popleft())


def _prepared(model: StagedModel, batch: Batch) -> Any:
    try:
        return model.prepare(batch)
    except Exception:  # the batch is retried, bisected, on the model's thread
        return None


def _ready(pending: tuple[Batch | Mark, Future | None]) -> tuple[Batch | Mark, Any]:
    batch, prepared = pending
    return batch, None if prepared is None else prepared.result()


def launch_prepared(
    model: StagedModel, batch: Batch, prepared: Any, limit: BatchLimit
) -> Callable[[], list[Outcome]]:
    """Launch a prepared batch; return what collects its outcomes, those of `predict_isolating`.

    A batch larger than the out-of-memory limit, or one that fails to launch or to collect,
    goes through `predict_isolating`, which cuts and bisects it as if it had never been
    prepared: at once if it fails here, when collected if it fails there.
    """
    if limit.size is not None and len(batch) > limit.size:
        outcomes = predict_isolating(model, batch, limit)
        return lambda: outcomes
    try:
        launched = model.launch(prepared)
    except Exception:  # any failure: the batch is redone, bisected
        del prepared  # its device memory, before the retry needs it
        outcomes = predict_isolating(model, batch, limit)
        return lambda: outcomes

    def collect() -> list[Outcome]:
        try:
            found = model.collect(launched)
        except Exception:  # a failure that showed only once the device got to it
            return predict_isolating(model, batch, limit)
        return [Prediction(record, detections) for record, detections in zip(batch, found, strict=True)]

    return collect


def launch_on(
    pool: ThreadPoolExecutor, model: StagedModel, batch: Batch, prepared: Any, limit: BatchLimit
) -> Callable[[], list[Outcome]]:
    """`launch_prepared` on one of `pool`'s threads: what it returns waits for the launch, then collects."""
    launched = pool.submit(launch_prepared, model, batch, prepared, limit)
    return lambda: launched.result()()


def _segments_once_collected(batch: Batch, collect: Callable[[], list[Outcome]]) -> list[list[Outcome] | UnitEnd]:
    """`batch.segments` of what `collect` returns: the collecting thread's work for a launched batch."""
    return batch.segments(collect())


class _Writer:
    """Collects and writes outcomes off the launching thread, in two threads: one waits for each
    batch's detections, the other writes them and gives their pixels back to the budget.

    Two, so that neither waiting for the device nor formatting lines delays launching the next
    batch, and so that a write held up by the disk does not stop the collecting: with one thread,
    the launching thread waited behind it once the few batches launched ahead were done, and the
    GPU idled. (Units commit on a thread of their own: `runners/unit.py`.) Up to `_COLLECTED_AHEAD`
    batches' outcomes wait for the writing thread; their pixels go back to the budget once written.
    """

    def __init__(self, sink: OutcomeSink, depth: int, budget: PixelBudget | None = None) -> None:
        self._sink = sink
        self._budget = budget
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._collected: queue.Queue = queue.Queue(maxsize=_COLLECTED_AHEAD)
        self._error: BaseException | None = None
        self._aborted = False
        self._threads = [
            threading.Thread(target=self._collect, name="batch-predict-collector", daemon=True),
            threading.Thread(target=self._write, name="batch-predict-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self) -> None:
        while (queued := self._queue.get()) is not _DONE:
            work, charged = queued
            segments: list[list[Outcome] | UnitEnd] = []
            if self._error is None and not self._aborted:
                try:
                    segments = work() if callable(work) else work
                except BaseException as exc:  # re-raised in the job's thread
                    self._error = exc
            self._collected.put((segments, charged))
        self._collected.put(_DONE)

    def _write(self) -> None:
        while (collected := self._collected.get()) is not _DONE:
            segments, charged = collected
            if self._error is None and not self._aborted:
                try:
                    self._deliver(segments)
                except BaseException as exc:  # re-raised in the job's thread
                    self._error = exc
            # Only now: the records hold their pixels until written (`--visualize` draws on them).
            if self._budget is not None:
                self._budget.release(charged)

    def _deliver(self, segments: list[list[Outcome] | UnitEnd]) -> None:
        for segment in segments:
            if isinstance(segment, UnitEnd):
                self._sink.end(segment)
            elif segment:
                self._sink.write(segment)

    def put(self, work: list[list[Outcome] | UnitEnd] | Callable[[], list[list[Outcome] | UnitEnd]],
            charged: int = 0) -> None:
        """Segments to write (`Batch.segments`), or what produces them once the device has (run in
        the collecting thread); once they are written, `charged` bytes go back to the pixel budget."""
        if self._error is not None:
            raise self._error
        self._queue.put((work, charged))

    def finish(self) -> None:
        self._queue.put(_DONE)
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without writing what is still queued; its lines would be discarded anyway."""
        self._aborted = True
        self._queue.put(_DONE)
        for thread in self._threads:
            thread.join()


def decode_workers(model: Model) -> int:
    """Decode threads by default: one per core this process may run on where they may decode
    pixels, a few where they only probe."""
    return _PROBE_WORKERS if model.input_kind == "encoded" else decode.usable_cpus()


def run_pipeline(
    records: Iterable[Record | Mark],
    model: Model,
    sink: OutcomeSink,
    *,
    batch_size: int,
    max_image_pixels: int,
    num_decode_workers: int,
    queue_depth: int,
    limit: BatchLimit | None = None,
    stop: threading.Event | None = None,
    abandon: threading.Event | None = None,
    max_decoded_bytes: int | None = None,
) -> int:
    """Push every record through decode, predict and write. Returns how many were read.

    With `max_decoded_bytes`, decoded pixels held at once stay within it (`PixelBudget`).

    `records` may carry `UnitEnd` marks, each handed to `sink.end` once every record before
    it has been written. Once `stop` is set, the records after the next unit's end reaching
    the model are left unread (`form_batches`). When `abandon` is set, raises `Stopped`
    before the next batch: what was written is incomplete, and the caller discards it.
    """
    read = 0

    def counted(items: Iterable[Record | Mark]) -> Iterator[Record | Mark]:
        nonlocal read
        for item in items:
            if not isinstance(item, UnitEnd):
                read += 1
            yield item

    limit = limit or BatchLimit()
    workers = num_decode_workers or decode_workers(model)
    staged = model if isinstance(model, StagedModel) else None
    # A staged model's batches wait in the collecting queue while the device runs them: two keep
    # it busy; more would only hold device memory.
    budget = PixelBudget(max_decoded_bytes) if max_decoded_bytes else None
    # Where records wait for room, a chunk's records must not wait for one another: one a task.
    chunk = 1 if budget is not None and model.input_kind == "image" else _DECODE_CHUNK
    launch_threads = launch_threads_of(staged) if staged is not None else 1
    writer = _Writer(sink, max(min(queue_depth, _LAUNCHED_AHEAD), launch_threads) if staged is not None else queue_depth, budget)
    launching = ThreadPoolExecutor(launch_threads, thread_name_prefix="batch-predict-launch") if launch_threads > 1 else None
    with ThreadPoolExecutor(workers, thread_name_prefix="batch-predict-decode") as pool:
        chunks_deep = max(2, queue_depth * batch_size // chunk)
        source = background(_chunks(counted(records), chunk), chunks_deep)
        admit = admit_pixels(budget, max_image_pixels) if budget is not None and model.input_kind == "image" else None
        decoded = ordered_map(prepare_for(model, max_image_pixels, budget), source, pool, 2 * workers, admit)
        prepared = background(decoded, chunks_deep, idle=budget.starved if budget is not None else None)
        batches = form_batches(_flattened(prepared), batch_size, model.same_size_batches, stop)
        if staged is not None:
            threads = _JPEG_PREPARING_THREADS if model.input_kind == "jpeg" else 1
            items = background(prepare_ahead(staged, batches, threads), _PREPARED_AHEAD)
        else:
            items = ((batch, None) for batch in batches)
        try:
            for item, ready in items:
                if abandon is not None and abandon.is_set():
                    raise Stopped("abandoned on request")
                if isinstance(item, UnitEnd):
                    writer.put([item])
                elif isinstance(item, FailedRecord):
                    writer.put([[item]])
                elif staged is not None and ready is not None:
                    collect = (launch_prepared(staged, item, ready, limit) if launching is None
                               else launch_on(launching, staged, item, ready, limit))
                    writer.put(partial(_segments_once_collected, item, collect), sum(r.charged for r in item))
                else:
                    writer.put(item.segments(predict_isolating(model, item, limit)), sum(r.charged for r in item))
                del ready  # frees the batch's device memory now, not when the next one arrives
        except BaseException:
            if launching is not None:
                launching.shutdown(wait=False, cancel_futures=True)
            writer.abort()
            raise
        finally:
            if launching is not None:  # its threads end once the launches queued there are done
                launching.shutdown(wait=False)
            # Stops the reading and decoding threads now, not when the exception is collected.
            if budget is not None:
                budget.close()  # a decode waiting for room would hold the pool's shutdown
            items.close()
            batches.close()
            prepared.close()
    writer.finish()
    return read
