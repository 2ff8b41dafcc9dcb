"""Every path a job writes under its output prefixes, in one place, for its writers and readers.

    <result prefix>-NNNNN-of-NNNNN.<ext>        result shards (.jsonl, .parquet, .json for coco)
    <error prefix>-NNNNN-of-NNNNN.jsonl         error shards
    <result prefix>.sqlite                      results and errors, for --output_format sqlite
    <result prefix>-summary.json                the job's accounting, once every unit is committed
    <result prefix>-timeline.jsonl              a timeline written whole (by other tools)
    <result prefix>-report.html                 `batch-predict report`'s page
    <result prefix>-visualized/                 --visualize pictures
    <result prefix>-job/job.json                what job this is (jobstate)
    <result prefix>-job/committed/NNNNN-of-NNNNN.json   one commit record per unit
    <result prefix>-job/timeline/NNNNN-of-NNNNN.jsonl   each committed unit's timeline
    <any of the files>.<token>.partial          the file being written; renamed into place when whole
    <either prefix>.probe-<token>.partial       written and removed at start: the prefix is writable

Shards are named as by Beam, the Kubeflow job and Vertex AI: unit index and unit count, five
digits each.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

#: Endings of result shards; error shards always end in .jsonl.
SHARD_EXTENSIONS = ("jsonl", "parquet", "json")


def shard(prefix: str, index: int, count: int, extension: str = "jsonl") -> str:
    """`<prefix>-00000-of-00004.jsonl`."""
    return f"{prefix}-{index:05d}-of-{count:05d}.{extension}"


def partial(path: str, token: str) -> str:
    """The temporary name `path` is written under. It ends in neither .jsonl nor .json, so globs
    for outputs never pick it up."""
    return f"{path}.{token}.partial"


def probe(prefix: str, token: str = "") -> str:
    """The empty file written under `prefix` to learn, before any input is read, that the job can
    write there. Without a token, the start of every such name, for finding those a kill left."""
    return partial(prefix, f"probe-{token}") if token else f"{prefix}.probe-"


def canonical(url: str) -> str:
    """One spelling per location, so that `out/x` and `./out/x/` are the same job."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError):  # a scheme fsspec cannot open here: its loader will say so
        return url.rstrip("/")
    return fs.unstrip_protocol(root.rstrip("/"))


def find_shards(prefix: str, extensions: tuple[str, ...] = SHARD_EXTENSIONS, *, partial_only: bool = False) -> list[str]:
    """The shard files under `prefix` that exist, whatever their count, in order; with
    `partial_only`, only those still being written (or left by a killed attempt).

    One listing of the prefix's folder, rather than one request per shard, since object
    stores charge by request.
    """
    fs, root = fsspec.core.url_to_fs(prefix)
    parent, base = posixpath.split(root)
    written = re.escape(base) + r"-\d{5,}-of-\d{5,}\.(" + "|".join(map(re.escape, extensions)) + ")"
    temporary = r"\.[0-9a-z-]+\.partial"
    pattern = re.compile(written + (temporary if partial_only else ""))
    try:
        listing = fs.ls(parent or ".", detail=False)
    except FileNotFoundError:
        return []
    local = isinstance(fs, LocalFileSystem)
    return sorted(p if local else fs.unstrip_protocol(p) for p in listing if pattern.fullmatch(posixpath.basename(p)))


#: What follows a prefix in the name of something a job writes (shards, temporary files, the
#: summary, the job folder...): how an input that is one of the job's own outputs is recognised.
_OWNED = re.compile(
    r"(-\d{5,}-of-\d{5,}\.[a-z]+|-summary\.json|-timeline\.jsonl|-report\.html|\.sqlite)(\.[0-9a-z-]+\.partial)?"
    r"|(-job|-visualized)/.*|\.sqlite-(journal|wal|shm)|\.probe-[0-9a-f]+\.partial"
)


_UNIT_FILE = re.compile(r"(\d{5,})-of-(\d{5,})\.json")


def committed_unit(name: str) -> tuple[int, int] | None:
    """(unit index, unit count) of a commit record's file name (`OutputLayout.commit_record`), else None."""
    match = _UNIT_FILE.fullmatch(posixpath.basename(name))
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one job's outputs. Readers that know only the result prefix (`report`,
    `evaluate`) leave the rest to its defaults."""

    result_prefix: str
    error_prefix: str | None = None
    result_extension: str = "jsonl"

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The result prefix, and the error prefix where there is one."""
        return tuple(filter(None, (self.result_prefix, self.error_prefix)))

    def owns(self, path: str) -> bool:
        """Whether `path` is named as one of this job's outputs, under either prefix."""
        path = canonical(path)
        for prefix in self.prefixes:
            prefix = canonical(prefix)
            if path.startswith(prefix) and _OWNED.fullmatch(path[len(prefix):]):
                return True
        return False

    def result_shard(self, index: int, count: int) -> str:
        return shard(self.result_prefix, index, count, self.result_extension)

    def error_shard(self, index: int, count: int) -> str:
        if self.error_prefix is None:
            raise ValueError("this layout was made without an error prefix")
        return shard(self.error_prefix, index, count)

    @property
    def database(self) -> str:
        return f"{self.result_prefix}.sqlite"

    @property
    def summary(self) -> str:
        return f"{self.result_prefix}-summary.json"

    @property
    def timeline(self) -> str:
        return f"{self.result_prefix}-timeline.jsonl"

    @property
    def report(self) -> str:
        return f"{self.result_prefix}-report.html"

    @property
    def visualized(self) -> str:
        return f"{self.result_prefix}-visualized"

    @property
    def job_dir(self) -> str:
        return f"{self.result_prefix}-job"

    @property
    def job_record(self) -> str:
        return f"{self.job_dir}/job.json"

    @property
    def committed_dir(self) -> str:
        return f"{self.job_dir}/committed"

    @property
    def timeline_dir(self) -> str:
        return f"{self.job_dir}/timeline"

    def commit_record(self, index: int, count: int) -> str:
        return f"{self.committed_dir}/{index:05d}-of-{count:05d}.json"

    def unit_timeline(self, index: int, count: int) -> str:
        return f"{self.timeline_dir}/{index:05d}-of-{count:05d}.jsonl"
