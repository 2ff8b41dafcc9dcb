"""`batch-predict`: a thin command-line shell over `batch_predict.run`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import NoReturn

import click
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import EXIT_BAD_SETUP, EXIT_JOB_FAILED, BatchPredictError, SetupError, exit_status
from .observe.logformat import configure_logging
from .runners import RUNNERS
from .observe.observers import Observers
from .inputs.formats import input_formats, pack_formats
from .tools.pack import IMAGES_PER_SHARD, RECORD_KINDS, PackError, RecordKind, find_images, pack
from .spec import (
    COMPILE_MODES, DEFAULT_IMAGE_COLUMN, DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_ERROR_RATE, DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_READ_WORKERS, OUTPUT_FORMATS, PRECISIONS, JobSpec, SpecError,
    split_patterns,
)

#: Kubernetes stops a pod with SIGTERM; 30 s later it sends SIGKILL. The unit in progress
#: gets most of that to commit, and the process still exits before the kill.
DEFAULT_TERMINATION_GRACE_S = 20.0

log = logging.getLogger("batch_predict")


def _flag(name: str, dest: str | None = None, **kwargs):
    """An option spelled the Kubeflow way (`--batch_size`), also accepted as `--batch-size`."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    return click.option(*names, dest or name, **kwargs)


def worker_from_environment(environ: Mapping[str, str]) -> tuple[int, int]:
    """(index, count) of this process among the pods of a Kubernetes Indexed Job; (0, 1) outside one.

    Kubernetes sets `JOB_COMPLETION_INDEX` in each pod but no count, so the manifest sets
    `JOB_COMPLETION_COUNT` to the Job's `completions`.
    """
    index = environ.get("JOB_COMPLETION_INDEX")
    if index is None:
        return 0, 1
    count = environ.get("JOB_COMPLETION_COUNT")
    if count is None:
        raise SpecError("JOB_COMPLETION_INDEX is set but JOB_COMPLETION_COUNT is not: set it to the Job's completions")
    try:
        worker = int(index), int(count)
    except ValueError:
        raise SpecError(f"JOB_COMPLETION_INDEX {index!r} and JOB_COMPLETION_COUNT {count!r} must be integers") from None
    if not 0 <= worker[0] < worker[1]:
        raise SpecError(f"JOB_COMPLETION_INDEX {worker[0]} is not in 0..JOB_COMPLETION_COUNT-1 ({worker[1] - 1})")
    return worker


class _DefaultToPredict(click.Group):
    """Runs `predict` when no subcommand is named, so Kubeflow command lines work unchanged."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["predict", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToPredict)
def cli() -> None:
    """Run object-detection models over large image collections as one batch job."""


@cli.command("predict", epilog="Other commands: pack (images into TFRecords or JSON lines), inspect (a model), "
                                "report (an HTML page of a finished job), evaluate (COCO mAP of a finished job). "
                                "See batch-predict COMMAND --help.")
@_flag("input_file_patterns", multiple=True, required=True,
       help="Input files: local paths or fsspec URLs (gs://, s3://, memory://) with * ? [] wildcards. "
            "Comma-separated, or repeat the flag.")
@_flag("input_file_format", type=click.Choice(list(input_formats())), required=True,
       help=" ".join(f"{f.name}: {f.help}" for f in input_formats().values()))
@_flag("model_dir", required=True,
       help="The model, recognised by content: a TensorFlow SavedModel directory, a TorchScript file, a torch.export "
            ".pt2 file, an ONNX file, or a state-dict file of a torchvision architecture named in the model spec.")
@_flag("model_spec", default=None,
       help="Model spec YAML (input size, resize, pixel values, decoder, thresholds, labels; see docs/models.md). "
            "Default: <model file stem>.yaml or model.yaml beside --model_dir, or inside it.")
@_flag("model_option", "model_options", multiple=True,
       help="Set one model spec field, KEY=VALUE with a YAML value, e.g. input.size=640; repeatable; "
            "overrides the spec file.")
@_flag("batch_size", type=int, default=32, show_default=True, help="Records per model call.")
@_flag("output_result_prefix", required=True,
       help="Results go to <prefix>-NNNNN-of-NNNNN.jsonl, one line per predicted record; summary to <prefix>-summary.json.")
@_flag("output_error_prefix", required=True,
       help="Errors go to <prefix>-NNNNN-of-NNNNN.jsonl, one line per record that could not be read, decoded or predicted.")
@_flag("signature_name", default="serving_default", show_default=True, help="SavedModel signature to call.")
@_flag("label_map", default=None,
       help="Class names: a TF OD API label_map.pbtxt or an 'id name' text file. "
            "Default: the model spec's labels, else label_map.pbtxt or labels.txt in (or beside) --model_dir.")
@_flag("score_threshold", type=float, default=None,
       help="Drop detections scoring below this. Default: the model spec's thresholds.score, else 0.3.")
@_flag("num_output_shards", type=int, default=0, show_default=True,
       help="Number of result (and error) files, which is also the number of work units: each shard is written "
            "and committed whole by one unit, and a rerun skips committed units. With fewer shards than input files, "
            "a shard covers whole files; with more, files are split into byte ranges. 0: one shard per input file.")
@_flag("device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_flag("max_error_rate", type=float, default=DEFAULT_MAX_ERROR_RATE, show_default=True,
       help="Exit non-zero when more than this fraction of records failed (all outputs are still written).")
@_flag("output_raw", is_flag=True, default=False, help="Also write the signature's other outputs, per image, as lists.")
@_flag("max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
       help="Refuse images declaring more pixels than this, before decoding them (decompression bombs).")
@_flag("max_record_bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES, show_default=True,
       help="Records longer than this (a TFRecord's data, a JSON line, decompressed) are error lines, never read.")
@_flag("max_decoded_bytes", type=int, default=DEFAULT_MAX_DECODED_BYTES, show_default=True,
       help="Decoded pixels held in memory at once; decoding waits for room (an image larger than this decodes alone).")
@_flag("num_decode_workers", type=int, default=0, show_default=True, help="Decode threads; 0 means one per CPU core, or 2 for models that decode on the GPU "
            "(they need only each image's size from its header).")
@_flag("precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
       help="PyTorch models: run the model in float16 or bfloat16 (pre- and post-processing stay float32). "
            "Detections move slightly (scores by about 0.01); see docs/benchmarks.md.")
@_flag("channels_last", is_flag=True, default=False,
       help="PyTorch models: NHWC memory layout for the model's convolutions (faster on tensor cores).")
@_flag("compile", type=click.Choice(COMPILE_MODES), default="none", show_default=True,
       help="PyTorch models: torch_compile (torch.compile, fixed shapes; not for TorchScript files) or cuda_graphs "
            "(replay one CUDA graph per batch size; needs a fixed input size). Batches are padded to --batch_size or "
            "one of its halves. Either costs time at start.")
@_flag("num_workers", type=int, default=1, show_default=True,
       help="Worker processes on this machine, each on its own GPU (cuda:i), dividing the units; 0: one per "
            "visible GPU. With JOB_COMPLETION_INDEX set, each pod runs this many.")
@_flag("num_read_workers", type=int, default=DEFAULT_READ_WORKERS, show_default=True,
       help="Image files and file-list entries read at once (each is a request to an object store or web server).")
@_flag("read_timeout_seconds", type=float, default=DEFAULT_READ_TIMEOUT, show_default=True,
       help="file_list: how long one HTTP(S) request may wait for the server before it is tried again (three tries).")
@_flag("image_column", default=DEFAULT_IMAGE_COLUMN, show_default=True,
       help="parquet: the column holding encoded images (bytes, or {bytes, path} structs).")
@_flag("key_column", default=None,
       help="parquet: the column holding each row's key; default: 'key' where the file has it, else <file>:<row>.")
@_flag("ground_truth", default=None,
       help="A COCO instances.json: after the job, score the results (mAP, mAP@0.5, AP per class) into the summary. "
            "Results match its images by key: the image's file_name, its last path part, or its id.")
@_flag("overwrite", is_flag=True, default=False,
       help="Start over: delete the outputs and commit records of an earlier run under the output prefixes. "
            "Without it, a rerun with the same arguments resumes, and one with other arguments is refused.")
@_flag("termination_grace_seconds", type=float, default=DEFAULT_TERMINATION_GRACE_S, show_default=True,
       help="On SIGTERM, start no new unit and give the unit in progress this long to commit before abandoning it "
            "(keep it below the pod's terminationGracePeriodSeconds). SIGINT or a second SIGTERM abandons at once.")
@_flag("output_format", type=click.Choice(OUTPUT_FORMATS), default="jsonl", show_default=True,
       help="Result shards: jsonl (one line per image), parquet (one row per image, detections nested) or coco "
            "(a JSON array of COCO detection results), with error shards as JSON lines; or sqlite: results and "
            "errors as rows of the tables of one database, <output_result_prefix>.sqlite (a local file).")
@_flag("visualize", type=int, default=0, show_default=True,
       help="Also draw the detections of the first N predicted images into <output_result_prefix>-visualized/.")
@_flag("runner", type=click.Choice(RUNNERS), default="local", show_default=True,
       help="local: in this process (one pod, or one pod of an Indexed Job). ray: on a Ray cluster with Ray Data, "
            "one model actor per GPU (needs the `ray` extra); same outputs, and either runner resumes the other's job.")
@_flag("ray_address", default=None,
       help="--runner ray: the cluster to join (HOST:6379, or ray://HOST:10001). Default: RAY_ADDRESS, which a Ray "
            "job submission sets, else a new local Ray instance.")
@_flag("ray_num_actors", type=click.IntRange(min=0), default=0, show_default=True,
       help="--runner ray: model actors at once. 0: one per GPU in the cluster, or one per CPU if it has no GPUs.")
@_flag("log_level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO", show_default=True)
@_flag("log_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
       help="json: one JSON object a log line (for log collectors), progress numbers as keys.")
@_flag("progress_interval_seconds", type=float, default=30.0, show_default=True,
       help="When stderr is not a terminal, log one progress line this often; 0: none. On a terminal, a live bar.")
@_flag("metrics_port", type=int, default=None,
       help="Serve Prometheus metrics on this port while the job runs; needs batch-predict[metrics].")
@_flag("metrics_address", default="0.0.0.0", show_default=True,
       help="The address --metrics_port binds: 0.0.0.0 for a pod's scraper, 127.0.0.1 for this machine only.")
def predict(input_file_patterns: tuple[str, ...], log_level: str, log_format: str, progress_interval_seconds: float,
            metrics_port: int | None, metrics_address: str, termination_grace_seconds: float, runner: str, ray_address: str | None,
            ray_num_actors: int, **settings) -> None:
    """Predict every record of the input files; write results, errors and a summary.

    Rerunning the same command after a failure or a kill resumes the job: units already
    committed are skipped, and the outputs end as an uninterrupted run's. In a Kubernetes
    Indexed Job (JOB_COMPLETION_INDEX and JOB_COMPLETION_COUNT set), only that shard of the
    units runs; the pods' outputs together are the whole job's.
    """
    configure_logging(log_level, log_format, sys.stderr)
    from .pipeline import Stopped
    from .observe.progress import summary_table
    from .runners import run
    from .runners.stopping import Stopping

    stopping = Stopping()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        grace = termination_grace_seconds if signum == signal.SIGTERM else 0.0
        log.warning("batch-predict: %s received: stopping (the unit in progress has %.0f s to commit)",
                    signal.Signals(signum).name, grace)
        stopping.request(grace)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watchers = None
    try:
        spec = JobSpec(input_file_patterns=split_patterns(input_file_patterns), **settings)
        worker_index, worker_count = worker_from_environment(os.environ)
        watchers = run_watchers(metrics_port, metrics_address, progress_interval_seconds)
        ending = click.get_current_context().find_object(ProcessEnding)
        if ending is not None:
            # A job run here, in threads, leaves nothing to shut down but the interpreter when it
            # ends, its outputs committed and closed, or fails, maybe with its model's framework
            # still loading on a thread beside a plan that failed (`local.run`). Worker processes
            # and Ray want theirs stopped as usual.
            ending.fast = runner == "local" and spec.num_workers == 1
        # On a terminal, log lines go above the progress bar instead of through it.
        with logging_redirect_tqdm() if sys.stderr.isatty() else contextlib.nullcontext():
            summary = run(spec, runner=runner, ray_address=ray_address, ray_num_actors=ray_num_actors,
                          worker_index=worker_index, worker_count=worker_count, stopping=stopping, observer=watchers)
    except Stopped as exc:
        click.echo(f"batch-predict: {exc}", err=True)
        sys.exit(128 + (received[0] if received else signal.SIGTERM))
    except BatchPredictError as exc:
        click.echo(f"batch-predict: error: {exc}", err=True)
        sys.exit(exit_status(exc))
    finally:
        if watchers is not None:
            watchers.close()
    click.echo(summary_table(summary))
    click.echo(
        f"records read {summary.records_read}, predicted {summary.predicted}, failed {summary.failed}, "
        f"detections {summary.detections}, {summary.wall_time_s:.1f} s, {summary.images_per_second:.1f} images/s"
    )
    if not summary.complete:
        click.echo(
            f"shard {worker_index} of {worker_count} done; {summary.units_committed} of {summary.units} units of the job "
            "committed so far (counts above); the run that commits the last unit writes the summary"
        )
    if summary.error_rate > spec.max_error_rate:
        click.echo(
            f"batch-predict: error: {summary.failed} of {summary.records_read} records failed "
            f"({summary.error_rate:.1%} > --max_error_rate {spec.max_error_rate:.1%}); see {spec.output_error_prefix}-*",
            err=True,
        )
        sys.exit(EXIT_JOB_FAILED)


def run_watchers(metrics_port: int | None, metrics_address: str, progress_interval_s: float) -> Observers:
    """What watches this run: a bar on a terminal, else periodic log lines; metrics if a port is given."""
    from .observe.metrics import MetricsServer
    from .observe.progress import LogProgress, TerminalProgress

    watchers: list = [TerminalProgress(sys.stderr)] if sys.stderr.isatty() else (
        [LogProgress(progress_interval_s)] if progress_interval_s > 0 else [])
    if metrics_port is not None:
        watchers.append(MetricsServer.start(metrics_port, metrics_address))
    return Observers(watchers)


@cli.command("pack")
@click.argument("inputs", nargs=-1)
@_flag("input_list", multiple=True,
       help="A text file of image paths or URLs, one a line ('#' starts a comment); each line is also its key. Repeatable.")
@_flag("output_prefix", required=True, help="Shards go to <prefix>-NNNNN-of-NNNNN.<tfrecord|tfrecord.gz|jsonl>.")
@_flag("output_format", type=click.Choice(list(pack_formats())), default="tfrecord", show_default=True,
       help="The --input_file_format the job will read the shards with.")
@_flag("record", type=click.Choice(RECORD_KINDS), default="example", show_default=True,
       help="TFRecords only: a tf.train.Example keyed by image/source_id, or the image bytes alone (keyed by position).")
@_flag("num_shards", type=int, default=0, show_default=True,
       help=f"Number of output files; 0 means about {IMAGES_PER_SHARD} images per shard.")
@_flag("num_workers", type=int, default=16, show_default=True, help="Threads reading images.")
def pack_command(inputs: tuple[str, ...], input_list: tuple[str, ...], output_prefix: str, output_format: str,
                 record: RecordKind, num_shards: int, num_workers: int) -> None:
    """Pack image files into sharded TFRecords or JSON lines for the job.

    INPUTS are folders (their .jpg .jpeg .png .gif .bmp .webp files, keyed by their path
    below the folder), globs (keyed by their path below the glob's fixed folder) or files
    (keyed by their name); local paths or fsspec URLs.
    """
    try:
        items = find_images(inputs, input_list)
        summary = pack(items, output_prefix, output_format, record_kind=record, num_shards=num_shards,
                       num_workers=num_workers, progress=sys.stderr.isatty())
    except PackError as exc:
        click.echo(f"batch-predict pack: error: {exc}", err=True)
        sys.exit(EXIT_BAD_SETUP)
    shards = len(summary.shards)
    click.echo(f"packed {summary.images} images ({summary.bytes_read / 2**20:.1f} MiB) into {shards} "
               f"shard{'s' if shards > 1 else ''} in {summary.wall_time_s:.1f} s; read them with:")
    click.echo(f"  batch-predict --input_file_patterns '{output_prefix}-*-of-{shards:05d}.*' "
               f"--input_file_format {output_format} ...")
    for url, why in list(summary.failed.items())[:10]:
        click.echo(f"batch-predict pack: cannot read {url}: {why}", err=True)
    if summary.failed:
        click.echo(f"batch-predict pack: error: {len(summary.failed)} of {len(items)} images could not be read "
                   "and were left out", err=True)
        sys.exit(EXIT_JOB_FAILED)


@cli.command("inspect")
@click.argument("model_dir")
@_flag("signature_name", default="serving_default", show_default=True, help="SavedModel signature to show.")
@_flag("label_map", default=None, help="As for the job: else label_map.pbtxt or labels.txt inside MODEL_DIR.")
@_flag("model_spec", default=None, help="As for the job: the model spec YAML, else model.yaml beside the model.")
@_flag("model_option", "model_options", multiple=True, help="As for the job: KEY=VALUE overriding a model spec field.")
@_flag("device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_command(model_dir: str, as_json: bool, **settings) -> None:
    """Show a model's backend, signature, input, outputs and labels, and what the job will feed it."""
    from .tools.inspect import format_description, inspect_model
    from .spec import ModelSettings

    try:
        info = inspect_model(ModelSettings(model_dir, **settings))
    except SetupError as exc:
        click.echo(f"batch-predict inspect: error: {exc}", err=True)
        sys.exit(EXIT_BAD_SETUP)
    click.echo(json.dumps(info, indent=2) if as_json else format_description(info))


@cli.command("evaluate")
@click.argument("output_result_prefix")
@_flag("ground_truth", required=True, help="A COCO instances.json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def evaluate_command(output_result_prefix: str, ground_truth: str, as_json: bool) -> None:
    """Score a finished job's results against COCO ground truth: mAP, mAP@0.5, AP per class.

    Results match ground-truth images by key: the image's file_name, its last path part, or its id.
    """
    from .tools.evaluate import EvaluationError, GroundTruthError, evaluate_outputs, format_evaluation, load_ground_truth
    from .outputs.reading import JobOutputsError

    try:
        evaluation = evaluate_outputs(output_result_prefix, load_ground_truth(ground_truth))
    except (GroundTruthError, EvaluationError, JobOutputsError) as exc:
        click.echo(f"batch-predict evaluate: error: {exc}", err=True)
        sys.exit(EXIT_BAD_SETUP)
    click.echo(json.dumps(evaluation.to_json(), indent=2) if as_json else format_evaluation(evaluation))


@cli.command("verify")
@click.argument("output_result_prefix")
def verify_command(output_result_prefix: str) -> None:
    """Check a finished job's outputs against its commit records: every unit committed, every
    shard (or database row count) as it was committed, and the summary their sum. Exit 1 on any
    mismatch, naming it; a rerun of the job redoes the units whose outputs no longer match."""
    from .outputs.verify import verify_job

    units, problems = verify_job(output_result_prefix)
    for problem in problems:
        click.echo(f"batch-predict verify: {problem}", err=True)
    if problems:
        sys.exit(EXIT_JOB_FAILED)
    click.echo(f"{units} units verified: every output is as committed, and the summary is their sum")


@cli.command("report")
@click.argument("output_result_prefix")
@_flag("output_error_prefix", default=None, help="Where the job wrote errors; default: as its summary says.")
@click.option("--output", "-o", default=None, help="The HTML file to write; default <OUTPUT_RESULT_PREFIX>-report.html.")
@_flag("samples", type=int, default=12, show_default=True, help="Images to show with their detections drawn.")
@_flag("input_file_format", type=click.Choice(list(input_formats())), default=None,
       help="How to read the sample images back from their source files; default: guessed from their first bytes.")
def report_command(output_result_prefix: str, output_error_prefix: str | None, output: str | None, samples: int,
                   input_file_format: str | None) -> None:
    """Write a self-contained HTML page about a finished job: counts, throughput, scores,
    classes, errors and sample images with their detections drawn."""
    from .outputs.reading import JobOutputsError
    from .tools.report import write_report

    try:
        path = write_report(output_result_prefix, output, error_prefix=output_error_prefix, num_samples=samples,
                            input_format=input_file_format)
    except (JobOutputsError, OSError) as exc:
        click.echo(f"batch-predict report: error: {exc}", err=True)
        sys.exit(EXIT_BAD_SETUP)
    click.echo(f"wrote {path}")


class ProcessEnding:
    """How the console entry point ends the process, as the command it ran asks: `fast` once a job
    has run in this process, to its end or to a failure."""

    fast = False


def main() -> None:
    """The console entry point. After a job ran here it exits without the interpreter's
    teardown: with PyTorch or TensorFlow loaded, taking their modules apart took 0.4-2 s after
    the job's last output was written (docs/benchmarks.md), seconds every job paid for nothing."""
    ending = ProcessEnding()
    try:
        cli(prog_name="batch-predict", obj=ending)
    except SystemExit as exc:
        if not ending.fast:
            raise
        _exit_now(exc.code)


def _exit_now(code: object) -> NoReturn:
    """End the process with `code` as `sys.exit` would, once what it wrote is flushed, skipping the
    interpreter's teardown (`atexit` handlers, module and object finalization)."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, or a closed stream
            stream.flush()
    os._exit(code or 0)
