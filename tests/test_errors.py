"""Every error the job raises on purpose shares one base, and its kind says the command's exit status."""

from __future__ import annotations

import pytest

from batch_predict import BatchPredictError, JobFailed, JobSpec, RecordFailure, SetupError, run
from batch_predict.decode import ImageDecodeError, ImageTooLarge
from batch_predict.errors import EXIT_BAD_SETUP, EXIT_JOB_FAILED, exit_status
from batch_predict.tools.evaluate import EvaluationError, GroundTruthError
from batch_predict.inputs.tf_example import ExampleParseError
from batch_predict.outputs.reading import JobOutputsError
from batch_predict.outputs.jobstate import JobConflict
from batch_predict.models.labels import LabelMapError
from batch_predict.observe.metrics import MetricsError
from batch_predict.models import ModelLoadError, ModelSpecError, PredictError
from batch_predict.tools.pack import PackError
from batch_predict.pipeline import Stopped
from batch_predict.runners.plan import UnitsFailed
from batch_predict.outputs.sinks import OutputError
from batch_predict.inputs.sources import NoInputError
from batch_predict.spec import SpecError
from batch_predict.inputs.tfrecord import TFRecordCorruption, TFRecordDataCorruption

SETUP = [SpecError, NoInputError, ModelLoadError, ModelSpecError, OutputError, LabelMapError, GroundTruthError,
         JobConflict, MetricsError, PackError, JobOutputsError]
RECORD = [ImageDecodeError, ImageTooLarge, TFRecordCorruption, TFRecordDataCorruption, ExampleParseError, PredictError]
JOB = [UnitsFailed, EvaluationError]


@pytest.mark.parametrize("kind, members, status", [
    (SetupError, SETUP, EXIT_BAD_SETUP), (RecordFailure, RECORD, EXIT_JOB_FAILED), (JobFailed, JOB, EXIT_JOB_FAILED),
], ids=["setup", "record", "job"])
def test_each_error_is_of_its_kind_under_the_one_base(kind, members, status):
    for member in members:
        assert issubclass(member, kind) and issubclass(member, BatchPredictError), member.__name__
    if kind is not RecordFailure:  # records fail alone and never reach the command
        assert all(exit_status(member.__new__(member)) == status for member in members)
    assert issubclass(Stopped, BatchPredictError)


def test_errors_keep_the_builtin_types_callers_already_catch():
    assert issubclass(NoInputError, FileNotFoundError) and issubclass(OutputError, OSError)
    assert issubclass(ModelLoadError, ValueError) and issubclass(ImageDecodeError, ValueError)


def test_catching_the_base_catches_a_job_that_cannot_start(tmp_path):
    spec = JobSpec(input_file_patterns=(str(tmp_path / "missing-*.tfrecord"),), input_file_format="tfrecord",
                   model_dir=str(tmp_path / "no-model"), output_result_prefix=str(tmp_path / "r"),
                   output_error_prefix=str(tmp_path / "e"))
    with pytest.raises(BatchPredictError, match="no input file matches") as caught:
        run(spec)
    assert exit_status(caught.value) == EXIT_BAD_SETUP
