"""What goes into a result shard: JSON lines, Parquet, or COCO detection results.

Each writer writes into the unit's temporary shard, which `files.FileSink` commits by the same
rename whatever the format, so resuming works alike for all; only the file ending differs
(`<prefix>-NNNNN-of-NNNNN.jsonl|parquet|json`). Error shards are always JSON lines. The result
records themselves (`result_records`) are shared by every format, the SQLite sink's too.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Protocol

import numpy as np
import orjson

from ..records import Prediction


def json_line(value: Any) -> bytes:
    """One line of JSON lines, as UTF-8.

    orjson rather than the json module: the writer thread formats every detection of every
    image, and at thousands of images a second json.dumps would hold the GIL for a large
    share of the time the thread feeding the GPU needs it (docs/benchmarks.md, "Host").
    """
    return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)


def result_lines(predictions: Sequence[Prediction], labels: Mapping[int, str]) -> bytes:
    """The result lines of `predictions`: each record's identity, its size and its detections."""
    return b"".join(json_line(record) for record in result_records(predictions, labels))


def result_records(predictions: Sequence[Prediction], labels: Mapping[int, str]) -> Iterator[dict[str, Any]]:
    """What result lines hold, as dicts, one image at a time, for every output format to write its own way.

    The arithmetic runs once over the whole batch's detections: a few numpy calls per batch,
    not per image, whose fixed costs would outweigh an image's few detections. Each image's
    lists and dicts are made only when it is asked for: a whole batch's tens of thousands of
    live containers would make every run of the cyclic garbage collector walk them all.
    """
    if not predictions:
        return
    found = [p.detections for p in predictions]
    counts = [len(d.scores) for d in found]
    # float64 first, so that rounding gives short decimals rather than float32 artefacts.
    pixels = np.concatenate([d.boxes for d in found]).astype(np.float64).reshape(-1, 4)
    sizes = np.repeat(np.array([[p.record.width, p.record.height] * 2 for p in predictions], np.float64), counts, axis=0)
    boxes = np.round(pixels, 2)
    normalized = np.round(pixels / sizes, 5)
    scores = np.round(np.concatenate([d.scores for d in found]).astype(np.float64), 4).tolist()
    classes = np.concatenate([d.classes for d in found]).astype(np.int64).tolist()
    end = 0
    for prediction, count in zip(predictions, counts):
        start, end = end, end + count
        rows = zip(boxes[start:end].tolist(), normalized[start:end].tolist(), scores[start:end], classes[start:end])
        detections = [{"box": b, "box_normalized": n, "score": s, "class_id": c} for b, n, s, c in rows]
        if labels:
            for detection in detections:
                detection["label"] = labels.get(detection["class_id"], str(detection["class_id"]))
        record = prediction.record
        line: dict[str, Any] = {
            "key": record.key, "source": record.source, "record_index": record.index,
            "width": record.width, "height": record.height, "detections": detections,
        }
        if prediction.detections.raw:
            line["raw"] = prediction.detections.raw
        yield line


class ResultWriter(Protocol):
    """Writes predictions into one open result shard in some format; `finish` completes its content."""

    def write(self, predictions: list[Prediction]) -> None: ...

    def finish(self) -> None: ...


class JsonlResults:
    """The default result format: one JSON line per prediction."""

    def __init__(self, file: IO[bytes], labels: Mapping[int, str]) -> None:
        self._file, self._labels = file, labels

    def write(self, predictions: list[Prediction]) -> None:
        self._file.write(result_lines(predictions, self._labels))

    def finish(self) -> None:
        pass


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
        self._tables: list[Any] = []
        self._rows = 0

    def write(self, predictions: list[Prediction]) -> None:
        import pyarrow as pa

        rows = [{**row, "raw": json.dumps(row["raw"]) if "raw" in row else None}
                for row in result_records(predictions, self._labels)]
        # Converted now, so that a value Arrow cannot hold fails this call, not a later row group.
        self._tables.append(pa.Table.from_pylist(rows, schema=self._schema))
        self._rows += len(rows)
        if self._rows >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._tables:
            self._writer.write_table(pa.concat_tables(self._tables))
            self._tables, self._rows = [], 0

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
