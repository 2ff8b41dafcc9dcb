"""`--output_format sqlite`: results and errors as rows of one database, each unit there whole
or not at all, never twice."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from batch_predict.inputs.units import Unit
from batch_predict.outputs.formats import OUTPUT_FORMATS, open_sink
from batch_predict.outputs.layout import OutputLayout
from batch_predict.outputs.reading import read_errors, read_results, result_files
from batch_predict.outputs.sinks import OutputError
from batch_predict.outputs.sqlite import SqliteSink
from batch_predict.records import Detections, FailedRecord, Prediction, Record
from batch_predict.runners.local import run
from batch_predict.spec import OUTPUT_FORMATS as FLAG_CHOICES
from batch_predict.tools.report import collect

from conftest import photo_job
from toymodels import MeanColourModel


def _prediction(key: str) -> Prediction:
    record = Record(key, "f.tfrecord", 0, width=100, height=50)
    return Prediction(record, Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.8], np.float32), np.array([2])))


def _rows(database, table: str) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(f"SELECT unit, key FROM {table} ORDER BY unit, key").fetchall()


@pytest.fixture
def sink(tmp_path) -> SqliteSink:
    made = SqliteSink(OutputLayout(str(tmp_path / "out" / "results"), str(tmp_path / "out" / "errors"), "sqlite"))
    made.check()
    return made


def test_the_flag_offers_exactly_the_formats_of_the_table():
    assert set(FLAG_CHOICES) == set(OUTPUT_FORMATS)


def test_a_units_rows_appear_only_when_it_commits(sink, tmp_path):
    output = sink.open(Unit(1, 3, ()), {2: "car"})
    output.write([_prediction("a"), FailedRecord("b", "f.tfrecord", 1, "ValueError", "bad", "decode")])
    database = tmp_path / "out" / "results.sqlite"
    assert _rows(database, "results") == [] and _rows(database, "errors") == []
    counts = output.commit(records_read=2)
    assert (counts.predicted, counts.failed, counts.detections) == (1, 1, 1)
    assert _rows(database, "results") == [(1, "a")] and _rows(database, "errors") == [(1, "b")]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.sqlite"]  # no staging file left


def test_a_unit_committed_again_replaces_its_rows_instead_of_adding_to_them(sink, tmp_path):
    for keys in (["a", "b"], ["a", "b"], ["c"]):  # a rerun after a kill that fell before the commit record
        output = sink.open(Unit(0, 2, ()), {})
        output.write([_prediction(key) for key in keys])
        output.commit(records_read=len(keys))
    other = sink.open(Unit(1, 2, ()), {})
    other.write([_prediction("d")])
    other.commit(records_read=1)
    assert _rows(tmp_path / "out" / "results.sqlite", "results") == [(0, "c"), (1, "d")]


def test_a_discarded_unit_leaves_no_rows_and_no_file(sink, tmp_path):
    output = sink.open(Unit(0, 1, ()), {})
    output.write([_prediction("a")])
    output.discard()
    assert _rows(tmp_path / "out" / "results.sqlite", "results") == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.sqlite"]


def test_a_lost_record_commits_nothing(sink, tmp_path):
    output = sink.open(Unit(0, 1, ()), {})
    output.write([_prediction("a")])
    with pytest.raises(RuntimeError, match="accounting mismatch"):
        output.commit(records_read=2)
    assert _rows(tmp_path / "out" / "results.sqlite", "results") == []


def test_a_database_that_is_not_a_local_file_is_refused_at_once():
    spec = dataclasses.replace(_memory_spec(), output_format="sqlite")
    with pytest.raises(OutputError, match="writes a local database file"):
        open_sink(spec)


def _memory_spec():
    from batch_predict.spec import JobSpec

    return JobSpec(input_file_patterns=("x",), input_file_format="json", model_dir="m",
                   output_result_prefix="memory://bucket/out/results", output_error_prefix="memory://bucket/out/errors")


def test_a_job_writes_the_rows_its_jsonl_run_writes_and_the_tools_read_them(tmp_path):
    as_lines = run(photo_job(tmp_path / "jsonl"), model=MeanColourModel())
    spec = photo_job(tmp_path / "sqlite", output_format="sqlite")
    as_rows = run(spec, model=MeanColourModel())
    assert (as_rows.predicted, as_rows.failed, as_rows.detections) == (as_lines.predicted, as_lines.failed, as_lines.detections)
    assert as_rows.result_files == as_rows.error_files == [spec.output_result_prefix + ".sqlite"]
    def by_key(rows):  # each run read its own copy of the inputs: sources compared by file name
        return sorted(({**row, "source": row["source"].rsplit("/", 1)[-1]} for row in rows), key=lambda row: row["key"])

    lines_prefix = str(tmp_path / "jsonl" / "out" / "results")
    assert by_key(read_results(result_files(spec.output_result_prefix))) == by_key(read_results(result_files(lines_prefix)))
    errors = by_key(read_errors(as_rows.error_files))
    assert [(e["key"], e["error_type"]) for e in errors] == [("junk.jpg", "ImageDecodeError"), ("poison-bus.jpg", "ValueError")]
    report = collect(spec.output_result_prefix)
    assert (report.predicted, report.failed) == (as_rows.predicted, as_rows.failed)
    assert report.error_types == {"ImageDecodeError": 1, "ValueError": 1}


def test_overwrite_starts_the_database_over(tmp_path):
    spec = photo_job(tmp_path, output_format="sqlite")
    run(spec, model=MeanColourModel())
    again = run(dataclasses.replace(spec, overwrite=True), model=MeanColourModel())
    with sqlite3.connect(spec.output_result_prefix + ".sqlite") as connection:
        (rows,) = connection.execute("SELECT count(*) FROM results").fetchone()
    assert rows == again.predicted
