"""`--visualize N`: the first N predicted images of a run, with their detections drawn, as JPEG files.

A look at what the model finds while the job is still running, without waiting for the
report. Pictures go to `<output_result_prefix>-visualized/<key>.jpg` (the key with every
character other than letters, digits, `.`, `_` and `-` made `_`, and `.jpg` added unless it
ends so); each run writes up to N.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Mapping

import fsspec
from PIL import Image

from .annotate import draw_detections, to_jpeg
from ..models import Model
from ..observe.observers import JobObserver
from ..records import Outcome, Prediction
from ..outputs.layout import OutputLayout
from ..outputs.result_formats import result_records
from ..inputs.units import Unit

log = logging.getLogger("batch_predict")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def picture_name(key: str) -> str:
    """A file name for the picture of `key`: no folders, nothing a shell or a bucket minds."""
    name = _UNSAFE.sub("_", key).lstrip(".")[-200:]
    return name if name.lower().endswith((".jpg", ".jpeg")) else name + ".jpg"


class Visualizer(JobObserver):
    """Draws the first `count` predictions written, in the writer's thread (a few images, once).

    A picture that cannot be made is logged and skipped: it must never fail the job.
    """

    def __init__(self, layout: OutputLayout, count: int, width: int = 800) -> None:
        self.folder = layout.visualized
        self.left = count
        self.width = width
        self.labels: Mapping[int, str] = {}
        self._lock = threading.Lock()

    def model_loaded(self, model: Model) -> None:
        self.labels = model.labels

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        with self._lock:
            chosen = [o for o in outcomes if isinstance(o, Prediction)][: self.left]
            self.left -= len(chosen)
        for prediction in chosen:
            record = prediction.record
            path = f"{self.folder}/{picture_name(record.key)}"
            try:
                image = Image.fromarray(record.array) if record.array is not None else Image.open(io.BytesIO(record.encoded or b""))
                # The result line's own detections, so the picture shows exactly what the shard says.
                detections = next(result_records([prediction], self.labels))["detections"]
                picture = to_jpeg(draw_detections(image, detections, self.width))
                with fsspec.open(path, "wb", auto_mkdir=True) as f:
                    f.write(picture)
            except (OSError, ValueError) as exc:
                log.warning("--visualize: cannot write %s: %s", path, exc)
