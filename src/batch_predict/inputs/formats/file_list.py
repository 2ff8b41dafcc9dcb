"""`file_list`: text files of one image path or URL per line (blank lines and `#` comments
skipped), or CSV files with a header, a `uri`, `path` or `url` column and an optional `key`
column, as Vertex AI batch prediction's file lists and most CSV exports are.

Each line is one record: the bytes at its path or URL (any fsspec URL: `gs://`, `s3://`,
`http(s)://`), fetched with many others at once. Its key is the `key` column, else the path or
URL as written; a relative path is taken from the list's own folder. Lists are cut into byte
ranges like JSON lines, so one list of a million URLs makes many units.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec

from ...records import FailedRecord, default_key, safe_text
from ..fetch import Fetch, filesystem_options
from ..sources import InputFile
from . import InputFormat, ReadOptions
from ._lines import lines

_URI_COLUMNS = ("uri", "path", "url")


def read_file_list(file: InputFile, stream: Any, start: int, end: int | None, options: ReadOptions) -> Iterator[FailedRecord | Fetch]:
    is_csv = file.path.lower().endswith(".csv")
    columns: list[str] | None = None
    index = 0
    for line_start, line, size in lines(stream, options.max_record_bytes, end):
        text = None if line is None else safe_text(line.decode("utf-8", "replace")).strip()
        if text is not None and (not text or (not is_csv and text.startswith("#"))):
            continue
        if is_csv and columns is None:
            columns = next(csv.reader([text or ""]))
            continue
        row, index = index, index + 1
        if line_start < start:
            continue
        if text is None:
            yield FailedRecord.too_large(default_key(file.url, row), file.url, row, f"line of {size} bytes", options.max_record_bytes)
            continue
        yield _entry(file, row, text, columns, options)


def _entry(file: InputFile, row: int, text: str, columns: list[str] | None, options: ReadOptions) -> FailedRecord | Fetch:
    """The fetch one line asks for, or its error line."""
    key = location = text
    if columns is not None:
        values = dict(zip(columns, next(csv.reader([text]))))
        location = next((values[c] for c in _URI_COLUMNS if values.get(c)), "")
        key = values.get("key") or location
        if not location:
            return FailedRecord(key or default_key(file.url, row), file.url, row, "ValueError",
                                f"no {' / '.join(_URI_COLUMNS)} value in this row", "read")
    try:
        full = _beside(file, location)
        fs, path = fsspec.core.url_to_fs(full, **filesystem_options(full, options.read_workers, options.read_timeout))
    except (ValueError, ImportError) as exc:  # an unknown protocol, or one whose library is not installed
        return FailedRecord(key, file.url, row, type(exc).__name__, f"{location!r} is not a path or URL that can be read: {exc}", "read")
    return Fetch(key, file.url, row, fs, path)


def _beside(file: InputFile, location: str) -> str:
    """`location` as written, or, for a relative local path, taken from the list's folder."""
    if "://" in location or posixpath.isabs(location):
        return location
    return file.fs.unstrip_protocol(posixpath.join(posixpath.dirname(file.path), location))


FORMAT = InputFormat(
    "file_list", read_file_list,
    "text files of one image path or URL per line, or CSV files with a uri (or path, url) and an optional key column.",
    splittable=True, looks_like=lambda name, head: name.lower().endswith((".txt", ".csv", ".lst")),
)
