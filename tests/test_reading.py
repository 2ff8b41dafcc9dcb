"""Finding a finished job's files from its result prefix, as the tools after a job do."""

from __future__ import annotations

import json

import fsspec
import pytest

from batch_predict.outputs.layout import OutputLayout
from batch_predict.outputs.reading import JobOutputsError, load_summary, read_lines, read_timeline, result_files


def test_shards_are_found_by_the_job_naming_only(tmp_path):
    for name in ("r-00000-of-00002.jsonl", "r-00001-of-00002.jsonl", "r-errors-00000-of-00001.jsonl",
                 "r-summary.json", "r-timeline.jsonl", "r-report.html"):
        (tmp_path / name).write_text("")
    assert result_files(str(tmp_path / "r")) == [str(tmp_path / "r-00000-of-00002.jsonl"),
                                                 str(tmp_path / "r-00001-of-00002.jsonl")]


def test_the_summary_names_the_result_files_when_there_is_one(tmp_path):
    (tmp_path / "r-00000-of-00001.jsonl").write_text("")
    assert load_summary(str(tmp_path / "r")) is None
    assert result_files(str(tmp_path / "r")) == [str(tmp_path / "r-00000-of-00001.jsonl")]
    summary = {"result_files": ["memory://elsewhere/r-00000-of-00001.jsonl"]}
    (tmp_path / "r-summary.json").write_text(json.dumps(summary))
    assert result_files(str(tmp_path / "r"), load_summary(str(tmp_path / "r"))) == summary["result_files"]


def test_a_prefix_without_outputs_fails_naming_what_was_looked_for(tmp_path):
    with pytest.raises(JobOutputsError, match=r"no job outputs under .*r-summary.json nor .*r-NNNNN-of-NNNNN.jsonl"):
        result_files(str(tmp_path / "r"))


def test_lines_and_timelines_read_through_fsspec_and_blank_lines_are_skipped():
    with fsspec.open("memory://job/out/r-00000-of-00001.jsonl", "wt") as f:
        f.write('{"key": "a"}\n\n{"key": "b"}\n')
    with fsspec.open(OutputLayout("memory://job/out/r").timeline, "wt") as f:
        f.write('{"t": 1.5, "predicted": 32}\n')
    (file,) = files = result_files("memory://job/out/r")
    assert file.startswith("memory://") and file.endswith("/job/out/r-00000-of-00001.jsonl")
    assert [line["key"] for line in read_lines(files)] == ["a", "b"]
    assert read_timeline("memory://job/out/r") == [{"t": 1.5, "predicted": 32}]
    assert read_timeline("memory://job/none/r") == []
