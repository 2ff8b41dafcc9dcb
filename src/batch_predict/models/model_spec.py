"""The model spec: what a model's weights alone do not say.

Input geometry and pixel values, the output decoder, thresholds and labels. It is read from
a YAML file beside the weights (`model.yaml`) or named by `--model_spec`, then overridden by
`--model_option KEY=VALUE` and by the job's own flags. Every field is checked here, so a
wrong spec fails the job before any record is read, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from .base import ModelLoadError

RESIZE_MODES = ("letterbox", "stretch", "keep_ratio", "none")
PLACEMENTS = ("top_left", "center")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "bfloat16", "uint8")
DECODERS = ("tfod", "torchvision", "yolox", "boxes")
CLASS_IDS = ("output", "label_order")

SPEC_FILE_NAME = "model.yaml"
_NO_FILE = f"(none: give --model_spec or put {SPEC_FILE_NAME} beside the model)"


class ModelSpecError(ModelLoadError):
    """A spec field is missing, unknown or out of range; the message names it and its source."""


@dataclass(frozen=True)
class InputSpec:
    """How images become the model's input tensor. `size` is (height, width)."""

    size: tuple[int, int] | None = None
    resize: str = "letterbox"
    max_side: int | None = None
    pad_value: float = 0.0
    placement: str = "top_left"
    channels: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str | None = None
    dtype: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Which decoder turns the model's outputs into boxes, and its options."""

    decoder: str | None = None
    name: str | None = None
    strides: tuple[int, ...] = (8, 16, 32)
    nms: bool = False


@dataclass(frozen=True)
class Thresholds:
    score: float = 0.3
    nms_iou: float = 0.45
    max_detections: int = 100
    pre_nms_top_k: int = 1000


@dataclass(frozen=True)
class ModelSpec:
    """A validated spec. `base` is the folder that relative paths in it are resolved against."""

    source: str = "defaults"
    base: str | None = None
    model: str | None = None
    architecture: str | None = None
    architecture_args: Mapping[str, Any] = field(default_factory=dict)
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    thresholds: Thresholds = Thresholds()
    labels: str | tuple[str, ...] | None = None
    class_ids: str = "output"

    def path(self, relative: str) -> str:
        """A path named in the spec, resolved against the spec file's folder."""
        if self.base is None or "://" in relative or posixpath.isabs(relative):
            return relative
        return posixpath.join(self.base, relative)

    def error(self, name: str, problem: str) -> ModelSpecError:
        return ModelSpecError(f"model spec {self.source}: {name}: {problem}")

    def resolve_input(self, shape: Sequence[int | str | None] | None, dtype: str | None) -> "ModelSpec":
        """Fill `input.layout`, `input.size` and `input.dtype` from what the model declares.

        A field the spec sets must agree with the model; one it leaves out is taken from the
        model, else defaults (NCHW, float32). Then the spec is checked as a whole.
        """
        spec = self.input
        declared_layout, declared_size = _layout_and_size(shape)
        layout = _agree(self, "input.layout", spec.layout, declared_layout, shape) or "NCHW"
        size = _agree(self, "input.size", spec.size, declared_size if layout == declared_layout else None, shape)
        chosen_dtype = _agree(self, "input.dtype", spec.dtype, dtype, shape) or "float32"
        resolved = dataclasses.replace(self, input=dataclasses.replace(spec, layout=layout, size=size, dtype=chosen_dtype))
        resolved._check_input()
        return resolved

    def _check_input(self) -> None:
        spec = self.input
        if spec.resize in ("letterbox", "stretch") and spec.size is None:
            raise self.error("input.size", f"required for resize {spec.resize} (the model does not declare its input size)")
        if spec.resize == "keep_ratio":
            if spec.max_side is None:
                raise self.error("input.max_side", "required for resize keep_ratio")
            if spec.size is not None and spec.max_side > min(spec.size):
                raise self.error("input.max_side", f"{spec.max_side} does not fit in input.size {list(spec.size)}")
        if spec.resize == "none" and spec.layout != "NCHW":
            raise self.error("input.layout", "resize none hands the model a list of CHW images; it needs NCHW")
        if spec.dtype == "uint8" and (any(spec.mean) or spec.std != (1.0, 1.0, 1.0)):
            raise self.error("input.dtype", "uint8 input takes pixels as they are (0..255); it cannot have a mean or std")

    def require_decoder(self) -> str:
        if self.output.decoder is None:
            raise self.error("output.decoder", f"required for this model; one of {', '.join(DECODERS)}")
        return self.output.decoder


def _layout_and_size(shape: Sequence[int | str | None] | None) -> tuple[str | None, tuple[int, int] | None]:
    """(layout, (height, width)) read off a declared 4-D image input shape, where unambiguous."""
    if shape is None or len(shape) != 4:
        return None, None
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[1] == 3 and dims[3] != 3:
        layout, height, width = "NCHW", dims[2], dims[3]
    elif dims[3] == 3 and dims[1] != 3:
        layout, height, width = "NHWC", dims[1], dims[2]
    else:
        return None, None
    return layout, (height, width) if height and width else None


def _agree(spec: ModelSpec, name: str, given: Any, declared: Any, shape: Any) -> Any:
    if given is not None and declared is not None and given != declared:
        def shown(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        raise spec.error(name, f"the spec says {shown(given)} but the model declares {shown(declared)} (input shape {list(shape)})")
    return given if given is not None else declared


# --- parsing -------------------------------------------------------------------------------

Parser = Callable[[Any], Any]


class _Invalid(ValueError):
    pass


def _choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"expected one of {', '.join(options)}; got {value!r}")
        return value

    return parse


def _number(low: float, high: float) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _Invalid(f"expected a number in [{low}, {high}]; got {value!r}")
        return float(value)

    return parse


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"expected a positive whole number; got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string; got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false; got {value!r}")
    return value


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, list) or len(value) != 2:
        raise _Invalid(f"expected a size N or [height, width]; got {value!r}")
    height, width = (_count(v) for v in value)
    return height, width


def _value_range(value: Any) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise _Invalid(f"expected [low, high]; got {value!r}")
    low, high = (_number(-1e6, 1e6)(v) for v in value)
    if not low < high:
        raise _Invalid(f"expected low < high; got {value!r}")
    return low, high


def _per_channel(positive: bool) -> Parser:
    def parse(value: Any) -> tuple[float, float, float]:
        values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(values, list) or len(values) != 3:
            raise _Invalid(f"expected one number or three (one per channel, in the model's channel order); got {value!r}")
        numbers = tuple(_number(-1e6, 1e6)(v) for v in values)
        if positive and min(numbers) <= 0:
            raise _Invalid(f"expected numbers above 0; got {value!r}")
        return numbers  # type: ignore[return-value]

    return parse


def _strides(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(f"expected a list of strides such as [8, 16, 32]; got {value!r}")
    return tuple(_count(v) for v in value)


def _labels(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _Invalid(f"expected a labels file ('id name' lines or a .pbtxt label map) or a list of names; got {value!r}")


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Invalid(f"expected a mapping of keyword arguments; got {value!r}")
    return dict(value)


#: Every field a spec may hold, by its dotted name: (parser, where it goes).
_FIELDS: dict[str, tuple[Parser, tuple[str, str]]] = {
    "model": (_text, ("", "model")),
    "architecture": (_text, ("", "architecture")),
    "architecture_args": (_mapping, ("", "architecture_args")),
    "labels": (_labels, ("", "labels")),
    "class_ids": (_choice(*CLASS_IDS), ("", "class_ids")),
    "input.size": (_size, ("input", "size")),
    "input.resize": (_choice(*RESIZE_MODES), ("input", "resize")),
    "input.max_side": (_count, ("input", "max_side")),
    "input.pad_value": (_number(0, 255), ("input", "pad_value")),
    "input.placement": (_choice(*PLACEMENTS), ("input", "placement")),
    "input.channels": (_choice(*CHANNEL_ORDERS), ("input", "channels")),
    "input.value_range": (_value_range, ("input", "value_range")),
    "input.mean": (_per_channel(positive=False), ("input", "mean")),
    "input.std": (_per_channel(positive=True), ("input", "std")),
    "input.layout": (_choice(*LAYOUTS), ("input", "layout")),
    "input.dtype": (_choice(*DTYPES), ("input", "dtype")),
    "input.name": (_text, ("input", "name")),
    "output.decoder": (_choice(*DECODERS), ("output", "decoder")),
    "output.name": (_text, ("output", "name")),
    "output.strides": (_strides, ("output", "strides")),
    "output.nms": (_flag, ("output", "nms")),
    "thresholds.score": (_number(0, 1), ("thresholds", "score")),
    "thresholds.nms_iou": (_number(0, 1), ("thresholds", "nms_iou")),
    "thresholds.max_detections": (_count, ("thresholds", "max_detections")),
    "thresholds.pre_nms_top_k": (_count, ("thresholds", "pre_nms_top_k")),
}
_SECTIONS = ("input", "output", "thresholds")

#: torchvision detection models resize and normalize inside; they take RGB 0..1 images as they are.
_ARCHITECTURE_DEFAULTS = {
    "input.resize": "none",
    "input.value_range": (0.0, 1.0),
    "input.channels": "RGB",
    "output.decoder": "torchvision",
}


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ModelSpecError(f"model spec {source}: {key}: expected a mapping of fields; got {value!r}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def read_spec_file(path: str) -> dict[str, Any]:
    """The fields of a YAML spec file, by dotted name (not yet checked)."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ModelSpecError(f"model spec {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise ModelSpecError(f"model spec {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelSpecError(f"model spec {path}: expected a mapping of fields at the top; got {type(data).__name__}")
    return _flatten(data, path)


def parse_options(options: Sequence[str]) -> dict[str, Any]:
    """`--model_option KEY=VALUE` flags as fields by dotted name; values are read as YAML."""
    fields: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key.strip():
            raise ModelSpecError(f"--model_option {option!r}: expected KEY=VALUE, such as input.size=640")
        try:
            fields[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ModelSpecError(f"--model_option {key.strip()}: value is not valid YAML: {exc}") from None
    return fields


def build_spec(
    file_fields: Mapping[str, Any],
    option_fields: Mapping[str, Any],
    *,
    source: str,
    base: str | None,
    score_threshold: float | None = None,
) -> ModelSpec:
    """A checked `ModelSpec`: defaults, then the file, then options, then the job's threshold."""
    layers = [(file_fields, f"model spec {source}: "), (option_fields, "--model_option ")]
    architecture_given = any("architecture" in fields for fields, _ in layers)
    values: dict[str, Any] = dict(_ARCHITECTURE_DEFAULTS) if architecture_given else {}
    for fields, prefix in layers:
        for name, raw in fields.items():
            if name not in _FIELDS:
                known = ", ".join(sorted(_FIELDS))
                raise ModelSpecError(f"{prefix}{name}: unknown field; known fields: {known}")
            try:
                values[name] = _FIELDS[name][0](raw)
            except _Invalid as exc:
                raise ModelSpecError(f"{prefix}{name}: {exc}") from None
    if score_threshold is not None:
        values["thresholds.score"] = score_threshold
    grouped: dict[str, dict[str, Any]] = {"": {}, **{s: {} for s in _SECTIONS}}
    for name, value in values.items():
        section, attribute = _FIELDS[name][1]
        grouped[section][attribute] = value
    return ModelSpec(
        source=source,
        base=base,
        input=InputSpec(**grouped["input"]),
        output=OutputSpec(**grouped["output"]),
        thresholds=Thresholds(**grouped["thresholds"]),
        **grouped[""],
    )


def load_spec(path: str | None, options: Sequence[str] = (), score_threshold: float | None = None) -> ModelSpec:
    """The spec in the YAML file at `path` (none: defaults), with options and the job's threshold."""
    file_fields = read_spec_file(path) if path else {}
    base = posixpath.dirname(path) if path else None
    return build_spec(
        file_fields, parse_options(options), source=path or _NO_FILE, base=base, score_threshold=score_threshold
    )
