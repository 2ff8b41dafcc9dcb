"""The job's timeline: written per committed unit, merged on one clock by the report."""

from __future__ import annotations

import json
from pathlib import Path

from batch_predict.outputs.layout import OutputLayout
from batch_predict.outputs.reading import read_timeline
from batch_predict.records import FailedRecord
from batch_predict.tools.report import collect, throughput
from batch_predict.runners.local import run
from batch_predict.outputs.sinks import UnitCounts
from batch_predict.outputs.timeline import TimelineWriter
from batch_predict.inputs.units import Unit

from conftest import photo_job
from toymodels import MeanColourModel


def test_each_committed_unit_leaves_its_batch_lines_and_together_they_count_every_record(tmp_path):
    spec = photo_job(tmp_path)
    summary = run(spec, model=MeanColourModel())
    for index in range(summary.units):
        lines = [json.loads(x) for x in Path(OutputLayout(spec.output_result_prefix).unit_timeline(index, 2)).open()]
        assert lines and all({"t", "predicted", "failed", "time"} <= line.keys() for line in lines)
    timeline = read_timeline(spec.output_result_prefix)
    assert sum(line["predicted"] for line in timeline) == summary.predicted == 11
    assert sum(line["failed"] for line in timeline) == summary.failed == 2
    assert [line["t"] for line in timeline] == sorted(line["t"] for line in timeline)
    assert collect(spec.output_result_prefix).timeline == timeline


def test_workers_and_a_resumed_run_share_one_clock_without_the_idle_gap(tmp_path):
    prefix = str(tmp_path / "results")
    runs = {  # unit -> lines: worker A and B overlap; a rerun an hour later does unit 2
        0: [{"t": 5.0, "predicted": 10, "time": 1005.0}, {"t": 10.0, "predicted": 10, "time": 1010.0}],
        1: [{"t": 4.0, "predicted": 10, "time": 1006.0}],
        2: [{"t": 2.0, "predicted": 10, "time": 4602.0}],
    }
    for unit, lines in runs.items():
        path = Path(OutputLayout(prefix).unit_timeline(unit, 3))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    timeline = read_timeline(prefix)
    # Runs from 1000 (A) and 1002 (B) to 1010: 10 s active; the rerun starts at 4600.
    assert [line["t"] for line in timeline] == [5.0, 6.0, 10.0, 12.0]
    xs, _ = throughput(timeline, buckets=4)
    assert xs[-1] == 12.0


def test_a_timeline_written_whole_is_still_read(tmp_path):
    prefix = tmp_path / "results"
    Path(f"{prefix}-timeline.jsonl").write_text('{"t": 1.5, "predicted": 3}\n{"t": 0.5, "failed": 1}\n')
    assert read_timeline(str(prefix)) == [{"t": 0.5, "failed": 1}, {"t": 1.5, "predicted": 3}]


def test_a_redone_unit_counts_only_its_committed_attempt(tmp_path):
    prefix = str(tmp_path / "results")
    unit = Unit(0, 1, ())
    writer = TimelineWriter(OutputLayout(prefix))
    writer.job_started([unit])
    error = FailedRecord("k", "src", 0, "ValueError", "bad", "decode")
    writer.written(unit, [error, error])
    writer.unit_abandoned(unit)
    writer.written(unit, [error])
    writer.unit_committed(unit, UnitCounts(1, 0, 1))
    assert [line["failed"] for line in read_timeline(prefix)] == [1]
