"""Generated scenes: coloured shapes over crops of real photos, with exact ground-truth boxes.

The detector is trained, evaluated and demonstrated on these, so every box it should find is
known to the pixel. Backgrounds come from the photos bundled in scikit-image, so nothing is
downloaded. Each shape is drawn through its own anti-aliased mask, and its box is the tight
box of that mask (pixels at least half covered), not of the shape's nominal geometry.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross")
"""Class names; class id = position + 1, as in a TF OD API label map."""

BACKGROUND_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)

TRAIN_SPLIT, EVAL_SPLIT, SAMPLES_SPLIT = 0, 1, 2
"""The first word of every scene's seed: training, held-out evaluation and demo samples never share a scene."""
JPEG_QUALITY = 90

_SUPERSAMPLE = 4
_MIN_CONTRAST = 90.0


@dataclass(frozen=True)
class Scene:
    """One generated image and its objects: boxes `[x1, y1, x2, y2]` in pixels, 1-based class ids."""

    image: Image.Image
    boxes: np.ndarray
    classes: np.ndarray


def load_backgrounds() -> list[np.ndarray]:
    """The bundled photos as HxWx3 uint8 RGB (grey ones repeated over three channels)."""
    from skimage import data

    photos = []
    for name in BACKGROUND_PHOTOS:
        photo = np.asarray(getattr(data, name)(), dtype=np.uint8)
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[:, :, :3]))
    return photos


def _background(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int) -> Image.Image:
    """A random crop of a random photo, with the scene's aspect ratio, resized to the scene."""
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    crop_w = pw * rng.uniform(0.35, 1.0)
    crop_h = crop_w * height / width
    if crop_h > ph:
        crop_w, crop_h = crop_w * ph / crop_h, ph
    x0 = int(rng.uniform(0, pw - crop_w + 1))
    y0 = int(rng.uniform(0, ph - crop_h + 1))
    crop = Image.fromarray(photo[y0 : y0 + int(crop_h), x0 : x0 + int(crop_w)])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((width, height), Image.Resampling.BILINEAR)


def _outline(kind: str, radius: float, angle: float) -> np.ndarray | None:
    """The polygon of a shape centred on the origin, or None for a circle."""
    if kind == "circle":
        return None
    if kind == "square":
        turns = np.arange(4) / 4 + 1 / 8
        radii = np.full(4, radius)
    elif kind == "triangle":
        turns = np.arange(3) / 3
        radii = np.full(3, radius)
    elif kind == "star":
        turns = np.arange(10) / 10
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:  # a plus-shaped cross, arms a third of its span thick
        t = radius / 3
        r = radius / math.sqrt(1 + 1 / 9)  # arm tips at `radius` from the centre
        xy = np.array([(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)])
        turns, radii = np.arctan2(xy[:, 1], xy[:, 0]) / (2 * math.pi), np.hypot(xy[:, 0], xy[:, 1])
    theta = 2 * math.pi * turns + angle
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _shape_mask(kind: str, radius: float, angle: float) -> tuple[Image.Image, float]:
    """An anti-aliased 'L' mask of the shape and the offset of its centre inside the mask."""
    half = math.ceil(radius) + 1
    size = 2 * half * _SUPERSAMPLE
    big = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(big)
    centre = size / 2
    polygon = _outline(kind, radius * _SUPERSAMPLE, angle)
    if polygon is None:
        r = radius * _SUPERSAMPLE
        draw.ellipse((centre - r, centre - r, centre + r, centre + r), fill=255)
    else:
        draw.polygon([tuple(p) for p in polygon + centre], fill=255)
    return big.resize((2 * half, 2 * half), Image.Resampling.BOX), half


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from the mean colour of the background beneath it."""
    mean = under.reshape(-1, 3).mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(12):
        colour = rng.integers(0, 256, size=3)
        distance = float(np.linalg.norm(colour - mean))
        if distance >= _MIN_CONTRAST:
            return tuple(int(c) for c in colour)
        if distance > best_distance:
            best, best_distance = colour, distance
    return tuple(int(c) for c in best)


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], margin: float) -> bool:
    return any(
        box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and b[1] < box[3] + margin
        for b in boxes
    )


def render_scene(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    width: int,
    height: int,
    min_objects: int = 1,
    max_objects: int = 6,
    size_range: tuple[float, float] = (0.05, 0.2),
) -> Scene:
    """min..max_objects shapes that do not touch, radii a `size_range` fraction of the shorter side."""
    image = _background(rng, photos, width, height)
    pixels = np.asarray(image)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    short = min(width, height)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(10):
            class_index = int(rng.integers(len(CLASSES)))
            radius = float(rng.uniform(*size_range)) * short
            mask, half = _shape_mask(CLASSES[class_index], radius, float(rng.uniform(0, 2 * math.pi)))
            alpha = np.asarray(mask)
            ys, xs = np.nonzero(alpha >= 128)
            if not len(xs):
                continue
            left = int(rng.integers(0, width - mask.width + 1)) if width > mask.width else None
            top = int(rng.integers(0, height - mask.height + 1)) if height > mask.height else None
            if left is None or top is None:
                continue
            box = np.array([left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1], dtype=np.float32)
            if _overlaps(box, boxes, margin=2.0):
                continue
            under = pixels[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])]
            image.paste(_contrasting_colour(rng, under), (left, top), mask)
            boxes.append(box)
            classes.append(class_index + 1)
            break
    return Scene(
        image=image,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.array(classes, dtype=np.int64),
    )


def scene_size(rng: np.random.Generator, short_range: tuple[int, int], max_aspect: float) -> tuple[int, int]:
    """A random (width, height): the shorter side in `short_range`, either orientation."""
    short = int(rng.integers(short_range[0], short_range[1] + 1))
    long = int(round(short * rng.uniform(1.0, max_aspect)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def job_scene(split: int, index: int, photos: list[np.ndarray]) -> Scene:
    """Scene `index` of a held-out split, sized as the batch job's inputs are (240 to 768 pixels a side)."""
    rng = np.random.default_rng([split, index])
    width, height = scene_size(rng, (240, 480), max_aspect=1.6)
    return render_scene(rng, photos, width, height)
