"""Read a finished job's outputs back: its summary, results, errors and timeline.

The tools that look at a job after it ran (`report`, `evaluate`) start from its
`--output_result_prefix`, as a user does; the summary names the result and error files, and
without a summary they are found where `layout.OutputLayout` puts them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec

from ..errors import SetupError
from .layout import SHARD_EXTENSIONS, OutputLayout, find_shards


class JobOutputsError(SetupError, FileNotFoundError):
    """No job outputs under the given prefix."""


def load_summary(result_prefix: str) -> dict[str, Any] | None:
    """The job's `-summary.json`, or None when the job wrote none (it was stopped before the end)."""
    try:
        with fsspec.open(OutputLayout(result_prefix).summary, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def load_job_record(result_prefix: str) -> dict[str, Any] | None:
    """The job's job.json (what job this is: its settings and inputs), or None where there is none.
    Raises ValueError where it is not JSON."""
    try:
        with fsspec.open(OutputLayout(result_prefix).job_record, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def result_files(result_prefix: str, summary: dict[str, Any] | None = None) -> list[str]:
    """The result files: as the summary lists them, else as found (shards of the first ending that
    has any, or the SQLite database). Raises `JobOutputsError` if none."""
    layout = OutputLayout(result_prefix)
    files = summary["result_files"] if summary and summary.get("result_files") else next(
        (found for ext in SHARD_EXTENSIONS if (found := find_shards(result_prefix, (ext,)))), [])
    if not files and _exists(layout.database):
        files = [layout.database]
    if not files:
        raise JobOutputsError(f"no job outputs under {result_prefix!r}: neither {layout.summary} "
                              f"nor {result_prefix}-NNNNN-of-NNNNN.jsonl exists")
    return files


def error_files(error_prefix: str | None, summary: dict[str, Any] | None = None) -> list[str]:
    """The error files: the shards under `error_prefix` when it is given, else as the summary lists them."""
    if error_prefix:
        return find_shards(error_prefix, ("jsonl",))
    return list((summary or {}).get("error_files") or [])


def _exists(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(root)


def read_lines(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON lines of the files, in order; blank lines are skipped."""
    for path in paths:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def read_results(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The result records of JSON lines or Parquet shards or a SQLite database (by their ending),
    as result lines give them.

    COCO result shards hold detections without keys or sources: read them with `read_coco_results`.
    """
    for path in paths:
        if path.endswith(".parquet"):
            yield from _parquet_rows(path)
        elif path.endswith(".sqlite"):
            yield from _sqlite_rows(path, "results")
        elif path.endswith(".jsonl"):
            yield from read_lines([path])
        else:
            raise JobOutputsError(f"{path}: COCO results (--output_format coco) hold no keys or sources; "
                                  "this tool needs jsonl or parquet results")


def read_errors(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The error records of JSON-lines error shards or a SQLite database, as error lines give them."""
    for path in dict.fromkeys(paths):
        yield from _sqlite_rows(path, "errors") if path.endswith(".sqlite") else read_lines([path])


def _sqlite_rows(path: str, table: str) -> Iterator[dict[str, Any]]:
    """A table of a job's SQLite database, in unit order, as its lines would give it."""
    local = fsspec.core.url_to_fs(path)[1]
    with sqlite3.connect(f"file:{local}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        for row in connection.execute(f"SELECT * FROM {table} ORDER BY unit, rowid"):
            found = dict(row)
            del found["unit"]
            if table == "results":
                found["detections"] = json.loads(found["detections"])
                raw = found.pop("raw")
                if raw is not None:
                    found["raw"] = json.loads(raw)
            yield found


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
    layout = OutputLayout(result_prefix)
    fs, folder = fsspec.core.url_to_fs(layout.timeline_dir)
    paths = sorted(fs.glob(folder + "/*-of-*.jsonl"))
    whole = fsspec.core.url_to_fs(layout.timeline)[1]
    if fs.exists(whole):
        paths.insert(0, whole)
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
