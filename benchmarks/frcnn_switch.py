"""Faster R-CNN's job in one process, at several GIL switch intervals, against its model alone.

Faster R-CNN's forward is Python between GPU synchronizations (torchvision's detection code): the
thread that runs it needs the interpreter back often, and each time another of the job's
threads holds it, it may wait up to a switch interval. This measures whether that is where its
job falls short of its model alone (docs/benchmarks.md), and how long each of the job's batches
spent in the model's prepare, launch (the forward, which synchronizes) and collect, against the
model alone's time per batch:

    PYTHONPATH=src:benchmarks python benchmarks/frcnn_switch.py --photos ../shared/data/photos --out "$OUT"

Jobs alternate between the intervals, twice each, after one warm-up job; figures go to
<out>/frcnn_switch.json as they come.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import ceiling
import end_to_end
from gpu_job import timed_stages, untimed
from run_all import encoded_images, make_inputs
from batch_predict import JobSpec, run
from batch_predict.models import load_model
from batch_predict.spec import ModelSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/frcnn-switch"))
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--intervals", default="5,1,0.5", help="switch intervals to compare, in ms")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = make_inputs(args.photos, args.work / "inputs", args.images, 1)
    weights = ceiling.fasterrcnn_model_file(args.work / "frcnn")
    found: dict[str, object] = {}

    def record(name: str, value: object) -> None:
        found[name] = value
        (args.out / "frcnn_switch.json").write_text(json.dumps(found, indent=1))
        print(name, value, flush=True)

    alone = ceiling.fasterrcnn_model_only(device, args.batch, precision, args.seconds, jpegs=encoded_images(paths, 2 * args.batch))
    record("model_alone", {**alone, "ms_per_batch": round(1e3 * args.batch / alone["items_per_s"], 2)})
    model = load_model(ModelSettings(model_dir=str(weights), device=args.device, precision=precision, batch_size=args.batch))
    default = sys.getswitchinterval()
    intervals = [float(ms) for ms in args.intervals.split(",")]
    for round_, interval in [(0, intervals[0])] + [(r, i) for r in (1, 2) for i in intervals]:
        prefix = args.work / f"job-{round_}-{interval}"
        spec = JobSpec(input_file_patterns=(str(paths[0]),), input_file_format="tfrecord", model_dir=str(weights),
                       output_result_prefix=str(prefix), output_error_prefix=f"{prefix}-errors", batch_size=args.batch,
                       precision=precision, overwrite=True, num_output_shards=10)
        stages = timed_stages(model)
        sys.setswitchinterval(interval / 1e3)
        try:
            run(spec, model=model)
        finally:
            sys.setswitchinterval(default)
            untimed(model, stages)
        record(f"job_round{round_}_si{interval}", {
            **end_to_end.steady_state(Path(f"{prefix}-job/committed"), 1),
            **{f"{stage}_ms_median": round(1e3 * statistics.median(s for _, s in calls), 2)
               for stage, calls in stages.items() if calls}})


if __name__ == "__main__":
    main()
