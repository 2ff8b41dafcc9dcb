"""`batch-predict`: a thin command-line shell over `batch_predict.run`."""

from __future__ import annotations

import logging
import sys

import click

from .spec import DEFAULT_MAX_ERROR_RATE, DEFAULT_MAX_IMAGE_PIXELS, INPUT_FORMATS, JobSpec, SpecError, split_patterns

EXIT_JOB_FAILED = 1
EXIT_BAD_SETUP = 2


def _flag(name: str, dest: str | None = None, **kwargs):
    """An option spelled the Kubeflow way (`--batch_size`), also accepted as `--batch-size`."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    return click.option(*names, dest or name, **kwargs)


class _DefaultToPredict(click.Group):
    """Runs `predict` when no subcommand is named, so Kubeflow command lines work unchanged."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["predict", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToPredict)
def cli() -> None:
    """Run object-detection models over large image collections as one batch job."""


@cli.command("predict")
@_flag("input_file_patterns", multiple=True, required=True,
       help="Input files: local paths or fsspec URLs (gs://, s3://, memory://) with * ? [] wildcards. "
            "Comma-separated, or repeat the flag.")
@_flag("input_file_format", type=click.Choice(INPUT_FORMATS), required=True,
       help="tfrecord / tfrecord_gzip: records of encoded JPEG/PNG bytes or tf.train.Examples with image/encoded. "
            "json: JSON lines of Cloud ML instances ({\"b64\": ...}, {\"inputs\": {\"b64\": ...}}, nested uint8 arrays).")
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
@_flag("num_output_shards", type=int, default=1, show_default=True, help="Number of result (and error) files.")
@_flag("device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_flag("max_error_rate", type=float, default=DEFAULT_MAX_ERROR_RATE, show_default=True,
       help="Exit non-zero when more than this fraction of records failed (all outputs are still written).")
@_flag("output_raw", is_flag=True, default=False, help="Also write the signature's other outputs, per image, as lists.")
@_flag("max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
       help="Refuse images declaring more pixels than this, before decoding them (decompression bombs).")
@_flag("num_decode_workers", type=int, default=0, show_default=True, help="Decode threads; 0 means one per CPU core.")
@_flag("log_level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO", show_default=True)
def predict(input_file_patterns: tuple[str, ...], log_level: str, **settings) -> None:
    """Predict every record of the input files; write results, errors and a summary."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from .models import ModelLoadError
    from .runners.local import run
    from .sinks import OutputError
    from .sources import NoInputError
    from .labels import LabelMapError

    try:
        spec = JobSpec(input_file_patterns=split_patterns(input_file_patterns), **settings)
        summary = run(spec)
    except (SpecError, NoInputError, ModelLoadError, OutputError, LabelMapError) as exc:
        click.echo(f"batch-predict: error: {exc}", err=True)
        sys.exit(EXIT_BAD_SETUP)
    click.echo(
        f"records read {summary.records_read}, predicted {summary.predicted}, failed {summary.failed}, "
        f"detections {summary.detections}, {summary.wall_time_s:.1f} s, {summary.images_per_second:.1f} images/s"
    )
    if summary.error_rate > spec.max_error_rate:
        click.echo(
            f"batch-predict: error: {summary.failed} of {summary.records_read} records failed "
            f"({summary.error_rate:.1%} > --max_error_rate {spec.max_error_rate:.1%}); see {spec.output_error_prefix}-*",
            err=True,
        )
        sys.exit(EXIT_JOB_FAILED)


def main() -> None:
    cli(prog_name="batch-predict")
