"""A torchvision detection architecture named in a spec, with a state-dict file: end to end
through the CLI (random weights: the schema and the accounting, not the boxes), and the
refusals that keep a weights file from running code."""

from __future__ import annotations

import fractions
import json

import pytest
import torch
import torchvision

from backend_helpers import predict, summary, write_tfrecord
from batch_predict.models import ModelLoadError
from batch_predict.models.model_spec import build_spec
from batch_predict.models.torchvision_arch import build, read_state_dict

ARCHITECTURE = "fasterrcnn_mobilenet_v3_large_fpn"
# Small inputs and few proposals keep the CPU test quick; a zero box threshold makes random
# weights detect.
SPEC = f"""
architecture: {ARCHITECTURE}
architecture_args:
  num_classes: 91
  min_size: 320
  max_size: 320
  rpn_pre_nms_top_n_test: 100
  rpn_post_nms_top_n_test: 100
  box_score_thresh: 0.0
model: weights.pth
"""
DETECTION_KEYS = {"box", "box_normalized", "score", "class_id", "label"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A folder with model.yaml and a state dict of randomly initialised weights."""
    folder = tmp_path_factory.mktemp("fasterrcnn")
    torch.manual_seed(0)
    model = torchvision.models.get_model(ARCHITECTURE, weights=None, weights_backbone=None, num_classes=91)
    torch.save(model.state_dict(), folder / "weights.pth")
    (folder / "model.yaml").write_text(SPEC)
    return folder


def test_runs_end_to_end_through_the_cli_with_one_line_per_record(model_folder, photos_dir, tmp_path, yolox_dir):
    names = ["bus.jpg", "zidane.jpg", "skimage_chelsea.png"]
    records = {n: (photos_dir / n).read_bytes() for n in names} | {"broken": b"not an image"}
    inputs = write_tfrecord(tmp_path / "in.tfrecord", records)
    results = predict(
        [inputs], model_folder, tmp_path, "--score_threshold", "0", "--batch_size", "2",
        "--label_map", str(yolox_dir / "labels.txt"), "--max_error_rate", "0.5",
    )
    counts = summary(tmp_path)
    assert (counts["records_read"], counts["predicted"], counts["failed"]) == (4, 3, 1)
    assert counts["detections"] == sum(len(r["detections"]) for r in results.values()) > 0
    (error,) = [json.loads(line) for line in (tmp_path / "errors-00000-of-00001.jsonl").read_text().splitlines()]
    assert error["key"] == "broken" and error["stage"] == "decode"
    for name in names:
        line = results[name]
        assert set(line) == {"key", "source", "record_index", "width", "height", "detections"}
        assert len(line["detections"]) <= 100
        scores = [d["score"] for d in line["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in line["detections"]:
            assert set(d) == DETECTION_KEYS and isinstance(d["class_id"], int) and 0 <= d["score"] <= 1
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= line["width"] and 0 <= y1 <= y2 <= line["height"]
            assert all(0 <= v <= 1 for v in d["box_normalized"])


def test_an_unknown_architecture_or_arguments_name_the_field():
    with pytest.raises(ModelLoadError, match=r"architecture: 'yolo11' is not a torchvision detection model; one of .*fcos_resnet50_fpn"):
        build(build_spec({"architecture": "yolo11"}, {}, source="s.yaml", base=None))
    with pytest.raises(ModelLoadError, match=r"s\.yaml: architecture_args: fasterrcnn_resnet50_fpn refuses them"):
        build(build_spec({"architecture": "fasterrcnn_resnet50_fpn", "architecture_args": {"num_classes": "many"}}, {}, source="s.yaml", base=None))


def test_weights_of_another_shape_do_not_fit(model_folder, tmp_path):
    from batch_predict.models import load_model
    from batch_predict.spec import JobSpec

    job = JobSpec(
        input_file_patterns=("unused",), input_file_format="tfrecord", model_dir=str(model_folder),
        output_result_prefix="unused", output_error_prefix="unused", device="cpu",
        model_options=("architecture_args={num_classes: 5}",),
    )
    with pytest.raises(ModelLoadError, match=r"weights\.pth' does not fit fasterrcnn_mobilenet_v3_large_fpn: .*size mismatch"):
        load_model(job.model_settings())


def test_a_weights_file_holding_other_objects_is_never_unpickled(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"weight": torch.zeros(1), "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ModelLoadError, match="holds objects other than tensors; refusing to unpickle them"):
        read_state_dict(path.read_bytes(), str(path))


def test_a_training_checkpoint_wrapping_the_state_dict_is_unwrapped(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"weight": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_state_dict(path.read_bytes(), str(path))) == ["weight"]
