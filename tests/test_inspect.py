"""`inspect` shows what the real YOLOX-Nano SavedModels hold and what the job feeds them."""

from __future__ import annotations

import json

import pytest

from batch_predict.tools.inspect import format_description, inspect_model
from batch_predict.models import ModelLoadError
from batch_predict.spec import ModelSettings

from conftest import REPO, shared_file
from test_cli import batch_predict


def test_an_encoded_input_savedmodel_is_described_with_its_tensors_and_labels():
    info = inspect_model(ModelSettings(str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
                                       label_map=str(shared_file("models/yolox_nano/labels.txt"))))
    assert info["backend"] == "tensorflow-savedmodel" and info["signature"] == "serving_default"
    assert info["input"] == {"name": "inputs", "dtype": "string", "shape": "(None,)"}
    assert {o["name"]: o["shape"] for o in info["outputs"]} == {
        "detection_boxes": "(None, 100, 4)", "detection_classes": "(None, 100)",
        "detection_scores": "(None, 100)", "num_detections": "(None,)"}
    assert len(info["labels"]) == 80 and info["labels"]["1"] == "person" and info["labels"]["90"] == "toothbrush"
    assert "encoded image bytes" in info["feeds"]


def test_an_image_tensor_savedmodel_is_fed_decoded_pixels_in_same_size_batches():
    info = inspect_model(ModelSettings(str(shared_file("models/yolox_nano/tfod_image_savedmodel"))))
    assert info["input"]["dtype"] == "uint8" and info["input"]["shape"] == "(None, None, None, 3)"
    assert "one size" in info["feeds"] and info["labels"] == {}


def test_a_signature_the_job_cannot_feed_fails_as_the_job_would():
    with pytest.raises(ModelLoadError, match="'images': float32"):
        inspect_model(ModelSettings(str(shared_file("models/yolox_nano/raw_savedmodel"))))


def test_text_spells_out_tensors_wraps_labels_whole_and_keeps_fields_a_backend_adds():
    info = {"model_dir": "m", "backend": "onnx", "input": {"name": "images", "dtype": "float32", "shape": "[1, 3]"},
            "outputs": [{"name": "out", "dtype": "float32", "shape": "[1, 85]"}], "input_kind": "image",
            "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "labels": {str(i): f"class number {i}" for i in range(1, 21)}}
    lines = format_description(info, width=60).splitlines()
    assert lines[:3] == ["model dir   m", "backend     onnx", "input       images: float32 [1, 3]"]
    assert "outputs     out: float32 [1, 85]" in lines
    assert "providers   CUDAExecutionProvider, CPUExecutionProvider" in lines
    label_lines = [line[12:] for line in lines[lines.index(next(l for l in lines if l.startswith("labels"))):]]
    assert all(len(line) <= 48 for line in label_lines)
    assert " ".join(label_lines).count("class number") == 20 and "class number 20" in label_lines[-1]
    assert "input_kind" not in format_description(info)
    assert "give --label_map" in format_description({**info, "labels": {}})


def test_the_cli_prints_text_or_json_and_fails_cleanly_on_a_model_it_cannot_run():
    model = str(shared_file("models/yolox_nano/tfod_encoded_savedmodel"))
    text = batch_predict("inspect", model, "--label_map", str(shared_file("models/yolox_nano/labels.txt"))).stdout
    assert "input       inputs: string (None,)" in text and "80: 1 person, 2 bicycle" in text
    assert json.loads(batch_predict("inspect", model, "--json").stdout)["input"]["name"] == "inputs"
    failed = batch_predict("inspect", str(shared_file("models/yolox_nano/raw_savedmodel")), check=False)
    assert failed.returncode == 2 and "batch-predict inspect: error:" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_a_bare_network_is_described_through_its_model_spec():
    info = inspect_model(ModelSettings(str(shared_file("models/yolox_nano/yolox_nano_torchscript.pt")),
                                       model_spec=str(REPO / "examples/specs/yolox_nano.yaml")))
    assert info["backend"] == "torchscript" and info["labels"]["1"] == "person"
