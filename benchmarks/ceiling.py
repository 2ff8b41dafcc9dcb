"""The ceilings: a model alone on preloaded device tensors, and JPEG decoding alone."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from timing import throughput

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_yolox(path: str, device: torch.device) -> torch.nn.Module:
    return torch.jit.load(path, map_location=device).eval()


def fasterrcnn(device: torch.device, **kwargs) -> torch.nn.Module:
    """torchvision's Faster R-CNN with random weights (none downloaded); the speed is the architecture's."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=91, **kwargs
    )
    return model.eval().to(device)


def fasterrcnn_model_file(folder: Path, **kwargs) -> Path:
    """`fasterrcnn`'s weights saved for the job, with the model spec that names its architecture."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(fasterrcnn(torch.device("cpu"), **kwargs).state_dict(), folder / "weights.pth")
    (folder / "model.yaml").write_text(json.dumps({
        "architecture": "fasterrcnn_resnet50_fpn", "architecture_args": {"num_classes": 91, **kwargs},
        "model": "weights.pth"}))
    return folder / "weights.pth"


def yolox_model_only(
    path: str, device: torch.device, batch: int, precision: str, seconds: float,
    channels_last: bool = False, cuda_graph: bool = False, size: int = 416, optimized: bool = True,
    frozen: bool = False,
) -> dict:
    """YOLOX-Nano's network alone on preloaded batches (two, alternated, of random pixels);
    `optimized=False` runs it as the job does, without TorchScript's optimizing executor, and
    `frozen` as the job loads it (`batch_predict.models.torchscript.freeze`)."""
    from batch_predict.models.torchscript import freeze

    dtype = DTYPES[precision]
    model = load_yolox(path, device).to(dtype)
    if frozen:
        model = freeze(model)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=layout)
    inputs = [
        (torch.rand((batch, 3, size, size)) * 255).to(device, dtype).contiguous(memory_format=layout)
        for _ in range(2)
    ]
    turn = [0]

    with torch.inference_mode():
        call = model
        if cuda_graph:
            static = inputs[0].clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.jit.optimized_execution(False):  # as CudaGraphRunner: no JIT compiling inside the capture
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model(static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    model(static)

            def replay(x: torch.Tensor) -> None:
                static.copy_(x)
                graph.replay()

            call = replay

        def step() -> int:
            turn[0] ^= 1
            with torch.jit.optimized_execution(optimized):
                call(inputs[turn[0]])
            return batch

        result = throughput(step, seconds)
    return {**result, "batch": batch, "precision": precision, "channels_last": channels_last, "cuda_graph": cuda_graph,
            "optimized": optimized, "frozen": frozen}


def fasterrcnn_model_only(
    device: torch.device, batch: int, precision: str, seconds: float, channels_last: bool = False,
    size: tuple[int, int] = (480, 640), jpegs: list[bytes] | None = None, callers: int = 1, **kwargs,
) -> dict:
    """Faster R-CNN's forward (its own resize, normalization and post-processing included) on
    preloaded 0..1 images: every one of `jpegs` decoded (on `device`, 64 at a time), taken batch by
    batch in turn, else two batches of random pixels; fp16/bf16 through autocast, as torchvision
    supports. What it costs depends on the pictures (how many boxes pass its score threshold, then
    NMS): random pixels ran 17% faster than the job's photos (docs/benchmarks.md, 0j), so a job
    is compared with it on all of the job's own images, not on the first few. With `callers` > 1,
    that many threads call the one model at once, each on a CUDA stream of its own, as a serving
    engine's model instances do: its forward waits on the GPU many times a batch (a box count read
    back before each NMS), so one caller leaves the GPU idle in between."""
    model = fasterrcnn(device, **kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if jpegs:
        data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        on = device if device.type == "cuda" else torch.device("cpu")
        decoded = [image for i in range(0, len(data), 64)
                   for image in decode_jpeg(data[i : i + 64], mode=ImageReadMode.RGB, device=on)]
        decoded = [d.to(device).float() / 255 for d in decoded]
        images = [decoded[i : i + batch] for i in range(0, len(decoded) - batch + 1, batch)] or [decoded]
    else:
        images = [[torch.rand((3, *size)).to(device) for _ in range(batch)] for _ in range(2)]
    turn = [0]
    autocast = precision != "fp32"

    cpu: list[float] = []  # each call's CPU time in this thread: the rest it waited for the GPU

    def step() -> int:
        chosen = images[turn[0] % len(images)]
        turn[0] += 1
        began = time.thread_time()
        with torch.inference_mode(), torch.autocast(device.type, DTYPES[precision], enabled=autocast):
            model(chosen)
        cpu.append(time.thread_time() - began)
        return len(chosen)

    result = concurrent_throughput(step, seconds, callers, device) if callers > 1 else throughput(step, seconds, warmup=3)
    return {**result, "batch": batch, "precision": precision, "channels_last": channels_last, "callers": callers,
            "images_held": sum(map(len, images)), "cpu_ms_median": round(1e3 * float(np.median(cpu)), 2)}


def concurrent_throughput(step, seconds: float, callers: int, device: torch.device) -> dict[str, float]:
    """`throughput` of `step` called by `callers` threads at once, each on a CUDA stream of its own:
    their items over the longest of their times."""

    def one(stream: torch.cuda.Stream) -> dict[str, float]:
        with torch.cuda.stream(stream):
            return throughput(step, seconds, warmup=3)

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(one, [torch.cuda.Stream(device) for _ in range(callers)]))
    items, elapsed = sum(r["items"] for r in results), max(r["seconds"] for r in results)
    return {"items_per_s": round(items / elapsed, 1), "items": items, "steps": sum(r["steps"] for r in results),
            "seconds": elapsed}


def nvjpeg_decode(encoded: list[bytes], device: torch.device, batch: int, seconds: float) -> dict:
    """Batched decode_jpeg on the GPU (nvjpeg), host bytes in, device RGB tensors out."""
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    chunks = [data[i : i + batch] for i in range(0, len(data) - batch + 1, batch)] or [data]
    turn = [0]

    def step() -> int:
        chunk = chunks[turn[0] % len(chunks)]
        turn[0] += 1
        decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device)
        return len(chunk)

    return {**throughput(step, seconds), "batch": batch}


def _pil_decode(data: bytes) -> int:
    np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return 1


def pil_decode(encoded: list[bytes], seconds: float, threads: int = 1) -> dict:
    """Pillow decode to RGB arrays: one core, or a pool of threads (Pillow releases the GIL)."""
    turn = [0]
    chunk = 64 * threads

    with ThreadPoolExecutor(threads) as pool:
        def step() -> int:
            start = (turn[0] * chunk) % max(1, len(encoded) - chunk)
            turn[0] += 1
            return sum(pool.map(_pil_decode, encoded[start : start + chunk]))

        result = throughput(step, seconds, warmup=1)
    return {**result, "threads": threads, "cpu_count": os.cpu_count()}

