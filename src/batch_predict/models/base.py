"""The one interface every model backend implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from ..errors import RecordFailure, SetupError
from ..records import Detections, Record

InputKind = Literal["encoded", "jpeg", "image"]


class ModelLoadError(SetupError, ValueError):
    """The model cannot be found, read or understood; the message says which and why."""


class PredictError(RecordFailure, RuntimeError):
    """A batch failed inside the model. Keeps the framework's error type for the error line."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class Model(Protocol):
    """A detector that turns a batch of records into detections in original-image pixels.

    `input_kind` says what records must carry: `"encoded"` bytes (the model decodes; arrays
    are encoded as PNG for it), `"jpeg"` (JPEGs encoded, for the model to decode in batches on
    its device; anything else as RGB arrays) or `"image"` RGB arrays. `same_size_batches` says whether one batch must hold images of a
    single size, as for a TF OD API `image_tensor` signature fed native-size images.
    """

    # Read-only: wrappers such as `observe.TimedModel` expose the model's own as properties.
    @property
    def input_kind(self) -> InputKind: ...

    @property
    def same_size_batches(self) -> bool: ...

    @property
    def labels(self) -> Mapping[int, str]: ...

    def predict(self, records: Sequence[Record]) -> list[Detections]: ...

    def describe(self) -> dict[str, object]: ...
