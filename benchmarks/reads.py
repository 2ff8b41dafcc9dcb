"""The job's concurrent read stage, on the CPU: image files, one per object, from an S3 server on loopback.

Images kept one per object are read `--num_read_workers` at a time (inputs/fetch.py). This
uploads `--objects` distinct JPEGs of about 20-80 KiB, cut from the shared photos, to moto's S3
server on 127.0.0.1 and reads them all back: with a plain sequential loop of `fsspec.open`, and
through the job's read stage (`expand_patterns` + `plan_units` + `read_unit` over every unit) at
each worker count, timing the one listing apart. Each is run again with the server holding
every request `--latency_ms` first (default 20), as a real object store answers in 10-50 ms
where loopback answers in under one. The server counts each measurement's requests, by method,
and both processes' CPU time per object says which side bounded it.

    PYTHONPATH=src:benchmarks python benchmarks/reads.py --photos ../shared/data/photos --out /tmp/reads
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import fsspec
import s3fs
from PIL import Image

from batch_predict.inputs.fetch import filesystem_options
from batch_predict.inputs.formats import ReadOptions
from batch_predict.inputs.sources import expand_patterns
from batch_predict.inputs.units import plan_units, read_unit
from batch_predict.records import FailedRecord
from run_all import Results

BUCKET = "bench"
METHODS = ("HEAD", "GET", "other")


def serve(port: Connection, latency_s: Any, counts: Any) -> None:
    """Moto's S3 server, holding each request `latency_s.value` seconds and counting it in `counts`.

    It runs in a process of its own: in the client's, its Python would share the GIL with the
    threads it is meant to serve, and the benchmark would measure the two fighting for it.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request costs the server more than the request
    app = DomainDispatcherApplication(create_backend_app)

    def slowed(environ: dict, start_response: Callable) -> Any:
        method = environ["REQUEST_METHOD"]
        with counts.get_lock():
            counts[METHODS.index(method) if method in METHODS else 2] += 1
        if latency_s.value:
            time.sleep(latency_s.value)  # a thread per request, as ThreadedMotoServer: waits overlap
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, slowed, threaded=True, request_handler=MotoRequestHandler)
    port.send(server.server_port)
    server.serve_forever()


def small_jpegs(photos: Path, count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs of 20-80 KiB: random crops of the photos, 320-640 px wide, quality 85."""
    rng = random.Random(seed)
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir()) if p.suffix in (".jpg", ".png")]
    found: list[bytes] = []
    while len(found) < count:
        photo = rng.choice(images)
        w, h = int(photo.width * rng.uniform(0.5, 1)), int(photo.height * rng.uniform(0.5, 1))
        x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
        width = rng.randint(320, 640)
        buffer = io.BytesIO()
        photo.crop((x, y, x + w, y + h)).resize((width, width * h // w)).save(buffer, format="JPEG", quality=85)
        if 20 << 10 <= buffer.tell() <= 80 << 10:
            found.append(buffer.getvalue())
    return found


class Server:
    """The server process, its latency (settable while it runs) and its request counts."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # the client's threads are not forked with it
        self.latency_s = context.Value("d", 0.0)
        self.counts = context.Array("q", len(METHODS))
        receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=serve, args=(send, self.latency_s, self.counts), daemon=True)
        self.process.start()
        self.endpoint = f"http://127.0.0.1:{receive.recv()}"

    def measure(self, fn: Callable[[], dict]) -> Callable[[], dict]:
        """`fn`, with the requests and CPU time it took per object added to its figures, and every
        file system dropped first, with its cached listings: each measurement lists and opens afresh."""
        def measured() -> dict:
            s3fs.S3FileSystem.clear_instance_cache()
            before, client, server = self.counts[:], time.process_time(), self.cpu_s()
            result = fn()
            made = [after - b for after, b in zip(self.counts[:], before)]
            read = result["objects"]
            # CPU per object tells which side bounds a run on this small VM; on a real store only the client's counts.
            return {**result, "requests_per_object": {m: round(n / read, 2) for m, n in zip(METHODS, made) if n},
                    "client_cpu_ms_per_object": round((time.process_time() - client) * 1e3 / read, 2),
                    "server_cpu_ms_per_object": round((self.cpu_s() - server) * 1e3 / read, 2)}
        return measured

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _rates(objects: int, size: int, seconds: float) -> dict:
    return {"objects": objects, "mb": round(size / 1e6, 1), "seconds": round(seconds, 2),
            "objects_per_s": round(objects / seconds, 1), "mb_per_s": round(size / 1e6 / seconds, 2)}


def sequential(urls: list[str], max_seconds: float) -> dict:
    """The plain loop, over the objects in order until `max_seconds` have passed."""
    size = read = 0
    started = time.perf_counter()
    for url in urls:
        with fsspec.open(url, "rb") as stream:
            size += len(stream.read())
        read += 1
        if time.perf_counter() - started > max_seconds:
            break
    return _rates(read, size, time.perf_counter() - started)


def job_reads(pattern: str, workers: int, shards: int) -> dict:
    """The job's read stage: one listing, its units, and every unit read `workers` at a time."""
    started = time.perf_counter()
    files = expand_patterns([pattern], lambda url: filesystem_options(url, workers, 60.0))  # as the job lists
    listed = time.perf_counter()
    size = failed = 0
    units = plan_units(files, "image_files", shards)
    for unit in units:
        for record in read_unit(unit, "image_files", ReadOptions(read_workers=workers)):
            if isinstance(record, FailedRecord):
                failed += 1
            else:
                size += len(record.encoded or b"")
    ended = time.perf_counter()
    return {"workers": workers, "units": len(units), "failed": failed, "list_s": round(listed - started, 3),
            **_rates(len(files), size, ended - listed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/photos")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--num_read_workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--num_output_shards", type=int, default=0, help="as the job's flag; 0: one unit per 1,000 images")
    parser.add_argument("--latency_ms", type=float, default=20, help="measure again, each request held this long; 0: not")
    parser.add_argument("--sequential_seconds", type=float, default=30, help="the sequential loop stops after this long")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("bench").setLevel(logging.INFO)  # run_all's measurements; not botocore's lines per client

    server = Server()
    # The job names no endpoint: it reaches this server as it would MinIO or GCS's S3 API, by the environment.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=server.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    jpegs = small_jpegs(args.photos, min(args.objects, 200))  # repeats are harmless: nothing on the way caches by content
    paths = [f"{BUCKET}/images/{i:06d}.jpg" for i in range(args.objects)]
    fs.pipe({path: jpegs[i % len(jpegs)] for i, path in enumerate(paths)})
    urls = [f"s3://{path}" for path in paths]
    sizes = sorted(len(j) for j in jpegs)

    results = Results(args.out / "reads.json", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "s3fs": s3fs.__version__, "command": " ".join(sys.argv), "objects": args.objects,
        "object_kib": {"min": sizes[0] >> 10, "median": sizes[len(sizes) // 2] >> 10, "max": sizes[-1] >> 10},
    })
    for latency_ms in sorted({0.0, args.latency_ms}):
        server.latency_s.value = latency_ms / 1e3
        suffix = f"_{latency_ms:g}ms" if latency_ms else ""
        results.measure(f"sequential{suffix}", server.measure(lambda: sequential(urls, args.sequential_seconds)))
        for workers in args.num_read_workers:
            results.measure(f"job_{workers}_workers{suffix}", server.measure(
                lambda: job_reads(f"s3://{BUCKET}/images/*.jpg", workers, args.num_output_shards)))
    server.process.terminate()


if __name__ == "__main__":
    main()
