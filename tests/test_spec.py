import pytest

from batch_predict.spec import JobSpec, SpecError, split_patterns

REQUIRED = dict(
    input_file_patterns=("in/*.tfrecord",), input_file_format="tfrecord", model_dir="m",
    output_result_prefix="out/r", output_error_prefix="out/e",
)


def test_patterns_split_on_commas_and_repeat():
    assert split_patterns(("a/*.tfrecord, b/x.tfrecord", "c/y.tfrecord")) == ("a/*.tfrecord", "b/x.tfrecord", "c/y.tfrecord")


def test_the_spec_is_frozen():
    spec = JobSpec(**REQUIRED)
    with pytest.raises(AttributeError):
        spec.batch_size = 2


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"input_file_patterns": ()}, "--input_file_patterns"),
        ({"input_file_format": "csv"}, "--input_file_format"),
        ({"model_dir": ""}, "--model_dir"),
        ({"batch_size": 0}, "--batch_size"),
        ({"num_output_shards": -1}, "--num_output_shards"),
        ({"num_output_shards": 100_000}, "--num_output_shards"),
        ({"score_threshold": 1.5}, "--score_threshold"),
        ({"max_error_rate": -0.1}, "--max_error_rate"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_invalid_settings_name_their_flag(change, flag):
    with pytest.raises(SpecError, match=flag):
        JobSpec(**{**REQUIRED, **change})

