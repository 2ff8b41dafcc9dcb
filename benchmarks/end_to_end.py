"""This project end to end: TFRecords of JPEGs to JSON lines, through the real CLI.

Two figures per run: the whole command (process start, model load, CUDA start included),
and the steady state, read off the times the units were committed: records of every unit
but each worker's first, over the time from each worker's first commit to the last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def run_cli(args: Sequence[str], prefix: Path, workers: int, log: Path, env: dict[str, str] | None = None) -> dict:
    """The CLI in a subprocess (`env` added to this process's environment); its throughput, whole
    and steady, its fixed cost (the whole command's time beyond what its images take at the
    steady rate) and when its first unit was committed."""
    command = [sys.executable, "-m", "batch_predict", *args,
               "--output_result_prefix", str(prefix), "--output_error_prefix", f"{prefix}-errors",
               "--num_workers", str(workers), "--overwrite"]
    started, started_at = time.perf_counter(), time.time()
    with open(log, "a") as stream:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stream, text=True, env={**os.environ, **(env or {})})
        stream.write(done.stdout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stdout[-400:]} (see {log})")
    summary = json.loads(Path(f"{prefix}-summary.json").read_text())
    committed = Path(f"{prefix}-job/committed")
    steady = steady_state(committed, workers)
    fixed = wall - summary["records_read"] / steady["steady_per_s"] if steady["steady_per_s"] else None
    first_commit = min(path.stat().st_mtime for path in committed.glob("*.json")) - started_at
    return {
        "records": summary["records_read"], "predicted": summary["predicted"], "failed": summary["failed"],
        "detections": summary["detections"], "command_s": round(wall, 2),
        "whole_command_per_s": round(summary["predicted"] / wall, 1),
        "fixed_cost_s": round(fixed, 2) if fixed is not None else None, "first_commit_s": round(first_commit, 2),
        **steady,
    }


#: Units each worker leaves out of the steady state: the first holds the start-up, the second
#: the first partial batch, a new input shape that a TorchScript graph spends seconds
#: re-specializing for (seen on the H200, docs/benchmarks.md).
WARMUP_UNITS = 2


def steady_state(committed: Path, workers: int) -> dict:
    """Throughput between commits, summed over workers: each worker's records after its warm-up
    units over the time from the last warm-up commit to its last commit.

    Units are dealt to workers by index modulo the worker count (`units_for_worker`), so
    each worker's commits are a chain; its first `WARMUP_UNITS` units are left out.
    Summing rates rather than dividing by the whole span keeps workers that start a second
    apart from counting as slower.
    """
    chains: dict[int, list[tuple[float, int]]] = {}
    for path in committed.glob("*.json"):
        record = json.loads(path.read_text())
        chains.setdefault(record["unit"] % workers, []).append((path.stat().st_mtime, record["counts"]["records_read"]))
    rate, records, spans = 0.0, 0, []
    for chain in chains.values():
        chain.sort()
        if len(chain) <= WARMUP_UNITS:
            continue
        span = chain[-1][0] - chain[WARMUP_UNITS - 1][0]
        counted = sum(n for _, n in chain[WARMUP_UNITS:])
        if span > 0:
            rate += counted / span
            records += counted
            spans.append(round(span, 3))
    return {"steady_per_s": round(rate, 1) if spans else None, "steady_records": records, "steady_s": spans}
