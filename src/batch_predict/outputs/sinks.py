"""Write results (JSON lines, or a format of `result_formats`) and errors (JSON lines), one shard
per unit, committed by renaming.

A shard file name only ever holds a whole unit's lines: a unit writes its shards under
temporary names and renames them into place when every one of its records is accounted
for, so a job killed at any moment leaves whole shards or none.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Protocol

import fsspec
import numpy as np
import orjson

from ..errors import SetupError
from ..records import Outcome, Prediction, FailedRecord


class OutputError(SetupError, OSError):
    """An output location cannot be written."""


#: File name endings of result shards (`--output_format` parquet and coco); errors are always .jsonl.
SHARD_EXTENSIONS = ("jsonl", "parquet", "json")


def shard_name(prefix: str, index: int, count: int, ext: str = "jsonl") -> str:
    """`<prefix>-00000-of-00004.jsonl`, the naming of Beam, the Kubeflow job and Vertex AI."""
    return f"{prefix}-{index:05d}-of-{count:05d}.{ext}"


def summary_path(result_prefix: str) -> str:
    return f"{result_prefix}-summary.json"


def _partial_name(path: str, token: str) -> str:
    # Ends in neither .jsonl nor .json, so globs for outputs never pick it up.
    return f"{path}.{token}.partial"


def shard_files(prefix: str, partial_only: bool = False) -> list[str]:
    """Every shard file under `prefix`, whatever its shard count, or only the temporary ones.

    One listing of the prefix's folder, rather than one per shard, since object stores
    charge by request.
    """
    fs, root = fsspec.core.url_to_fs(prefix)
    parent, base = posixpath.split(root)
    partial = r"\.[0-9a-z-]+\.partial"
    shard = re.escape(base) + r"-\d{5,}-of-\d{5,}\.(" + "|".join(SHARD_EXTENSIONS) + ")"
    pattern = re.compile(shard + (partial if partial_only else f"({partial})?"))
    try:
        listing = fs.ls(parent, detail=False)
    except FileNotFoundError:
        return []
    return [fs.unstrip_protocol(p) for p in listing if pattern.fullmatch(posixpath.basename(p))]


def ensure_writable(prefix: str) -> None:
    """Create the prefix's folder and write and remove a file there, or raise `OutputError`.

    Called before any input is read, so that a job does not spend hours predicting into a
    location it cannot write.
    """
    fs, root = fsspec.core.url_to_fs(prefix)
    probe = _partial_name(root, f"probe-{uuid.uuid4().hex[:12]}")
    try:
        parent = posixpath.dirname(root)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"")
        fs.rm(probe)
    except OSError as exc:
        raise OutputError(f"cannot write output files under {prefix!r}: {exc}") from None


def write_atomically(path: str, text: str) -> None:
    """Write a whole file or nothing: to a temporary name, then renamed into place."""
    fs, root = fsspec.core.url_to_fs(path)
    temp = _partial_name(root, uuid.uuid4().hex[:12])
    try:
        fs.makedirs(posixpath.dirname(root), exist_ok=True)
        with fs.open(temp, "wb") as f:
            f.write(text.encode("utf-8"))
        fs.mv(temp, root)
    except OSError as exc:
        raise OutputError(f"cannot write {path!r}: {exc}") from None


def json_line(value: Any) -> bytes:
    """One line of JSON lines, as UTF-8.

    orjson rather than the json module: the writer thread formats every detection of every
    image, and at thousands of images a second json.dumps would hold the GIL for a large
    share of the time the thread feeding the GPU needs it (docs/benchmarks.md, "Host").
    """
    return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)


def result_lines(predictions: Sequence[Prediction], labels: Mapping[int, str]) -> bytes:
    """The result lines of `predictions`: each record's identity, its size and its detections."""
    return b"".join(json_line(record) for record in result_records(predictions, labels))


def result_records(predictions: Sequence[Prediction], labels: Mapping[int, str]) -> Iterator[dict[str, Any]]:
    """What result lines hold, as dicts, one image at a time, for every output format to write its own way.

    The arithmetic runs once over the whole batch's detections: a few numpy calls per batch,
    not per image, whose fixed costs would outweigh an image's few detections. Each image's
    lists and dicts are made only when it is asked for: a whole batch's tens of thousands of
    live containers would make every run of the cyclic garbage collector walk them all.
    """
    if not predictions:
        return
    found = [p.detections for p in predictions]
    counts = [len(d.scores) for d in found]
    # float64 first, so that rounding gives short decimals rather than float32 artefacts.
    pixels = np.concatenate([d.boxes for d in found]).astype(np.float64).reshape(-1, 4)
    sizes = np.repeat(np.array([[p.record.width, p.record.height] * 2 for p in predictions], np.float64), counts, axis=0)
    boxes = np.round(pixels, 2)
    normalized = np.round(pixels / sizes, 5)
    scores = np.round(np.concatenate([d.scores for d in found]).astype(np.float64), 4).tolist()
    classes = np.concatenate([d.classes for d in found]).astype(np.int64).tolist()
    end = 0
    for prediction, count in zip(predictions, counts):
        start, end = end, end + count
        rows = zip(boxes[start:end].tolist(), normalized[start:end].tolist(), scores[start:end], classes[start:end])
        detections = [{"box": b, "box_normalized": n, "score": s, "class_id": c} for b, n, s, c in rows]
        if labels:
            for detection in detections:
                detection["label"] = labels.get(detection["class_id"], str(detection["class_id"]))
        record = prediction.record
        line: dict[str, Any] = {
            "key": record.key, "source": record.source, "record_index": record.index,
            "width": record.width, "height": record.height, "detections": detections,
        }
        if prediction.detections.raw:
            line["raw"] = prediction.detections.raw
        yield line


class ResultWriter(Protocol):
    """Writes predictions into one open result shard in some format; `finish` completes its content."""

    def write(self, predictions: list[Prediction]) -> None: ...

    def finish(self) -> None: ...


class JsonlResults:
    """The default result format: one JSON line per prediction."""

    def __init__(self, file: IO[bytes], labels: Mapping[int, str]) -> None:
        self._file, self._labels = file, labels

    def write(self, predictions: list[Prediction]) -> None:
        self._file.write(result_lines(predictions, self._labels))

    def finish(self) -> None:
        pass


@dataclass
class UnitCounts:
    """What one unit committed: every record it read is either predicted or failed."""

    records_read: int = 0
    predicted: int = 0
    failed: int = 0
    detections: int = 0
    error_types: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "UnitCounts":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass
class JobSummary:
    """The job's accounting over all its committed units: records read = predicted + failed."""

    files: int = 0
    units: int = 0
    units_committed: int = 0
    records_read: int = 0
    predicted: int = 0
    failed: int = 0
    detections: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    images_per_second: float = 0.0
    result_files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.units_committed == self.units

    @property
    def error_rate(self) -> float:
        return self.failed / self.records_read if self.records_read else 0.0

    @classmethod
    def of_units(cls, counts: Iterable[UnitCounts], **fields: Any) -> "JobSummary":
        """The sum of the units' counts, plus the job-level `fields`."""
        summary = cls(**fields)
        error_types: Counter[str] = Counter()
        for unit in counts:
            summary.units_committed += 1
            summary.records_read += unit.records_read
            summary.predicted += unit.predicted
            summary.failed += unit.failed
            summary.detections += unit.detections
            error_types.update(unit.error_types)
        summary.error_types = dict(sorted(error_types.items()))
        return summary

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 6)}


class UnitOutputs:
    """The result and error shard of one unit, under temporary names until `commit`.

    Each attempt writes under its own temporary names, so a second process on the same
    unit never writes into this one's files; what killed attempts leave behind is removed
    when the job completes (`JobState.summarize`), with one listing rather than one per unit.
    """

    def __init__(self, result_path: str, error_path: str, labels: Mapping[int, str],
                 results: Callable[[IO[bytes], Mapping[int, str]], ResultWriter] = JsonlResults) -> None:
        self.labels = labels
        self.paths = (result_path, error_path)
        token = uuid.uuid4().hex[:12]
        self._temps: list[tuple[fsspec.AbstractFileSystem, str, str]] = []
        self._files: list[Any] = []
        try:
            for path in self.paths:
                fs, root = fsspec.core.url_to_fs(path)
                temp = _partial_name(root, token)
                self._files.append(fs.open(temp, "wb"))
                self._temps.append((fs, temp, root))
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot write {path!r}: {exc}") from None
        self._results = results(self._files[0], labels)
        self.predicted = 0
        self.detections = 0
        self.error_types: Counter[str] = Counter()

    def write(self, outcomes: list[Outcome]) -> None:
        predictions = [o for o in outcomes if isinstance(o, Prediction)]
        errors = [o for o in outcomes if isinstance(o, FailedRecord)]
        if predictions:
            self._results.write(predictions)
        if errors:
            self._files[1].write(b"".join(json_line(e.to_json()) for e in errors))
        self.predicted += len(predictions)
        self.detections += sum(len(p.detections.scores) for p in predictions)
        self.error_types.update(e.error_type for e in errors)

    def commit(self, records_read: int) -> UnitCounts:
        """Rename both shards into place, once every record read has its line."""
        failed = sum(self.error_types.values())
        if self.predicted + failed != records_read:
            self.discard()
            raise RuntimeError(
                f"accounting mismatch: {records_read} records read but {self.predicted} predicted + {failed} failed"
            )
        try:
            self._results.finish()
            for f in self._files:
                f.close()
            for fs, temp, root in self._temps:
                fs.mv(temp, root)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot commit {self.paths[0]!r}: {exc}") from None
        return UnitCounts(records_read, self.predicted, failed, self.detections, dict(sorted(self.error_types.items())))

    def discard(self) -> None:
        """Drop what was written; the unit stays uncommitted and a rerun redoes it."""
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        for fs, temp, _ in self._temps:
            try:
                if fs.exists(temp):
                    fs.rm(temp)
            except OSError:
                pass
