"""Whether nvjpeg's batched decode warms up over a process's first calls, and what primes it.

A process's first job reaches its pace only after 60-100 batches of 256 (docs/benchmarks.md, 0g).
One suspect is nvjpeg itself: torchvision opens it without an allocator of its own, so nvjpeg
grows its buffers with cudaMalloc and cudaFree as larger images come, and cudaFree waits for
every kernel queued on the device, the model's too. Each case runs in a fresh process over the
same JPEGs (`make_inputs.py`'s TFRecords), one batched call a batch, and records for each call
its time on the host and the device memory held outside PyTorch's allocator (nvjpeg's buffers,
the CUDA context):

- `cold`: the calls as the job makes them, then the same calls again (`second_pass`);
- `primed_<W>x<H>`: first one call of a batch of W x H noise JPEGs, then the calls;
- `_loaded`: the same with YOLOX-Nano running batch after batch on a stream of its own, as in
  the job, so that a wait for the device also waits for the model.

    PYTHONPATH=src:benchmarks python benchmarks/decode_warmup.py --inputs /tmp/gw/inputs \\
        --yolox .bench/yolox_nano_torchscript.pt --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from run_all import encoded_images
from batch_predict.models.device_decode import JpegDecoder, noise_jpeg, nvjpeg_decoder


def outside_torch_mb(device: torch.device) -> float:
    """Device memory in use that PyTorch's allocator does not hold, in MiB."""
    free, total = torch.cuda.mem_get_info(device)
    return round((total - free - torch.cuda.memory_reserved(device)) / 2**20, 1)


def calls(decode: JpegDecoder, batches: list[list[bytes]], device: torch.device) -> list[tuple[float, float]]:
    """(seconds on the host, MiB outside PyTorch after it) for each batched call."""
    found = []
    for batch in batches:
        began = time.perf_counter()
        decode(batch)
        found.append((round(time.perf_counter() - began, 5), outside_torch_mb(device)))
    return found


def windows(timed: list[tuple[float, float]], size: int = 20) -> list[float]:
    """Mean milliseconds a call over each window of `size` calls."""
    return [round(1e3 * sum(s for s, _ in timed[i : i + size]) / len(timed[i : i + size]), 2)
            for i in range(0, len(timed), size)]


def model_load(path: str, device: torch.device, batch: int, stop: threading.Event) -> threading.Thread:
    """YOLOX-Nano run batch after batch on a stream of its own until `stop`."""
    from ceiling import load_yolox

    model = load_yolox(path, device).half()
    pixels = (torch.rand((batch, 3, 416, 416), device=device) * 255).half()
    stream = torch.cuda.Stream(device)

    def run() -> None:
        with torch.inference_mode(), torch.cuda.stream(stream), torch.jit.optimized_execution(False):
            while not stop.is_set():
                model(pixels)
                stream.synchronize()

    thread = threading.Thread(target=run, daemon=True)
    with torch.inference_mode(), torch.cuda.stream(stream), torch.jit.optimized_execution(False):
        model(pixels)  # its first calls plan the kernels: not while the decoder is timed
        model(pixels)
    stream.synchronize()
    return thread


def one_case(args: argparse.Namespace) -> dict:
    device = torch.device("cuda")
    torch.zeros(1, device=device)
    jpegs = encoded_images(sorted(Path(args.inputs).glob("bench-*.tfrecord")), args.batch * args.calls)
    batches = [jpegs[i : i + args.batch] for i in range(0, len(jpegs), args.batch)]
    decode = nvjpeg_decoder(device)  # as the job calls nvjpeg
    stop = threading.Event()
    load = model_load(args.yolox, device, args.batch, stop) if args.case.endswith("_loaded") else None
    found: dict = {"case": args.case, "outside_torch_mb_at_start": outside_torch_mb(device)}
    if load is not None:
        load.start()
    try:
        if args.case.startswith("primed_"):
            width, height = map(int, args.case.split("_")[1].split("x"))
            prime = noise_jpeg(height, width)
            began = time.perf_counter()
            decode([prime] * args.batch)
            found["prime"] = {"jpeg_bytes": len(prime), "seconds": round(time.perf_counter() - began, 3),
                              "outside_torch_mb": outside_torch_mb(device)}
        first = calls(decode, batches, device)
        found["first_pass"] = {"ms_by_window": windows(first), "outside_torch_mb": [m for _, m in first]}
        if args.case.startswith("cold"):
            second = calls(decode, batches, device)
            found["second_pass"] = {"ms_by_window": windows(second), "outside_torch_mb": [m for _, m in second]}
    finally:
        stop.set()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True, help="folder of make_inputs.py's bench-*.tfrecord files")
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=156)
    parser.add_argument("--cases", default="cold,primed_640x480,primed_1920x1440,cold_loaded,primed_1920x1440_loaded")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process: how main runs each
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in args.cases.split(","):
        done = subprocess.run([sys.executable, *sys.argv, "--case", case], capture_output=True, text=True)
        results[case] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-2000:]
        print(case, json.dumps(results[case])[:600], flush=True)
        (args.out / "decode_warmup.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
