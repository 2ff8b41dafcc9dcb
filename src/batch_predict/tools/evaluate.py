"""Score a job's results against COCO ground truth with pycocotools: mAP, mAP@0.5, AP per class.

Results are matched to ground-truth images by key (see `KeyMatcher`). Only ground-truth
images that the job predicted are scored, so a job over part of a data set is scored on that
part; the counts of what did not match are reported beside the scores. Class ids are taken
as COCO category ids, which is what TF OD API models trained on COCO (1..90) give.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from ..errors import JobFailed, SetupError
from ..outputs.reading import load_summary, read_coco_results, read_results, result_files
from ..outputs.result_formats import image_id_of_key
from ..outputs.layout import OutputLayout

log = logging.getLogger("batch_predict")


class GroundTruthError(SetupError, ValueError):
    """The ground-truth file cannot be read or is not a COCO instances file."""


class EvaluationError(JobFailed, ValueError):
    """The results cannot be scored against this ground truth (no key matches, or two match one image)."""


@dataclass(frozen=True)
class GroundTruth:
    """A COCO instances file, loaded and checked before the job runs."""

    path: str
    dataset: dict[str, Any]


@dataclass
class Evaluation:
    """COCO box scores of a job's results, and how its keys met the ground truth."""

    ground_truth: str
    images: int = 0
    results_without_ground_truth: int = 0
    ground_truth_images_without_results: int = 0
    detections: int = 0
    mAP: float | None = None
    mAP_50: float | None = None
    per_class_AP: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        return (f"mAP {_fmt(self.mAP)}, mAP@0.5 {_fmt(self.mAP_50)} on {self.images} images "
                f"({self.results_without_ground_truth} results without ground truth, "
                f"{self.ground_truth_images_without_results} ground-truth images without results)")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _coco_tools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise GroundTruthError("--ground_truth needs pycocotools: pip install 'batch-predict[eval]'") from None
    return COCO, COCOeval


def load_ground_truth(path: str) -> GroundTruth:
    """Read and check a COCO instances file; fails with `GroundTruthError` saying why."""
    _coco_tools()
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            dataset = json.load(f)
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"--ground_truth: cannot read {path!r}: {exc}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(dataset.get(k), list)]
    if missing:
        raise GroundTruthError(f"--ground_truth: {path!r} is not a COCO instances file: no list {missing}")
    return GroundTruth(path, dataset)


class KeyMatcher:
    """Finds the ground-truth image of a result key. A key matches an image when, in this order:

    1. the key equals the image's `file_name` (`train/000000000009.jpg`);
    2. the key's last path component equals the last path component of `file_name`
       (`gs://b/imgs/000000000009.jpg`), unless two images share that name;
    3. the key's last path component without extension equals the image `id`, leading zeros
       aside (`000000000009.jpg` -> id 9).
    """

    def __init__(self, images: Iterable[dict[str, Any]]) -> None:
        self._by_name: dict[str, int] = {}
        names: dict[str, list[int]] = {}
        self._by_id: dict[str, int] = {}
        for image in images:
            self._by_name[image["file_name"]] = image["id"]
            names.setdefault(posixpath.basename(image["file_name"]), []).append(image["id"])
            self._by_id[str(image["id"])] = image["id"]
        self._by_base = {name: ids[0] for name, ids in names.items() if len(ids) == 1}

    def __call__(self, key: str) -> int | None:
        if key in self._by_name:
            return self._by_name[key]
        base = key.rsplit("/", 1)[-1]
        if base in self._by_base:
            return self._by_base[base]
        image_id = image_id_of_key(key)
        return self._by_id.get(str(image_id) if isinstance(image_id, int) else posixpath.splitext(base)[0])


def evaluate(results: Iterable[dict[str, Any]], ground_truth: GroundTruth) -> Evaluation:
    """Score result lines (as the job writes them) against the ground truth."""
    COCO, COCOeval = _coco_tools()
    match = KeyMatcher(ground_truth.dataset["images"])
    evaluation = Evaluation(ground_truth.path)
    keys_of: dict[int, str] = {}
    unmatched_key = None
    detections: list[dict[str, Any]] = []
    for result in results:
        image_id = match(result["key"])
        if image_id is None:
            evaluation.results_without_ground_truth += 1
            unmatched_key = unmatched_key or result["key"]
            continue
        if image_id in keys_of:
            raise EvaluationError(f"results {keys_of[image_id]!r} and {result['key']!r} both match "
                                  f"ground-truth image {image_id}; each image must be predicted once")
        keys_of[image_id] = result["key"]
        for d in result["detections"]:
            x1, y1, x2, y2 = d["box"]
            detections.append({"image_id": image_id, "category_id": d["class_id"],
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d["score"]})
    if not keys_of:
        names = [i["file_name"] for i in ground_truth.dataset["images"][:2]]
        raise EvaluationError(
            f"no result matches a ground-truth image of {ground_truth.path} (result keys like {unmatched_key!r}, "
            f"file_names like {names}); a key must be the file_name, its last path part, or the image id")
    evaluation.images = len(keys_of)
    evaluation.ground_truth_images_without_results = len(ground_truth.dataset["images"]) - len(keys_of)
    evaluation.detections = len(detections)
    _score(evaluation, ground_truth, sorted(keys_of), detections, COCO, COCOeval)
    return evaluation


def evaluate_coco_results(entries: Iterable[dict[str, Any]], ground_truth: GroundTruth) -> Evaluation:
    """Score COCO detection results (`--output_format coco`) against the ground truth.

    Their `image_id`s are taken as the ground truth's. The format lists detections only, so
    it cannot tell an image predicted without detections from one not predicted: every
    ground-truth image is scored, and a job over part of a data set scores low.
    """
    COCO, COCOeval = _coco_tools()
    known = {image["id"] for image in ground_truth.dataset["images"]}
    evaluation = Evaluation(ground_truth.path)
    detections, unknown = [], set()
    for entry in entries:
        if entry["image_id"] in known:
            detections.append(entry)
        else:
            unknown.add(entry["image_id"])
    evaluation.ground_truth_images_without_results = len(known - {d["image_id"] for d in detections})
    if not detections:
        raise EvaluationError(f"no detection's image_id is an image of {ground_truth.path} (image ids like "
                              f"{sorted(map(str, unknown))[:2]}); keys must end in the image id, e.g. 000000000009.jpg")
    evaluation.images = len(known)
    evaluation.results_without_ground_truth = len(unknown)
    evaluation.detections = len(detections)
    _score(evaluation, ground_truth, sorted(known), detections, COCO, COCOeval)
    return evaluation


def _score(evaluation: Evaluation, ground_truth: GroundTruth, image_ids: list[int],
           detections: list[dict[str, Any]], COCO, COCOeval) -> None:
    names = {c["id"]: c["name"] for c in ground_truth.dataset["categories"]}
    # pycocotools prints its progress to stdout, which belongs to the command's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth.dataset
        gt.createIndex()
        scored = [d for d in detections if d["category_id"] in names]
        if not scored:  # pycocotools cannot load an empty result list: nothing found scores 0
            present = {a["category_id"] for a in ground_truth.dataset["annotations"] if a["image_id"] in set(image_ids)}
            evaluation.mAP = evaluation.mAP_50 = 0.0 if present else None
            evaluation.per_class_AP = {names[c]: 0.0 for c in sorted(present)}
            return
        coco_eval = COCOeval(gt, gt.loadRes(scored), "bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    evaluation.mAP, evaluation.mAP_50 = (_score_or_none(v) for v in coco_eval.stats[:2])
    # precision: [IoU thresholds, recall points, classes, area ranges, max detections]; area all, 100 dets.
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    for k, category in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k]
        if (values > -1).any():
            evaluation.per_class_AP[names[category]] = round(float(values[values > -1].mean()), 4)


def _score_or_none(value: float) -> float | None:
    return None if value < 0 else round(float(value), 4)


def format_evaluation(evaluation: Evaluation) -> str:
    """The scores as a short table, classes by AP, best first."""
    lines = [evaluation.headline(), "AP per class:"]
    width = max(map(len, evaluation.per_class_AP), default=0)
    ranked = sorted(evaluation.per_class_AP.items(), key=lambda item: (-item[1], item[0]))
    lines += [f"  {name:<{width}}  {ap:.4f}" for name, ap in ranked]
    return "\n".join(lines)


def evaluate_outputs(result_prefix: str, ground_truth: GroundTruth) -> Evaluation:
    """Score the results a job wrote under `result_prefix`."""
    files = result_files(result_prefix, load_summary(result_prefix))
    if all(f.endswith(".json") for f in files):
        return evaluate_coco_results(read_coco_results(files), ground_truth)
    return evaluate(read_results(files), ground_truth)


def evaluate_job(result_prefix: str, ground_truth: GroundTruth) -> Evaluation:
    """After a job: score it, add the scores to its summary file under "evaluation", and log them."""
    evaluation = evaluate_outputs(result_prefix, ground_truth)
    summary = load_summary(result_prefix) or {}
    with fsspec.open(OutputLayout(result_prefix).summary, "wt", encoding="utf-8") as f:
        json.dump({**summary, "evaluation": evaluation.to_json()}, f, indent=2)
    log.info("batch-predict: evaluation against %s: %s", ground_truth.path, evaluation.headline())
    return evaluation
