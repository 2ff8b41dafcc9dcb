"""Scoring against COCO ground truth: the key rule, pycocotools' numbers, and the job's hook on real coco8."""

from __future__ import annotations

import json

import pytest

from batch_predict.tools.evaluate import (
    EvaluationError, GroundTruth, GroundTruthError, KeyMatcher, evaluate, evaluate_job, evaluate_outputs,
    format_evaluation, load_ground_truth,
)

from conftest import shared_file
from test_cli import batch_predict

GROUND_TRUTH = {
    "images": [{"id": 9, "file_name": "train/000000000009.jpg", "width": 640, "height": 480},
               {"id": 25, "file_name": "val/000000000025.jpg", "width": 640, "height": 426},
               {"id": 30, "file_name": "val/000000000030.jpg", "width": 640, "height": 428}],
    "annotations": [
        {"id": 1, "image_id": 9, "category_id": 1, "bbox": [10, 20, 100, 200], "area": 20000, "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 18, "bbox": [300, 100, 120, 90], "area": 10800, "iscrowd": 0},
        {"id": 3, "image_id": 25, "category_id": 1, "bbox": [50, 50, 80, 160], "area": 12800, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
}


def result(key: str, *boxes: tuple[int, list[float], float]) -> dict:
    """A result line as the job writes it, from (class id, COCO [x, y, w, h], score)."""
    return {"key": key, "detections": [
        {"box": [x, y, x + w, y + h], "score": score, "class_id": class_id} for class_id, (x, y, w, h), score in boxes]}


def truth(image_id: int) -> list[tuple[int, list[float], float]]:
    return [(a["category_id"], a["bbox"], 0.9) for a in GROUND_TRUTH["annotations"] if a["image_id"] == image_id]


@pytest.fixture
def ground_truth() -> GroundTruth:
    return GroundTruth("gt.json", GROUND_TRUTH)


def test_keys_match_file_name_then_its_last_part_then_the_id_in_the_file_stem():
    match = KeyMatcher(GROUND_TRUTH["images"] + [{"id": 7, "file_name": "a/dup.jpg"}, {"id": 8, "file_name": "b/dup.jpg"}])
    assert match("train/000000000009.jpg") == 9
    assert match("gs://bucket/imgs/000000000025.jpg") == 25
    assert match("000000000030.png") == 30 and match("30") == 30
    assert match("a/dup.jpg") == 7 and match("c/dup.jpg") is None  # a shared last part matches nothing
    assert match("/data/imgs.tfrecord:3") is None


def test_results_equal_to_the_ground_truth_score_one(ground_truth):
    evaluation = evaluate([result("train/000000000009.jpg", *truth(9)), result("000000000025.jpg", *truth(25))],
                          ground_truth)
    assert evaluation.mAP == 1.0 and evaluation.mAP_50 == 1.0
    assert evaluation.per_class_AP == {"person": 1.0, "dog": 1.0}  # no car in the ground truth: no AP for it
    assert (evaluation.images, evaluation.detections, evaluation.ground_truth_images_without_results) == (2, 3, 1)


def test_a_missed_class_scores_zero_and_a_loose_box_counts_only_at_loose_iou(ground_truth):
    (other_person,) = truth(25)
    shifted = (1, [30, 20, 100, 200], 0.9)  # IoU 2/3 with the person: a hit at IoU 0.5, a miss at 0.7 and above
    evaluation = evaluate([result("000000000009.jpg", shifted), result("000000000025.jpg", other_person)], ground_truth)
    assert evaluation.per_class_AP["dog"] == 0.0
    assert evaluation.mAP_50 == 0.5 and 0.0 < evaluation.mAP < 0.5
    assert 0.0 < evaluation.per_class_AP["person"] < 1.0


def test_images_with_no_detections_and_results_outside_the_ground_truth_are_counted(ground_truth):
    evaluation = evaluate([result("train/000000000009.jpg"), result("elsewhere.jpg", (1, [0, 0, 5, 5], 0.5))],
                          ground_truth)
    assert evaluation.mAP == 0.0 and evaluation.per_class_AP == {"person": 0.0, "dog": 0.0}
    assert evaluation.results_without_ground_truth == 1 and evaluation.images == 1


def test_two_results_for_one_image_or_none_matching_fail_with_the_reason(ground_truth):
    with pytest.raises(EvaluationError, match="both match ground-truth image 9"):
        evaluate([result("train/000000000009.jpg"), result("000000000009.jpg")], ground_truth)
    with pytest.raises(EvaluationError, match="result keys like 'imgs.tfrecord:0'.*train/000000000009.jpg"):
        evaluate([result("imgs.tfrecord:0")], ground_truth)


def test_a_ground_truth_file_that_is_missing_or_not_coco_fails_before_any_work(tmp_path):
    with pytest.raises(GroundTruthError, match="cannot read"):
        load_ground_truth(str(tmp_path / "missing.json"))
    (tmp_path / "labels.json").write_text(json.dumps({"images": []}))
    with pytest.raises(GroundTruthError, match=r"not a COCO instances file: no list \['annotations', 'categories'\]"):
        load_ground_truth(str(tmp_path / "labels.json"))


def test_existing_outputs_are_scored_and_the_summary_gains_the_scores(tmp_path, ground_truth):
    (tmp_path / "results-00000-of-00002.jsonl").write_text(json.dumps(result("000000000009.jpg", *truth(9))) + "\n")
    (tmp_path / "results-00001-of-00002.jsonl").write_text("")
    (tmp_path / "results-summary.json").write_text(json.dumps({"predicted": 1}))
    assert evaluate_outputs(str(tmp_path / "results"), ground_truth).mAP == 1.0
    evaluate_job(str(tmp_path / "results"), ground_truth)
    summary = json.loads((tmp_path / "results-summary.json").read_text())
    assert summary["predicted"] == 1 and summary["evaluation"]["per_class_AP"] == {"person": 1.0, "dog": 1.0}


def test_the_text_lists_classes_best_first(ground_truth):
    (_, dog), (other_person,) = truth(9), truth(25)
    text = format_evaluation(evaluate([result("000000000009.jpg", dog), result("000000000025.jpg", other_person)],
                                      ground_truth))
    assert text.splitlines()[0].startswith("mAP ") and "on 2 images" in text.splitlines()[0]
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["dog", "person"]


def test_yolox_nano_on_coco8_scores_through_the_job_and_the_evaluate_command(tmp_path):
    instances = str(shared_file("data/coco8/instances_coco8.json"))
    batch_predict("pack", str(shared_file("data/coco8/images")), "--output_prefix", str(tmp_path / "coco8"))
    run = batch_predict(
        "--input_file_patterns", f"{tmp_path}/coco8-*", "--input_file_format", "tfrecord",
        "--model_dir", str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
        "--output_result_prefix", str(tmp_path / "out" / "results"),
        "--output_error_prefix", str(tmp_path / "out" / "errors"), "--score_threshold", "0.01",
        "--ground_truth", instances,
    )
    evaluation = json.loads((tmp_path / "out" / "results-summary.json").read_text())["evaluation"]
    assert evaluation["images"] == 8 and evaluation["ground_truth_images_without_results"] == 0
    # YOLOX-Nano finds the large objects of coco8 well and its small ones poorly.
    assert 0.3 < evaluation["mAP"] < evaluation["mAP_50"] < 0.95
    assert {"person", "dog", "giraffe", "zebra", "bowl"} <= set(evaluation["per_class_AP"])
    assert f"mAP {evaluation['mAP']:.4f}" in run.stderr
    printed = json.loads(batch_predict("evaluate", str(tmp_path / "out" / "results"), "--ground_truth", instances,
                                       "--json").stdout)
    assert printed == evaluation


def test_the_job_refuses_a_bad_ground_truth_before_reading_anything(tmp_path):
    (tmp_path / "one.tfrecord").write_bytes(b"")
    run = batch_predict(
        "--input_file_patterns", str(tmp_path / "one.tfrecord"), "--input_file_format", "tfrecord",
        "--model_dir", str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
        "--output_result_prefix", str(tmp_path / "out" / "results"),
        "--output_error_prefix", str(tmp_path / "out" / "errors"), "--ground_truth", str(tmp_path / "none.json"),
        check=False,
    )
    assert run.returncode == 2 and "--ground_truth: cannot read" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
