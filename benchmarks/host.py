"""The host's share of the job, on the CPU alone: formatting result lines, and the plumbing.

Every image's detections are formatted into a JSON line by the writer thread, which shares
the GIL with the thread that feeds the GPU; at thousands of images a second that formatting
is a large share of one core. This measures it per image at a given number of detections,
for the job's `result_lines` (batches of 256) and for the json module on the same dicts, and the
whole plumbing (read -> probe -> batch -> write) with a model that finds that many boxes,
how busy the job keeps a model that takes a fixed time per batch (each unit fills and drains
its own pipeline), how long a staged device stand-in on a GPU's schedule is left idle on a disk
whose syncs are quick and on one whose syncs are slow, what an image given as an array cost the
GPU path when it was sent as PNG (encoded by the pipeline, decoded again in the model's prepare
step), the garbage collector's full passes during a job, what a thread that holds the
interpreter costs JPEG decoding on another (one call an image, or one a batch), and whether a
process's first job keeps a device as busy as the jobs after it.

    PYTHONPATH=src:benchmarks python benchmarks/host.py --inputs '/tmp/bench/*.tfrecord' --out /tmp/host
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from batch_predict import run
from batch_predict.decode import decode, encode_png
from batch_predict.inputs.units import Unit
from batch_predict.models.decode_split import DecodeSplit, nvimgcodec_host_decoder, simplejpeg_host_decoder, split_decoder
from batch_predict.models.device_decode import open_nvimgcodec
from batch_predict.observe.observers import JobObserver
from batch_predict.pipeline import StagedModel
from batch_predict.records import Detections, Prediction, Record
from batch_predict.outputs.result_formats import result_lines, result_records
from batch_predict.outputs.sinks import JobSummary, UnitCounts
from batch_predict.spec import JobSpec
from batch_predict.inputs.tfrecord import read_records
from timing import collections_timer

LABELS = {i: f"class {i}" for i in range(80)}


def random_detections(count: int, rng: np.random.Generator) -> Detections:
    corners = np.sort(rng.uniform(0, 640, (count, 2, 2)), axis=1).reshape(count, 4).astype(np.float32)
    return Detections(corners, rng.uniform(0.3, 1, count).astype(np.float32), rng.integers(0, 80, count))


def formatting(detections: int, images: int = 2048, batch: int = 256, repeats: int = 3) -> dict:
    """Images per second through `result_lines`, and through json.dumps of the same dicts."""
    rng = np.random.default_rng(0)
    predictions = [Prediction(Record(f"image-{i}", "bench", i, width=640, height=480), random_detections(detections, rng))
                   for i in range(images)]
    batches = [predictions[i : i + batch] for i in range(0, images, batch)]

    def json_module(predictions: list[Prediction]) -> bytes:
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in result_records(predictions, LABELS)).encode()

    rates = {}
    for name, lines in (("result_lines", lambda b: result_lines(b, LABELS)), ("json_module", json_module)):
        best = min(_seconds(lambda: [lines(b) for b in batches]) for _ in range(repeats))
        rates[f"{name}_per_s"] = round(images / best)
    return {"detections_per_image": detections, **rates, "speedup": round(rates["result_lines_per_s"] / rates["json_module_per_s"], 2)}


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


class StandInModel:
    """Takes encoded images and finds the same `count` boxes in each, taking `seconds` per batch with
    the GIL released, as a GPU call does: what is left is the job's own plumbing and writing, and
    the share of the wall time the stand-in is busy is the share a GPU of that speed would be."""

    input_kind = "jpeg"
    same_size_batches = False

    def __init__(self, count: int = 0, seconds: float = 0.0) -> None:
        self.labels = LABELS
        self.seconds = seconds
        self.calls = 0
        self._found = random_detections(count, np.random.default_rng(0))

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return [self._found] * len(records)

    def describe(self) -> dict[str, object]:
        return {"backend": "stand-in"}


class DeviceStandIn:
    """A GPU for the job's staged path, on the CPU: preparing a batch takes `prepare_s` with the GIL
    released (the decode call), and batches run one after another on the "device", `image_s` an
    image, each from its launch or the end of the one before, whichever is later; collecting waits
    for the end. Every gap between one batch's end and the next one's start is then time the host
    left the device idle: the pipeline's own pauses, on a GPU's schedule but without one."""

    input_kind = "jpeg"
    same_size_batches = False

    def __init__(self, image_s: float, prepare_s: float) -> None:
        self.labels = LABELS
        self.image_s, self.prepare_s = image_s, prepare_s
        self.runs: list[tuple[float, float]] = []  # (start, end) of each batch on the device
        self._free_at = 0.0
        self._found = random_detections(3, np.random.default_rng(0))
        self._lock = threading.Lock()

    def prepare(self, records: Sequence[Record]) -> int:
        time.sleep(self.prepare_s)
        return len(records)

    def launch(self, size: int) -> tuple[float, int]:
        with self._lock:
            start = max(time.perf_counter(), self._free_at)
            self._free_at = start + size * self.image_s
            self.runs.append((start, self._free_at))
        return self._free_at, size

    def collect(self, launched: tuple[float, int]) -> list[Detections]:
        end, size = launched
        time.sleep(max(0.0, end - time.perf_counter()))
        return [self._found] * size

    def predict(self, records: Sequence[Record]) -> list[Detections]:
        return self.collect(self.launch(self.prepare(records)))

    def describe(self) -> dict[str, object]:
        return {"backend": "device stand-in"}


class _CommitTimes(JobObserver):
    def __init__(self) -> None:
        self.times: list[float] = []

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        self.times.append(time.perf_counter())


@contextlib.contextmanager
def _slow_syncs(seconds: float) -> Iterator[None]:
    """Each `os.fsync` takes `seconds` longer: a disk whose syncs are slow, as a cloud VM's are when
    gigabytes written just before (the benchmark's inputs) must reach it first."""
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        time.sleep(seconds)

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real


def device_idle(pattern: str, out: Path, batch: int, batch_ms: float, prepare_ms: float, sync_ms: float = 0,
                pause_ms: float = 50) -> dict:
    """How busy the job keeps a device of `batch_ms` a batch, units and commits included, each disk
    sync taking `sync_ms` more: its busy share from its first batch's start to its last one's end,
    each pause of more than `pause_ms` between two batches with when the unit commit nearest to it
    ended (from the pause's start), and how long the commits went on after the last batch."""
    device = DeviceStandIn(batch_ms / 1e3 / batch, prepare_ms / 1e3)
    commits = _CommitTimes()
    with _slow_syncs(sync_ms / 1e3):
        _timed_job(pattern, out, batch, device, commits)
    runs = sorted(device.runs)
    pauses = []
    for i in range(1, len(runs)):
        began, gap = runs[i - 1][1], runs[i][0] - runs[i - 1][1]
        if gap * 1e3 > pause_ms:
            nearest = min(commits.times, key=lambda t: abs(t - began))
            pauses.append({"batch": i, "ms": round(gap * 1e3), "nearest_commit_ms": round((nearest - began) * 1e3)})
    return {"batch": batch, "batch_ms": batch_ms, "prepare_ms": prepare_ms, "sync_ms": sync_ms, "batches": len(runs),
            "units": len(commits.times),
            "busy": _busy(runs),
            "last_commit_after_last_batch_s": round(commits.times[-1] - runs[-1][1], 2), "pauses": pauses}


def _busy(runs: list[tuple[float, float]]) -> float:
    """The share of the time from the first batch's start to the last one's end that the device ran."""
    return round(sum(end - start for start, end in runs) / (runs[-1][1] - runs[0][0]), 3)


def first_jobs(pattern: str, out: Path, jobs: int = 3, batch_ms: float = 27, prepare_ms: float = 8) -> list[dict]:
    """Jobs one after another in this process, each with a fresh device stand-in of `batch_ms` a batch of
    256 (`DeviceStandIn`): the mean time between batches over each window of 20, and how busy the
    device was. On the GPU a process's first job takes 60-100 batches to reach the pace of the jobs
    after it (docs/benchmarks.md, 0g); the same here would put that warm-up in the host's plumbing."""
    found = []
    for job in range(jobs):
        device = DeviceStandIn(batch_ms / 1e3 / 256, prepare_ms / 1e3)
        _timed_job(pattern, out / str(job), 256, device)
        runs = sorted(device.runs)
        apart = np.diff([start for start, _ in runs]) * 1e3
        found.append({"job": job, "busy": _busy(runs),
                      "ms_between_batches_by_20": [round(float(apart[i : i + 20].mean()), 1) for i in range(0, len(apart), 20)]})
    return found


def _timed_job(pattern: str, out: Path, batch: int, model: StandInModel | DeviceStandIn,
               observer: JobObserver | None = None) -> tuple[JobSummary, float]:
    spec = JobSpec(
        input_file_patterns=(pattern,), input_file_format="tfrecord", model_dir="none",
        output_result_prefix=str(out / "results"), output_error_prefix=str(out / "errors"), batch_size=batch,
        overwrite=True,
    )
    if isinstance(model, DeviceStandIn) and not isinstance(model, StagedModel):
        raise TypeError("DeviceStandIn no longer meets pipeline.StagedModel: the job would predict it unstaged")
    started = time.perf_counter()
    summary = run(spec, model=model, observer=observer)
    return summary, time.perf_counter() - started


def plumbing(pattern: str, out: Path, detections: int, batch: int) -> dict:
    """records/s through read -> probe -> batch -> write with a model that costs nothing."""
    summary, wall = _timed_job(pattern, out, batch, StandInModel(detections))
    return {"detections_per_image": detections, "records": summary.records_read, "seconds": round(wall, 2),
            "items_per_s": round(summary.records_read / wall)}


def model_busy(pattern: str, out: Path, batch: int, seconds_per_batch: float) -> dict:
    """How busy the job keeps a model of fixed speed, with every unit's pipeline fill and drain."""
    model = StandInModel(seconds=seconds_per_batch)
    summary, wall = _timed_job(pattern, out, batch, model)
    return {"batch": batch, "ms_per_batch": seconds_per_batch * 1e3, "units": summary.units, "calls": model.calls,
            "batches_per_unit": round(model.calls / summary.units, 1), "seconds": round(wall, 2),
            "model_busy": round(model.calls * seconds_per_batch / wall, 3)}


def _python_busy(stop: threading.Event, busy_s: float, idle_s: float) -> None:
    """Holds the interpreter `busy_s` of every `busy_s + idle_s`, as the job's reading and writing threads do in bursts."""
    while not stop.is_set():
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            sum(range(100))
        time.sleep(idle_s)


def _rate_in_thread(decode_batch, images: int, seconds: float) -> float:
    """Images per second that `decode_batch()` (one batch of `images`) gives, called in a thread of its own."""
    found: list[float] = []

    def work() -> None:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            decode_batch()
            done += images
        found.append(done / (time.perf_counter() - started))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return found[0]


def gil_convoy(pattern: str, images: int = 256, busy_ms: float = 3, idle_ms: float = 2, seconds: float = 2.0) -> dict:
    """JPEGs decoded alone and beside a thread that holds the interpreter `busy_ms` of every
    `busy_ms + idle_ms` (at the default switch interval, and at 0.5 ms): on one thread by simplejpeg,
    one call an image as the split decoder's CPU threads make them, and by nvImageCodec's CPU
    decoder, one call a batch, where it is installed; then through the split decoder as the job
    runs it, the whole batch on the CPU with two threads asked, each way. A thread that releases
    the interpreter for each image must win it back for the next, and beside a busy thread each
    win may wait for the whole switch interval: a convoy."""
    import simplejpeg

    with open(min(glob.glob(pattern)), "rb") as stream:
        jpegs = [data for _, data in zip(range(images), read_records(stream))]
    height, width = simplejpeg.decode_jpeg_header(jpegs[0])[:2]
    out = np.empty((height, width, 3), np.uint8)
    decoders = {"simplejpeg, a call an image": lambda: [simplejpeg.decode_jpeg(j, colorspace="RGB", buffer=out) for j in jpegs]}
    opened = open_nvimgcodec(None, lambda m: [m.Backend(m.BackendKind.CPU_ONLY)], 1, sample_format="I_RGB")
    if opened is not None:
        nvimgcodec, cpu, params = opened
        streams = [nvimgcodec.CodeStream(j) for j in jpegs]
        decoders["nvImageCodec CPU, a call a batch"] = lambda: cpu.decode(streams, params=params)
    for name, make in (("simplejpeg", simplejpeg_host_decoder), ("nvImageCodec", nvimgcodec_host_decoder)):
        on_host = make(2)
        if on_host is not None:
            split = split_decoder(lambda batch: [None] * len(batch), DecodeSplit(shares=(1.0,)), torch.device("cpu"),
                                  on_host=on_host)
            decoders[f"split decoder, all on the CPU, {name}"] = lambda split=split: split(jpegs)
    interval = sys.getswitchinterval()
    found: dict[str, object] = {"busy_ms": busy_ms, "idle_ms": idle_ms, "images": images, "size": [width, height],
                                "nvimgcodec": opened is not None}
    for name, decode_batch in decoders.items():
        rates = {"alone": _rate_in_thread(decode_batch, images, seconds)}
        for label, switch in (("beside a busy thread", interval), ("beside a busy thread, switch interval 0.5 ms", 5e-4)):
            stop = threading.Event()
            busy = threading.Thread(target=_python_busy, args=(stop, busy_ms / 1e3, idle_ms / 1e3))
            sys.setswitchinterval(switch)
            busy.start()
            try:
                rates[label] = _rate_in_thread(decode_batch, images, seconds)
            finally:
                stop.set()
                busy.join()
                sys.setswitchinterval(interval)
        found[name] = {label: round(rate) for label, rate in rates.items()}
    return found


def full_collections(pattern: str, out: Path, runs: int = 3) -> dict:
    """The garbage collector's full passes during the plumbing job (3 detections an image), and how
    long each held every thread: with PyTorch imported there are some 340,000 objects to walk."""
    collections: list[tuple] = []
    timed = collections_timer(collections)
    gc.callbacks.append(timed)
    try:
        for _ in range(runs):
            _timed_job(pattern, out, 256, StandInModel(3))
    finally:
        gc.callbacks.remove(timed)
    pauses = [round(ms, 1) for generation, ms, *_ in collections if generation == 2]
    return {"objects_tracked": len(gc.get_objects()), "runs": runs, "full_collection_ms": pauses}


def png_round_trip(pattern: str, repeats: int = 50) -> dict:
    """Milliseconds to PNG-encode one input image's pixels (`decode.encode_png`) and to decode them
    again with torchvision, on one core: the first record of the first matching file."""
    with open(sorted(glob.glob(pattern))[0], "rb") as stream:
        pixels = decode(Record("first", "bench", 0, encoded=next(read_records(stream))), 1 << 30).array
    encode_s = min(_seconds(lambda: encode_png(Record("k", "bench", 0, array=pixels))) for _ in range(repeats))
    data = torch.frombuffer(bytearray(encode_png(Record("k", "bench", 0, array=pixels)).encoded), dtype=torch.uint8)
    decode_s = min(_seconds(lambda: decode_image(data, mode=ImageReadMode.RGB)) for _ in range(repeats))
    return {"size": list(pixels.shape[1::-1]), "encode_ms": round(encode_s * 1e3, 1), "decode_ms": round(decode_s * 1e3, 1),
            "images_per_s": round(1 / (encode_s + decode_s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", help="TFRecords of JPEGs (benchmarks/make_inputs.py); without it, formatting only")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
                     "formatting": [formatting(n) for n in (0, 10, 30, 100)]}
    if args.inputs:
        results["plumbing"] = [plumbing(args.inputs, args.out / f"plumbing-{n}", n, args.batch_size) for n in (0, 30)]
        # 256 images in 60 ms: about YOLOX-Nano's fp16 speed with nvjpeg decoding on one H200.
        results["model_busy"] = [model_busy(args.inputs, args.out / f"busy-{b}", b, 0.06 * b / 256) for b in (256, 64)]
        # 27 ms a batch of 256: YOLOX-Nano's pace in the job on one H200 between pauses (docs/benchmarks.md, 0i).
        results["device_idle"] = [device_idle(args.inputs, args.out / f"idle-{sync}", 256, 27, 20, sync) for sync in (0, 30)]
        results["first_jobs"] = first_jobs(args.inputs, args.out / "first-jobs")
        results["png_round_trip"] = png_round_trip(args.inputs)
        results["full_collections"] = full_collections(args.inputs, args.out / "collections")
        results["gil_convoy"] = gil_convoy(args.inputs)
    (args.out / "host.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
