"""Records whose bytes are a file or URL of their own, fetched many at a time.

An object store answers one GET in tens of milliseconds whatever its size, so images kept one
per object are read with many requests in flight (`--num_read_workers`), ahead of the model.
Results are handed on as they arrive, so one slow object holds up only its own worker; at most
`workers` are in flight or waiting to be taken, which bounds the memory they hold.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import fsspec

from ..records import FailedRecord, Record

#: Tries of a fetch that fails for a reason that may pass (a timeout, a reset, a server error).
ATTEMPTS = 3
#: Errors that another try cannot mend.
_FINAL = (FileNotFoundError, IsADirectoryError, PermissionError, ValueError)


@dataclass(frozen=True)
class Fetch:
    """A record whose bytes are the whole file `path` of file system `fs` (an fsspec one)."""

    key: str
    source: str
    index: int
    fs: Any
    path: str


def filesystem_options(url: str, workers: int, timeout: float) -> dict[str, Any]:
    """fsspec options that let `workers` requests to `url`'s store be in flight at once, each waiting
    at most `timeout` seconds for the server.

    s3fs keeps 10 connections by default, so more workers would only queue for one (measured:
    docs/benchmarks.md section 5); aiohttp, under fsspec's HTTP, waits five minutes by default,
    where the object stores' clients time out and retry on their own. A user's own fsspec
    configuration for S3 is kept, and only ever given more connections.
    """
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol in ("s3", "s3a"):
        configured = fsspec.config.conf.get("s3", {}).get("config_kwargs", {})
        connections = max(workers, configured.get("max_pool_connections", 10))
        return {"config_kwargs": {**configured, "max_pool_connections": connections}}
    if protocol in ("http", "https"):
        import aiohttp  # fsspec's HTTP file system is built on it

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)}}
    return {}


def fetch_all(
    items: Iterable[Record | FailedRecord | Fetch], workers: int, max_bytes: int, retry_wait: float = 0.5,
) -> Iterator[Record | FailedRecord]:
    """`items` with every `Fetch` read into a `Record`, or into an error line where it cannot be:
    up to `workers` at once, each handed on as it arrives. Other items pass straight through."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        pending: set[Future] = set()
        for item in items:
            if not isinstance(item, Fetch):
                yield item
                continue
            if len(pending) >= workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(pool.submit(fetch_one, item, max_bytes, retry_wait))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)


def fetch_one(item: Fetch, max_bytes: int, retry_wait: float = 0.5) -> Record | FailedRecord:
    """The record `item` names, or its error line: missing, refused, too large, or failing after `ATTEMPTS` tries."""
    attempt = 1
    while True:
        try:
            # One ranged GET: opening a file first would cost a HEAD per object wherever the listing
            # did not leave its size in the file system's cache (file lists, always).
            data = item.fs.cat_file(item.path, start=0, end=max_bytes + 1)
            break
        except Exception as exc:  # network libraries raise their own types; to the job all are data
            if isinstance(exc, _FINAL):
                return _failed(item, exc, "")
            if attempt == ATTEMPTS:
                return _failed(item, exc, f" (after {ATTEMPTS} tries)")
            time.sleep(retry_wait * attempt)
            attempt += 1
    if len(data) > max_bytes:
        return FailedRecord.too_large(item.key, item.source, item.index, f"file of more than {max_bytes} bytes", max_bytes)
    return Record(item.key, item.source, item.index, encoded=data)


def _failed(item: Fetch, exc: Exception, note: str) -> FailedRecord:
    message = f"cannot read {item.fs.unstrip_protocol(item.path)}{note}: {exc}"
    return FailedRecord(item.key, item.source, item.index, type(exc).__name__, message, "read")
