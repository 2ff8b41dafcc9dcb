"""Draw detections onto an image with Pillow, so people can see what the model found."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated color per class, the same in every picture of a report."""
    hue = (class_id * 0.61803398875) % 1.0  # golden-ratio steps keep neighbouring ids apart
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: Sequence[Mapping[str, Any]], width: int = 480,
                    max_height: int = 720) -> Image.Image:
    """A copy of `image` shrunk to `width` (and at most `max_height`), with each detection's box,
    label and score.

    `detections` are as in a result line: `box` [x1, y1, x2, y2] in original pixels, `score`,
    `class_id`, and `label` when the job had a label map. Shrinking to one width first keeps
    lines crisp and text the same size in every picture of a grid.
    """
    scale = min(1.0, width / image.width, max_height / image.height)
    canvas = image.convert("RGB")
    if scale < 1.0:
        canvas = canvas.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(11, round(canvas.width / 26)))
    line = max(2, round(canvas.width / 200))
    # Highest scores last, so that their labels are drawn on top.
    for detection in sorted(detections, key=lambda d: d.get("score", 0.0)):
        x1, y1, x2, y2 = (v * scale for v in detection["box"])
        color = class_color(int(detection.get("class_id", 0)))
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        text = f"{detection.get('label', detection.get('class_id'))} {detection.get('score', 0.0):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (bottom - top) - 3 if y1 - (bottom - top) - 3 >= 0 else y1  # above the box if it fits
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 3), fill=color)
        draw.text((x1 + 2, ty + 1 - (top - y1)), text, fill=(0, 0, 0), font=font)
    return canvas


def to_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
