"""Class names for class ids, from a TF OD API label map or an `id name` text file."""

from __future__ import annotations

import re

import fsspec

from ..errors import SetupError

_PBTXT_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_PBTXT_FIELD = re.compile(r"\b(id|name|display_name)\s*:\s*(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'|(-?\d+))")


class LabelMapError(SetupError, ValueError):
    pass


def load_label_map(path: str) -> dict[int, str]:
    """{class id: name}. `.pbtxt` files prefer `display_name` over `name`, as the TF OD API does."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise LabelMapError(f"--label_map: cannot read {path!r}: {exc}") from None
    labels = _parse_pbtxt(text) if "item" in text and "{" in text else _parse_id_name(text, path)
    if not labels:
        raise LabelMapError(f"--label_map: no labels found in {path!r}")
    return labels


def _parse_pbtxt(text: str) -> dict[int, str]:
    labels: dict[int, str] = {}
    for body in _PBTXT_ITEM.findall(text):
        fields = {m[0]: m[1] or m[2] or m[3] for m in _PBTXT_FIELD.findall(body)}
        if "id" in fields:
            labels[int(fields["id"])] = fields.get("display_name") or fields.get("name") or fields["id"]
    return labels


def _parse_id_name(text: str, path: str) -> dict[int, str]:
    labels: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise LabelMapError(f"--label_map: {path}:{number}: expected 'id name', got {line.strip()!r}")
        labels[int(parts[0])] = parts[1].strip()
    return labels
