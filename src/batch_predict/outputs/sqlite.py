"""`--output_format sqlite`: results and errors as rows of one SQLite database file.

`<result prefix>.sqlite` holds two tables: `results`, one row per predicted record with its
detections as JSON (SQLite's JSON functions query them), and `errors`, one row per failed
record; every row names its unit. A unit writes its rows into a database of its own under a
temporary name (`layout.partial`); its commit moves them into the job's database in one
transaction that first deletes any rows of the same unit. So a unit is there whole or not at
all, and a unit redone after a kill that fell between this commit and its commit record is not
there twice. Workers of one job on one machine share the file, SQLite serializing their
commits. SQLite needs a local file: other URLs are refused before any input is read.
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import orjson
from fsspec.implementations.local import LocalFileSystem

from ..inputs.units import Unit
from ..records import FailedRecord, Prediction
from .layout import OutputLayout, partial
from .result_formats import result_records
from .files import remove_partials
from .sinks import CountingOutput, OutputError, UnitCounts
from .verify import rows_fingerprint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    unit INTEGER NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, record_index INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, detections TEXT NOT NULL, raw TEXT
);
CREATE TABLE IF NOT EXISTS errors (
    unit INTEGER NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, record_index INTEGER NOT NULL,
    error_type TEXT NOT NULL, message TEXT NOT NULL, stage TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_unit ON results (unit);
CREATE INDEX IF NOT EXISTS errors_by_unit ON errors (unit);
"""
COLUMNS = {
    "results": ("unit", "key", "source", "record_index", "width", "height", "detections", "raw"),
    "errors": ("unit", "key", "source", "record_index", "error_type", "message", "stage"),
}
#: Seconds a commit waits while another worker commits into the same database.
_BUSY_TIMEOUT_S = 600


def connect(path: str) -> sqlite3.Connection:
    """A connection to the database at `path`, its tables created if new; transactions are explicit.

    A unit's staging database is written on the pipeline's writing thread and committed on the
    thread that commits units (`runners/unit.py`), one after the other: not one thread throughout."""
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    connection.executescript(_SCHEMA)
    return connection


def _insert(table: str) -> str:
    columns = COLUMNS[table]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class SqliteSink:
    """Every unit's rows in `layout.database`."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        fs, root = fsspec.core.url_to_fs(layout.database)
        if not isinstance(fs, LocalFileSystem):
            raise OutputError(f"--output_format sqlite writes a local database file; {layout.database!r} is not local")
        self._path = root

    def check(self) -> None:
        try:
            os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
            connect(self._path).close()
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot write {self.layout.database!r}: {exc}") from None

    def open(self, unit: Unit, labels: Mapping[int, str]) -> "SqliteUnitOutput":
        return SqliteUnitOutput(self._path, unit, labels)

    def locations(self, unit: Unit) -> tuple[str, str]:
        return self.layout.database, self.layout.database

    def fingerprint(self, unit: Unit) -> dict[str, Any]:
        return rows_fingerprint(self.layout.database, unit.index)

    def remove(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            if os.path.exists(self._path + suffix):
                os.remove(self._path + suffix)
        self.tidy()

    def tidy(self) -> None:
        remove_partials(*posixpath.split(self.layout.database))


class SqliteUnitOutput(CountingOutput):
    """One unit's rows, in a database of their own until `commit` moves them into the job's."""

    def __init__(self, database: str, unit: Unit, labels: Mapping[int, str]) -> None:
        super().__init__()
        self._database, self._unit, self._labels = database, unit, labels
        self._staging = partial(database, uuid.uuid4().hex[:12])
        try:
            self._connection = connect(self._staging)
            # Lost with the process if it dies, and then redone whole: no journal, no syncs.
            self._connection.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN")
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot write {self._staging!r}: {exc}") from None

    def _write(self, predictions: list[Prediction], errors: list[FailedRecord]) -> None:
        unit = self._unit.index
        results = [
            (unit, r["key"], r["source"], r["record_index"], r["width"], r["height"],
             orjson.dumps(r["detections"]).decode(), orjson.dumps(r["raw"]).decode() if "raw" in r else None)
            for r in result_records(predictions, self._labels)
        ]
        self._connection.execute("SAVEPOINT outcomes")  # all of them or none
        try:
            self._connection.executemany(_insert("results"), results)
            self._connection.executemany(_insert("errors"), [
                (unit, e.key, e.source, e.index, e.error_type, e.message, e.stage) for e in errors
            ])
        except BaseException:
            self._connection.execute("ROLLBACK TO outcomes")
            raise
        finally:
            self._connection.execute("RELEASE outcomes")

    def commit(self, records_read: int) -> UnitCounts:
        """Move the unit's rows into the job's database in one transaction, replacing any it had."""
        counts = self._counts(records_read)
        try:
            self._connection.execute("COMMIT")
            self._connection.close()
            job = connect(self._database)
            try:
                job.execute("ATTACH DATABASE ? AS unit", (self._staging,))
                job.execute("BEGIN IMMEDIATE")
                for table, columns in COLUMNS.items():
                    named = ", ".join(columns)
                    job.execute(f"DELETE FROM main.{table} WHERE unit = ?", (self._unit.index,))
                    job.execute(f"INSERT INTO main.{table} ({named}) SELECT {named} FROM unit.{table}")
                job.execute("COMMIT")
                job.execute("DETACH DATABASE unit")
            finally:
                job.close()
        except (OSError, sqlite3.Error) as exc:
            self.discard()
            raise OutputError(f"cannot commit unit {self._unit.index} into {self._database!r}: {exc}") from None
        self._remove_staging()
        return counts

    def discard(self) -> None:
        try:
            self._connection.close()
        except sqlite3.Error:
            pass
        self._remove_staging()

    def _remove_staging(self) -> None:
        try:
            os.remove(self._staging)  # journal_mode OFF: the staging database has no journal file
        except FileNotFoundError:
            pass
