"""The model spec: parsing, layering (file, options, job flags), and one clear message per bad field."""

from __future__ import annotations

import pytest

from backend_helpers import run_cli
from batch_predict.models.model_spec import ModelSpecError, build_spec, load_spec, parse_options
from conftest import REPO

EXAMPLE = REPO / "examples" / "specs" / "yolox_nano.yaml"


def _write(tmp_path, text: str):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return str(path)


def test_the_example_spec_reads_as_written():
    spec = load_spec(str(EXAMPLE))
    assert spec.input.size == (416, 416)
    assert (spec.input.resize, spec.input.pad_value, spec.input.placement) == ("letterbox", 114.0, "top_left")
    assert (spec.input.channels, spec.input.value_range) == ("BGR", (0.0, 255.0))
    assert (spec.output.decoder, spec.output.strides) == ("yolox", (8, 16, 32))
    assert (spec.thresholds.score, spec.thresholds.nms_iou, spec.thresholds.max_detections) == (0.3, 0.45, 100)
    assert spec.class_ids == "label_order"


def test_options_override_the_file_and_the_job_threshold_overrides_both(tmp_path):
    path = _write(tmp_path, "input: {size: 320}\nthresholds: {score: 0.5}\n")
    spec = load_spec(path, ["input.size=[480, 640]", "thresholds.score=0.4", "input.channels=BGR"])
    assert spec.input.size == (480, 640) and spec.thresholds.score == 0.4 and spec.input.channels == "BGR"
    assert load_spec(path, ["thresholds.score=0.4"], score_threshold=0.1).thresholds.score == 0.1


def test_naming_an_architecture_brings_torchvision_defaults():
    spec = build_spec({"architecture": "fasterrcnn_resnet50_fpn"}, {}, source="test", base=None)
    assert (spec.input.resize, spec.input.value_range, spec.output.decoder) == ("none", (0.0, 1.0), "torchvision")


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("input: {sise: 416}", "input.sise", "unknown field"),
        ("input: {resize: fit}", "input.resize", "expected one of letterbox, stretch, keep_ratio, none; got 'fit'"),
        ("input: {size: [416]}", "input.size", "expected a size N or [height, width]"),
        ("input: {size: -3}", "input.size", "expected a positive whole number; got -3"),
        ("input: {std: [1, 0, 1]}", "input.std", "expected numbers above 0"),
        ("input: {mean: [1, 2]}", "input.mean", "expected one number or three"),
        ("input: {value_range: [255, 0]}", "input.value_range", "expected low < high"),
        ("input: {pad_value: 300}", "input.pad_value", "expected a number in [0, 255]"),
        ("input: 416", "input", "expected a mapping of fields"),
        ("output: {decoder: yolov8}", "output.decoder", "expected one of tfod, torchvision, yolox, boxes"),
        ("output: {strides: 8}", "output.strides", "expected a list of strides"),
        ("thresholds: {score: 1.5}", "thresholds.score", "expected a number in [0, 1]"),
        ("thresholds: {max_detections: 0}", "thresholds.max_detections", "expected a positive whole number"),
        ("labels: 7", "labels", "expected a labels file"),
        ("class_ids: order", "class_ids", "expected one of output, label_order"),
    ],
)
def test_a_bad_field_fails_with_one_message_naming_it_and_the_file(tmp_path, text, field, problem):
    path = _write(tmp_path, text)
    with pytest.raises(ModelSpecError) as raised:
        load_spec(path)
    assert str(raised.value).startswith(f"model spec {path}: {field}: ")
    assert problem in str(raised.value)


def test_a_bad_option_is_named_as_an_option():
    with pytest.raises(ModelSpecError, match=r"^--model_option input\.resize: expected one of"):
        load_spec(None, ["input.resize=squash"])
    with pytest.raises(ModelSpecError, match=r"^--model_option 'input\.size': expected KEY=VALUE"):
        parse_options(["input.size"])


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "expected a mapping of fields at the top"), ("input: {size: [1, 2}\n", "not valid YAML")],
)
def test_a_file_that_is_not_a_spec_says_so(tmp_path, text, message):
    with pytest.raises(ModelSpecError, match=message):
        load_spec(_write(tmp_path, text))


def test_paths_in_a_spec_resolve_against_its_folder(tmp_path):
    spec = load_spec(_write(tmp_path, "model: weights.pth\nlabels: labels.txt\n"))
    assert spec.path(spec.model) == f"{tmp_path}/weights.pth"
    assert spec.path("/abs/labels.txt") == "/abs/labels.txt"


def test_input_settings_are_read_off_the_model_where_the_spec_leaves_them_out():
    spec = build_spec({"input.resize": "letterbox"}, {}, source="test", base=None)
    nchw = spec.resolve_input(["batch", 3, 416, 320], "float32").input
    assert (nchw.layout, nchw.size, nchw.dtype) == ("NCHW", (416, 320), "float32")
    nhwc = spec.resolve_input([None, 416, 416, 3], "uint8").input
    assert (nhwc.layout, nhwc.size, nhwc.dtype) == ("NHWC", (416, 416), "uint8")


def test_a_spec_that_contradicts_the_model_names_the_field_and_both_values():
    spec = build_spec({"input.size": 640}, {}, source="s.yaml", base=None)
    with pytest.raises(ModelSpecError, match=r"s\.yaml: input\.size: the spec says \[640, 640\] but the model declares \[416, 416\]"):
        spec.resolve_input(["batch", 3, 416, 416], "float32")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "input.size"),
        ({"input.resize": "keep_ratio"}, "input.max_side"),
        ({"input.resize": "keep_ratio", "input.max_side": 800, "input.size": 640}, "input.max_side"),
        ({"input.resize": "none", "input.layout": "NHWC"}, "input.layout"),
        ({"input.size": 8, "input.dtype": "uint8", "input.std": 58}, "input.dtype"),
    ],
)
def test_incomplete_input_settings_fail_naming_the_missing_field(fields, field):
    with pytest.raises(ModelSpecError, match=rf"model spec s\.yaml: {field}: "):
        build_spec(fields, {}, source="s.yaml", base=None).resolve_input(None, None)


def test_the_cli_fails_fast_on_a_bad_spec_with_exit_status_2(tmp_path, yolox_dir):
    spec = _write(tmp_path, "input: {size: 416, resize: squash}\noutput: {decoder: yolox}\n")
    (tmp_path / "in.tfrecord").write_bytes(b"")
    result = run_cli(
        "--input_file_patterns", str(tmp_path / "in.tfrecord"), "--input_file_format", "tfrecord",
        "--model_dir", str(yolox_dir / "yolox_nano_torchscript.pt"), "--model_spec", spec,
        "--output_result_prefix", str(tmp_path / "r"), "--output_error_prefix", str(tmp_path / "e"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"batch-predict: error: model spec {spec}: input.resize: "
        "expected one of letterbox, stretch, keep_ratio, none; got 'squash'"
    )
