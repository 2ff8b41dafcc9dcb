"""The job's GPU side alone: what lets JPEG decoding overlap the model.

The job prepares a batch (JPEG decode, preprocess) on one thread and CUDA stream, launches the
model on another thread and collects detections on a third. This runs exactly that, with
`TensorModel`'s own launch and collect, on JPEGs already in memory (no reading, no CPU
pipeline), so what it measures is the ceiling the GPU side sets, and what moves it:

- the model alone (launch and collect, one batch at a time), and the network alone;
- the staged loop with a batch prepared once and launched over and over (no decoding), and
  without collecting (only waiting for each batch);
- each way of decoding on the GPU: nvImageCodec's hardware engines as the job calls them, the
  same without reusing output images, and with the JPEG bytes in pinned host memory; nvjpeg;
  each alone and in the staged loop, with one and two preparing threads;
- a share of each batch decoded on CPU threads (simplejpeg, straight into pinned memory)
  while the GPU decodes the rest.

    PYTHONPATH=src:benchmarks python benchmarks/gpu_side.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml --out /tmp/s
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
import torch

import ceiling
from decoders import _cycle, _images
from batch_predict.models import load_model
from batch_predict.models.device_decode import JpegDecoder, hardware_decoder, nvjpeg_decoder
from batch_predict.models.preprocess import Prepared, Preprocessor
from batch_predict.records import Record
from batch_predict.spec import ModelSettings

Prepare = Callable[[Sequence[Record]], Prepared]


def staged(model, prepares: Sequence[Prepare], take: Callable[[], list[Record]], seconds: float,
           collect: bool = True) -> dict:
    """Images/s through prepare (one thread per function in `prepares`) -> launch (this thread)
    -> collect (a thread), as the job runs them; without `collect`, only waiting for each batch."""
    prepared: queue.Queue = queue.Queue(2)
    launched: queue.Queue = queue.Queue(2)
    stop = threading.Event()
    lock = threading.Lock()
    collected = [0, 0.0]  # images, time of the last

    def preparing(prepare: Prepare) -> None:
        while not stop.is_set():
            with lock:
                records = take()
            prepared.put(prepare(records))
        prepared.put(None)

    def collecting() -> None:
        while (item := launched.get()) is not None:
            if collect:
                collected[0] += len(model.collect(item))
            else:
                item.done.synchronize()
                collected[0] += len(item.prepared.image_sizes)
            collected[1] = time.perf_counter()

    threads = [threading.Thread(target=preparing, args=(p,), daemon=True) for p in prepares]
    threads.append(threading.Thread(target=collecting, daemon=True))
    for thread in threads:
        thread.start()
    started, baseline, ended = None, 0, 0
    while ended < len(prepares):
        batch = prepared.get()
        if batch is None:
            ended += 1
            continue
        launched.put(model.launch(batch))
        if started is None and collected[0] >= 4 * len(batch.image_sizes):
            started, baseline = time.perf_counter(), collected[0]
        if started is not None and time.perf_counter() - started > seconds:
            stop.set()
    launched.put(None)
    threads[-1].join()
    return {"images_per_s": round((collected[0] - baseline) / (collected[1] - started), 1)}


def alone(prepare: Prepare, take: Callable[[], list[Record]], seconds: float) -> dict:
    def step() -> int:
        batch = prepare(take())
        batch.ready.synchronize()
        return len(batch.image_sizes)

    for _ in range(3):
        step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += step()
    return {"images_per_s": round(count / (time.perf_counter() - started), 1)}


def pinned_hardware_decoder(device: torch.device) -> JpegDecoder:
    """nvImageCodec's hardware engines on code streams over pinned host memory, so that copying
    the JPEG bytes to the GPU is one asynchronous transfer each, not a staged pageable copy."""
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder(device_id=device.index or 0,
                                 backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)
    buffers: list[torch.Tensor | None] = [None, None]
    turn = itertools.cycle(range(2))

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        which = next(turn)
        total = sum(map(len, jpegs))
        if buffers[which] is None or buffers[which].numel() < total:
            buffers[which] = torch.empty(2 * total, dtype=torch.uint8, pin_memory=True)
        host = buffers[which].numpy()
        streams, at = [], 0
        for jpeg in jpegs:
            host[at : at + len(jpeg)] = np.frombuffer(jpeg, np.uint8)
            streams.append(nvimgcodec.CodeStream(host[at : at + len(jpeg)]))
            at += len(jpeg)
        stream = torch.cuda.current_stream(device)
        images = decoder.decode(streams, params=params, cuda_stream=stream.cuda_stream)
        return [None if image is None else torch.as_tensor(image, device=device) for image in images]

    return decode


def plain_hardware_decoder(device: torch.device) -> JpegDecoder:
    """nvImageCodec's hardware engines, new output images every call."""
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder(device_id=device.index or 0,
                                 backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)

    def decode(jpegs: Sequence[bytes]) -> list[torch.Tensor | None]:
        stream = torch.cuda.current_stream(device)
        images = decoder.decode([nvimgcodec.CodeStream(j) for j in jpegs], params=params, cuda_stream=stream.cuda_stream)
        return [None if image is None else torch.as_tensor(image, device=device) for image in images]

    return decode


def _pinned_pixels(data: bytes) -> torch.Tensor:
    height, width = simplejpeg.decode_jpeg_header(data)[:2]
    out = torch.empty((height, width, 3), dtype=torch.uint8, pin_memory=True)
    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out.numpy())
    return out


def preparer(model, device: torch.device, decoder: JpegDecoder, cpu_share: float = 0.0,
             pool: ThreadPoolExecutor | None = None) -> Prepare:
    """A batch's preparation on a stream of its own: the first `cpu_share` of its JPEGs decoded by
    `pool` into pinned memory and copied over, the rest by `decoder`, at the same time."""
    preprocessor = Preprocessor(model._preprocessor.spec, device, decoder)
    stream = torch.cuda.Stream(device)

    def prepare(records: Sequence[Record]) -> Prepared:
        cut = int(len(records) * cpu_share)
        with torch.inference_mode(), torch.cuda.stream(stream):
            on_cpu = pool.map(_pinned_pixels, [r.encoded for r in records[:cut]]) if cut else []
            images = decoder([r.encoded for r in records[cut:]])
            images += [pixels.to(device, non_blocking=True).permute(2, 0, 1) for pixels in on_cpu]
            batch = preprocessor.prepare(images)
            ready = torch.cuda.Event()
            ready.record(stream)
        return dataclasses.replace(batch, ready=ready)

    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                     "device": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "batch": args.batch}

    def measure(name: str, fn: Callable[[], dict]) -> None:
        try:
            results[name] = fn()
        except Exception as exc:  # one failure loses only itself
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400], "trace": traceback.format_exc()[-800:]}
        print(name, json.dumps(results[name]), flush=True)
        (args.out / "gpu_side.json").write_text(json.dumps(results, indent=2))

    records = [Record(f"r{i}", "mem", i, encoded=data) for i, data in enumerate(_images(args.photos, args.out, args.images))]
    take = _cycle(records, args.batch)
    model = load_model(ModelSettings(model_dir=args.yolox, model_spec=args.spec, device="cuda", precision="fp16",
                                     batch_size=args.batch))
    model.decode_split = None
    measure("network_alone", lambda: ceiling.yolox_model_only(args.yolox, device, args.batch, "fp16", args.seconds,
                                                             optimized=False))
    ready = model.prepare(take())
    measure("model_alone", lambda: alone(lambda r: model.collect(model.launch(ready)) and ready, take, args.seconds))
    measure("staged_without_decoding", lambda: staged(model, [lambda r: ready], take, args.seconds))

    decoders = {"hardware_as_job": hardware_decoder, "hardware_plain": plain_hardware_decoder,
                "hardware_pinned": pinned_hardware_decoder, "nvjpeg": nvjpeg_decoder}
    for name, make in decoders.items():
        first = preparer(model, device, make(device))
        measure(f"prepare_alone_{name}", lambda p=first: alone(p, take, args.seconds))
        measure(f"staged_{name}", lambda p=first: staged(model, [p], take, args.seconds))
        if name == "hardware_as_job":
            measure(f"staged_{name}_without_collect", lambda p=first: staged(model, [p], take, args.seconds, collect=False))
        measure(f"staged_{name}_two_preparers", lambda p=first, m=make: staged(
            model, [p, preparer(model, device, m(device))], take, args.seconds))
    pool = ThreadPoolExecutor(os.cpu_count() or 1)
    for share in (0.25, 0.4, 0.55):
        for name in ("hardware_as_job", "hardware_pinned"):
            make = decoders[name]
            measure(f"staged_{name}_cpu_share_{share}", lambda s=share, m=make: staged(
                model, [preparer(model, device, m(device), s, pool)], take, args.seconds))
        measure(f"staged_hardware_pinned_cpu_share_{share}_two_preparers", lambda s=share: staged(
            model, [preparer(model, device, pinned_hardware_decoder(device), s, pool) for _ in range(2)],
            take, args.seconds))


if __name__ == "__main__":
    main()
