"""Write results and errors as sharded JSON lines, and the job's summary."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np

from .records import Outcome, Prediction, RecordError


class OutputError(OSError):
    """An output location cannot be written."""


def shard_name(prefix: str, index: int, count: int) -> str:
    """`<prefix>-00000-of-00004.jsonl`, the naming of Beam, the Kubeflow job and Vertex AI."""
    return f"{prefix}-{index:05d}-of-{count:05d}.jsonl"


def summary_path(result_prefix: str) -> str:
    return f"{result_prefix}-summary.json"


class ShardedJsonlWriter:
    """N shard files under one prefix, filled in turn one batch at a time.

    All shards are opened at start, so that an unwritable location fails the job before
    any input is read, and a shard that received nothing still exists (empty).
    """

    def __init__(self, prefix: str, num_shards: int) -> None:
        self.paths = [shard_name(prefix, i, num_shards) for i in range(num_shards)]
        fs, root = fsspec.core.url_to_fs(prefix)
        try:
            parent = posixpath.dirname(root)
            if parent:
                fs.makedirs(parent, exist_ok=True)
            self._files = [fsspec.open(p, "wt", encoding="utf-8").open() for p in self.paths]
        except OSError as exc:
            raise OutputError(f"cannot write output files under {prefix!r}: {exc}") from None
        self._next = 0

    def write(self, lines: Iterable[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if text:
            self._files[self._next].write(text)
            self._next = (self._next + 1) % len(self._files)

    def close(self) -> None:
        for f in self._files:
            f.close()


def result_line(prediction: Prediction, labels: Mapping[int, str]) -> str:
    """One result line: the record's identity, its size and its detections."""
    record, found = prediction.record, prediction.detections
    size = np.array([record.width, record.height, record.width, record.height], dtype=np.float32)
    # float64 first, so that rounding gives short decimals rather than float32 artefacts.
    pixels = found.boxes.astype(np.float64)
    boxes = np.round(pixels, 2).tolist()
    normalized = np.round(pixels / size, 5).tolist()
    scores = np.round(found.scores.astype(np.float64), 4).tolist()
    classes = found.classes.tolist()
    detections = []
    for box, norm, score, class_id in zip(boxes, normalized, scores, classes):
        detection: dict[str, Any] = {"box": box, "box_normalized": norm, "score": score, "class_id": class_id}
        if labels:
            detection["label"] = labels.get(class_id, str(class_id))
        detections.append(detection)
    line: dict[str, Any] = {
        "key": record.key,
        "source": record.source,
        "record_index": record.index,
        "width": record.width,
        "height": record.height,
        "detections": detections,
    }
    if found.raw:
        line["raw"] = found.raw
    return json.dumps(line, separators=(",", ":"))


@dataclass
class JobSummary:
    """The job's accounting: every record read is either predicted or failed."""

    files: int = 0
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
    def error_rate(self) -> float:
        return self.failed / self.records_read if self.records_read else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 6)}


class JobOutputs:
    """The result and error shards of one job, and the counts that prove nothing was lost."""

    def __init__(self, result_prefix: str, error_prefix: str, num_shards: int, labels: Mapping[int, str]) -> None:
        self.result_prefix = result_prefix
        self.labels = labels
        self.results = ShardedJsonlWriter(result_prefix, num_shards)
        self.errors = ShardedJsonlWriter(error_prefix, num_shards)
        self.predicted = 0
        self.detections = 0
        self.error_types: Counter[str] = Counter()

    def write(self, outcomes: list[Outcome]) -> None:
        predictions = [o for o in outcomes if isinstance(o, Prediction)]
        errors = [o for o in outcomes if isinstance(o, RecordError)]
        self.results.write(result_line(p, self.labels) for p in predictions)
        self.errors.write(json.dumps(e.to_json(), separators=(",", ":")) for e in errors)
        self.predicted += len(predictions)
        self.detections += sum(len(p.detections.scores) for p in predictions)
        self.error_types.update(e.error_type for e in errors)

    def close(self, files: int, records_read: int, wall_time_s: float) -> JobSummary:
        self.results.close()
        self.errors.close()
        failed = sum(self.error_types.values())
        if self.predicted + failed != records_read:
            raise RuntimeError(
                f"accounting mismatch: {records_read} records read but {self.predicted} predicted + {failed} failed"
            )
        summary = JobSummary(
            files=files,
            records_read=records_read,
            predicted=self.predicted,
            failed=failed,
            detections=self.detections,
            error_types=dict(sorted(self.error_types.items())),
            wall_time_s=round(wall_time_s, 3),
            images_per_second=round(self.predicted / wall_time_s, 2) if wall_time_s > 0 else 0.0,
            result_files=self.results.paths,
            error_files=self.errors.paths,
        )
        with fsspec.open(summary_path(self.result_prefix), "wt", encoding="utf-8") as f:
            json.dump(summary.to_json(), f, indent=2)
        return summary
