"""What planning a job costs as its inputs grow toward 10^8 image files: a simulation on the CPU.

A fake listing of N names (as `expand_patterns` returns them: one `InputFile` each, all on one
file system) is made, then cut into units (`plan_units`, `image_files`: 1,000 files a unit),
and the job's identity (`jobstate.job_identity`: a hash of every input and its size, as job.json stores it)
is built and serialized. Each step's time and the process's peak memory are measured at each N,
so the figures at 10^8 can be read off a straight line and checked against a machine's memory.

    PYTHONPATH=src:benchmarks python benchmarks/planning.py --out /tmp/planning --counts 100000,1000000,3000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import fsspec

from batch_predict.inputs.sources import InputFile
from batch_predict.inputs.units import plan_units


def one_size(count: int) -> dict:
    """Listing, planning and identity for `count` fake image files, in this process."""
    from batch_predict.outputs.jobstate import job_identity
    from batch_predict.spec import JobSpec

    fs = fsspec.filesystem("memory")
    started = time.perf_counter()
    files = [InputFile(f"s3://bucket/images/{i:09d}.jpg", fs, f"bucket/images/{i:09d}.jpg", 60_000) for i in range(count)]
    listed = time.perf_counter()
    units = plan_units(files, "image_files", 0)
    planned = time.perf_counter()
    spec = JobSpec(input_file_patterns=("s3://bucket/images/*.jpg",), input_file_format="image_files",
                   model_dir="m", output_result_prefix="/tmp/r", output_error_prefix="/tmp/e")
    job = json.dumps(job_identity(spec, files, units))
    identified = time.perf_counter()
    return {
        "files": count, "units": len(units), "listing_objects_s": round(listed - started, 2),
        "plan_units_s": round(planned - listed, 2), "job_json_s": round(identified - planned, 2),
        "job_json_mb": round(len(job) / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--counts", default="100000,1000000,3000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process measuring one count
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    found = []
    for count in map(int, args.counts.split(",")):
        # Each count in a fresh process, so that its peak memory is its own.
        done = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--one", str(count)],
                              capture_output=True, text=True, check=True)
        found.append(json.loads(done.stdout))
        print(found[-1], flush=True)
    (args.out / "planning.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                        "results": found}, indent=2))


if __name__ == "__main__":
    main()
