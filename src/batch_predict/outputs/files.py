"""Result and error shards as files, one pair per unit, committed by renaming.

A shard file name only ever holds a whole unit's lines: a unit writes its shards under
temporary names (`layout.partial`) and renames them into place when every one of its records
is accounted for. Each attempt writes under its own temporary names, so a second process on
the same unit never writes into this one's files; what killed attempts leave behind is removed
when the job completes (`FileSink.tidy`), with one listing rather than one per unit.
"""

from __future__ import annotations

import posixpath
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import IO, Any

import fsspec

from ..inputs.units import Unit
from ..records import FailedRecord, Outcome, Prediction
from .layout import OutputLayout, find_shards, partial
from .result_formats import ResultWriter, json_line
from .sinks import OutputError, UnitCounts

#: Makes a result writer for an open shard and the model's class names.
WriterFactory = Callable[[IO[bytes], Mapping[int, str]], ResultWriter]


def ensure_writable(prefix: str) -> None:
    """Create the prefix's folder and write and remove a file there, or raise `OutputError`.

    Called before any input is read, so that a job does not spend hours predicting into a
    location it cannot write.
    """
    fs, root = fsspec.core.url_to_fs(prefix)
    probe = partial(root, f"probe-{uuid.uuid4().hex[:12]}")
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
    temp = partial(root, uuid.uuid4().hex[:12])
    try:
        fs.makedirs(posixpath.dirname(root), exist_ok=True)
        with fs.open(temp, "wb") as f:
            f.write(text.encode("utf-8"))
        fs.mv(temp, root)
    except OSError as exc:
        raise OutputError(f"cannot write {path!r}: {exc}") from None


class FileSink:
    """`--output_format` jsonl, parquet and coco: a result shard in that format and an error
    shard of JSON lines per unit."""

    def __init__(self, layout: OutputLayout, results: WriterFactory) -> None:
        self.layout = layout
        self._results = results

    def check(self) -> None:
        ensure_writable(self.layout.result_prefix)
        ensure_writable(self.layout.error_prefix or self.layout.result_prefix)

    def open(self, unit: Unit, labels: Mapping[int, str]) -> "FileUnitOutput":
        return FileUnitOutput(self.locations(unit), labels, self._results)

    def locations(self, unit: Unit) -> tuple[str, str]:
        return self.layout.result_shard(unit.index, unit.count), self.layout.error_shard(unit.index, unit.count)

    def remove(self) -> None:
        for path in self._shards(partial_only=False) + self._shards(partial_only=True):
            fsspec.core.url_to_fs(path)[0].rm(path)

    def tidy(self) -> None:
        for path in self._shards(partial_only=True):
            fsspec.core.url_to_fs(path)[0].rm(path)

    def _shards(self, partial_only: bool) -> list[str]:
        return [path for prefix in (self.layout.result_prefix, self.layout.error_prefix) if prefix
                for path in find_shards(prefix, partial_only=partial_only)]


class FileUnitOutput:
    """The result and error shard of one unit, under temporary names until `commit`."""

    def __init__(self, paths: tuple[str, str], labels: Mapping[int, str], results: WriterFactory) -> None:
        self.paths = paths
        token = uuid.uuid4().hex[:12]
        self._temps: list[tuple[fsspec.AbstractFileSystem, str, str]] = []
        self._files: list[Any] = []
        try:
            for path in self.paths:
                fs, root = fsspec.core.url_to_fs(path)
                temp = partial(root, token)
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
        try:
            counts = UnitCounts.checked(records_read, self.predicted, self.detections, self.error_types)
        except RuntimeError:
            self.discard()
            raise
        try:
            self._results.finish()
            for f in self._files:
                f.close()
            for fs, temp, root in self._temps:
                fs.mv(temp, root)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot commit {self.paths[0]!r}: {exc}") from None
        return counts

    def discard(self) -> None:
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
