"""`--input_file_format`: every input format, one module each in this package, found by name.

A format module holds `FORMAT`, an `InputFormat`: the format's name and its reader, and the few
facts the rest of the job asks of a format (can a file be cut into byte ranges, is it
compressed, is each file one record, how to recognise one, how `pack` writes it, what it must
import). The flag's choices, unit planning, reading, `pack` and the report all come from this
registry, so a new format is one new module and its test (docs/input_formats.md says how).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import pkgutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ...errors import SetupError
from ...records import FailedRecord, Record, default_key
from ...spec import DEFAULT_IMAGE_COLUMN, DEFAULT_MAX_RECORD_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_READ_WORKERS
from ..fetch import Fetch
from ..sources import InputFile
from ..tfrecord import TFRecordCorruption

#: What a reader yields: records, error lines, and records whose bytes are fetched later, concurrently.
Item = Record | FailedRecord | Fetch
#: Reads the records of one file: (file, stream, start, end, options) -> items, each with its index in the whole file.
Reader = Callable[[InputFile, Any, int, "int | None", "ReadOptions"], Iterator[Item]]
#: Damaged data, as opposed to a failing file system: gzip.BadGzipFile is an OSError, so it is named.
_DATA_ERRORS = (TFRecordCorruption, EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError)


@dataclass(frozen=True)
class ReadOptions:
    """The job settings a reader may need."""

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    image_column: str = DEFAULT_IMAGE_COLUMN  # parquet
    key_column: str | None = None  # parquet; None: `key` where the file has it
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds an HTTP(S) request of a file list may wait for the server, each try
    read_workers: int = DEFAULT_READ_WORKERS  # requests in flight at once: file systems get as many connections


#: Opens a shard for `batch-predict pack` on its output stream: a context giving write(key, payload).
ShardWriter = Callable[[Any], "AbstractContextManager[Callable[[str, bytes], None]]"]


@dataclass(frozen=True)
class Packing:
    """How `batch-predict pack` writes images into shards of a format that reads them back."""

    suffix: str  # the shards' file extension
    encode: Callable[[str, bytes, str], bytes]  # (key, image bytes, record kind) -> payload, on the reading threads
    shard: ShardWriter


@dataclass(frozen=True)
class InputFormat:
    """One `--input_file_format`: its reader and what the job needs to know of it."""

    name: str
    reader: Reader | None  # None: each file is one record, fetched with others at once
    help: str  # one line for the flag's help: what the patterns match and what one record is
    splittable: bool = False  # a file can be cut into byte ranges, each read on its own
    compression: str | None = None  # as fsspec's `open(compression=...)` takes it ("gzip", "infer")
    looks_like: Callable[[str, bytes], bool] | None = None  # (name, first bytes): the report's guess
    packing: Packing | None = None  # where `batch-predict pack` can write it
    requires: tuple[str, str] | None = None  # (module, extra) the reader imports, checked before any work

    @property
    def one_record_per_file(self) -> bool:
        """Units count files, not bytes, and files are read many at once."""
        return self.reader is None


@functools.cache
def input_formats() -> dict[str, InputFormat]:
    """Every format of this package, by name."""
    found: dict[str, InputFormat] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):  # helpers shared by formats
            continue
        chosen: InputFormat = importlib.import_module(f"{__name__}.{module.name}").FORMAT
        found[chosen.name] = chosen
    return dict(sorted(found.items()))


class MissingReaderError(SetupError, ImportError):
    """An input format's reader needs a library that is not installed."""


def check_installed(name: str) -> None:
    """Fail before any work, with the pip command, where format `name` needs a library that is missing."""
    requires = input_formats()[name].requires
    if requires is None:
        return
    module, extra = requires
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingReaderError(
            f"--input_file_format {name} needs {module}, which is not installed: pip install 'batch-predict[{extra}]'"
        ) from None


def pack_formats() -> dict[str, InputFormat]:
    """The formats `batch-predict pack` writes."""
    return {name: f for name, f in input_formats().items() if f.packing is not None}


def guess_format(name: str, head: bytes) -> str | None:
    """The format a file seems to hold, from its name and first bytes; None if none claims it."""
    return next((f.name for f in input_formats().values() if f.looks_like and f.looks_like(name, head)), None)


def read_file(
    file: InputFile, input_format: str, start: int = 0, end: int | None = None, options: ReadOptions = ReadOptions(),
) -> Iterator[Item]:
    """The records of one file that begin in bytes [start, end), in order, errors included.

    Records keep their index in the whole file, so keys do not depend on how a file is split.
    Damaged data (a broken framing, a truncated or invalid gzip stream or tar) ends the range
    with one error line for what could not be read; a framing break before the range is the
    earlier range's error line, so nothing is reported twice. An I/O failure (permission,
    network) is not a property of the records and is raised: the unit is not committed,
    and a rerun retries it rather than recording good records as failed. A file that is one
    record is not opened here: it is one `Fetch`, read with others at once (`fetch.fetch_all`).
    """
    chosen = input_formats()[input_format]
    if not chosen.splittable and (start or end is not None):
        raise ValueError(f"a file of --input_file_format {input_format} cannot be read from a byte range")
    if chosen.reader is None:
        yield Fetch(file.url, file.url, 0, file.fs, file.path)
        return
    next_index = 0
    try:
        with file.fs.open(file.path, "rb", compression=chosen.compression) as stream:
            for item in chosen.reader(file, stream, start, end, options):
                next_index = item.index + 1
                yield item
    except _DATA_ERRORS as exc:
        index = exc.index if isinstance(exc, TFRecordCorruption) else next_index
        # What follows a framing error cannot be located, so it is one error line.
        yield FailedRecord(
            default_key(file.url, index), file.url, index, type(exc).__name__,
            f"file unreadable from this record on: {exc}", "read",
        )
