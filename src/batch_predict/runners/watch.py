"""What every runner attaches to the units it runs, so each writes the same job outputs."""

from __future__ import annotations

from ..observe.observers import JobObserver, Observers
from ..spec import JobSpec
from ..outputs.formats import output_layout
from ..outputs.timeline import TimelineWriter
from ..tools.visualize import Visualizer


def job_observers(spec: JobSpec, observer: JobObserver | None = None) -> Observers:
    """The job's timeline, its `--visualize` pictures, and the caller's `observer` (progress, metrics).

    A runner calls `job_started`, `model_loaded` and `job_ended` on it and passes it to each `run_unit`.
    """
    layout = output_layout(spec)
    visualizer = [Visualizer(layout, spec.visualize)] if spec.visualize else []
    return Observers([TimelineWriter(layout), *visualizer, *([observer] if observer else [])])
