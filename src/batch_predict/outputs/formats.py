"""`--output_format`: every output format and the sink that writes it, in one table.

Adding a format is one entry here: its results' file ending, the sink that writes it (a
`sinks.Sink`), and the module it needs, if any, with the extra that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..spec import JobSpec
from .files import FileSink, WriterFactory
from .layout import OutputLayout
from .result_formats import CocoResults, JsonlResults, ParquetResults
from .sinks import OutputError, Sink
from .sqlite import SqliteSink


@dataclass(frozen=True)
class OutputFormat:
    extension: str
    sink: Callable[[OutputLayout], Sink]
    needs: tuple[str, str] | None = None  # (module, the extra that installs it)


def _shards(results: WriterFactory) -> Callable[[OutputLayout], Sink]:
    return lambda layout: FileSink(layout, results)


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "jsonl": OutputFormat("jsonl", _shards(JsonlResults)),
    "parquet": OutputFormat("parquet", _shards(ParquetResults), needs=("pyarrow.parquet", "parquet")),
    "coco": OutputFormat("json", _shards(CocoResults)),
    "sqlite": OutputFormat("sqlite", SqliteSink),
}


def output_layout(spec: JobSpec) -> OutputLayout:
    """Where the job's outputs go, as its output format names them."""
    return OutputLayout(spec.output_result_prefix, spec.output_error_prefix, OUTPUT_FORMATS[spec.output_format].extension)


def open_sink(spec: JobSpec) -> Sink:
    """The sink of the job's `--output_format`; raises `OutputError` when its library is missing
    (checked before any input is read, not at the first commit)."""
    chosen = OUTPUT_FORMATS[spec.output_format]
    if chosen.needs is not None:
        module, extra = chosen.needs
        try:
            importlib.import_module(module)
        except ImportError:
            raise OutputError(
                f"--output_format {spec.output_format} needs {module.split('.')[0]}: pip install 'batch-predict[{extra}]'"
            ) from None
    return chosen.sink(output_layout(spec))
