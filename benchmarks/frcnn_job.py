"""Faster R-CNN's job, its JPEGs decoded as each variant says, against its model alone on all of
the same images, the two taken in turns.

Faster R-CNN's forward keeps one CPU thread busy for all of its time (about 200 ms a batch of 32
on an H200, nearly all of it its thread's CPU time), so its rate follows the host CPU's, which
moved by up to a fifth within minutes on the GPU machine (docs/benchmarks.md, 0e). So each job runs
between two runs of the model alone, and is compared with their mean. This also measures what
decoding on the GPU costs such a model against decoding a share or all of each batch on the CPU,
how long each batch spent in the model's prepare, launch (the forward, which synchronizes) and
collect, and how much of it was its thread's CPU time (the rest it waited: for the GIL, the GPU):

    PYTHONPATH=src:benchmarks python benchmarks/frcnn_job.py --photos ../shared/data/photos --out "$OUT" \\
        --variants cli,climb,share1.0,cli,climb

A variant is `cli` (the command, in a process of its own) or `<split>[_si<GIL switch interval,
ms>][_l<launching threads>][_p<preparing threads>][_pin]`, split `climb` (the job's own `DecodeSplit`) or `share<fraction
on the CPU>`, run in this process; `_l` sets how many threads launch batches at once (else the
model's own choice, `TensorModel.launch_threads`), `_p` how many prepare batches; `_pin` puts the thread that runs the forward on
a core of its own (`own_core`). With `--alone_callers 1,2`, each run of the model alone is
followed by one with two threads calling it at once. Each in-process job's detections are compared
with the first's (`same_as_first`). Figures go to <out>/frcnn_job.json as they come.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import ceiling
import end_to_end
from gpu_job import RecordedSplit, cpu_topology, own_core, timed_stages, untimed, variant_options
from run_all import agreement, encoded_images, make_inputs
from batch_predict import JobSpec, pipeline, run
from batch_predict.models import load_model, separate_cuda_queues
from batch_predict.models.decode_split import split_decoder
from batch_predict.models.device_decode import device_decoder
from batch_predict.outputs.reading import read_results, result_files
from batch_predict.records import Detections
from batch_predict.spec import ModelSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/frcnn-job"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0, help="the model alone's time, each run: a pass over the images or more")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="cli,climb,share1.0,cli,climb")
    parser.add_argument("--alone_callers", default="1", help="each run of the model alone, with these many threads calling it at once, in turn; jobs are compared with the first")
    args = parser.parse_args()
    separate_cuda_queues()  # as the job does, before the GPU is first used
    device = torch.device(args.device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = make_inputs(args.photos, args.work / "inputs", args.images, 1)
    weights = ceiling.fasterrcnn_model_file(args.work / "frcnn")
    jpegs = encoded_images(paths, args.images)
    found: dict[str, object] = {"machine": cpu_topology()}

    def record(name: str, value: object) -> None:
        found[name] = value
        (args.out / "frcnn_job.json").write_text(json.dumps(found, indent=1))
        print(name, value, flush=True)

    def alone(name: str) -> float:
        rates = []
        for callers in map(int, args.alone_callers.split(",")):
            result = ceiling.fasterrcnn_model_only(device, args.batch, precision, args.seconds, jpegs=jpegs, callers=callers)
            record(name if not rates else f"{name}_x{callers}", {**result, "ms_per_batch": round(1e3 * args.batch / result["items_per_s"], 2)})
            torch.cuda.empty_cache()
            rates.append(result["items_per_s"])
        return rates[0]

    model = load_model(ModelSettings(model_dir=str(weights), device=args.device, precision=precision, batch_size=args.batch))
    chosen_threads = model.launch_threads
    record("model", model.describe())
    on_device = device_decoder(device, args.batch)
    default = sys.getswitchinterval()

    def job(name: str, turn: int) -> dict:
        prefix = args.work / f"job-{turn}-{name}"
        if name == "cli":
            return end_to_end.run_cli(
                ["--input_file_patterns", str(paths[0]), "--input_file_format", "tfrecord", "--model_dir", str(weights),
                 "--batch_size", str(args.batch), "--precision", precision, "--num_output_shards", "10"],
                prefix, 1, args.out / "cli.log")
        split_name, *options = name.split("_")
        settings = variant_options(options)
        interval = settings["si"] / 1e3 if "si" in settings else default
        model.launch_threads = int(settings.get("l", chosen_threads))
        split = RecordedSplit.named(split_name)
        model.decode_split = split
        model._preprocessor.jpeg_decoder = split_decoder(on_device, split, device)
        spec = JobSpec(input_file_patterns=(str(paths[0]),), input_file_format="tfrecord", model_dir=str(weights),
                       output_result_prefix=str(prefix), output_error_prefix=f"{prefix}-errors", batch_size=args.batch,
                       precision=precision, overwrite=True, num_output_shards=10)
        stages = timed_stages(model)
        sys.setswitchinterval(interval)
        preparing_threads = pipeline._JPEG_PREPARING_THREADS
        pipeline._JPEG_PREPARING_THREADS = int(settings.get("p", preparing_threads))
        try:
            with own_core(model) if "pin" in settings else contextlib.nullcontext():
                run(spec, model=model)
        finally:
            sys.setswitchinterval(default)
            untimed(model, stages)
            pipeline._JPEG_PREPARING_THREADS = preparing_threads
        return {**end_to_end.steady_state(Path(f"{prefix}-job/committed"), 1),
                "split": split.describe(), "sent_to_cpu": split.sent_to_cpu, "rates_by_share": split.rates_by_share(),
                **{f"{stage}_ms_median": [round(1e3 * statistics.median(c[i] for c in calls), 2) for i in (1, 2)]
                   for stage, calls in stages.items() if calls}}

    first_results: dict[str, list] = {}

    def same_as_first(name: str, turn: int) -> dict:
        """The job's detections against the first in-process job's, image by image: how many
        images got the very same lines, and `agreement` (every detection matched at IoU >= 0.9)."""
        prefix = str(args.work / f"job-{turn}-{name}")
        found = {line["key"]: line["detections"] for line in read_results(result_files(prefix))}
        if not first_results:
            first_results.update(found)
            return {"images": len(found)}
        keys = sorted(first_results)
        as_detections = lambda lines: [Detections(  # noqa: E731
            boxes=np.array([d["box"] for d in lines[k]]).reshape(-1, 4), scores=np.array([d["score"] for d in lines[k]]),
            classes=np.array([d["class_id"] for d in lines[k]])) for k in keys]
        differing = [k for k in keys if found.get(k) != first_results[k]]
        return {"images": len(found), "identical": len(keys) - len(differing), "differing": differing[:40],
                **agreement(as_detections(first_results), as_detections(found), min_score=0.0, min_iou=0.9)}

    before = alone("model_alone_0")
    for turn, name in enumerate(args.variants.split(","), 1):
        found_job = job(name, turn)
        if name != "cli":
            found_job["same_as_first"] = same_as_first(name, turn)
        after = alone(f"model_alone_{turn}")
        steady = found_job.get("steady_per_s")
        record(f"job_{turn}_{name}", {**found_job, "of_model_alone": steady and round(steady / ((before + after) / 2), 4)})
        before = after


if __name__ == "__main__":
    main()
