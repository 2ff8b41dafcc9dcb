"""Progress of a running job: a bar on a terminal, log lines in a pod, a table at the end."""

from __future__ import annotations

import io
import json
import logging

from batch_predict.observe.logformat import JsonFormatter
from batch_predict.observe.progress import LogProgress, Tally, TerminalProgress, summary_table
from batch_predict.runners.local import run

from conftest import photo_job
from toymodels import MeanColourModel


def test_progress_is_counted_in_input_bytes_and_ends_at_all_of_them(tmp_path):
    spec = photo_job(tmp_path)
    tally = Tally()
    summary = run(spec, model=MeanColourModel(), observer=tally)
    done = tally.snapshot()
    assert done.bytes_done == done.bytes_total == sum(p.stat().st_size for p in tmp_path.glob("in-*.jsonl"))
    assert (done.records_read, done.predicted, done.failed) == (summary.records_read, 11, 2)
    assert (done.units_committed, done.units, done.eta_s) == (2, 2, 0.0)
    assert tally.error_types == {"ImageDecodeError": 1, "ValueError": 1}


def test_the_terminal_bar_shows_records_per_second_and_failures(tmp_path):
    stream = io.StringIO()
    bar = TerminalProgress(stream)
    run(photo_job(tmp_path), model=MeanColourModel(), observer=bar)
    bar.close()
    shown = stream.getvalue()
    assert "100%" in shown and "records/s, 11 predicted, 2 failed" in shown


def test_log_lines_carry_the_numbers_as_json_fields(tmp_path):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("batch_predict")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    progress = LogProgress(interval_s=3600.0)
    try:
        run(photo_job(tmp_path), model=MeanColourModel(), observer=progress)
    finally:
        progress.close()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all({"time", "level", "message"} <= line.keys() for line in lines)
    (last,) = [line for line in lines if line.get("event") == "progress"]  # the hour never passed: the final one
    assert (last["records_read"], last["predicted"], last["failed"], last["percent"]) == (13, 11, 2, 100.0)
    assert last["message"].startswith("progress 100.0%: 13 read, 11 predicted, 2 failed")


def test_the_summary_table_lists_error_types_by_count(tmp_path):
    summary = run(photo_job(tmp_path), model=MeanColourModel())
    table = summary_table(summary).splitlines()
    assert table[0].split() == ["records", "read", "13"]
    assert [line.split() for line in table[3:5]] == [["ImageDecodeError", "1"], ["ValueError", "1"]]
