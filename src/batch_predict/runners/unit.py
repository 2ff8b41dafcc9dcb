"""One unit of work, from reading to commit: the step every runner repeats.

The local runner loops over units; an Indexed Job pod runs the units of its index; a Ray
task runs one. Each calls `run_unit`, so each commits the same way.
"""

from __future__ import annotations

import logging
import threading

from ..jobstate import JobState
from ..models import Model
from ..observe import JobObserver, ObservedSink, TimedModel, observed_records
from ..pipeline import BatchLimit, run_pipeline
from ..result_formats import result_writer
from ..sinks import UnitCounts, UnitOutputs
from ..spec import JobSpec
from ..units import Unit, read_unit

log = logging.getLogger("batch_predict")


def run_unit(
    spec: JobSpec,
    model: Model,
    state: JobState,
    unit: Unit,
    *,
    limit: BatchLimit | None = None,
    abandon: threading.Event | None = None,
    observer: JobObserver | None = None,
) -> UnitCounts:
    """Predict every record of `unit` into its shards and commit them; return its counts.

    On any failure, or when `abandon` is set, the unit's partial output is discarded and the
    exception raised: the unit stays uncommitted, and a rerun redoes it whole. `observer`
    hears of every record read, model call, write and the commit.
    """
    observer = observer or JobObserver()
    outputs = UnitOutputs(*state.shard_paths(unit), model.labels, result_writer(spec.output_format))
    observer.unit_started(unit)
    try:
        read = run_pipeline(
            observed_records(read_unit(unit, spec.input_file_format), unit, observer),
            TimedModel(model, observer),
            ObservedSink(outputs, unit, observer),
            batch_size=spec.batch_size,
            max_image_pixels=spec.max_image_pixels,
            num_decode_workers=spec.num_decode_workers,
            queue_depth=spec.queue_depth,
            limit=limit,
            abandon=abandon,
        )
        counts = outputs.commit(read)
        state.commit(unit, counts)
    except BaseException:
        outputs.discard()
        observer.unit_abandoned(unit)
        raise
    observer.unit_committed(unit, counts)
    log.info(
        "unit %05d-of-%05d committed: %d records read, %d predicted, %d failed",
        unit.index, unit.count, counts.records_read, counts.predicted, counts.failed,
    )
    return counts
