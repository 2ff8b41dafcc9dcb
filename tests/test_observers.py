"""A job's observers hear every record, model call, write and commit, from whichever thread."""

from __future__ import annotations

from collections import Counter

from batch_predict.observe.observers import JobObserver, Observers, timed
from batch_predict.pipeline import StagedModel
from batch_predict.runners.local import run

from conftest import photo_job
from toymodels import MeanColourModel, StagedMeanColourModel


class Recorder(JobObserver):
    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.outcomes = 0
        self.committed_read = 0

    def job_started(self, units) -> None:
        self.events["job_started"] += 1
        self.units = len(units)

    def model_loaded(self, model) -> None:
        self.events["model_loaded"] += 1

    def unit_started(self, unit) -> None:
        self.events["unit_started"] += 1

    def record_read(self, unit, item) -> None:
        self.events["record_read"] += 1

    def batch_predicted(self, size, seconds) -> None:
        assert seconds >= 0
        self.batch_sizes.append(size)

    def written(self, unit, outcomes) -> None:
        self.outcomes += len(outcomes)

    def unit_committed(self, unit, counts) -> None:
        self.events["unit_committed"] += 1
        self.committed_read += counts.records_read

    def job_ended(self, summary) -> None:
        self.events["job_ended"] += 1


def test_every_record_read_written_and_committed_is_heard_by_each_observer(tmp_path):
    model = MeanColourModel()
    first, second = Recorder(), Recorder()
    summary = run(photo_job(tmp_path), model=model, observer=Observers([first, second]))
    for heard in (first, second):
        assert heard.events == {"job_started": 1, "model_loaded": 1, "unit_started": 2, "unit_committed": 2,
                                "job_ended": 1, "record_read": summary.records_read}
        assert heard.outcomes == heard.committed_read == summary.records_read == 13
        assert heard.batch_sizes == model.batch_sizes  # every model call, the bisected ones too


def test_a_rerun_with_nothing_left_starts_no_unit(tmp_path):
    spec = photo_job(tmp_path)
    run(spec, model=MeanColourModel())
    again = Recorder()
    run(spec, model=MeanColourModel(), observer=again)
    assert again.units == 0 and again.events == {"job_started": 1, "job_ended": 1}


def test_a_timed_staged_model_keeps_its_stages_so_the_job_prepares_ahead(tmp_path):
    # Since Python 3.12 `isinstance` against a runtime-checkable protocol sees only what the class
    # defines: a wrapper that forwarded the stages through __getattr__ lost the staged path there.
    model = StagedMeanColourModel(same_size_batches=False)
    assert isinstance(timed(model, JobObserver()), StagedModel)
    assert not isinstance(timed(MeanColourModel(), JobObserver()), StagedModel)
    several = StagedMeanColourModel(same_size_batches=False)
    several.launch_threads = 2  # and it keeps how many threads launch its batches, one where none is said
    assert timed(several, JobObserver()).launch_threads == 2 and timed(model, JobObserver()).launch_threads == 1
    heard = Recorder()
    summary = run(photo_job(tmp_path), model=model, observer=heard)
    assert summary.predicted == 11 and model.prepared and model.launched
    # Launched on the job's thread, collected on the collecting one (a failing batch is bisected at once, where it failed).
    assert "batch-predict-collector" in model.collected_on
    assert sum(heard.batch_sizes) >= summary.predicted
