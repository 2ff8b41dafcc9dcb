"""The GPU issue's figures, in one run on one machine: the model alone, the job, and its peers.

    PYTHONPATH=src:benchmarks python benchmarks/gpu_job.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml \\
        --nvimgcodec /tmp/nvimgcodec --out "$OUT"

On 40,000 distinct 640x480 JPEGs in 16 TFRecord files of 2,500 (`make_inputs.py`), YOLOX-Nano
TorchScript, fp16, batch 256:

- the model alone on preloaded tensors, with TorchScript's optimizing executor and without
  it (as the job runs it);
- the job through its CLI: with nvImageCodec installed (`job_hardware_decoder`; `--nvimgcodec`, a
  folder holding the nvidia-nvimgcodec and nvidia-nvjpeg wheels' contents; until 2026-11-30 19:30
  its hardware decoder came first, then second after nvjpeg, and since 2026-12-01 04:00 the job
  does not use it: the extra decodes the CPU's share) and without it (nvjpeg), each beside the
  CPU workers' share; on every GPU too, where there are two;
- agreement with the CPU path, on the shared photos, for each decoder (CPU, nvjpeg, hardware);
- the peers: a DataLoader script (16 worker processes decode and letterbox to uint8, fp16,
  batch 256) over all the files, and a per-image loop.

Each figure is written to <out>/gpu_job.json as soon as it is measured; a table is printed last.
`--quick` runs it all on 512 images, on the CPU if there is no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

import baselines
import ceiling
import end_to_end
from run_all import Results, agreement, encoded_images, make_inputs
from decode_warmup import outside_torch_mb
from engines import hardware_decoder
from timing import collections_timer
from batch_predict.decode import decode, usable_cpus
from batch_predict.models import load_model, separate_cuda_queues
from batch_predict.models.decode_split import (
    DecodeSplit, nvimgcodec_host_decoder, simplejpeg_host_decoder, split_decoder,
)
from batch_predict.models.device_decode import JpegDecoder, falling_back, noise_jpeg, nvjpeg_decoder
from batch_predict.records import Record
from batch_predict.spec import ModelSettings

log = logging.getLogger("bench")


def decoder_agreement(args: argparse.Namespace, device: torch.device) -> dict:
    """Each GPU decoder's detections against the CPU path's, fp32, on the shared photos' JPEGs:
    every CPU detection scoring at least 0.4 must have a same-class one with IoU >= 0.9. The split
    decoder's CPU share too, all of each batch, by each way of decoding it (`cpu_share_*`)."""
    photos = sorted(p for p in args.photos.iterdir() if p.suffix == ".jpg")
    records = lambda: [Record(p.name, "photos", i, encoded=p.read_bytes()) for i, p in enumerate(photos)]  # noqa: E731
    common = dict(model_dir=args.yolox, model_spec=args.spec)
    reference = load_model(ModelSettings(**common, device="cpu")).predict([decode(r, 1 << 30) for r in records()])
    model = load_model(ModelSettings(**common, device=str(device)))
    found = {"cpu_arrays": model.predict([decode(r, 1 << 30) for r in records()])}
    cpu_shares = {f"cpu_share_{name}": make(usable_cpus()) for name, make in
                  (("nvimgcodec", nvimgcodec_host_decoder), ("simplejpeg", simplejpeg_host_decoder))}
    decoders = {"nvjpeg": nvjpeg_decoder(device), "hardware": hardware_decoder(device),
                **{name: on_host and split_decoder(nvjpeg_decoder(device), DecodeSplit(shares=(1.0,)), device, on_host=on_host)
                   for name, on_host in cpu_shares.items()}}
    for name, decoder in decoders.items():
        if decoder is None:
            found[name] = None
            continue
        model._preprocessor.jpeg_decoder = decoder
        found[name] = model.predict(records())
    return {name: agreement(reference, got, min_score=0.4, min_iou=0.9) if got else "not available"
            for name, got in found.items()}


#: The CUDA allocator's running counts kept at each batch: its calls to cudaMalloc and cudaFree,
#: the allocations it retried after freeing its cache, and the segments it holds; then the device
#: memory in use outside it, in MiB (nvjpeg's buffers among it).
ALLOCATOR_COUNTS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "segment.all.current")
#: The process's running counts kept at each batch: page faults served from memory and from disk,
#: and its threads' voluntary and involuntary context switches.
PROCESS_COUNTS = ("ru_minflt", "ru_majflt", "ru_nvcsw", "ru_nivcsw")


def side_by_side(first: JpegDecoder, second: JpegDecoder, device: torch.device) -> JpegDecoder:
    """Half of each call's JPEGs to `first`, the other half at the same time to `second`, on a thread
    of the calling thread's own (so that each preparing thread's images stay its own) and on the
    caller's stream: two decoding libraries, two locks, the GPU's JPEG engines shared."""
    beside = threading.local()

    def decode(jpegs):
        pool = getattr(beside, "pool", None) or ThreadPoolExecutor(1)
        beside.pool = pool
        stream = torch.cuda.current_stream(device)

        def on_stream(part):
            with torch.cuda.stream(stream):
                return second(part)

        half = len(jpegs) // 2
        task = pool.submit(on_stream, jpegs[half:])
        return list(first(jpegs[:half])) + list(task.result())

    return decode


def timed_calls(fn, calls: list[tuple[float, float, float]]):
    """`fn` (of one argument), appending (when it began on the host's clock, seconds it took, seconds
    of its thread's CPU time) for each call: a call whose thread waited (for the GIL, the GPU) took
    longer than its CPU time."""

    def timed(argument):
        began, cpu = time.perf_counter(), time.thread_time()
        found = fn(argument)
        calls.append((began, time.perf_counter() - began, time.thread_time() - cpu))
        return found

    return timed


def timed_stages(model: Any) -> dict[str, list[tuple[float, float, float]]]:
    """The model's prepare, launch and collect timed from now on (`timed_calls`), each into its
    list of the dict returned, until `untimed`."""
    stages: dict[str, list[tuple[float, float, float]]] = {stage: [] for stage in ("prepare", "launch", "collect")}
    for stage, calls in stages.items():
        setattr(model, stage, timed_calls(getattr(type(model), stage).__get__(model), calls))
    return stages


def untimed(model: Any, stages: dict[str, list[tuple[float, float, float]]]) -> None:
    for stage in stages:
        delattr(model, stage)


def core_siblings(cpu: int) -> set[int]:
    """The logical CPUs that share `cpu`'s physical core (itself included), as Linux lists them."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    if not path.exists():
        return {cpu}
    found: set[int] = set()
    for part in path.read_text().strip().split(","):
        low, _, high = part.partition("-")
        found |= set(range(int(low), int(high or low) + 1))
    return found


def cpu_topology() -> dict[str, object]:
    """What the figures' machine gives the process: its CPUs and how many share each core."""
    allowed = sorted(os.sched_getaffinity(0))
    return {"usable_cpus": len(allowed), "threads_per_core": len(core_siblings(allowed[0])),
            "siblings_of_first": sorted(core_siblings(allowed[0]))}


@contextlib.contextmanager
def own_core(model: Any):
    """The thread that launches the model's batches (Faster R-CNN's forward runs there) on a core
    of its own, the core's other hardware threads left idle, and every other thread of the process,
    those there now and those the job starts, on the remaining CPUs: whether the launching thread
    loses to threads the scheduler puts beside it. Linux only."""
    allowed = os.sched_getaffinity(0)
    core = core_siblings(min(allowed)) & allowed
    rest = allowed - core
    for task in Path("/proc/self/task").iterdir():  # new threads inherit their creator's set
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), rest)
    launch = model.launch
    pinned: list[int] = []

    def launch_on_own_core(prepared):
        if not pinned:
            os.sched_setaffinity(0, {min(core)})
            pinned.append(threading.get_native_id())
        return launch(prepared)

    model.launch = launch_on_own_core
    try:
        yield
    finally:
        model.launch = launch
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), allowed)


@contextlib.contextmanager
def stream_priorities(model: Any, model_high: bool, prepare_high: bool, collect_low: bool):
    """The model's batches launched (`model_high`) or prepared on a stream of high priority, or
    collected on a stream of the model's priority (`collect_low`; the job's is high); as the job
    runs them otherwise. The GPU's block scheduler starts a high-priority stream's waiting blocks
    first: whether the model's kernels should yield to the small ones that prepare and collect
    batches (the preprocessing's copies and resize, the head's decode and NMS, 0h) or they to it."""
    streams = model._streams
    saved = streams._prepare, streams._collect, streams.launching
    if streams._prepare is not None:
        device = streams._prepare.device
        if prepare_high:
            streams._prepare = torch.cuda.Stream(device, priority=-1)
        if collect_low:
            streams._collect = torch.cuda.Stream(device)
        if model_high:
            high = torch.cuda.Stream(device, priority=-1)
            streams.launching = lambda own_stream: torch.cuda.stream(high)
    try:
        yield
    finally:
        streams._prepare, streams._collect, streams.launching = saved


def collect_finds_done(model: Any) -> list[bool]:
    """Whether the GPU had finished each batch when the collecting thread came to it, from now on
    (until `untimed`): True says the collecting thread was behind the GPU, False that it waited for it."""
    found: list[bool] = []
    collect = model.collect

    def collect_noting(launched):
        found.append(launched.done is not None and launched.done.query())
        return collect(launched)

    model.collect = collect_noting
    return found


class RecordedSplit(DecodeSplit):
    """A `DecodeSplit` that keeps each finished batch's time, size and the share then in force,
    and counts the JPEGs it sent to the CPU: the rate at each share, batch by batch."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batches: list[tuple[float, int, float]] = []
        self.collected_at: list[float] = []  # the host's clock, when each batch was collected
        self.allocator: list[list[int]] = []  # ALLOCATOR_COUNTS when each batch was collected
        self.process: list[list[int]] = []  # PROCESS_COUNTS when each batch was collected
        self.sent_to_cpu = 0

    def cpu_count(self, jpegs: int) -> int:
        chosen = super().cpu_count(jpegs)
        self.sent_to_cpu += chosen
        return chosen

    def batch_done(self, images: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.batches.append((now, images, self.cpu_share))
        self.collected_at.append(time.perf_counter())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.process.append([getattr(usage, key) for key in PROCESS_COUNTS])
        if torch.cuda.is_available():
            stats = torch.cuda.memory_stats()
            self.allocator.append([stats.get(key, 0) for key in ALLOCATOR_COUNTS] + [outside_torch_mb(torch.device("cuda"))])
        super().batch_done(images, now)

    @classmethod
    def named(cls, name: str) -> RecordedSplit:
        """The split a variant names: `climb` (the job's own) or `share<fraction on the CPU>`, held."""
        return cls() if name == "climb" else cls(shares=(float(name[len("share"):]),))

    def rates_by_share(self, skip: int = 8) -> dict[float, dict]:
        """Images per second over each run of batches at one share, its first `skip` batches left
        out (images decoded at the share before were still queued), summed by share."""
        found: dict[float, list[float]] = {}
        run: list[tuple[float, int, float]] = []
        for batch in self.batches + [(0.0, 0, -1.0)]:
            if run and batch[2] != run[-1][2]:
                kept = run[skip:]
                if len(kept) > 1:
                    totals = found.setdefault(run[0][2], [0.0, 0])
                    totals[0] += kept[-1][0] - kept[0][0]
                    totals[1] += sum(n for _, n, _ in kept[1:])
                run = []
            run.append(batch)
        return {share: {"images_per_s": round(n / s) if s else None, "images": n} for share, (s, n) in sorted(found.items())}


def variant_options(options: list[str]) -> dict[str, float]:
    """A variant's options (`_si2`, `_l2`, `_pin`, ...) by name: the number after each, else 1."""
    return {option.rstrip("0123456789."): float(option.lstrip("abcdefghijklmnopqrstuvwxyz") or 1) for option in options}


def decode_variants(args: argparse.Namespace, pattern: str, device: torch.device, precision: str) -> dict:
    """The job in this process on the same files, its JPEG decoding set up as each of `args.variants` says:
    `<split>_<decoder>[_w<decode threads>][_p<preparing threads>][_t<CPU share's threads>][_si<GIL switch interval, ms>]
    [_tn<PyTorch's CPU threads>][_prime<width>][_grow<blocks>][_simplejpeg][_graphs][_nofull][_trace][_pin][_hm][_hp][_lc][_la<n>]`,
    split `climb` (the job's own) or `share<fraction on the CPU>`, decoder `nvjpeg`, `hardware` (nvImageCodec's
    hardware decoder, nvjpeg for what it refused) or `both` (half of each batch to each, at once:
    `side_by_side`); the CPU's
    share decoded as the job does (nvImageCodec's CPU decoder where installed), or by simplejpeg threads;
    `_prime<width>`: the decoder first given a batch of width x 3/4 width noise JPEGs (nvjpeg's buffers
    then start large); `_graphs`: the model loaded with `--compile cuda_graphs` (else as the job loads
    it, once for all);
    `_grow<n>`: n blocks of a decoded 640x480 image made and freed on the preparing stream first;
    `_nofull`: no automatic full collections; `_pin`: the launching thread on a core of its own
    (`own_core`); `_hm`, `_hp`: the model's stream or the preparing stream of high priority, `_lc`: the
    collecting stream of the model's (`stream_priorities`); `_la<n>`: n batches launched and waiting
    for the collecting thread at most (`pipeline._LAUNCHED_AHEAD`); `_trace`: under PyTorch's profiler, written to
    trace-<name>.json (`trace_gaps.py` reads it). Each variant's full collections are recorded, with
    what the oldest generation held; host-<name>.json has when each batch and each collection came, each
    GPU decode call's time, each batch's time in the model's prepare, launch and collect, and the CUDA
    allocator's and the process's counts at each batch (`ALLOCATOR_COUNTS`, `PROCESS_COUNTS`)."""
    from batch_predict import JobSpec, pipeline, run

    models: dict[str, Any] = {}
    engines = hardware_decoder(device)
    decoders = {"nvjpeg": nvjpeg_decoder(device),
                "hardware": falling_back([d for d in (engines, nvjpeg_decoder(device)) if d is not None], device)}
    if engines is not None:
        decoders["both"] = side_by_side(decoders["nvjpeg"], engines, device)
    found = {}
    for name in args.variants.split(","):
        split_name, decoder_name, *options = name.split("_")
        settings = variant_options(options)
        compile_mode = "cuda_graphs" if "graphs" in settings else "none"
        if compile_mode not in models:
            models[compile_mode] = load_model(ModelSettings(
                model_dir=args.yolox, model_spec=args.spec, device=str(device), precision=precision,
                batch_size=args.batch, compile=compile_mode))
        model = models[compile_mode]
        split = RecordedSplit.named(split_name)
        model.decode_split = split
        on_host = simplejpeg_host_decoder(usable_cpus()) if "simplejpeg" in settings else None
        decode_calls: list[tuple[float, float, float]] = []
        model._preprocessor.jpeg_decoder = split_decoder(
            timed_calls(decoders[decoder_name], decode_calls), split, device, on_host=on_host,
            threads=int(settings["t"]) if "t" in settings else None)
        if "grow" in settings and model._streams._prepare is not None:
            # PyTorch's caching allocator keeps a freed block for the stream it was made on: blocks the
            # size of a decoded 640x480 image, made and freed on the preparing stream, which nvjpeg's
            # outputs are allocated on, are there for the job's first batches instead of new segments.
            with torch.cuda.stream(model._streams._prepare):
                blocks = [torch.empty(480 * 640 * 3, dtype=torch.uint8, device=device) for _ in range(int(settings["grow"]))]
            del blocks
        if "prime" in settings:  # a batch of large JPEGs first, so that nvjpeg's buffers start large
            width = int(settings["prime"])
            decoders[decoder_name]([noise_jpeg(width * 3 // 4, width)] * args.batch)
        prefix = args.work / f"variant-{name}"
        spec = JobSpec(input_file_patterns=(pattern,), input_file_format="tfrecord", model_dir=args.yolox,
                       model_spec=args.spec, output_result_prefix=str(prefix), output_error_prefix=f"{prefix}-errors",
                       batch_size=args.batch, precision=precision, overwrite=True,
                       num_decode_workers=int(settings.get("w", 0)))
        stages = timed_stages(model)
        preparing_threads = pipeline._JPEG_PREPARING_THREADS
        pipeline._JPEG_PREPARING_THREADS = int(settings.get("p", preparing_threads))
        interval = sys.getswitchinterval()
        sys.setswitchinterval(settings.get("si", interval * 1e3) / 1e3)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(int(settings.get("tn", torch_threads)))
        gc_pauses: list[tuple] = []
        thresholds = gc.get_threshold()
        if "nofull" in settings:
            gc.set_threshold(thresholds[0], thresholds[1], 10**9)
        gc.callbacks.append(collections_timer(gc_pauses, census=True))
        trace = torch.profiler.profile(activities=_traced(device)) if "trace" in settings else contextlib.nullcontext()
        pinned = own_core(model) if "pin" in settings else contextlib.nullcontext()
        priorities = stream_priorities(model, "hm" in settings, "hp" in settings, "lc" in settings)
        found_done = collect_finds_done(model)
        launched_ahead = pipeline._LAUNCHED_AHEAD
        pipeline._LAUNCHED_AHEAD = int(settings.get("la", launched_ahead))
        modules = set(sys.modules)
        started = time.perf_counter()
        try:
            with trace, pinned, priorities:
                summary = run(spec, model=model)
        finally:
            pipeline._JPEG_PREPARING_THREADS = preparing_threads
            pipeline._LAUNCHED_AHEAD = launched_ahead
            untimed(model, stages)
            sys.setswitchinterval(interval)
            torch.set_num_threads(torch_threads)
            gc.callbacks.pop()
            gc.set_threshold(*thresholds)
        if isinstance(trace, torch.profiler.profile):
            trace.export_chrome_trace(str(args.out / f"trace-{name}.json"))
        found[name] = {"seconds": round(time.perf_counter() - started, 2), "records": summary.records_read,
                       **end_to_end.steady_state(Path(f"{prefix}-job/committed"), 1),
                       "split": split.describe(), "sent_to_cpu": split.sent_to_cpu,
                       "rates_by_share": split.rates_by_share(),
                       "modules_imported": sorted({m.split(".")[0] for m in set(sys.modules) - modules}),
                       "full_collections": [p if p[0] < 0 else (p[0], round(p[1], 1), p[2]) for p in gc_pauses if p[0] < 0 or p[1] > 2]}
        (args.out / f"host-{name}.json").write_text(json.dumps({
            "batches_collected_at": split.collected_at, "collections": [p for p in gc_pauses if p[0] >= 0],
            "decode_calls": decode_calls, **{f"{stage}_calls": calls for stage, calls in stages.items()},
            "collect_found_done": found_done,
            "allocator": split.allocator, "process": split.process}))
        (args.out / f"batches-{name}.json").write_text(json.dumps(split.batches))
        log.info("%s: %s", name, found[name])
    return found


def _traced(device: torch.device) -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    return activities + [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else activities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--nvimgcodec", help="folder holding nvImageCodec and nvjpeg (added to PYTHONPATH for its runs)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-job")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-job-work"))
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--frcnn_units", type=int, default=10, help="units the Faster R-CNN job cuts its one input file into")
    parser.add_argument("--only", default="", help="comma-separated names of measurements to run (default: all)")
    parser.add_argument("--variants", default="climb_nvjpeg,share0_nvjpeg,climb_hardware,share0.25_hardware,share1.0_hardware",
                        help="decode_variants' runs, comma-separated (see decode_variants)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    separate_cuda_queues()  # before this process first uses its GPU, as the job does: its in-process figures are the job's
    if args.quick:
        args.images, args.files, args.batch, args.seconds = 512, 4, 16, 0.5
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(args.out / "gpu_job.log"), logging.StreamHandler(sys.stdout)])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    half = "fp16" if cuda else "bf16"
    gpus = torch.cuda.device_count()
    if args.nvimgcodec:
        sys.path.insert(0, args.nvimgcodec)
    results = Results(args.out / "gpu_job.json", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": gpus, "cpus": os.cpu_count(),
        "python": sys.version.split()[0], **cpu_topology(), "images": args.images, "files": args.files, "batch": args.batch,
    })
    wanted = set(filter(None, args.only.split(",")))

    def measure(name: str, fn) -> None:
        if not wanted or name in wanted:
            results.measure(name, fn)

    inputs = args.work / "inputs"
    paths = sorted(inputs.glob("bench-*.tfrecord"))
    if len(paths) != args.files:
        paths = make_inputs(args.photos, inputs, args.images, args.files)
    pattern = str(inputs / "bench-*.tfrecord")

    measure("model_optimized", lambda: ceiling.yolox_model_only(args.yolox, device, args.batch, half, args.seconds))
    measure("model_as_the_job_runs_it", lambda: ceiling.yolox_model_only(
        args.yolox, device, args.batch, half, args.seconds, optimized=False, frozen=True))
    measure("model_unfrozen", lambda: ceiling.yolox_model_only(
        args.yolox, device, args.batch, half, args.seconds, optimized=False))
    if cuda:
        measure("model_cuda_graph", lambda: ceiling.yolox_model_only(
            args.yolox, device, args.batch, half, args.seconds, optimized=False, frozen=True, cuda_graph=True))
    if cuda:
        measure("decoder_agreement", lambda: decoder_agreement(args, device))

    measure("decode_variants", lambda: decode_variants(args, pattern, device, half))

    cli = ["--input_file_patterns", pattern, "--input_file_format", "tfrecord", "--model_dir", args.yolox,
           "--model_spec", args.spec, "--batch_size", str(args.batch), "--precision", half]
    log_path = args.out / "cli.log"
    hardware = {"PYTHONPATH": os.pathsep.join([args.nvimgcodec, os.environ.get("PYTHONPATH", "")])} if args.nvimgcodec else {}
    runs = [("job_hardware_decoder", hardware, 1), ("job_nvjpeg", {}, 1)]
    if cuda:
        runs += [("job_hardware_decoder_cuda_graphs", hardware, 1), ("job_nvjpeg_cuda_graphs", {}, 1),
                 # every kernel loaded when CUDA starts, not at its first launch: one suspect of a
                 # process's first job running slower than the jobs after it (docs/benchmarks.md, 0g)
                 ("job_nvjpeg_eager_modules", {"CUDA_MODULE_LOADING": "EAGER"}, 1)]
    if gpus > 1:
        runs += [(f"job_hardware_decoder_x{gpus}", hardware, gpus), (f"job_nvjpeg_x{gpus}", {}, gpus)]
    for name, env, workers in runs:
        if name.startswith("job_hardware") and not hardware:
            continue
        flags = ["--compile", "cuda_graphs"] if name.endswith("cuda_graphs") else []
        measure(name, lambda n=name, e=env, w=workers, f=flags: end_to_end.run_cli(cli + f, args.work / n, w, log_path, env=e))

    # Faster R-CNN: its own resize inside the network, so the job only decodes, and the model dominates.
    frcnn_batch = 32 if cuda else 2
    frcnn_args = {} if cuda else {"min_size": 320, "max_size": 320, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 100}
    # On the GPU, every image of the job's file; on the CPU (`--quick`), two batches of them.
    frcnn_jpegs = encoded_images(paths[:1], args.images if cuda else 2 * frcnn_batch)
    measure(f"frcnn_model_{half}", lambda: ceiling.fasterrcnn_model_only(
        device, frcnn_batch, half, args.seconds, jpegs=frcnn_jpegs, **frcnn_args))
    measure(f"frcnn_model_{half}_random_pixels", lambda: ceiling.fasterrcnn_model_only(
        device, frcnn_batch, half, args.seconds, **frcnn_args))
    frcnn_cli = ["--input_file_patterns", str(paths[0]), "--input_file_format", "tfrecord",
                 "--model_dir", str(ceiling.fasterrcnn_model_file(args.work / "frcnn", **frcnn_args)),
                 "--batch_size", str(frcnn_batch), "--precision", half, "--num_output_shards", str(args.frcnn_units)]
    measure(f"job_frcnn_{half}", lambda: end_to_end.run_cli(frcnn_cli, args.work / "job_frcnn", 1, log_path))
    if hardware:
        measure(f"job_frcnn_{half}_hardware_decoder", lambda: end_to_end.run_cli(
            frcnn_cli, args.work / "job_frcnn_hardware", 1, log_path, env=hardware))

    model = ceiling.load_yolox(args.yolox, device)
    measure("dataloader_uint8_fp16_whole_pass", lambda: baselines.dataloader_script(
        "yolox", model, device, paths, args.work / "dl.jsonl", args.batch, None, workers=args.files, half=cuda))
    measure("per_image_loop", lambda: baselines.per_image_loop(
        "yolox", ceiling.load_yolox(args.yolox, device), device, paths, args.work / "loop.jsonl", args.seconds))
    print_table(results, gpus, half)


def print_table(results: Results, gpus: int, half: str) -> None:
    f = results.figure
    model = max(filter(None, [f(name) for name in ("model_optimized", "model_as_the_job_runs_it", "model_unfrozen",
                                                    "model_cuda_graph")]), default=None)
    jobs = ("job_hardware_decoder", "job_nvjpeg", "job_hardware_decoder_cuda_graphs", "job_nvjpeg_cuda_graphs",
            "job_nvjpeg_eager_modules")
    best = max(filter(None, [f(name, "steady_per_s") for name in jobs]), default=None)
    whole = max(filter(None, [f(name, "whole_command_per_s") for name in jobs]), default=None)
    ratios = {
        "job steady / model alone (best)": (best, model),
        "job steady / DataLoader script": (best, f("dataloader_uint8_fp16_whole_pass")),
        "job whole command / DataLoader script": (whole, f("dataloader_uint8_fp16_whole_pass")),
        "job steady / per-image loop": (best, f("per_image_loop")),
        f"x{gpus} steady / x1 steady, hardware decoder": (
            f(f"job_hardware_decoder_x{gpus}", "steady_per_s"), f("job_hardware_decoder", "steady_per_s")),
        f"x{gpus} steady / x1 steady, nvjpeg": (f(f"job_nvjpeg_x{gpus}", "steady_per_s"), f("job_nvjpeg", "steady_per_s")),
        "Faster R-CNN job steady / model alone": (f(f"job_frcnn_{half}", "steady_per_s"), f(f"frcnn_model_{half}")),
        "Faster R-CNN job steady, hardware decoder / model alone": (
            f(f"job_frcnn_{half}_hardware_decoder", "steady_per_s"), f(f"frcnn_model_{half}")),
    }
    results.data["ratios"] = {k: (round(a / b, 3) if a and b else None) for k, (a, b) in ratios.items()}
    results._save()
    print(json.dumps(results.data, indent=1))


if __name__ == "__main__":
    main()
