"""Where a GPU's time went in a PyTorch profiler trace of the job (`gpu_job.py`'s `_trace` variants).

    python benchmarks/trace_gaps.py slim trace-share0_nvjpeg_trace.json      # -> slim-....json.gz
    python benchmarks/trace_gaps.py report slim-trace-share0_nvjpeg_trace.json.gz

A whole 40,000-image job traces to about 300 MB; `slim` keeps the GPU's events, host CUDA calls of
50 us or more and host ops of 300 us or more (a few MB, gzipped). `report` prints, for each CUDA
stream, how long it was busy and its kernels by time; for the busiest stream (the model's), the
idle stretches between its kernels, by length, with the kernel that ended each; and each host
thread's CUDA calls by time (the syncs that hold a thread).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path

_GPU = ("kernel", "gpu_memcpy", "gpu_memset")
_CUDA_CALLS = ("cuda_runtime", "cuda_driver")
_HOST_OPS = ("cpu_op", "python_function", "user_annotation")


def slim(path: Path) -> Path:
    events = json.loads(path.read_text())["traceEvents"]
    kept = []
    for event in events:
        kind, duration = event.get("cat", ""), event.get("dur", 0)
        if kind in _GPU or (kind in _CUDA_CALLS and duration >= 50) or (kind in _HOST_OPS and duration >= 300):
            slimmed = {k: event[k] for k in ("name", "ts", "dur", "tid", "pid", "cat") if k in event}
            if "stream" in event.get("args", {}):
                slimmed["args"] = {"stream": event["args"]["stream"]}
            kept.append(slimmed)
        elif event.get("ph") == "M":
            kept.append(event)
    out = path.with_name(f"slim-{path.name}.gz")
    with gzip.open(out, "wt", compresslevel=6) as stream:
        json.dump({"traceEvents": kept}, stream)
    return out


def report(path: Path, top: int = 8) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as stream:
        events = json.load(stream)["traceEvents"]
    gpu = [e for e in events if e.get("cat") in _GPU]
    streams: dict[object, list[dict]] = collections.defaultdict(list)
    for event in gpu:
        streams[event.get("args", {}).get("stream")].append(event)
    start, end = min(e["ts"] for e in gpu), max(e["ts"] + e["dur"] for e in gpu)
    print(f"GPU events over {(end - start) / 1e6:.2f} s")
    by_busy = sorted(streams.items(), key=lambda item: -sum(e["dur"] for e in item[1]))
    for stream_id, stream_events in by_busy:
        busy = sum(e["dur"] for e in stream_events)
        print(f"stream {stream_id}: {len(stream_events)} events, busy {busy / 1e6:.3f} s")
        names: collections.Counter = collections.Counter()
        for event in stream_events:
            names[event["name"][:80]] += event["dur"]
        for name, duration in names.most_common(top):
            print(f"    {duration / 1e6:7.3f} s  {name}")
    model_stream = sorted(by_busy[0][1], key=lambda e: e["ts"])
    gaps, reached = [], model_stream[0]["ts"] + model_stream[0]["dur"]
    for event in model_stream[1:]:
        if event["ts"] > reached:
            gaps.append((event["ts"] - reached, event["name"][:60]))
        reached = max(reached, event["ts"] + event["dur"])
    print(f"stream {by_busy[0][0]} idle between its kernels: {sum(g for g, _ in gaps) / 1e6:.3f} s")
    for low, high in ((0, 200), (200, 1_000), (1_000, 10_000), (10_000, 100_000), (100_000, float("inf"))):
        within = [g for g, _ in gaps if low <= g < high]
        print(f"    {low / 1e3:g}-{high / 1e3:g} ms: {len(within)} stretches, {sum(within) / 1e6:.3f} s")
    after = collections.Counter(name for gap, name in gaps if gap >= 1_000)
    print("    stretches of 1 ms or more ended by:", after.most_common(3))
    calls: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") in _CUDA_CALLS:
            calls[(event["tid"], event["name"])] += event["dur"]
            counts[(event["tid"], event["name"])] += 1
    print("host CUDA calls of 50 us or more, by thread:")
    for (thread, name), duration in calls.most_common(top):
        print(f"    thread {thread}: {name} {counts[(thread, name)]} calls, {duration / 1e6:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("slim", "report"))
    parser.add_argument("traces", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.traces:
        if args.action == "slim":
            print(slim(path))
        else:
            report(path)


if __name__ == "__main__":
    main()
