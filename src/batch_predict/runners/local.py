"""Run a whole job in this process: the function behind the `batch-predict` command."""

from __future__ import annotations

import itertools
import logging
import time

from .. import evaluate, sources
from ..models import load_model
from ..pipeline import run_pipeline
from ..sinks import JobOutputs, JobSummary
from ..spec import JobSpec

log = logging.getLogger("batch_predict")


def run(spec: JobSpec) -> JobSummary:
    """Predict every record matched by `spec`, write results, errors and a summary.

    Fails before reading any record when the inputs, the model or the outputs are wrong
    (`NoInputError`, `ModelLoadError`, `OutputError`); afterwards, bad records become error
    lines and the job goes on.
    """
    started = time.perf_counter()
    files = sources.expand_patterns(spec.input_file_patterns)
    ground_truth = evaluate.load_ground_truth(spec.ground_truth) if spec.ground_truth else None
    model = load_model(spec)
    outputs = JobOutputs(spec.output_result_prefix, spec.output_error_prefix, spec.num_output_shards, model.labels)
    log.info("batch-predict: %d input files, model %s", len(files), model.describe())
    records = itertools.chain.from_iterable(sources.read_file(f, spec.input_file_format) for f in files)
    read = run_pipeline(
        records,
        model,
        outputs,
        batch_size=spec.batch_size,
        max_image_pixels=spec.max_image_pixels,
        num_decode_workers=spec.num_decode_workers,
        queue_depth=spec.queue_depth,
    )
    summary = outputs.close(len(files), read, time.perf_counter() - started)
    log.info(
        "batch-predict: %d records read, %d predicted, %d failed, %d detections in %.1f s (%.1f images/s)",
        summary.records_read, summary.predicted, summary.failed, summary.detections,
        summary.wall_time_s, summary.images_per_second,
    )
    if ground_truth is not None:
        evaluate.evaluate_job(spec.output_result_prefix, ground_truth)
    return summary
