"""`batch-predict pack`: turn loose image files into the sharded inputs the job reads.

The Kubeflow example left this step to a blog post. Packing many small images into a few
large files is what makes a collection fast to read from a bucket; the shards written here
are exactly what `--input_file_format` of the same name reads back.

Images are copied byte for byte, never decoded or re-encoded: the job judges each one, and a
file that is not an image becomes an error line there, with its key.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from ..errors import SetupError
from ..inputs.formats import pack_formats
from ..inputs.sources import InputFile
from ..outputs.layout import shard

RecordKind = Literal["example", "raw"]
RECORD_KINDS: tuple[str, ...] = ("example", "raw")

#: Image files a folder contributes; globs and lists take whatever they name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})

#: With no `num_shards`, about this many images go in one shard: a few hundred MB of
#: typical photos, the shard size TensorFlow's input guide recommends.
IMAGES_PER_SHARD = 1000

_GLOB_CHARS = frozenset("*?[")


class PackError(SetupError, ValueError):
    """The images to pack cannot be found, or their keys would collide."""


@dataclass(frozen=True)
class PackItem:
    """One image to pack: its key in the job's outputs, and where its bytes are."""

    key: str
    file: InputFile


@dataclass(frozen=True, slots=True)
class _Loaded:
    """An image read and serialized by a worker, or why it could not be read."""

    item: PackItem
    payload: bytes | None
    size: int = 0
    error: str = ""


@dataclass
class PackSummary:
    """What a pack wrote, and which images it could not read."""

    images: int = 0
    bytes_read: int = 0
    shards: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # url -> why
    wall_time_s: float = 0.0


def shard_paths(output_prefix: str, num_shards: int, output_format: str) -> list[str]:
    """`<prefix>-00000-of-00004.tfrecord`: the job's own shard naming, with the format's extension."""
    packing = pack_formats()[output_format].packing
    assert packing is not None
    return [shard(output_prefix, i, num_shards, packing.suffix) for i in range(num_shards)]


def find_images(inputs: Sequence[str] = (), list_files: Sequence[str] = ()) -> list[PackItem]:
    """The images named by folders, globs, single files and list files, each with its key.

    Keys: a folder's images are keyed by their path below the folder, a glob's by their path
    below the glob's last fixed folder, a single file by its name, and a list file's lines as
    written. Two different images with one key fail here, since their results could not be
    told apart; the same image named twice is packed once.
    """
    items: dict[str, PackItem] = {}
    for found in [*(_expand(i) for i in inputs), *(_read_list(f) for f in list_files)]:
        for item in found:
            other = items.setdefault(item.key, item)
            if other.file.url != item.file.url:
                raise PackError(f"two images would share the key {item.key!r}: {other.file.url} and {item.file.url}")
    if not items:
        raise PackError("no images to pack: give folders, globs, files or --list files")
    return list(items.values())


def _expand(pattern: str) -> list[PackItem]:
    fs, path = fsspec.core.url_to_fs(pattern)
    if _GLOB_CHARS.intersection(path):
        root = _fixed_folder(path)
        paths = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        root = path.rstrip("/")
        paths = [p for p in fs.find(path) if posixpath.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    elif fs.isfile(path):
        root = posixpath.dirname(path)
        paths = [path]
    else:
        raise PackError(f"{pattern!r} is neither a folder, a glob nor a file")
    if not paths:
        raise PackError(f"no image matches {pattern!r}")
    return [PackItem(_relative(p, root), _input_file(fs, p)) for p in sorted(paths)]


def _fixed_folder(path: str) -> str:
    """The folder of a glob up to its first wildcard: `a/b/*/c*.jpg` -> `a/b`."""
    parts = path.split("/")
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS.intersection(part))
    return "/".join(parts[:fixed])


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root else path


def _input_file(fs: fsspec.AbstractFileSystem, path: str) -> InputFile:
    url = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
    return InputFile(url, fs, path)


def _read_list(list_file: str) -> list[PackItem]:
    try:
        with fsspec.open(list_file, "rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as exc:
        raise PackError(f"--list: cannot read {list_file!r}: {exc}") from None
    items = []
    for line in lines:
        if line and not line.startswith("#"):
            fs, path = fsspec.core.url_to_fs(line)
            items.append(PackItem(line, _input_file(fs, path)))
    return items


def pack(
    items: Sequence[PackItem],
    output_prefix: str,
    output_format: str = "tfrecord",
    *,
    record_kind: RecordKind = "example",
    num_shards: int = 0,
    num_workers: int = 16,
    progress: bool = False,
) -> PackSummary:
    """Write `items` into shards, in order: shard k holds items[k*n//num_shards : (k+1)*n//num_shards].

    Images are read on `num_workers` threads (bucket reads are latency-bound), at most a few
    ahead of their shard's writer, so memory stays bounded; shards are written side by side,
    one per core, since compressing and encoding are CPU work. An image that cannot be read
    is left out and listed in the summary's `failed`.
    """
    if output_format not in pack_formats():
        raise PackError(f"unknown output format {output_format!r}; expected one of {', '.join(pack_formats())}")
    packing = pack_formats()[output_format].packing
    assert packing is not None  # pack_formats() holds only formats that can be packed
    if record_kind not in RECORD_KINDS:
        raise PackError(f"unknown record kind {record_kind!r}; expected one of {', '.join(RECORD_KINDS)}")
    if num_workers < 1 or num_shards < 0:
        raise PackError("num_workers must be at least 1 and num_shards at least 0")
    started = time.perf_counter()
    num_shards = min(num_shards or -(-len(items) // IMAGES_PER_SHARD), len(items)) or 1
    summary = PackSummary(shards=shard_paths(output_prefix, num_shards, output_format))
    _make_parent(output_prefix)

    def load(item: PackItem) -> _Loaded:
        try:
            with item.file.fs.open(item.file.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return _Loaded(item, None, error=f"{type(exc).__name__}: {exc}")
        return _Loaded(item, packing.encode(item.key, data, record_kind), len(data))

    bounds = [shard * len(items) // num_shards for shard in range(num_shards + 1)]

    def write_shard(shard: int) -> PackSummary:
        done = PackSummary(shards=[summary.shards[shard]])
        try:
            with fsspec.open(done.shards[0], "wb") as raw, packing.shard(raw) as write:
                for loaded in _bounded_ordered_map(load, items[bounds[shard]:bounds[shard + 1]], readers, 2 * num_workers):
                    bar.update()
                    if loaded.payload is None:
                        done.failed[loaded.item.file.url] = loaded.error
                        continue
                    write(loaded.item.key, loaded.payload)
                    done.images += 1
                    done.bytes_read += loaded.size
        except OSError as exc:  # reading errors were caught by `load`: this is the output
            raise PackError(f"cannot write {done.shards[0]!r}: {exc}") from None
        return done

    with ThreadPoolExecutor(num_workers, thread_name_prefix="batch-predict-pack-read") as readers, \
            ThreadPoolExecutor(min(num_shards, os.cpu_count() or 1), thread_name_prefix="batch-predict-pack-write") as writers, \
            tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for done in writers.map(write_shard, range(num_shards)):
            summary.images += done.images
            summary.bytes_read += done.bytes_read
            summary.failed.update(done.failed)
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    return summary


def _make_parent(output_prefix: str) -> None:
    fs, root = fsspec.core.url_to_fs(output_prefix)
    parent = posixpath.dirname(root)
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise PackError(f"cannot write under {output_prefix!r}: {exc}") from None


def _bounded_ordered_map(fn: Callable, items: Iterable, pool: ThreadPoolExecutor, depth: int) -> Iterator:
    """`map(fn, items)` on a pool, in order, with at most `depth` calls in flight."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
