"""What a TorchScript detector's first calls cost on a GPU, and how TorchScript's executor
settings change that cost and the model's steady rate: each variant in a fresh process, loaded
as the job loads it (`torchscript.load_script`, `accelerate`, `freeze`).

    PYTHONPATH=src python benchmarks/first_call.py --model .bench/yolox_nano_torchscript.pt \\
        --spec examples/specs/yolox_nano.yaml --batch 256 --out first_call.json

Per variant: seconds to load and freeze, each of the first calls (synchronized), the steady
rate over `--steady` calls, what the process's exit took after its last output (`os._exit`,
timed by this parent until the child is reaped), and, with `--profile`, the first call's
operators by their own CPU time (PyTorch's profiler).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

VARIANTS = {
    "job": "as the job runs it: the profiling executor, its fusers on",
    "no_fuser": "the profiling executor with the tensor-expression fuser off",
    "unoptimized": "torch.jit.optimized_execution(False): the graph run as loaded",
    "batch1_first": "as the job, one call at batch 1 before the first at the job's batch",
    "cudnn_v7": "as the job, with PyTorch's older cuDNN API (TORCH_CUDNN_V8_API_DISABLED=1)",
    "cudnn_opened_beside": "as the job, with one small convolution run on another thread while the model loads",
    "cudnn_opened_before": "as the job, with one small convolution run before the model loads",
}
ENVIRONMENTS = {"cudnn_v7": {"TORCH_CUDNN_V8_API_DISABLED": "1"}}


def small_convolution() -> float:
    """Seconds one tiny float16 convolution takes: what opening cuDNN costs, whatever the shapes."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        weight = torch.zeros(8, 3, 3, 3, device="cuda", dtype=torch.float16)
        torch.nn.functional.conv2d(torch.zeros(1, 3, 16, 16, device="cuda", dtype=torch.float16), weight)
    torch.cuda.synchronize()
    return round(time.perf_counter() - started, 3)


def child(args: argparse.Namespace) -> None:
    import torch

    from batch_predict.models import separate_cuda_queues
    from batch_predict.models.model_spec import load_spec
    from batch_predict.models.speed import accelerate
    from batch_predict.models.tensor_model import ModuleRunner
    from batch_predict.models.torchscript import freeze, load_script
    from batch_predict.spec import ModelSettings

    times: dict[str, object] = {}
    separate_cuda_queues()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    if args.variant == "no_fuser":
        torch._C._jit_set_texpr_fuser_enabled(False)
    if args.variant == "unoptimized":
        torch._C._set_graph_executor_optimize(False)
    settings = ModelSettings(model_dir=args.model, model_spec=args.spec, device="cuda", precision=args.precision,
                             batch_size=args.batch)
    device = torch.device("cuda")
    if args.variant == "cudnn_opened_before":
        times["small_convolution_s"] = small_convolution()
    beside: list[float] = []
    opener = threading.Thread(target=lambda: beside.append(small_convolution()))
    opening = args.variant == "cudnn_opened_beside"
    if opening:
        opener.start()
    critical = started = time.perf_counter()
    loaded = ModuleRunner(load_script(Path(args.model).read_bytes(), device, args.model), {})
    runner = accelerate(loaded, settings, device)
    times["load_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    loaded.module = freeze(loaded.module)
    times["freeze_s"] = round(time.perf_counter() - started, 3)
    height, width = load_spec(args.spec).resolve_input(None, None).input.size

    def call(batch: int) -> float:
        images = torch.zeros(batch, 3, height, width, device=device)
        started = time.perf_counter()
        with torch.inference_mode():
            runner(images)
        torch.cuda.synchronize()
        return round(time.perf_counter() - started, 3)

    if opening:
        opener.join()
        times["small_convolution_s"] = beside[0]
    if args.variant == "batch1_first":
        times["batch1_s"] = call(1)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            first = call(args.batch)
        ops = sorted(trace.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:args.profile]
        times["first_call_ops"] = [(e.key, e.count, round(e.self_cpu_time_total / 1e6, 3)) for e in ops]
    else:
        first = call(args.batch)
    times["load_to_first_call_end_s"] = round(time.perf_counter() - critical, 3)
    times["calls_s"] = [first] + [call(args.batch) for _ in range(4)]
    started = time.perf_counter()
    for _ in range(args.steady):
        with torch.inference_mode():
            runner(torch.zeros(args.batch, 3, height, width, device=device))
    torch.cuda.synchronize()
    times["steady_images_per_s"] = round(args.steady * args.batch / (time.perf_counter() - started), 1)
    print(json.dumps(times), flush=True)
    print(f"exiting {time.time()}", flush=True)
    os._exit(0)


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    command = [sys.executable, __file__, "--child", "--variant", variant, "--model", args.model, "--spec", args.spec,
               "--batch", str(args.batch), "--precision", args.precision, "--steady", str(args.steady),
               "--profile", str(args.profile)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, **ENVIRONMENTS.get(variant, {})})
    reaped = time.time()
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        return {"error": done.stderr[-2000:]}
    result = json.loads(lines[-2])
    result["exit_s"] = round(reaped - float(lines[-1].split()[1]), 3)
    result["process_s"] = round(time.perf_counter() - started, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--steady", type=int, default=40)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--profile", type=int, default=0, help="list this many of the first call's operators")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="job", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    results = {}
    for variant in args.variants.split(","):
        results[variant] = run_variant(args, variant)
        print(variant, json.dumps(results[variant]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
