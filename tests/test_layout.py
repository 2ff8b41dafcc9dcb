"""Every path a job writes, named in one place."""

from __future__ import annotations

from batch_predict.outputs.layout import OutputLayout, find_shards, partial, probe, shard


def test_shards_are_named_like_beam_and_vertex_ai():
    assert shard("out/results", 3, 12) == "out/results-00003-of-00012.jsonl"
    assert OutputLayout("out/r", "out/e", "parquet").result_shard(3, 12) == "out/r-00003-of-00012.parquet"
    assert OutputLayout("out/r", "out/e", "parquet").error_shard(3, 12) == "out/e-00003-of-00012.jsonl"


def test_the_job_folder_and_the_files_beside_the_shards():
    layout = OutputLayout("gs://b/out/r")
    assert layout.commit_record(2, 8) == "gs://b/out/r-job/committed/00002-of-00008.json"
    assert layout.unit_timeline(2, 8) == "gs://b/out/r-job/timeline/00002-of-00008.jsonl"
    assert (layout.job_record, layout.summary, layout.report, layout.visualized, layout.database) == (
        "gs://b/out/r-job/job.json", "gs://b/out/r-summary.json", "gs://b/out/r-report.html",
        "gs://b/out/r-visualized", "gs://b/out/r.sqlite",
    )


def test_a_file_being_written_matches_no_output_glob():
    name = partial("out/r-00000-of-00001.jsonl", "0a1b")
    assert not name.endswith((".jsonl", ".json", ".parquet"))


def test_a_writability_probe_a_kill_left_is_the_jobs_own_file():
    layout = OutputLayout("out/r", "out/e")
    left = probe("out/e", "0a1b2c3d4e5f")
    assert left.startswith(probe("out/e")) and left.endswith(".partial")
    assert layout.owns(left) and not layout.owns("out/e.probe-notes.txt")


def test_finding_shards_matches_only_this_prefixs_shards(tmp_path):
    for name in ["results-00000-of-00002.jsonl", "results-00001-of-00002.jsonl.0a1b.partial", "results-summary.json",
                 "results2-00000-of-00001.jsonl", "other-00000-of-00001.jsonl", "results-00001-of-00002.parquet"]:
        (tmp_path / name).write_text("")
    prefix = str(tmp_path / "results")
    names = lambda paths: [p.rsplit("/", 1)[1] for p in paths]  # noqa: E731
    assert names(find_shards(prefix)) == ["results-00000-of-00002.jsonl", "results-00001-of-00002.parquet"]
    assert names(find_shards(prefix, ("jsonl",))) == ["results-00000-of-00002.jsonl"]
    assert names(find_shards(prefix, partial_only=True)) == ["results-00001-of-00002.jsonl.0a1b.partial"]


def test_a_missing_folder_has_no_shards(tmp_path):
    assert find_shards(str(tmp_path / "nowhere" / "r")) == []
