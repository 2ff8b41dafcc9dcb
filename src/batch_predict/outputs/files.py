"""Result and error shards as files, one pair per unit, committed by renaming.

A shard file name only ever holds a whole unit's lines: a unit writes its shards under
temporary names (`layout.partial`) and renames them into place when every one of its records
is accounted for. Each attempt writes under its own temporary names, so a second process on
the same unit never writes into this one's files; what killed attempts leave behind is removed
when the job completes (`FileSink.tidy`), with one listing rather than one per unit.
"""

from __future__ import annotations

import glob
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..inputs.units import Unit
from ..records import FailedRecord, Prediction
from .layout import OutputLayout, find_shards, partial, probe
from .result_formats import ResultWriter, json_line
from .sinks import CountingOutput, OutputError, UnitCounts
from .verify import files_fingerprint

#: Makes a result writer for an open shard and the model's class names.
WriterFactory = Callable[[IO[bytes], Mapping[int, str]], ResultWriter]


# Output paths are taken literally: a prefix may hold glob characters (`out/run[1]`), which
# fsspec's `mv`, `rm` and `cat` would expand, so only its single-file operations are used here.


def move(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """Rename a file into place: atomic on a local disk, copy-then-delete on an object store."""
    if isinstance(fs, LocalFileSystem):
        os.replace(source, target)
        _sync_directory(os.path.dirname(target))
    else:
        fs.cp_file(source, target)
        fs.rm_file(source)


def remove(path: str) -> None:
    """Remove a file or a folder with all it holds, if it exists."""
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        if os.path.isdir(root):
            shutil.rmtree(root)
        elif os.path.lexists(root):
            os.remove(root)
        return
    for found in fs.find(root):
        fs.rm_file(found)


def remove_partials(folder: str, name: str = "") -> None:
    """Remove the temporary files (`layout.partial`) of the files named `name...` in `folder` that
    killed writers left behind."""
    fs, root = fsspec.core.url_to_fs(folder)
    try:
        listing = fs.ls(root, detail=False)
    except FileNotFoundError:
        return
    for path in listing:
        base = posixpath.basename(path)
        if base.startswith(name) and base.endswith(".partial"):
            fs.rm_file(path)


def read_files(fs: fsspec.AbstractFileSystem, paths: Iterable[str]) -> dict[str, bytes]:
    """{path: its bytes}, fetched concurrently where the file system can (object stores)."""
    paths = list(paths)
    if any(glob.has_magic(path) for path in paths):  # `cat` would expand them
        return {path: fs.cat_file(path) for path in paths}
    return fs.cat(paths) if paths else {}


def close_durably(file: Any, fs: fsspec.AbstractFileSystem) -> None:
    """Close a file written for a commit; on a local disk, its bytes reach the disk first, so that
    a power loss after the rename cannot leave an empty or partial file under the final name."""
    if isinstance(fs, LocalFileSystem):
        file.flush()
        os.fsync(file.fileno())
    file.close()


def _sync_directory(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX: the entry lives in the directory)."""
    descriptor = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def claim_file(path: str, text: str) -> bool:
    """Write a whole file where none exists, durably; False, writing nothing, where one does.

    On a local disk the test and the write are one step (a hard link of a complete temporary
    file fails if the name exists), so of two jobs starting at once exactly one claims it. An
    object store offers no such step through fsspec: there the file is written if it is not
    there when looked for.
    """
    fs, root = fsspec.core.url_to_fs(path)
    if not isinstance(fs, LocalFileSystem):
        if fs.exists(root):
            return False
        write_atomically(path, text)
        return True
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    temp = partial(root, uuid.uuid4().hex[:12])
    with open(temp, "wb") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temp, root)
    except FileExistsError:
        return False
    finally:
        os.remove(temp)
    _sync_directory(os.path.dirname(root))
    return True


def ensure_writable(prefix: str) -> None:
    """Create the prefix's folder and write and remove a file there, or raise `OutputError`.

    Called before any input is read, so that a job does not spend hours predicting into a
    location it cannot write.
    """
    fs, root = fsspec.core.url_to_fs(prefix)
    written = probe(root, uuid.uuid4().hex[:12])
    try:
        parent = posixpath.dirname(root)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(written, "wb") as f:
            f.write(b"")
        fs.rm_file(written)
    except OSError as exc:
        raise OutputError(f"cannot write output files under {prefix!r}: {exc}") from None


def write_atomically(path: str, text: str) -> None:
    """Write a whole file or nothing, durably: to a temporary name, then renamed into place."""
    fs, root = fsspec.core.url_to_fs(path)
    temp = partial(root, uuid.uuid4().hex[:12])
    try:
        fs.makedirs(posixpath.dirname(root), exist_ok=True)
        file = fs.open(temp, "wb")
        try:
            file.write(text.encode("utf-8"))
        finally:
            close_durably(file, fs)
        move(fs, temp, root)
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

    def fingerprint(self, unit: Unit) -> dict[str, Any]:
        return files_fingerprint(self.locations(unit))

    def remove(self) -> None:
        for path in self._shards(partial_only=False) + self._shards(partial_only=True):
            remove(path)

    def tidy(self) -> None:
        for path in self._shards(partial_only=True):
            remove(path)
        for prefix in self.layout.prefixes:
            remove_partials(*posixpath.split(probe(prefix)))

    def _shards(self, partial_only: bool) -> list[str]:
        return [path for prefix in self.layout.prefixes for path in find_shards(prefix, partial_only=partial_only)]


class FileUnitOutput(CountingOutput):
    """The result and error shard of one unit, under temporary names until `commit`."""

    def __init__(self, paths: tuple[str, str], labels: Mapping[int, str], results: WriterFactory) -> None:
        super().__init__()
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

    def _write(self, predictions: list[Prediction], errors: list[FailedRecord]) -> None:
        error_lines = b"".join(json_line(e.to_json()) for e in errors)  # before writing anything: all or none
        if predictions:
            self._results.write(predictions)
        if errors:
            self._files[1].write(error_lines)

    def commit(self, records_read: int) -> UnitCounts:
        """Rename both shards into place, once every record read has its line."""
        counts = self._counts(records_read)
        try:
            self._results.finish()
            for file, (fs, _, _) in zip(self._files, self._temps):
                close_durably(file, fs)
            for fs, temp, root in self._temps:
                move(fs, temp, root)
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
                    fs.rm_file(temp)
            except OSError:
                pass
