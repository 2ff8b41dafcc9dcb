"""`image_files`: the patterns match image files, each one record keyed by its path or URL as matched."""

from __future__ import annotations

from . import InputFormat

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")

FORMAT = InputFormat(
    "image_files", None, "the patterns match image files, each one record keyed by its path or URL.",
    looks_like=lambda name, head: name.lower().endswith(_IMAGE_SUFFIXES),
)
