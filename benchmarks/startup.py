"""Where a GPU job's start-up goes: each step of loading a detector and running its first
batches, timed in this fresh process, in the order the job takes them.

    PYTHONPATH=src python benchmarks/startup.py --model .bench/yolox_nano_torchscript.pt \\
        --spec .bench/yolox_nano.yaml --photos .bench/photos --batch 256 [--out startup.json]

Each line is a step and its seconds; the first is the interpreter's own start (the time from
the process's creation, read from /proc), the last what the interpreter's teardown would add
after a job (a child process with PyTorch and a CUDA context, ended as usual and by `os._exit`:
`batch-predict` now ends the second way). Run it twice: the first run also reads the
libraries from a cold disk cache.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def process_age() -> float:
    """Seconds since the kernel created this process (Linux), to count the interpreter's start."""
    ticks = os.sysconf("SC_CLK_TCK")
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started


def teardown_s(runs: int = 3) -> float:
    """Seconds a process with PyTorch and a CUDA context takes to end as usual beyond ending by
    `os._exit`: the best of `runs` of each."""
    code = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"

    def best(ending: str) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code + ending], check=True)
            times.append(time.perf_counter() - started)
        return min(times)

    return best("") - best("; import os; os._exit(0)")


def main() -> None:
    steps: dict[str, float] = {"interpreter": round(process_age() - (time.perf_counter() - STARTED), 3)}
    last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        steps[name] = round(now - last, 3)
        print(f"{name:34s} {steps[name]:7.3f} s", flush=True)
        last = now

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"{'interpreter':34s} {steps['interpreter']:7.3f} s", flush=True)

    import batch_predict.cli  # noqa: F401  (what the command imports before it knows the model)
    step("import batch_predict.cli")
    import torch
    step("import torch")
    from batch_predict.models import separate_cuda_queues
    separate_cuda_queues()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    step("CUDA context")
    from batch_predict.models import load_model
    from batch_predict.spec import ModelSettings
    model = load_model(ModelSettings(model_dir=args.model, model_spec=args.spec, device="cuda", precision=args.precision,
                                     batch_size=args.batch))
    torch.cuda.synchronize()
    step("load_model (weights, decoders, fit check)")
    from batch_predict.records import Record
    photos = [p.read_bytes() for p in sorted(args.photos.iterdir()) if p.suffix == ".jpg"]
    records = [Record(f"r{i}", "photos", i, encoded=photos[i % len(photos)]) for i in range(args.batch)]
    for name in ("first batch", "second batch", "third batch"):
        model.predict(records)
        torch.cuda.synchronize()
        step(f"{name} of {args.batch}")
    steps["total"] = round(time.perf_counter() - STARTED + steps["interpreter"], 3)
    print(f"{'total':34s} {steps['total']:7.3f} s", flush=True)
    steps["teardown avoided"] = round(teardown_s(), 3)
    print(f"{'teardown avoided':34s} {steps['teardown avoided']:7.3f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(steps, indent=2))


if __name__ == "__main__":
    main()
