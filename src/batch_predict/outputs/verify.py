"""Whether what a commit record promises is still on disk.

At commit a sink fingerprints what it wrote for the unit: each shard file's size and SHA-256,
or the unit's row counts in the SQLite database. A rerun checks every commit record's
fingerprint before it trusts the unit (a unit whose outputs went missing or changed runs
again), and `batch-predict verify` checks a finished job the same way.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec

from .layout import OutputLayout, committed_unit

_CHUNK = 1 << 20


def files_fingerprint(paths: Iterable[str]) -> dict[str, Any]:
    """{"files": {path: {"size", "sha256"}}} of files just committed."""
    return {"files": {path: _file_digest(path) for path in dict.fromkeys(paths)}}


def rows_fingerprint(database: str, unit: int) -> dict[str, Any]:
    """{"database", "unit", "rows": {table: count}} of one unit's rows in a job's SQLite database."""
    return {"database": database, "unit": unit, "rows": _row_counts(database, unit)}


def problems(fingerprint: Mapping[str, Any] | None) -> list[str]:
    """What no longer matches `fingerprint`, in words; [] when all does (or when a record from an
    older version of batch-predict holds none)."""
    if not fingerprint:
        return []
    found = []
    for path, promised in (fingerprint.get("files") or {}).items():
        try:
            now = _file_digest(path)
        except FileNotFoundError:
            found.append(f"{path} is missing")
            continue
        if now["size"] != promised["size"]:
            found.append(f"{path} has {now['size']} bytes, committed with {promised['size']}")
        elif now["sha256"] != promised["sha256"]:
            found.append(f"{path} changed since it was committed (SHA-256 differs)")
    if "database" in fingerprint:
        database, unit = fingerprint["database"], fingerprint["unit"]
        try:
            rows = _row_counts(database, unit)
        except (OSError, sqlite3.Error) as exc:
            return found + [f"{database} cannot be read: {exc}"]
        if rows != fingerprint["rows"]:
            found.append(f"{database} holds {rows} rows of unit {unit}, committed with {fingerprint['rows']}")
    return found


def hash_into(digest: Any, stream: Any) -> int:
    """Feed a binary stream to `digest` a chunk at a time (files may be large); its size in bytes."""
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size


def _file_digest(path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        size = hash_into(digest, f)
    return {"size": size, "sha256": digest.hexdigest()}


def _row_counts(database: str, unit: int) -> dict[str, int]:
    local = fsspec.core.url_to_fs(database)[1]
    with sqlite3.connect(f"file:{local}?mode=ro", uri=True) as connection:
        return {table: connection.execute(f"SELECT count(*) FROM {table} WHERE unit = ?", (unit,)).fetchone()[0]
                for table in ("results", "errors")}


def verify_job(result_prefix: str) -> tuple[int, list[str]]:
    """(units checked, what is wrong) for the job under `result_prefix`: a commit record for every
    unit, each readable and its outputs as committed, and the summary the sum of the records."""
    layout = OutputLayout(result_prefix)
    fs, folder = fsspec.core.url_to_fs(layout.committed_dir)
    try:
        listing = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return 0, [f"no commit records under {layout.committed_dir}: no job ran with this prefix"]
    numbered = {unit: path for path in listing if (unit := committed_unit(path))}
    counts = {count for _, count in numbered}
    if len(counts) != 1:
        return 0, [f"{layout.committed_dir} holds commit records of {sorted(counts) or 'no'} unit counts; expected one"]
    (count,) = counts
    found, totals = [], {"records_read": 0, "predicted": 0, "failed": 0}
    for index in range(count):
        path = numbered.get((index, count))
        if path is None:
            found.append(f"unit {index} of {count} has no commit record")
            continue
        try:
            record = json.loads(fs.cat_file(path))
            for name in totals:
                totals[name] += int(record["counts"][name])
        except (ValueError, KeyError, TypeError) as exc:
            found.append(f"{fs.unstrip_protocol(path)} is not a readable commit record ({type(exc).__name__}: {exc})")
            continue
        found += [f"unit {index}: {problem}" for problem in problems(record.get("fingerprint"))]
    try:
        with fsspec.open(layout.summary, "rt", encoding="utf-8") as f:
            summary = json.load(f)
    except FileNotFoundError:
        found.append(f"{layout.summary} is missing: the job has not completed")
    else:
        found += [f"{layout.summary} says {summary.get(name)} {name}, its commit records {total}"
                  for name, total in totals.items() if summary.get(name) != total]
    return count, found
