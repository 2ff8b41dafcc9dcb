"""What each JPEG decoder gives, alone and beside the model: the facts the decode split rests on.

A GPU decoder that runs on the model's SMs (nvjpeg's CUDA backend, torchvision's) slows the
model while it decodes; the hardware JPEG engines (nvImageCodec's `HW_GPU_ONLY` backend)
and CPU cores do not. This measures, on the same JPEGs:

- each decoder alone: torchvision nvjpeg, nvImageCodec hardware, simplejpeg and Pillow on
  1 and N CPU threads;
- the model alone, and the model while each GPU decoder runs in a second thread;
- the model's first calls at a new batch shape with TorchScript's profiling executor on
  and off, and its steady speed each way.

    PYTHONPATH=src:benchmarks python benchmarks/decoders.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --out /tmp/decoders
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from make_inputs import make_file
from timing import throughput
from batch_predict.inputs.tfrecord import read_records


def yolox_parser(description: str | None) -> argparse.ArgumentParser:
    """The flags every YOLOX-Nano GPU benchmark takes: photos to cut inputs from, the model, its
    spec, and where results go."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    return parser


def _images(photos: Path, work: Path, count: int) -> list[bytes]:
    path = work / "decoders.tfrecord"
    make_file(photos, path, count, 0)
    with open(path, "rb") as stream:
        return list(read_records(stream))


def _cycle(items: list, batch: int) -> Callable[[], list]:
    turn = [0]

    def take() -> list:
        start = (turn[0] * batch) % max(1, len(items) - batch + 1)
        turn[0] += 1
        return items[start : start + batch]

    return take


def torchvision_decoder(device: torch.device) -> Callable[[list[bytes]], int]:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(batch: list[bytes]) -> int:
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]
        decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        return len(batch)

    return decode


def nvimgcodec_decoder(device: torch.device, kind: str) -> Callable[[list[bytes]], int]:
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder(device_id=device.index or 0,
                                 backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)
    stream = torch.cuda.Stream(device)

    def decode(batch: list[bytes]) -> int:
        with torch.cuda.stream(stream):
            images = decoder.decode([nvimgcodec.CodeStream(b) for b in batch], params=params,
                                    cuda_stream=stream.cuda_stream)
            tensors = [torch.as_tensor(image, device=device) for image in images if image is not None]
        stream.synchronize()
        return len(tensors)

    return decode


def cpu_decoder(name: str, threads: int) -> Callable[[list[bytes]], int]:
    if name == "simplejpeg":
        import simplejpeg

        def one(data: bytes) -> None:
            simplejpeg.decode_jpeg(data, colorspace="RGB")
    else:
        def one(data: bytes) -> None:
            image = Image.open(io.BytesIO(data))
            image.load()
    pool = ThreadPoolExecutor(threads)

    def decode(batch: list[bytes]) -> int:
        list(pool.map(one, batch, chunksize=max(1, len(batch) // (4 * threads))))
        return len(batch)

    return decode


def model_step(path: str, device: torch.device, batch: int) -> Callable[[], int]:
    model = torch.jit.load(path, map_location=device).eval().half()
    inputs = [(torch.rand((batch, 3, 416, 416), device=device) * 255).half() for _ in range(2)]
    turn = [0]

    def step() -> int:
        turn[0] ^= 1
        with torch.inference_mode():
            model(inputs[turn[0]])
        return batch

    return step


def beside(model: Callable[[], int], decode: Callable[[list[bytes]], int], take: Callable[[], list],
           seconds: float) -> dict:
    """The model's rate while `decode` runs flat out in another thread, and the decoder's rate then."""
    stop = threading.Event()
    decoded = [0]

    def decoding() -> None:
        while not stop.is_set():
            decoded[0] += decode(take())

    thread = threading.Thread(target=decoding, daemon=True)
    thread.start()
    time.sleep(0.5)
    decoded[0] = 0
    started = time.perf_counter()
    result = throughput(model, seconds, warmup=1)
    decoder_rate = decoded[0] / (time.perf_counter() - started)
    stop.set()
    thread.join()
    return {"model_per_s": result["items_per_s"], "decoder_per_s": round(decoder_rate, 1)}


def first_calls(path: str, device: torch.device, batch: int, profiling: bool) -> dict:
    """Seconds of the first three calls at one batch shape, then the steady rate."""
    torch._C._jit_set_profiling_executor(profiling)
    model = torch.jit.load(path, map_location=device).eval().half()
    x = (torch.rand((batch, 3, 416, 416), device=device) * 255).half()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            started = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append(round(time.perf_counter() - started, 3))

    def step() -> int:
        with torch.inference_mode():
            model(x)
        return batch

    return {"first_calls_s": times, "steady_per_s": throughput(step, 3.0)["items_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                     "device": torch.cuda.get_device_name(0), "cpus": os.cpu_count()}

    def measure(name: str, fn: Callable[[], dict]) -> None:
        try:
            results[name] = fn()
        except Exception as exc:  # one failure loses only itself
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400], "trace": traceback.format_exc()[-800:]}
        print(name, json.dumps(results[name]), flush=True)
        (args.out / "decoders.json").write_text(json.dumps(results, indent=2))

    encoded = _images(args.photos, args.out, args.images)
    take = _cycle(encoded, args.batch)
    threads = os.cpu_count() or 1
    for profiling in (True, False):
        measure(f"model_first_calls_profiling_{'on' if profiling else 'off'}",
                lambda p=profiling: first_calls(args.yolox, device, args.batch, p))
    torch._C._jit_set_profiling_executor(True)
    model = model_step(args.yolox, device, args.batch)
    measure("model_alone", lambda: throughput(model, args.seconds))
    gpu_decoders = {"torchvision_nvjpeg": lambda: torchvision_decoder(device),
                    "nvimgcodec_hw": lambda: nvimgcodec_decoder(device, "HW_GPU_ONLY"),
                    "nvimgcodec_gpu": lambda: nvimgcodec_decoder(device, "GPU_ONLY")}
    for name, make in gpu_decoders.items():
        measure(f"{name}_alone", lambda m=make: throughput(lambda d=m(): d(take()), args.seconds))
        measure(f"model_beside_{name}", lambda m=make: beside(model, m(), take, args.seconds))
    for name in ("simplejpeg", "pillow"):
        for count in sorted({1, threads // 2, threads}):
            measure(f"{name}_{count}_threads", lambda n=name, c=count: throughput(
                lambda d=cpu_decoder(n, c): d(take()), args.seconds, warmup=1))
    measure("model_beside_simplejpeg_all_threads",
            lambda: beside(model, cpu_decoder("simplejpeg", threads), take, args.seconds))


if __name__ == "__main__":
    main()
