"""The units of data that flow between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np


@dataclass(slots=True)
class Record:
    """One input instance: encoded image bytes, or an already-decoded HxWx3 uint8 array."""

    key: str
    source: str
    index: int
    encoded: bytes | None = None
    array: np.ndarray | None = None
    width: int = 0
    height: int = 0
    charged: int = 0  # bytes of decoded pixels it holds of the pipeline's `PixelBudget`


def safe_text(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (a JSON key such as "\\ud800") written as its escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(slots=True)
class FailedRecord:
    """An input instance that could not be read, decoded, predicted or written: one error line.
    Its text is made valid UTF-8 here, so that the line itself can always be written."""

    key: str
    source: str
    index: int
    error_type: str
    message: str
    stage: str

    def __post_init__(self) -> None:
        self.key, self.source, self.message = safe_text(self.key), safe_text(self.source), safe_text(self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source": self.source,
            "record_index": self.index,
            "error_type": self.error_type,
            "message": self.message,
            "stage": self.stage,
        }

    @classmethod
    def too_large(cls, key: str, source: str, index: int, what: str, max_bytes: int) -> "FailedRecord":
        """The error line of a record skipped unread because `what` ("line of 90 bytes") is over `--max_record_bytes`."""
        return cls(key, source, index, "RecordTooLarge", f"{what} is larger than --max_record_bytes ({max_bytes})", "read")

    @classmethod
    def of(cls, record: Record, exc: BaseException, stage: str) -> "FailedRecord":
        error_type = getattr(exc, "error_type", type(exc).__name__)
        return cls(record.key, record.source, record.index, error_type, str(exc), stage)


@dataclass(slots=True)
class Detections:
    """A model's findings for one image, in original-image pixels (x1, y1, x2, y2)."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Prediction:
    """A record and what the model found in it: one result line."""

    record: Record
    detections: Detections


Outcome = Union[Prediction, FailedRecord]


@dataclass(frozen=True, slots=True)
class UnitEnd:
    """The end of one unit's records in a stream of several units': `records_read` of them
    came before it, or reading stopped early with `error`, which fails the unit whole."""

    unit: Any
    records_read: int
    error: BaseException | None = None


def default_key(source: str, index: int) -> str:
    """The key of a record that brings none: stable across runs and unique in a job."""
    return f"{source}:{index}"
