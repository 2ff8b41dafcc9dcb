"""Each thread's CPU time through one command of the job: which threads the host's cores go to.

    PYTHONPATH=src:benchmarks python benchmarks/thread_cpu.py run --samples out.jsonl -- \\
        --input_file_patterns 'in/bench-*.tfrecord' --input_file_format tfrecord ...   # the CLI's flags
    python benchmarks/thread_cpu.py report out.jsonl --committed <result prefix>-job/committed

`run` runs the CLI in this process (`batch_predict.cli.main`, as `python -m batch_predict` does)
beside a daemon thread that reads, every `--every` seconds, each thread's user and system CPU
time and its voluntary and involuntary context switches from /proc/self/task, names it by its
Python thread's name (one not started by Python, PyTorch's or a codec's, by its kernel name), and
appends the sample as a JSON line as it goes: the CLI ends its process without the interpreter's
teardown. `report` sums each kind of thread (a pool's threads together) over the job's steady
window, from its second unit commit to its last, as `end_to_end.steady_state` counts it: seconds
of CPU a second of wall time (1.0 is a whole core), and the context switches a second. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from end_to_end import WARMUP_UNITS

_TICKS = os.sysconf("SC_CLK_TCK")


def _read_task(task: Path) -> tuple[str, float, int, int] | None:
    """(kernel name, CPU seconds, voluntary, involuntary switches) of one thread, None once it ended."""
    try:
        stat = (task / "stat").read_text()
        status = (task / "status").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat
    switches = dict(re.findall(r"^(voluntary_ctxt_switches|nonvoluntary_ctxt_switches):\s+(\d+)", status, re.M))
    return comm, cpu, int(switches.get("voluntary_ctxt_switches", 0)), int(switches.get("nonvoluntary_ctxt_switches", 0))


def _sample(out: Path, every: float) -> None:
    with out.open("a") as stream:
        while True:
            names = {thread.native_id: thread.name for thread in threading.enumerate()}
            threads = {}
            for task in Path("/proc/self/task").iterdir():
                found = _read_task(task)
                if found is not None:
                    comm, cpu, voluntary, involuntary = found
                    threads[task.name] = [names.get(int(task.name), f"native:{comm}"), cpu, voluntary, involuntary]
            stream.write(json.dumps({"t": time.time(), "threads": threads}) + "\n")
            stream.flush()
            time.sleep(every)


def run(samples: Path, every: float, cli_args: list[str]) -> None:
    samples.unlink(missing_ok=True)
    threading.Thread(target=_sample, args=(samples, every), name="thread-cpu-sampler", daemon=True).start()
    from batch_predict.cli import main

    sys.argv = ["batch-predict", *cli_args]
    main()


def _kind(name: str) -> str:
    """A pool's threads as one kind: `batch-predict-decode_3` -> `batch-predict-decode`."""
    return re.sub(r"_\d+$", "", name)


def report(samples: Path, committed: Path) -> dict:
    commits = sorted(path.stat().st_mtime for path in committed.glob("*.json"))
    begin, end = commits[WARMUP_UNITS - 1], commits[-1]
    lines = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    # Inside the window: a thread's CPU is read only while it lives, and the pools end with the job.
    first = min((s for s in lines if s["t"] >= begin), key=lambda s: s["t"])
    last = max((s for s in lines if s["t"] <= end), key=lambda s: s["t"])
    wall = last["t"] - first["t"]
    kinds: dict[str, list[float]] = {}
    for tid, (name, cpu, voluntary, involuntary) in last["threads"].items():
        before = first["threads"].get(tid, [name, 0.0, 0, 0])
        totals = kinds.setdefault(_kind(name), [0, 0.0, 0, 0])
        totals[0] += 1
        totals[1] += cpu - before[1]
        totals[2] += voluntary - before[2]
        totals[3] += involuntary - before[3]
    table = {kind: {"threads": n, "cores": round(cpu / wall, 3), "voluntary_per_s": round(v / wall),
                    "involuntary_per_s": round(i / wall)}
             for kind, (n, cpu, v, i) in sorted(kinds.items(), key=lambda item: -item[1][1])}
    return {"window_s": round(wall, 2), "cores_all_threads": round(sum(k[1] for k in kinds.values()) / wall, 2),
            "by_kind": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    running = commands.add_parser("run")
    running.add_argument("--samples", type=Path, required=True)
    running.add_argument("--every", type=float, default=0.2)
    running.add_argument("cli_args", nargs=argparse.REMAINDER)
    reporting = commands.add_parser("report")
    reporting.add_argument("samples", type=Path)
    reporting.add_argument("--committed", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args.samples, args.every, args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args)
    else:
        print(json.dumps(report(args.samples, args.committed), indent=1))


if __name__ == "__main__":
    main()
