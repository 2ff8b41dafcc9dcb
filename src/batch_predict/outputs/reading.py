"""Read a finished job's outputs back: its summary, result and error lines, and timeline.

The tools that look at a job after it ran (`report`, `evaluate`) start from its
`--output_result_prefix`, as a user does; the summary names the shard files, and without a
summary the shards are found by the job's naming.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import SetupError
from .sinks import summary_path

_SHARD_GLOB = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]."
#: Result shard endings, in the order a prefix without summary is searched for them.
_RESULT_EXTENSIONS = ("jsonl", "parquet", "json")


class JobOutputsError(SetupError, FileNotFoundError):
    """No job outputs under the given prefix."""


def timeline_path(result_prefix: str) -> str:
    """`<prefix>-timeline.jsonl`: one line per batch, as a job may write it whole (see docs/tools.md)."""
    return f"{result_prefix}-timeline.jsonl"


def unit_timeline_path(result_prefix: str, index: int, count: int) -> str:
    """The timeline lines of one committed unit, as the job writes them (`timeline.TimelineWriter`)."""
    return f"{result_prefix}-job/timeline/{index:05d}-of-{count:05d}.jsonl"


def load_summary(result_prefix: str) -> dict[str, Any] | None:
    """The job's `-summary.json`, or None when the job wrote none (it was stopped before the end)."""
    try:
        with fsspec.open(summary_path(result_prefix), "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def shard_files(prefix: str, ext: str = "jsonl") -> list[str]:
    """The `<prefix>-NNNNN-of-NNNNN.<ext>` files that exist, in order."""
    fs, root = fsspec.core.url_to_fs(prefix)
    local = isinstance(fs, LocalFileSystem)
    return [p if local else fs.unstrip_protocol(p) for p in sorted(fs.glob(root + _SHARD_GLOB + ext))]


def result_files(result_prefix: str, summary: dict[str, Any] | None = None) -> list[str]:
    """The result shards: as the summary lists them, else as found. Raises `JobOutputsError` if none."""
    files = summary["result_files"] if summary and summary.get("result_files") else next(
        (found for ext in _RESULT_EXTENSIONS if (found := shard_files(result_prefix, ext))), [])
    if not files:
        raise JobOutputsError(f"no job outputs under {result_prefix!r}: neither {summary_path(result_prefix)} "
                              f"nor {result_prefix}-NNNNN-of-NNNNN.jsonl exists")
    return files


def read_lines(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON lines of the files, in order; blank lines are skipped."""
    for path in paths:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def read_results(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The result records of JSON lines or Parquet shards (by their ending), as result lines give them.

    COCO result shards hold detections without keys or sources: read them with `read_coco_results`.
    """
    for path in paths:
        if path.endswith(".parquet"):
            yield from _parquet_rows(path)
        elif path.endswith(".jsonl"):
            yield from read_lines([path])
        else:
            raise JobOutputsError(f"{path}: COCO results (--output_format coco) hold no keys or sources; "
                                  "this tool needs jsonl or parquet results")


def _parquet_rows(path: str) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise JobOutputsError("reading Parquet results needs pyarrow: pip install 'batch-predict[parquet]'") from None
    with fsspec.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches():
            for row in batch.to_pylist():
                row["detections"] = [{k: v for k, v in d.items() if v is not None} for d in row["detections"]]
                raw = row.pop("raw", None)
                if raw is not None:
                    row["raw"] = json.loads(raw)
                yield row


def read_coco_results(paths: Iterable[str]) -> list[dict[str, Any]]:
    """The entries of COCO detection result shards, one JSON array each."""
    entries: list[dict[str, Any]] = []
    for path in paths:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            entries += json.load(f)
    return entries


def read_timeline(result_prefix: str) -> list[dict[str, Any]]:
    """The job's timeline lines, in time order, or [] when it wrote none.

    Reads `<prefix>-timeline.jsonl` and every unit's timeline. Lines that carry the wall
    clock (`time`) are put on one clock, the job's active time: runs that overlap (workers)
    share it, and the idle gap between a run and its resumption is left out, so `t` is
    seconds of the job running and the plot shows the rate whenever something ran.
    """
    fs, root = fsspec.core.url_to_fs(result_prefix)
    paths = sorted(fs.glob(root + "-job/timeline/*-of-*.jsonl"))
    if fs.exists(root + "-timeline.jsonl"):
        paths.insert(0, root + "-timeline.jsonl")
    lines = list(read_lines(fs.unstrip_protocol(p) for p in paths))
    clocked = [line for line in lines if "time" in line]
    if clocked:
        to_active = _active_clock([(line["time"] - line["t"], line["time"]) for line in clocked])
        for line in clocked:
            line["t"] = round(to_active(line["time"]), 3)
    return sorted(lines, key=lambda line: float(line["t"]))


def _active_clock(spans: list[tuple[float, float]]) -> Callable[[float], float]:
    """time -> seconds of the union of `spans` (each run's start to a batch) before it."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])

    def active(when: float) -> float:
        before = 0.0
        for start, end in merged:
            if when <= end:
                return before + max(0.0, when - start)
            before += end - start
        return before

    return active
