"""Image files and file-list entries read many at a time from real servers on 127.0.0.1: an S3 API
server (moto's server mode) and an HTTP server, every failure one error line."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest

from batch_predict.inputs.fetch import ATTEMPTS, Fetch, fetch_all
from batch_predict.records import FailedRecord, Record
from batch_predict.runners.local import run

from conftest import photo_job
from input_writers import write_file_list
from toymodels import MeanColourModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_bucket(monkeypatch, photos_dir):
    """A new bucket holding the photos under `photos/`, on moto's S3 server, which s3fs is pointed at.
    (moto's servers in one process share their buckets, so each test makes its own.)"""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    bucket = f"imgs-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    for photo in sorted(photos_dir.iterdir()):
        fs.pipe(f"{bucket}/photos/{photo.name}", photo.read_bytes())
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _job(tmp_path: Path, pattern: str, fmt: str):
    base = photo_job(tmp_path)
    return dataclasses.replace(base, input_file_patterns=(pattern,), input_file_format=fmt, num_output_shards=2,
                               num_read_workers=8)


def _lines(out: Path, kind: str) -> dict[str, dict]:
    return {line["key"]: line for p in sorted(out.glob(f"{kind}-*-of-*.jsonl")) for line in map(json.loads, p.open())}


def test_image_files_in_an_s3_bucket_give_what_the_local_files_give(s3_bucket, tmp_path, photos_dir):
    remote = run(_job(tmp_path / "s3", f"{s3_bucket}/photos/*", "image_files"), model=MeanColourModel())
    local = run(_job(tmp_path / "local", str(photos_dir / "*"), "image_files"), model=MeanColourModel())
    assert local.predicted == remote.predicted
    count = len(list(photos_dir.iterdir()))
    assert (remote.predicted, remote.failed, remote.units_committed) == (count, 0, 2)
    from_s3 = {k.rsplit("/", 1)[-1]: v["detections"] for k, v in _lines(tmp_path / "s3" / "out", "results").items()}
    from_disk = {k.rsplit("/", 1)[-1]: v["detections"] for k, v in _lines(tmp_path / "local" / "out", "results").items()}
    assert from_s3 == from_disk
    assert all(key.startswith(f"{s3_bucket}/photos/") for key in _lines(tmp_path / "s3" / "out", "results"))


def test_a_file_list_of_s3_urls_makes_a_missing_object_one_error_line(s3_bucket, tmp_path):
    listed = [f"{s3_bucket}/photos/bus.jpg", f"{s3_bucket}/photos/zidane.jpg", f"{s3_bucket}/photos/gone.jpg"]
    write_file_list(listed, tmp_path / "list.txt")
    summary = run(_job(tmp_path, str(tmp_path / "list.txt"), "file_list"), model=MeanColourModel())
    assert (summary.predicted, summary.failed) == (2, 1)
    (error,) = _lines(tmp_path / "out", "errors").values()
    assert (error["key"], error["error_type"], error["record_index"]) == (listed[2], "FileNotFoundError", 2)


class _Photos(SimpleHTTPRequestHandler):
    """Serves a folder; anything under /broken/ answers 500, anything under /slow/ answers
    nothing for two seconds; both are counted."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        if self.path.startswith(("/broken/", "/slow/")):
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
            if self.path.startswith("/slow/"):
                time.sleep(2)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
                self.send_error(500, "broken on purpose")
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_photos(photos_dir):
    pytest.importorskip("aiohttp")
    handler = type("Handler", (_Photos,), {"hits": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(photos_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    server.shutdown()


def test_a_file_list_of_urls_fetches_each_and_a_404_or_a_failing_server_is_an_error_line(http_photos, tmp_path):
    base, hits = http_photos
    urls = [f"{base}/bus.jpg", f"{base}/zidane.jpg", f"{base}/nothing-here.jpg", f"{base}/broken/x.jpg"]
    write_file_list(urls, tmp_path / "urls.csv", keys=["bus", "zidane", "missing", "broken"])
    summary = run(_job(tmp_path, str(tmp_path / "urls.csv"), "file_list"), model=MeanColourModel())
    assert (summary.predicted, summary.failed) == (2, 2)
    errors = _lines(tmp_path / "out", "errors")
    assert errors["missing"]["error_type"] == "FileNotFoundError"
    assert f"after {ATTEMPTS} tries" in errors["broken"]["message"] and hits == {"/broken/x.jpg": ATTEMPTS}
    assert set(_lines(tmp_path / "out", "results")) == {"bus", "zidane"}


def test_a_url_whose_server_does_not_answer_in_time_is_an_error_line_after_its_tries(http_photos, tmp_path):
    base, hits = http_photos
    write_file_list([f"{base}/bus.jpg", f"{base}/slow/x.jpg"], tmp_path / "urls.txt")
    spec = dataclasses.replace(_job(tmp_path, str(tmp_path / "urls.txt"), "file_list"), read_timeout_seconds=0.3)
    summary = run(spec, model=MeanColourModel())
    assert (summary.predicted, summary.failed) == (1, 1)
    (error,) = _lines(tmp_path / "out", "errors").values()
    assert f"after {ATTEMPTS} tries" in error["message"] and hits == {"/slow/x.jpg": ATTEMPTS}
    # The server answers 500 after two seconds; only a client that stopped waiting says it timed out.
    assert "Timeout" in error["error_type"], error


class _Slow:
    """A file system whose one path `slow` answers only when released: a stalled request."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def cat_file(self, path: str, start: int, end: int) -> bytes:
        if path == "slow":
            self.release.wait(10)
        return path.encode()[start:end]


def test_one_slow_object_does_not_hold_up_the_others():
    fs = _Slow()
    items = [Fetch("slow", "list", 0, fs, "slow")] + [Fetch(f"k{i}", "list", i, fs, f"p{i}") for i in range(1, 20)]
    got = fetch_all(items, workers=4, max_bytes=100)
    first = [next(got) for _ in range(19)]  # all the others come while the slow one is still out
    fs.release.set()
    rest = list(got)
    assert sorted(r.key for r in first) == sorted(f"k{i}" for i in range(1, 20))
    assert [(r.key, r.encoded) for r in rest] == [("slow", b"slow")]
    assert all(isinstance(r, Record) for r in first + rest)


def test_an_object_over_the_record_limit_is_an_error_line_not_read_whole():
    fs = _Slow()
    (failed,) = fetch_all([Fetch("k", "list", 0, fs, "0123456789")], workers=2, max_bytes=4)
    assert isinstance(failed, FailedRecord) and failed.error_type == "RecordTooLarge"


def test_an_s3_listing_gets_a_connection_for_each_read_worker_and_keeps_the_users_settings(s3_bucket, monkeypatch):
    from batch_predict.inputs.fetch import filesystem_options
    from batch_predict.inputs.sources import expand_patterns

    monkeypatch.setitem(fsspec.config.conf, "s3", {**fsspec.config.conf["s3"], "config_kwargs": {"retries": {"max_attempts": 7}}})
    files = expand_patterns([f"{s3_bucket}/photos/*"], lambda url: filesystem_options(url, 32, 60.0))
    config = files[0].fs.config_kwargs
    assert config["max_pool_connections"] == 32 and "retries" in config  # s3fs spells the retries its own way
    assert filesystem_options(str(Path("/data/x.jpg")), 32, 60.0) == {}
