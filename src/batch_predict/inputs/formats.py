"""`--input_file_format`: every input format, what reads it and what it allows, in one table.

Adding a format is one entry here and one reader (`sources`): a function from a file's stream
and a byte range to its records, errors included, each keeping its index in the whole file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..records import FailedRecord, Record, default_key
from ..spec import DEFAULT_MAX_RECORD_BYTES
from .sources import InputFile, read_image_file, read_json_lines, read_tfrecords
from .tfrecord import TFRecordCorruption

#: Reads the records of a stream: (source, stream, start, end, max_record_bytes) -> records.
Reader = Callable[[str, Any, int, "int | None", int], Iterator["Record | FailedRecord"]]
#: Damaged data, as opposed to a failing file system: gzip.BadGzipFile is an OSError, so it is named.
_DATA_ERRORS = (TFRecordCorruption, EOFError, gzip.BadGzipFile, zlib.error)


@dataclass(frozen=True)
class InputFormat:
    reader: Reader
    splittable: bool  # whether a file can be cut into byte ranges, each read on its own
    compression: str | None = None


INPUT_FORMATS: dict[str, InputFormat] = {
    "json": InputFormat(read_json_lines, splittable=True),
    "tfrecord": InputFormat(read_tfrecords, splittable=True),
    "tfrecord_gzip": InputFormat(read_tfrecords, splittable=False, compression="gzip"),
    "image_files": InputFormat(read_image_file, splittable=False),
}


def read_file(
    file: InputFile, input_format: str, start: int = 0, end: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[Record | FailedRecord]:
    """The records of one file that begin in bytes [start, end), in order, errors included.

    Records keep their index in the whole file, so keys do not depend on how a file is split.
    Damaged data (a broken framing, a truncated or invalid gzip stream) ends the range with
    one error line for what could not be read; a framing break before the range is the
    earlier range's error line, so nothing is reported twice. An I/O failure (permission,
    network) is not a property of the records and is raised: the unit is not committed,
    and a rerun retries it rather than recording good records as failed.
    """
    chosen = INPUT_FORMATS[input_format]
    if not chosen.splittable and (start or end is not None):
        raise ValueError(f"a file of --input_file_format {input_format} cannot be read from a byte range")
    next_index = 0
    try:
        with file.fs.open(file.path, "rb", compression=chosen.compression) as stream:
            for item in chosen.reader(file.url, stream, start, end, max_record_bytes):
                next_index = item.index + 1
                yield item
    except _DATA_ERRORS as exc:
        index = exc.index if isinstance(exc, TFRecordCorruption) else next_index
        # What follows a framing error cannot be located, so it is one error line.
        yield FailedRecord(
            default_key(file.url, index), file.url, index, type(exc).__name__,
            f"file unreadable from this record on: {exc}", "read",
        )
