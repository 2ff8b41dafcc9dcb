"""Train the demo detector, export it (SavedModel + TorchScript) and report its mAP@0.5.

    python -m demo.train_detector            # from the repository root; writes demo/model/

Reproducible: every scene comes from a seed derived from its index, torch is seeded and runs
deterministic kernels on a fixed number of threads. A few minutes on 2 CPU cores: the scenes
are rendered once into a pool (in parallel), and each training step sees them under a random
flip or transpose, which keeps every box exact. The mAP is measured on the exported
SavedModel itself, fed JPEGs of held-out scenes of varied sizes, as the batch job feeds it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from .detector import INPUT_SIZE, STRIDE, DeployedDetector, ShapeDetector, fold_batch_norm, raw_to_outputs
from .scenes import (
    CLASSES, EVAL_SPLIT, JPEG_QUALITY, TRAIN_SPLIT, encode_jpeg, job_scene, load_backgrounds, render_scene, scene_size,
)

GRID = INPUT_SIZE // STRIDE
GAUSSIAN_ALPHA = 0.54  # TTFNet's: a Gaussian of sigma = alpha * size / 6 around each centre
REGRESSION_FLOOR = 0.1  # cells within this Gaussian value of a centre learn its box
BOX_LOSS_WEIGHT = 5.0

_photos: list[np.ndarray] | None = None


def _training_scene(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene `index` as the network sees it: INPUT_SIZE square uint8, boxes scaled to match.

    Native sizes and aspect ratios vary and half the scenes pass through JPEG, so that the
    resize to a square input squashes and blurs shapes as it does for real inputs.
    """
    global _photos
    if _photos is None:  # once per worker process
        _photos = load_backgrounds()
    rng = np.random.default_rng([TRAIN_SPLIT, index])
    width, height = scene_size(rng, (128, 320), max_aspect=2.0)
    # Some scenes hold no shape at all: photos alone teach the network what is not a shape.
    scene = render_scene(rng, _photos, width, height, min_objects=0)
    image = scene.image
    if rng.random() < 0.5:
        image = Image.open(io.BytesIO(encode_jpeg(image, int(rng.integers(60, 96)))))
    pixels = np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))
    scale = np.array([INPUT_SIZE / width, INPUT_SIZE / height] * 2, dtype=np.float32)
    return pixels, scene.boxes * scale, scene.classes


def render_pool(count: int, workers: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    with ProcessPoolExecutor(workers) as pool:
        scenes = list(pool.map(_training_scene, range(count), chunksize=64))
    return np.stack([s[0] for s in scenes]), [s[1] for s in scenes], [s[2] for s in scenes]


def dihedral(image: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/transposes of a square image, and its boxes exactly transformed."""
    size = image.shape[0]
    x1, y1, x2, y2 = boxes.T
    if k & 1:
        image, x1, x2 = image[:, ::-1], size - x2, size - x1
    if k & 2:
        image, y1, y2 = image[::-1], size - y2, size - y1
    if k & 4:
        image, x1, y1, x2, y2 = image.transpose(1, 0, 2), y1, x1, y2, x2
    return image, np.stack([x1, y1, x2, y2], axis=1)


def encode_targets(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets on the GRID x GRID map: class heatmaps, box per cell, box-loss weight per cell.

    Each object gets an elliptical Gaussian at its centre (peak 1 in the cell holding the
    centre); the cells where it is high enough regress the object's box, weighted by the
    Gaussian and by log(area) as in TTFNet, so that small objects are not drowned out.
    """
    heat = np.zeros((len(CLASSES), GRID, GRID), np.float32)
    box_targets = np.zeros((4, GRID, GRID), np.float32)
    weights = np.zeros((GRID, GRID), np.float32)
    centres = (np.arange(GRID, dtype=np.float32) + 0.5) * STRIDE
    # Largest first, so that a smaller object keeps any cell the two would share.
    for box, class_id in sorted(zip(boxes, classes), key=lambda bc: -(bc[0][2] - bc[0][0]) * (bc[0][3] - bc[0][1])):
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        sx, sy = max(GAUSSIAN_ALPHA * w / 6, 1.0), max(GAUSSIAN_ALPHA * h / 6, 1.0)
        gauss = np.exp(-((centres[None, :] - cx) ** 2) / (2 * sx**2) - ((centres[:, None] - cy) ** 2) / (2 * sy**2))
        row, col = min(int(cy // STRIDE), GRID - 1), min(int(cx // STRIDE), GRID - 1)
        gauss[row, col] = 1.0
        heat[class_id - 1] = np.maximum(heat[class_id - 1], gauss)
        region = gauss >= REGRESSION_FLOOR
        box_targets[:, region] = box[:, None]
        weights[region] = gauss[region] / gauss[region].sum() * math.log(max(w * h, 2.0))
    return heat, box_targets, weights


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, per object."""
    positive = heat.eq(1.0).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos = positive * (1 - p) ** 2 * log_p
    neg = (1 - positive) * (1 - heat) ** 4 * p**2 * log_not_p
    return -(pos.sum() + neg.sum()) / positive.sum().clamp(min=1.0)


def giou_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted 1 - GIoU over the cells that carry a box (boxes as [..., 4] x1, y1, x2, y2)."""
    mask = weights > 0
    p, t, w = predicted[mask], target[mask], weights[mask]
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    inter = (torch.min(p[:, 2:], t[:, 2:]) - torch.max(p[:, :2], t[:, :2])).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    hull = (torch.max(p[:, 2:], t[:, 2:]) - torch.min(p[:, :2], t[:, :2])).prod(dim=1)
    giou = inter / union - (hull - union) / hull
    return ((1 - giou) * w).sum() / w.sum().clamp(min=1e-6)


def train(pool_size: int, steps: int, batch_size: int, lr: float, seed: int) -> ShapeDetector:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng([TRAIN_SPLIT, seed, 1])
    started = time.time()
    images, all_boxes, all_classes = render_pool(pool_size, workers=len(os.sched_getaffinity(0)))
    print(f"rendered {pool_size} training scenes in {time.time() - started:.0f} s", flush=True)
    network = ShapeDetector(len(CLASSES)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    network.train()
    for step in range(steps):
        picked = rng.choice(pool_size, batch_size, replace=False)
        views = [dihedral(images[i], all_boxes[i], int(k)) for i, k in zip(picked, rng.integers(0, 8, batch_size))]
        targets = [encode_targets(boxes, all_classes[i]) for i, (_, boxes) in zip(picked, views)]
        heats, box_targets, weights = (torch.from_numpy(np.stack(t)) for t in zip(*targets))
        x = torch.from_numpy(np.stack([image for image, _ in views])).permute(0, 3, 1, 2).float().div(255.0)
        raw = network(x.contiguous(memory_format=torch.channels_last))
        _, predicted = raw_to_outputs(raw, len(CLASSES))
        heat_loss = focal_loss(raw[:, : len(CLASSES)], heats)
        box_loss = giou_loss(predicted.permute(0, 2, 3, 1), box_targets.permute(0, 2, 3, 1), weights)
        loss = heat_loss + BOX_LOSS_WEIGHT * box_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  heat {heat_loss.item():.3f}  box {box_loss.item():.3f}  "
                  f"{time.time() - started:.0f} s", flush=True)
    return network.to(memory_format=torch.contiguous_format)


def evaluate(saved_model_dir: str, count: int, batch_size: int = 32) -> dict[str, float]:
    """COCO AP of the exported SavedModel (its serving signature, on JPEG bytes) on held-out scenes."""
    import tensorflow as tf
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    photos = load_backgrounds()
    scenes = [job_scene(EVAL_SPLIT, index, photos) for index in range(count)]
    images, annotations, results = [], [], []
    for start in range(0, count, batch_size):
        chunk = scenes[start : start + batch_size]
        encoded = [encode_jpeg(scene.image, JPEG_QUALITY) for scene in chunk]
        out = {k: v.numpy() for k, v in serve(encoded_image_string_tensor=tf.constant(encoded)).items()}
        for offset, scene in enumerate(chunk):
            image_id, (width, height) = start + offset, scene.image.size
            images.append({"id": image_id, "width": width, "height": height})
            for box, class_id in zip(scene.boxes.tolist(), scene.classes.tolist()):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": class_id, "iscrowd": 0,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": (box[2] - box[0]) * (box[3] - box[1]),
                })
            for i in range(int(out["num_detections"][offset])):
                ymin, xmin, ymax, xmax = out["detection_boxes"][offset, i].tolist()
                results.append({
                    "image_id": image_id, "category_id": int(out["detection_classes"][offset, i]),
                    "score": float(out["detection_scores"][offset, i]),
                    "bbox": [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height],
                })
    truth = COCO()
    truth.dataset = {
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    evaluation.summarize()
    return {"mAP@0.5": float(evaluation.stats[1]), "mAP@[.5:.95]": float(evaluation.stats[0]),
            "images": count, "objects": len(annotations)}


def write_label_map(path: Path) -> None:
    items = "".join(f'item {{\n  id: {i + 1}\n  name: "{name}"\n}}\n' for i, name in enumerate(CLASSES))
    path.write_text(items)


def export(network: ShapeDetector, out_dir: Path) -> None:
    """SavedModel, label map and TorchScript, from the same folded weights."""
    from .tf_export import export_saved_model

    folded = fold_batch_norm(network)
    saved_model = out_dir / "saved_model"
    shutil.rmtree(saved_model, ignore_errors=True)
    export_saved_model(folded, str(saved_model))
    write_label_map(saved_model / "label_map.pbtxt")
    torch.jit.script(DeployedDetector(folded)).save(str(out_dir / "detector_torchscript.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(Path(__file__).parent / "model"))
    parser.add_argument("--pool_size", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="Fixed, since results depend on it.")
    parser.add_argument("--eval_images", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    network = train(args.pool_size, args.steps, args.batch_size, args.lr, args.seed)
    trained_s = time.time() - started
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export(network, out_dir)
    metrics = evaluate(str(out_dir / "saved_model"), args.eval_images)
    size = sum(f.stat().st_size for f in (out_dir / "saved_model").rglob("*") if f.is_file())
    report = {**metrics, "train_seconds": round(trained_s, 1), "saved_model_bytes": size,
              "torchscript_bytes": (out_dir / "detector_torchscript.pt").stat().st_size,
              "parameters": sum(p.numel() for p in network.parameters())}
    print(json.dumps(report, indent=2))
    print(f"mAP@0.5 = {metrics['mAP@0.5']:.3f} on {args.eval_images} held-out scenes; "
          f"training took {trained_s:.0f} s")


if __name__ == "__main__":
    main()
