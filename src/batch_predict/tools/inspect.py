"""`batch-predict inspect`: what a model directory holds and what the job will feed it.

Loading goes through `models.load_model`, the job's own path, so what is shown is what a
job would run, and a model the job cannot run fails here with the job's own message.
"""

from __future__ import annotations

from typing import Any

from ..models import load_model
from ..spec import ModelSettings

_FEEDS = {
    "encoded": "encoded image bytes as stored (JPEG, PNG, ...); images of any size share a batch",
    "image": "RGB uint8 pixels decoded on the CPU; a batch holds images of one size",
    "jpeg": "JPEG bytes decoded in batches on the model's device; other images as pixels decoded on the CPU",
}
_TEXT_ORDER = ("model_dir", "backend", "signature", "signatures", "input", "feeds", "outputs")
_NO_LABELS = "none: detections carry class ids only (give --label_map for names)"
_INDENT = 12


def inspect_model(settings: ModelSettings) -> dict[str, Any]:
    """The backend's own description, with the model directory, the full label map and what the
    job feeds the model. Raises `ModelLoadError` or `LabelMapError` as the job would."""
    model = load_model(settings)
    return {
        "model_dir": settings.model_dir,
        **model.describe(),
        "feeds": _FEEDS.get(model.input_kind, model.input_kind),
        "labels": {str(k): v for k, v in sorted(model.labels.items())},
    }


def format_description(info: dict[str, Any], width: int = 100) -> str:
    """`inspect`'s text: one field a line, the tensors and labels spelled out, and any field
    a backend adds shown as it is."""
    extras = [k for k in info if k not in _TEXT_ORDER and k not in ("labels", "input_kind")]
    order = [k for k in _TEXT_ORDER if k in info] + extras + (["labels"] if "labels" in info else [])
    lines = []
    for name in order:
        value = info[name]
        if name == "labels":
            text = _wrap([f"{len(value)}:"] + [f"{k} {v}," for k, v in value.items()], width - _INDENT) \
                if value else [_NO_LABELS]
        elif isinstance(value, dict):
            text = [_tensor(value)]
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            text = [_tensor(v) for v in value]  # tensors, one a line
        elif isinstance(value, (list, tuple)):
            text = [", ".join(map(str, value))]
        else:
            text = [str(value)]
        lines += [f"{name.replace('_', ' ') if i == 0 else '':<{_INDENT - 1}} {line}" for i, line in enumerate(text)]
    return "\n".join(lines)


def _wrap(words: list[str], width: int) -> list[str]:
    """Lines of at most `width` characters, never splitting a word (a label like '9 boat,')."""
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".lstrip()
    return [line.rstrip(",") if i == len(lines) - 1 else line for i, line in enumerate(lines)]


def _tensor(spec: Any) -> str:
    if isinstance(spec, dict) and {"name", "dtype", "shape"} <= set(spec):
        return f"{spec['name']}: {spec['dtype']} {spec['shape']}"
    return str(spec)
