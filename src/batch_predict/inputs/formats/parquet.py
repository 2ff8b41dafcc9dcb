"""`parquet`: Parquet files with an image column (`--image_column`, default `image`) of encoded
bytes, or of structs with `bytes` (and `path`) as Hugging Face `datasets` writes them. One row
is one record, keyed by `--key_column` (default: `key` where the file has it), else
`<file>:<row>`. A file is cut into byte ranges like the other splittable formats: a row group
belongs to the range its first byte lies in, so units are runs of whole row groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...records import FailedRecord, Record, default_key
from ..sources import InputFile
from . import InputFormat, ReadOptions

_MAGIC = b"PAR1"
#: Rows decoded at once from a row group.
_ROWS_AT_ONCE = 64


def read_parquet(file: InputFile, stream: Any, start: int, end: int | None, options: ReadOptions) -> Iterator[Record | FailedRecord]:
    import pyarrow.parquet as pq  # an optional extra: pip install 'batch-predict[parquet]'

    parquet = pq.ParquetFile(stream)
    names = parquet.schema_arrow.names
    key_column = options.key_column or ("key" if "key" in names else None)
    missing = [c for c in (options.image_column, key_column) if c is not None and c not in names]
    first_row = 0
    for group in range(parquet.num_row_groups):
        meta = parquet.metadata.row_group(group)
        rows, begins = meta.num_rows, _first_byte(meta)
        row, first_row = first_row, first_row + rows
        if begins < start or (end is not None and begins >= end):
            continue
        if missing:
            message = f"the file has no column {missing[0]!r}; it has {names}"
            for i in range(row, row + rows):
                yield FailedRecord(default_key(file.url, i), file.url, i, "KeyError", message, "read")
            continue
        columns = [options.image_column] + ([key_column] if key_column else [])
        # In batches of rows, not the row group whole: Hugging Face writes row groups of hundreds of MB.
        for batch in parquet.iter_batches(batch_size=_ROWS_AT_ONCE, row_groups=[group], columns=columns):
            cells = batch.column(0).to_pylist()
            keys = batch.column(1).to_pylist() if key_column else [None] * len(cells)
            for cell, key in zip(cells, keys):
                yield _record(file, row, cell, key, options)
                row += 1


def _first_byte(meta: Any) -> int:
    """Where a row group's data begins: its first column chunk's first page."""
    chunks = (meta.column(i) for i in range(meta.num_columns))
    return min((c.dictionary_page_offset or c.data_page_offset) for c in chunks)


def _record(file: InputFile, index: int, cell: Any, key: Any, options: ReadOptions) -> Record | FailedRecord:
    name = default_key(file.url, index) if key is None else str(key)
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, bytes):
        kind = "null" if data is None else type(data).__name__
        return FailedRecord(name, file.url, index, "NotAnImage",
                            f"column {options.image_column!r} holds {kind}, not encoded image bytes", "read")
    if len(data) > options.max_record_bytes:
        return FailedRecord.too_large(name, file.url, index, f"image of {len(data)} bytes", options.max_record_bytes)
    return Record(name, file.url, index, encoded=data)


FORMAT = InputFormat(
    "parquet", read_parquet,
    "Parquet files: one record per row, its --image_column of encoded bytes (or {bytes, path} structs).",
    splittable=True, looks_like=lambda name, head: head.startswith(_MAGIC), requires=("pyarrow.parquet", "parquet"),
)
