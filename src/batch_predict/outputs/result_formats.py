"""`--output_format`: result shards as JSON lines, Parquet, or COCO detection results.

Every format writes into the unit's temporary shard and is committed by the same rename
(`sinks.UnitOutputs`), so resuming works alike for all; only the file ending differs
(`<prefix>-NNNNN-of-NNNNN.jsonl|parquet|json`). Error shards are always JSON lines.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from typing import IO, Any

from ..records import Prediction
from .sinks import JsonlResults, OutputError, ResultWriter, result_records

#: Each format's result shard ending.
EXTENSIONS = {"jsonl": "jsonl", "parquet": "parquet", "coco": "json"}

#: Rows per Parquet row group: large enough to compress well, small enough to bound memory.
PARQUET_ROW_GROUP = 4096


def image_id_of_key(key: str) -> int | str:
    """A COCO image id for a result key: its last path part without extension, an integer when it
    is digits (`train/000000000009.jpg` -> 9), else the key itself.

    The last of the rules by which `evaluate.KeyMatcher` matches keys to ground-truth images.
    """
    stem = posixpath.splitext(key.rsplit("/", 1)[-1])[0]
    return int(stem) if stem.isdigit() else key


def parquet_schema() -> Any:
    """One row per image; detections nested, as Spark, BigQuery and pandas read them."""
    import pyarrow as pa

    detection = pa.struct([
        ("box", pa.list_(pa.float64())),
        ("box_normalized", pa.list_(pa.float64())),
        ("score", pa.float64()),
        ("class_id", pa.int64()),
        ("label", pa.string()),
    ])
    return pa.schema([
        ("key", pa.string()),
        ("source", pa.string()),
        ("record_index", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("detections", pa.list_(detection)),
        ("raw", pa.string()),  # --output_raw's outputs as JSON text: their shapes vary by model
    ])


class ParquetResults:
    """Result rows gathered into row groups of `PARQUET_ROW_GROUP`, written with pyarrow."""

    def __init__(self, file: IO[bytes], labels: Mapping[int, str]) -> None:
        import pyarrow.parquet as pq

        self._labels = labels
        self._schema = parquet_schema()
        self._writer = pq.ParquetWriter(file, self._schema, compression="zstd")
        self._rows: list[dict[str, Any]] = []

    def write(self, predictions: list[Prediction]) -> None:
        for row in result_records(predictions, self._labels):
            row["raw"] = json.dumps(row["raw"]) if "raw" in row else None
            self._rows.append(row)
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def finish(self) -> None:
        self._flush()
        self._writer.close()  # writes the footer; the file itself stays open for the commit


class CocoResults:
    """A JSON array of COCO detection results, `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`,
    as pycocotools' `loadRes` and COCO evaluation servers take them."""

    def __init__(self, file: IO[bytes], labels: Mapping[int, str]) -> None:
        self._file = file
        self._first = True
        file.write(b"[")

    def write(self, predictions: list[Prediction]) -> None:
        entries = []
        for row in result_records(predictions, {}):
            image_id = image_id_of_key(row["key"])
            for d in row["detections"]:
                x1, y1, x2, y2 = d["box"]
                entries.append(json.dumps({"image_id": image_id, "category_id": d["class_id"],
                                           "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": d["score"]},
                                          separators=(",", ":")))
        if entries:
            self._file.write((("\n" if self._first else ",\n") + ",\n".join(entries)).encode("utf-8"))
            self._first = False

    def finish(self) -> None:
        self._file.write(b"\n]\n")


def result_writer(output_format: str) -> Callable[[IO[bytes], Mapping[int, str]], ResultWriter]:
    """The writer of a `--output_format`; raises `OutputError` when its library is missing."""
    if output_format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401  (checked here, before any record is read)
        except ImportError:
            raise OutputError("--output_format parquet needs pyarrow: pip install 'batch-predict[parquet]'") from None
        return ParquetResults
    return CocoResults if output_format == "coco" else JsonlResults
