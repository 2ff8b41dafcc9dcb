"""The job spec: every setting of one batch-predict job, built once and passed down.

Nothing below the CLI reads flags or environment variables; it reads a `JobSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import SetupError

if TYPE_CHECKING:
    from .inputs.formats import ReadOptions

OUTPUT_FORMATS: tuple[str, ...] = ("jsonl", "parquet", "coco", "sqlite")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
COMPILE_MODES: tuple[str, ...] = ("none", "torch_compile", "cuda_graphs")

#: Failed fraction above which a finished job still exits non-zero. 5% tolerates the
#: scattered corrupt files of a real collection, yet stops a job whose records mostly fail
#: (a wrong format or a wrong model), which otherwise "succeeds" with empty results.
DEFAULT_MAX_ERROR_RATE = 0.05

#: Decompression-bomb guard: images declaring more pixels than this are refused before
#: their pixels are allocated (about 16k x 11k; a 100 MP photo passes).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
#: Records (a TFRecord's data, a JSON line) longer than this are error lines, never read into
#: memory: a damaged length field or a decompression bomb cannot take the process down.
DEFAULT_MAX_RECORD_BYTES = 64 << 20
#: Decoded pixels held at once across the pipeline: room for eight batches of 256 photos of
#: 640x480, and a quarter of a pod of 8 GiB; a job of huge images waits for room instead of growing.
DEFAULT_MAX_DECODED_BYTES = 2 << 30
#: Files or URLs read at once where each is one record (image files, file lists): an object
#: store answers each request in tens of milliseconds, so many are kept in flight.
DEFAULT_READ_WORKERS = 64
#: Seconds one HTTP(S) request of a file list may wait for the server, each try.
DEFAULT_READ_TIMEOUT = 60.0
#: The Parquet column of encoded images, as Hugging Face `datasets` names it.
DEFAULT_IMAGE_COLUMN = "image"


class SpecError(SetupError, ValueError):
    """A job setting is invalid; the message names the setting."""


@dataclass(frozen=True)
class ModelSettings:
    """What loading and running a model needs: the part of a `JobSpec` that `load_model` reads,
    so that a model can be loaded (by `inspect`, a notebook) without a job around it."""

    model_dir: str
    model_spec: str | None = None
    model_options: tuple[str, ...] = ()
    signature_name: str = "serving_default"
    label_map: str | None = None
    score_threshold: float | None = None  # None: the model spec's, else 0.3
    output_raw: bool = False
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "none"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise SpecError("--model_dir: required")
        _check_range("batch_size", self.batch_size, 1, 1 << 16)
        if self.score_threshold is not None:
            _check_range("score_threshold", self.score_threshold, 0.0, 1.0)
        for name, choices in (("precision", PRECISIONS), ("compile", COMPILE_MODES)):
            if getattr(self, name) not in choices:
                raise SpecError(f"--{name}: expected one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith(("cuda", "gpu")):
            raise SpecError(f"--device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class JobSpec:
    """What to read, which model to run, and where to write.

    `num_output_shards` is also the number of work units: each shard is written, and
    committed, by one unit (see `inputs/units.py`); 0 means one per input file.
    """

    input_file_patterns: tuple[str, ...]
    input_file_format: str  # a name of `inputs.formats.input_formats()`
    model_dir: str
    output_result_prefix: str
    output_error_prefix: str
    batch_size: int = 32
    signature_name: str = "serving_default"
    label_map: str | None = None
    score_threshold: float | None = None  # None: the model spec's, else 0.3
    num_output_shards: int = 0
    device: str = "auto"
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    output_raw: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    num_decode_workers: int = 0
    queue_depth: int = 4
    ground_truth: str | None = None
    model_spec: str | None = None
    model_options: tuple[str, ...] = ()
    overwrite: bool = False
    output_format: str = "jsonl"
    visualize: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "none"
    num_workers: int = 1  # processes, one per GPU; 0: one per visible GPU
    num_read_workers: int = DEFAULT_READ_WORKERS
    image_column: str = DEFAULT_IMAGE_COLUMN  # parquet
    key_column: str | None = None  # parquet; None: `key` where the file has it
    read_timeout_seconds: float = DEFAULT_READ_TIMEOUT  # file lists' HTTP(S) requests, each try

    def __post_init__(self) -> None:
        if not self.input_file_patterns or not all(p.strip() for p in self.input_file_patterns):
            raise SpecError("--input_file_patterns: give at least one non-empty pattern")
        from .inputs.formats import input_formats  # the registry imports this module

        if self.input_file_format not in input_formats():
            raise SpecError(
                f"--input_file_format: unknown format {self.input_file_format!r}; "
                f"expected one of {', '.join(input_formats())}"
            )
        for name in ("output_result_prefix", "output_error_prefix"):
            if not getattr(self, name):
                raise SpecError(f"--{name}: required")
        self.model_settings()  # validates the model's settings
        _check_range("num_output_shards", self.num_output_shards, 0, 99_999)
        _check_range("max_error_rate", self.max_error_rate, 0.0, 1.0)
        _check_range("max_image_pixels", self.max_image_pixels, 1, 1 << 40)
        _check_range("max_record_bytes", self.max_record_bytes, 1, 1 << 40)
        _check_range("max_decoded_bytes", self.max_decoded_bytes, 1, 1 << 44)
        _check_range("num_decode_workers", self.num_decode_workers, 0, 1024)
        _check_range("queue_depth", self.queue_depth, 1, 1024)
        if self.output_format not in OUTPUT_FORMATS:
            raise SpecError(f"--output_format: expected one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        _check_range("visualize", self.visualize, 0, 1_000_000)
        _check_range("num_workers", self.num_workers, 0, 1024)
        _check_range("num_read_workers", self.num_read_workers, 1, 4096)
        _check_range("read_timeout_seconds", self.read_timeout_seconds, 0.001, 86_400.0)
        if not self.image_column:
            raise SpecError("--image_column: give a column name")

    def read_options(self) -> "ReadOptions":
        """The settings the input readers take."""
        from .inputs.formats import ReadOptions

        return ReadOptions(self.max_record_bytes, self.image_column, self.key_column, self.read_timeout_seconds,
                           self.num_read_workers)

    def model_settings(self) -> ModelSettings:
        """The settings `load_model` reads."""
        return ModelSettings(**{name: getattr(self, name) for name in ModelSettings.__dataclass_fields__})


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SpecError(f"--{name}: {value} is outside [{low}, {high}]")


def split_patterns(values: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Patterns as the Kubeflow job took them: comma-separated, and here also repeatable."""
    if isinstance(values, str):
        values = [values]
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())
