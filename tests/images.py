"""Small real images, encoded by Pillow, for tests that need image bytes but no particular content."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=2).astype(np.uint8)


def encode(array: np.ndarray | Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()
