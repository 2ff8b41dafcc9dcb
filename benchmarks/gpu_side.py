"""The job's GPU side alone: what lets JPEG decoding overlap the model.

The job prepares a batch (JPEG decode, preprocess) on one thread and CUDA stream, launches the
model on another thread and collects detections on a third. This runs exactly that, with
`TensorModel`'s own launch and collect, on JPEGs already in memory (no reading, no CPU
pipeline), so what it measures is the ceiling the GPU side sets, and what moves it:

- the model alone (launch and collect, one batch at a time), and the network alone;
- the staged loop with a batch prepared once and launched over and over (no decoding), and
  without collecting (only waiting for each batch);
- each way of decoding on the GPU (nvImageCodec's hardware engines as the job calls them, nvjpeg),
  alone and in the staged loop, with one and two preparing threads;
- a share of each batch decoded on the CPU by the job's own split decoder (`staged_*_split_*`)
  while the GPU decodes the rest;
- nvImageCodec sharing each batch between the JPEG engines and CUDA (or CPU Huffman) decoding,
  the model in a green context that leaves SMs to the decoders, on a stream of its own, as a
  CUDA graph, and the decoder with fewer CPU threads;
- a profile of the staged loop: CUDA API calls, and the kernels of each stream.

Run it with `CUDA_DEVICE_MAX_CONNECTIONS` set to 1, 8 (the driver's default) and 32 (what the
job sets) to see how the streams' sharing of hardware queues holds the decoders back.

    PYTHONPATH=src:benchmarks python benchmarks/gpu_side.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml --out /tmp/s
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import simplejpeg
import torch

import ceiling
from run_all import Results
from decoders import _cycle, _images, yolox_parser
from batch_predict.models import load_model
from batch_predict.models.decode_split import DecodeSplit, split_decoder
from engines import hardware_decoder, nvimgcodec_decoder
from batch_predict.models.device_decode import JpegDecoder, nvjpeg_decoder
from batch_predict.models.preprocess import Prepared, Preprocessor
from batch_predict.records import Record
from batch_predict.spec import ModelSettings

Prepare = Callable[[Sequence[Record]], Prepared]


def staged(model, prepares: Sequence[Prepare], take: Callable[[], list[Record]], seconds: float,
           collect: bool = True, launch: Callable | None = None) -> dict:
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
        launched.put((launch or model.launch)(batch))
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


def chunked(decoder: JpegDecoder, size: int) -> JpegDecoder:
    """`decoder` called on `size` images at a time."""
    return lambda jpegs: [image for at in range(0, len(jpegs), size) for image in decoder(jpegs[at : at + size])]


def python_beside(work: Callable[[], object], seconds: float) -> dict:
    """Iterations/s of a pure-Python loop in a second thread, alone and while `work` runs in a loop
    here: how much of the time `work` holds the GIL."""
    def count(stop: threading.Event, found: list) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        found.append(n)

    rates = []
    for busy in (False, True):
        stop, found = threading.Event(), []
        thread = threading.Thread(target=count, args=(stop, found))
        started = time.perf_counter()
        thread.start()
        while time.perf_counter() - started < seconds:
            if busy:
                work()
            else:
                time.sleep(0.01)
        stop.set()
        thread.join()
        rates.append(found[0] / (time.perf_counter() - started))
    return {"loop_per_s_alone": round(rates[0]), "loop_per_s_beside": round(rates[1]),
            "share_left": round(rates[1] / rates[0], 3)}


def preparer(model, device: torch.device, decoder: JpegDecoder, priority: int = 0) -> Prepare:
    """A batch's preparation on a stream of its own (of `priority`: below 0 is ahead of the model's),
    its JPEGs decoded by `decoder` (a share of them on CPU threads where it is the job's
    `split_decoder`)."""
    preprocessor = Preprocessor(model._preprocessor.spec, device, decoder, dtype=model._preprocessor.dtype)
    stream = torch.cuda.Stream(device, priority=priority)

    def prepare(records: Sequence[Record]) -> Prepared:
        with torch.inference_mode(), torch.cuda.stream(stream):
            batch = preprocessor.prepare(decoder([r.encoded for r in records]))
            ready = torch.cuda.Event()
            ready.record(stream)
        return dataclasses.replace(batch, ready=ready)

    return prepare


def engines_in_parallel(device: torch.device, parts: int, nvjpeg_share: float = 0.0) -> JpegDecoder:
    """Each call's JPEGs cut in `parts`, each decoded on the JPEG engines by a decoder of its own, on a
    thread and stream of its own, at the same time; with `nvjpeg_share`, that much of the batch on
    nvjpeg on the caller's thread meanwhile. Whether the engines' calls overlap when one waits."""
    decoders = [hardware_decoder(device) for _ in range(parts)]
    assert all(d is not None for d in decoders), "no JPEG engines here"
    streams = [torch.cuda.Stream(device) for _ in range(parts)]
    pool = ThreadPoolExecutor(parts)
    nvjpeg = nvjpeg_decoder(device)

    def run(i: int, jpegs: Sequence[bytes]):
        with torch.cuda.stream(streams[i]):
            images = list(decoders[i](jpegs))
            done = torch.cuda.Event()
            done.record(streams[i])
        return images, done

    def decode(jpegs: Sequence[bytes]):
        current = torch.cuda.current_stream(device)
        cut = int(len(jpegs) * nvjpeg_share)
        rest = jpegs[cut:]
        size = -(-len(rest) // parts)
        futures = [pool.submit(run, i, rest[i * size : (i + 1) * size]) for i in range(parts) if rest[i * size : (i + 1) * size]]
        found = list(nvjpeg(jpegs[:cut])) if cut else []
        for future in futures:
            images, done = future.result()
            current.wait_event(done)
            found += images
        return found

    return decode


def from_pinned_host(model, device: torch.device, records: Sequence[Record]) -> Prepare:
    """A batch whose pixels are in pinned host memory already, decoded once beforehand: copied
    over in one transfer and preprocessed, every batch. What the GPU side could reach were the CPU
    to decode every JPEG for free."""
    preprocessor = Preprocessor(model._preprocessor.spec, device, dtype=model._preprocessor.dtype)
    stream = torch.cuda.Stream(device)
    pixels = torch.stack([torch.from_numpy(simplejpeg.decode_jpeg(r.encoded, colorspace="RGB")) for r in records])
    host = pixels.pin_memory()

    def prepare(batch: Sequence[Record]) -> Prepared:
        with torch.inference_mode(), torch.cuda.stream(stream):
            images = host[: len(batch)].to(device, non_blocking=True).permute(0, 3, 1, 2)
            prepared = preprocessor.prepare(list(images))
            ready = torch.cuda.Event()
            ready.record(stream)
        return dataclasses.replace(prepared, ready=ready)

    return prepare


def shared_with(rest: str, load: float, policy: str) -> Callable[[torch.device], JpegDecoder | None]:
    """nvImageCodec splitting each batch: `load` of it on the JPEG engines, the rest on backend `rest`
    (GPU_ONLY: CUDA on the SMs; HYBRID_CPU_GPU: Huffman decoding on CPU threads), the share kept
    fixed or adapted by nvImageCodec to leave neither side idle (`policy`)."""
    return lambda device: nvimgcodec_decoder(device, lambda m: [
        m.Backend(m.BackendKind.HW_GPU_ONLY, load, getattr(m.LoadHintPolicy, policy)), m.Backend(getattr(m.BackendKind, rest)),
    ])


def traced(out: Path, run: Callable[[], dict]) -> dict:
    """`run` under torch.profiler: its trace (kernels of every stream, nvImageCodec's included) to
    `out` for a timeline viewer, and the busiest CUDA kernels and calls in the result."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = run()
    prof.export_chrome_trace(str(out))
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    (out.with_suffix(".txt")).write_text(table)
    calls = sorted(((e.key, e.count, round(e.self_cpu_time_total / 1e3, 1)) for e in prof.key_averages()
                    if e.key.startswith("cu")), key=lambda c: -c[2])
    return {**result, "cuda_calls_count_ms": calls[:14], "streams": kernels_by_stream(out)}


def kernels_by_stream(trace: Path) -> dict:
    """Per CUDA stream of a chrome trace: its kernels' count, busy time, span, and most frequent
    names; so a trace too large to keep still says where each library's kernels ran."""
    import collections
    import json

    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "kernel"]
    found: dict = {}
    for stream in sorted({e["args"].get("stream") for e in events}):
        mine = [e for e in events if e["args"].get("stream") == stream]
        start, end = min(e["ts"] for e in mine), max(e["ts"] + e["dur"] for e in mine)
        names = collections.Counter(e["name"][:60] for e in mine).most_common(4)
        found[str(stream)] = {"kernels": len(mine), "busy_ms": round(sum(e["dur"] for e in mine) / 1e3, 1),
                              "span_ms": round((end - start) / 1e3, 1), "names": names}
    trace.unlink()
    return found


def green_launch(model, device: torch.device, sms: int):
    """`model.launch` on a stream of a green context holding `sms` of the GPU's SMs: the model's
    kernels never take the rest, so the decoder's small kernels always find SMs free."""
    from torch.cuda.green_contexts import GreenContext

    try:
        context = GreenContext(num_sms=sms)
    except TypeError:  # PyTorch before 2.12
        context = GreenContext.create(sms, device.index or 0)
    if hasattr(context, "Stream"):
        stream = context.Stream()
    else:
        context.set_context()
        stream = torch.cuda.Stream(device)
        context.pop_context()

    def launch(prepared):
        with torch.cuda.stream(stream):
            return model.launch(prepared)

    launch.context = context  # the context lives as long as its stream is used
    return launch


def main() -> None:
    parser = yolox_parser(__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", default="", help="comma-separated names of measurements to run (default: all)")
    args = parser.parse_args()
    wanted = set(filter(None, args.only.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = Results(args.out / "gpu_side.json", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "batch": args.batch,
    })

    def measure(name: str, fn: Callable[[], dict]) -> None:
        if not wanted or name in wanted:
            results.measure(name, fn)

    records = [Record(f"r{i}", "mem", i, encoded=data) for i, data in enumerate(_images(args.photos, args.out, args.images))]
    take = _cycle(records, args.batch)
    model = load_model(ModelSettings(model_dir=args.yolox, model_spec=args.spec, device="cuda", precision="fp16",
                                     batch_size=args.batch))
    model.decode_split = None
    measure("network_alone", lambda: ceiling.yolox_model_only(args.yolox, device, args.batch, "fp16", args.seconds,
                                                             optimized=False, frozen=True))
    ready = model.prepare(take())
    measure("model_alone", lambda: alone(lambda r: model.collect(model.launch(ready)) and ready, take, args.seconds))
    measure("staged_without_decoding", lambda: staged(model, [lambda r: ready], take, args.seconds))

    measure("network_alone_unfrozen", lambda: ceiling.yolox_model_only(
        args.yolox, device, args.batch, "fp16", args.seconds, optimized=False))
    decoders = {"hardware": hardware_decoder, "nvjpeg": nvjpeg_decoder}
    for name, make in decoders.items():
        first = preparer(model, device, make(device))
        measure(f"prepare_alone_{name}", lambda p=first: alone(p, take, args.seconds))
        measure(f"staged_{name}", lambda p=first: staged(model, [p], take, args.seconds))
        measure(f"staged_{name}_without_collect", lambda p=first: staged(model, [p], take, args.seconds, collect=False))
        measure(f"staged_{name}_two_preparers", lambda p=first, m=make: staged(
            model, [p, preparer(model, device, m(device))], take, args.seconds))
        measure(f"staged_{name}_high_priority_prepare", lambda m=make: staged(
            model, [preparer(model, device, m(device), priority=-1)], take, args.seconds))
        for share in (0.125, 0.25, 0.5):
            measure(f"staged_{name}_split_{share}", lambda m=make, s=share: staged(model, [preparer(
                model, device, split_decoder(m(device), DecodeSplit(shares=(s,)), device))], take, args.seconds))
    for share in (0.25, 0.5, 0.75):
        measure(f"staged_engines_{share}_beside_nvjpeg", lambda s=share: staged(
            model, [preparer(model, device, engines_in_parallel(device, 1, 1 - s))], take, args.seconds))
    for parts in (2, 4, 8):
        measure(f"staged_engines_in_{parts}_parallel", lambda n=parts: staged(
            model, [preparer(model, device, engines_in_parallel(device, n))], take, args.seconds))
        measure(f"prepare_alone_engines_in_{parts}_parallel", lambda n=parts: alone(
            preparer(model, device, engines_in_parallel(device, n)), take, args.seconds))
    measure("staged_engines_in_4_parallel_quarter_nvjpeg", lambda: staged(
        model, [preparer(model, device, engines_in_parallel(device, 4, 0.25))], take, args.seconds))
    def with_float_copy_of_the_head() -> dict:
        """The staged loop with the YOLOX head copied to float32 before decoding, as before
        `decode_yolox` stopped making that copy: what the copy cost."""
        own = model._decoder
        model._decoder = lambda outputs, context: own(outputs.float(), context)
        try:
            return staged(model, [preparer(model, device, nvjpeg_decoder(device))], take, args.seconds)
        finally:
            model._decoder = own

    measure("staged_nvjpeg_head_copied_to_float32", with_float_copy_of_the_head)
    measure("staged_from_pinned_host", lambda: staged(model, [from_pinned_host(model, device, take())], take, args.seconds))
    for name, make in decoders.items():
        decoder, stream = make(device), torch.cuda.Stream(device)
        if decoder is None:  # the hardware decoder, where nvImageCodec is not installed
            continue
        preprocessor = Preprocessor(model._preprocessor.spec, device, dtype=model._preprocessor.dtype)

        def decode_only(records: Sequence[Record], d=decoder) -> Prepared:
            with torch.cuda.stream(stream):
                d([r.encoded for r in records])
            stream.synchronize()
            return ready

        with torch.cuda.stream(stream):
            decoded = [image.clone() for image in decoder([r.encoded for r in take()])]

        def preprocess_only(records: Sequence[Record]) -> Prepared:
            with torch.inference_mode(), torch.cuda.stream(stream):
                batch = preprocessor.prepare(decoded)
                done = torch.cuda.Event()
                done.record(stream)
            return dataclasses.replace(batch, ready=done)

        def same_in_float16(p=preprocessor) -> dict:
            as_float = Preprocessor(p.spec, device).prepare(decoded).inputs
            return {"dtype": str(p.dtype), "bit_identical": torch.equal(p.prepare(decoded).inputs, as_float.to(p.dtype))}

        measure(f"{name}_prepared_in_model_dtype_equals_float32_cast", same_in_float16)
        measure(f"staged_{name}_decode_only", lambda f=decode_only: staged(model, [f], take, args.seconds))
        measure(f"staged_{name}_preprocess_only", lambda f=preprocess_only: staged(model, [f], take, args.seconds))
    for name, make in decoders.items():
        decoder = make(device)
        measure(f"python_beside_{name}", lambda d=decoder: python_beside(
            lambda: [torch.cuda.synchronize(), d([r.encoded for r in take()])], args.seconds))
    measure("python_beside_model", lambda: python_beside(lambda: model.collect(model.launch(ready)), args.seconds))
    for size in (64, 32):
        measure(f"staged_hardware_chunks_of_{size}", lambda n=size: staged(
            model, [preparer(model, device, chunked(hardware_decoder(device), n))], take, args.seconds))
    for rest in ("GPU_ONLY", "HYBRID_CPU_GPU"):
        for load in (0.5, 0.75):
            for policy in ("FIXED", "ADAPTIVE_MINIMIZE_IDLE_TIME"):
                make = shared_with(rest, load, policy)
                name = f"staged_shared_{rest.lower()}_{load}_{policy.split('_')[0].lower()}"
                measure(name, lambda m=make: staged(model, [preparer(model, device, m(device))], take, args.seconds))
                measure(f"prepare_alone_shared_{rest.lower()}_{load}_{policy.split('_')[0].lower()}",
                        lambda m=make: alone(preparer(model, device, m(device)), take, args.seconds))

    def on_side_stream(stream=torch.cuda.Stream(device)):
        def launch(prepared):
            with torch.cuda.stream(stream):
                return model.launch(prepared)
        return launch

    measure("staged_hardware_side_stream", lambda: staged(
        model, [preparer(model, device, hardware_decoder(device))], take, args.seconds, launch=on_side_stream()))
    measure("staged_nvjpeg_side_stream", lambda: staged(
        model, [preparer(model, device, nvjpeg_decoder(device))], take, args.seconds, launch=on_side_stream()))
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    for spare in (4, 8, 16):
        measure(f"staged_hardware_model_leaves_{spare}_sms", lambda n=spare: staged(
            model, [preparer(model, device, hardware_decoder(device))], take, args.seconds,
            launch=green_launch(model, device, sm_count - n)))
        measure(f"staged_nvjpeg_model_leaves_{spare}_sms", lambda n=spare: staged(
            model, [preparer(model, device, nvjpeg_decoder(device))], take, args.seconds,
            launch=green_launch(model, device, sm_count - n)))
    measure("staged_without_decoding_model_leaves_8_sms", lambda: staged(
        model, [lambda r: ready], take, args.seconds, launch=green_launch(model, device, sm_count - 8)))
    @functools.cache
    def graphed():
        """The model as `--compile cuda_graphs` runs it, its first batch captured."""
        loaded = load_model(ModelSettings(model_dir=args.yolox, model_spec=args.spec, device="cuda", precision="fp16",
                                          batch_size=args.batch, compile="cuda_graphs"))
        loaded.decode_split = None
        loaded.collect(loaded.launch(loaded.prepare(take())))
        return loaded

    measure("staged_without_decoding_cuda_graph", lambda: staged(graphed(), [lambda r: ready], take, args.seconds))
    measure("staged_hardware_cuda_graph", lambda: staged(
        graphed(), [preparer(graphed(), device, hardware_decoder(device))], take, args.seconds))
    measure("staged_nvjpeg_cuda_graph", lambda: staged(
        graphed(), [preparer(graphed(), device, nvjpeg_decoder(device))], take, args.seconds))
    for threads in (2, 6):
        measure(f"staged_hardware_{threads}_cpu_threads", lambda n=threads: staged(model, [preparer(
            model, device, nvimgcodec_decoder(device, lambda m: [m.Backend(m.BackendKind.HW_GPU_ONLY)], threads=n))],
            take, args.seconds))
    measure("trace_prepare_alone_hardware", lambda: traced(args.out / "trace_prepare_alone_hardware.json", lambda: alone(
        preparer(model, device, hardware_decoder(device)), take, 1.0)))
    measure("trace_staged_hardware", lambda: traced(args.out / "trace_staged_hardware.json", lambda: staged(
        model, [preparer(model, device, hardware_decoder(device))], take, 1.0)))

if __name__ == "__main__":
    main()
