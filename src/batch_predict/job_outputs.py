"""Read a finished job's outputs back: its summary, result and error lines, and timeline.

The tools that look at a job after it ran (`report`, `evaluate`) start from its
`--output_result_prefix`, as a user does; the summary names the shard files, and without a
summary the shards are found by the job's naming.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .sinks import summary_path

_SHARD_GLOB = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].jsonl"


class JobOutputsError(FileNotFoundError):
    """No job outputs under the given prefix."""


def timeline_path(result_prefix: str) -> str:
    """`<prefix>-timeline.jsonl`: one line per batch the job wrote (see docs/tools.md)."""
    return f"{result_prefix}-timeline.jsonl"


def load_summary(result_prefix: str) -> dict[str, Any] | None:
    """The job's `-summary.json`, or None when the job wrote none (it was stopped before the end)."""
    try:
        with fsspec.open(summary_path(result_prefix), "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def shard_files(prefix: str) -> list[str]:
    """The `<prefix>-NNNNN-of-NNNNN.jsonl` files that exist, in order."""
    fs, root = fsspec.core.url_to_fs(prefix)
    local = isinstance(fs, LocalFileSystem)
    return [p if local else fs.unstrip_protocol(p) for p in sorted(fs.glob(root + _SHARD_GLOB))]


def result_files(result_prefix: str, summary: dict[str, Any] | None = None) -> list[str]:
    """The result shards: as the summary lists them, else as found. Raises `JobOutputsError` if none."""
    files = summary["result_files"] if summary and summary.get("result_files") else shard_files(result_prefix)
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


def read_timeline(result_prefix: str) -> list[dict[str, Any]]:
    """The job's timeline lines, or [] when it wrote none."""
    try:
        return list(read_lines([timeline_path(result_prefix)]))
    except FileNotFoundError:
        return []
