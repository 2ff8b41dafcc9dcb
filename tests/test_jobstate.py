"""The job's commit records: resume the same job, refuse another, start over on request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from batch_predict.outputs.jobstate import JobConflict, JobState
from batch_predict.outputs.formats import open_sink
from batch_predict.outputs.sinks import UnitCounts
from batch_predict.inputs.sources import expand_patterns
from batch_predict.spec import JobSpec
from batch_predict.inputs.units import plan_units


@pytest.fixture
def job(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"{i}.tfrecord").write_bytes(b"x" * (10 + i))
    spec = JobSpec(
        input_file_patterns=(str(inputs / "*.tfrecord"),),
        input_file_format="tfrecord",
        model_dir=str(tmp_path / "model"),
        output_result_prefix=str(tmp_path / "out" / "results"),
        output_error_prefix=str(tmp_path / "out" / "errors"),
    )
    return spec, inputs


def _open(spec: JobSpec) -> JobState:
    """The state as a run that got past setup (its model loaded) has it."""
    state = _checked(spec)
    state.begin()
    return state


def _checked(spec: JobSpec) -> JobState:
    files = expand_patterns(spec.input_file_patterns)
    return JobState.open(spec, files, plan_units(files, spec.input_file_format, spec.num_output_shards), open_sink(spec))


def _commit(state: JobState, index: int, read: int) -> None:
    unit = state.units[index]
    state.sink.open(unit, {}).commit(records_read=0)
    # The commit record, not the shards' contents, is what the state counts.
    state.commit(unit, UnitCounts(records_read=read, predicted=read - 1, failed=1, error_types={"X": 1}))


def test_rerun_with_the_same_arguments_sees_the_committed_units(job):
    spec, _ = job
    state = _open(spec)
    assert state.committed() == {}
    _commit(state, 1, read=5)
    again = _open(dataclasses.replace(spec, batch_size=3, device="cpu", max_error_rate=0.5))
    assert list(again.committed()) == [1]
    assert again.committed()[1].records_read == 5


@pytest.mark.parametrize(
    "change, said",
    [
        ({"score_threshold": 0.5}, "--score_threshold was its default, now 0.5"),
        ({"num_output_shards": 2}, "--num_output_shards was 3, now 2"),
        ({"input_file_format": "json"}, "--input_file_format was 'tfrecord', now 'json'"),
    ],
)
def test_rerun_with_other_settings_is_refused_naming_them(job, change, said):
    spec, _ = job
    _open(spec)
    with pytest.raises(JobConflict) as refused:
        _open(dataclasses.replace(spec, **change))
    assert said in str(refused.value) and "--overwrite" in str(refused.value)


def test_rerun_after_the_inputs_changed_is_refused(job):
    spec, inputs = job
    _open(spec)
    (inputs / "1.tfrecord").write_bytes(b"y" * 99)
    with pytest.raises(JobConflict, match="input files differ: 3 files of 33 bytes then, 3 files of 121 bytes now"):
        _open(spec)


def test_overwrite_removes_the_earlier_jobs_outputs_and_records(job):
    spec, _ = job
    state = _open(spec)
    _commit(state, 0, read=2)
    out = Path(spec.output_result_prefix).parent
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["errors-00000-of-00003.jsonl", "results-00000-of-00003.jsonl"]
    fresh = _open(dataclasses.replace(spec, overwrite=True, num_output_shards=5))
    assert fresh.committed() == {}
    assert list(out.glob("*.jsonl")) == []
    assert json.loads((out / "results-job" / "job.json").read_text())["settings"]["num_output_shards"] == 5


def test_nothing_changes_until_the_job_begins(job):
    spec, _ = job
    state = _open(spec)
    _commit(state, 0, read=2)
    out = Path(spec.output_result_prefix).parent
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    # Checked, then failing at setup (say, the model does not load): the earlier job is intact.
    replacing = _checked(dataclasses.replace(spec, overwrite=True, score_threshold=0.9))
    assert replacing.committed() == {}
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert list(_checked(spec).committed()) == [0]


def test_summary_is_written_once_every_unit_is_committed_and_adds_up(job):
    spec, _ = job
    state = _open(spec)
    _commit(state, 0, read=4)
    _commit(state, 2, read=6)
    partial = state.summarize(files=3, wall_time_s=1.0, predicted_now=8)
    assert (partial.units_committed, partial.units, partial.complete) == (2, 3, False)
    assert not Path(spec.output_result_prefix + "-summary.json").exists()
    _commit(state, 1, read=3)
    summary = state.summarize(files=3, wall_time_s=2.0, predicted_now=2)
    written = json.loads(Path(spec.output_result_prefix + "-summary.json").read_text())
    assert written["records_read"] == summary.records_read == 13
    assert written["predicted"] + written["failed"] == written["records_read"]
    assert written["error_types"] == {"X": 3}
    assert written["result_files"][2].endswith("results-00002-of-00003.jsonl")


def test_unreadable_job_record_is_refused(job):
    spec, _ = job
    _open(spec)
    Path(spec.output_result_prefix + "-job/job.json").write_text("{not json")
    with pytest.raises(JobConflict, match="unreadable"):
        _open(spec)


@pytest.mark.parametrize("edited", ["model_dir", "model_spec", "label_map"])
def test_a_rerun_after_the_model_spec_or_labels_were_edited_is_another_job(edited, job, tmp_path):
    spec, _ = job
    files = {"model_dir": tmp_path / "model", "model_spec": tmp_path / "spec.yaml", "label_map": tmp_path / "labels.txt"}
    (files["model_dir"] / "variables").mkdir(parents=True)
    for path in (files["model_dir"] / "variables" / "data", files["model_spec"], files["label_map"]):
        path.write_text("first")
    spec = dataclasses.replace(spec, model_spec=str(files["model_spec"]), label_map=str(files["label_map"]))
    _open(spec)
    _open(spec)  # the same files: the same job
    target = files[edited] / "variables" / "data" if edited == "model_dir" else files[edited]
    target.write_text("score: 0.8")
    with pytest.raises(JobConflict, match=f"the contents of --{edited} changed"):
        _open(spec)


def test_of_two_jobs_starting_at_once_with_other_settings_the_second_is_refused_before_its_first_unit(job):
    spec, _ = job
    # All three see no job.json; the third is another pod of the first's job.
    first, other, same = _checked(spec), _checked(dataclasses.replace(spec, score_threshold=0.9)), _checked(spec)
    first.begin()
    with pytest.raises(JobConflict, match="another job began writing to these output prefixes meanwhile.*score_threshold"):
        other.begin()
    same.begin()
    assert json.loads(Path(spec.output_result_prefix + "-job/job.json").read_text())["settings"]["score_threshold"] is None


def test_the_completed_job_leaves_no_temporary_file_of_a_killed_writer(job):
    spec, _ = job
    state = _open(spec)
    out = Path(spec.output_result_prefix).parent
    leftovers = [out / "results-summary.json.0a1b2c.partial", out / "results-job" / "job.json.0a1b2c.partial",
                 out / "results-job" / "committed" / "00000-of-00003.json.0a1b2c.partial",
                 out / "results-job" / "timeline" / "00001-of-00003.jsonl.0a1b2c.partial",
                 out / "results.probe-0a1b2c3d4e5f.partial", out / "errors.probe-0a1b2c3d4e5f.partial"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    for index in range(3):
        _commit(state, index, read=2)
    assert state.summarize(files=3, wall_time_s=1.0, predicted_now=3).complete
    assert [p for p in leftovers if p.exists()] == []
    assert sorted(p.name for p in out.rglob("*.partial")) == []
