"""Work units: the job cut into pieces that are each read, predicted and committed whole.

Unit i of N writes output shard i of N (`<prefix>-0000i-of-0000N.jsonl`): a shard is the
output of exactly one unit, so shard names are the same in every run of a job, and a
rerun knows from the unit's commit record alone whether shard i is done. Units are a pure
function of the input files and the shard count, so every process of a job (a rerun, a
pod of a Kubernetes Indexed Job, a Ray task) computes the same ones without talking to
the others.

With N shards and F input files:
- N <= F: each unit reads a contiguous run of whole files, runs balanced by bytes (by count
  where each file is one record: image files);
- N > F: each unit reads one byte range of one file; files are cut so that the largest
  range is as small as can be (a gzip file cannot be split; shards left over stay empty).
A record belongs to the range its first byte lies in and keeps its index in the whole file,
so keys, and the union of all shards, do not depend on N.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..records import Record, FailedRecord
from .fetch import fetch_all
from .formats import ReadOptions, input_formats, read_file
from .sources import InputFile

#: `--num_output_shards 0` means one unit per input file, up to this many: beyond it,
#: units group files, since each unit costs a commit record and two output files.
AUTO_MAX_UNITS = 10_000
#: ... and, where each file is one record (image files), one unit per this many files.
AUTO_FILES_PER_UNIT = 1_000



@dataclass(frozen=True)
class Slice:
    """The records of `file` whose first byte lies in [start, end); `end=None` reads to the end."""

    file: InputFile
    start: int = 0
    end: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"file": self.file.url, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Unit:
    """Unit `index` of `count`: what it reads, and (by its index) which shard it writes."""

    index: int
    count: int
    slices: tuple[Slice, ...]


def num_units(num_output_shards: int, num_files: int, one_record_per_file: bool = False) -> int:
    """The shard count a job runs with: as asked, or (0, the default) one per input file, or one
    per `AUTO_FILES_PER_UNIT` files where each file is one record."""
    if num_output_shards:
        return num_output_shards
    wanted = -(-num_files // AUTO_FILES_PER_UNIT) if one_record_per_file else num_files
    return max(1, min(wanted, AUTO_MAX_UNITS))


def plan_units(files: Sequence[InputFile], input_format: str, num_output_shards: int) -> list[Unit]:
    """The job's units, in shard order; the same for the same files, sizes and shard count."""
    chosen = input_formats()[input_format]
    count = num_units(num_output_shards, len(files), chosen.one_record_per_file)
    if count <= len(files):
        weights = [1] * len(files) if chosen.one_record_per_file else [f.size for f in files]
        groups = [tuple(Slice(f) for f in group) for group in _group_files(files, weights, count)]
    else:
        groups = _split_files(files, count, splittable=chosen.splittable)
    return [Unit(index, count, slices) for index, slices in enumerate(groups)]


def units_for_worker(units: Sequence[Unit], worker_index: int, worker_count: int) -> list[Unit]:
    """The units worker `worker_index` of `worker_count` runs: every `worker_count`-th one.

    Striding rather than cutting the list into blocks gives each worker a similar mix of
    files, and is what a Kubernetes Indexed Job pod computes from `JOB_COMPLETION_INDEX`.
    """
    if not 0 <= worker_index < worker_count:
        raise ValueError(f"worker index {worker_index} is outside 0..{worker_count - 1}")
    return [unit for unit in units if unit.index % worker_count == worker_index]


def read_unit(unit: Unit, input_format: str, options: ReadOptions = ReadOptions()) -> Iterator[Record | FailedRecord]:
    """Every record of the unit, errors included: in file order, but for records that are files or
    URLs of their own, which are read `options.read_workers` at a time and come as they arrive."""
    items = (item for piece in unit.slices for item in read_file(piece.file, input_format, piece.start, piece.end, options))
    yield from fetch_all(items, options.read_workers, options.max_record_bytes)


def _group_files(files: Sequence[InputFile], weights: Sequence[int], count: int) -> list[list[InputFile]]:
    """`count` non-empty contiguous runs of files, cut where their weights reach each 1/count."""
    total = sum(weights)
    groups: list[list[InputFile]] = []
    taken = done = 0
    for group in range(count):
        if group == count - 1:
            groups.append(list(files[taken:]))
            break
        target = total * (group + 1) / count
        end = taken + 1
        done += weights[taken]
        # Take a file while its middle is before the target, leaving one per later group.
        while len(files) - end > count - group - 1 and done + weights[end] / 2 < target:
            done += weights[end]
            end += 1
        groups.append(list(files[taken:end]))
        taken = end
    return groups


def _split_files(files: Sequence[InputFile], count: int, splittable: bool) -> list[tuple[Slice, ...]]:
    """`count` units from fewer files: each file in byte ranges, as equal in size as whole ranges allow.

    Every file starts with one range; each further unit goes to the file whose ranges are
    then the largest, which minimises the largest range.
    """
    parts = [1] * len(files)
    if splittable:
        heap: list[tuple[float, int]] = [(-f.size, i) for i, f in enumerate(files) if f.size > 0]
        heapq.heapify(heap)
        for _ in range(count - len(files) if heap else 0):
            _, i = heapq.heappop(heap)
            parts[i] += 1
            heapq.heappush(heap, (-files[i].size / parts[i], i))
    units: list[tuple[Slice, ...]] = []
    for file, k in zip(files, parts):
        starts = [file.size * j // k for j in range(k)]
        ends: list[int | None] = [*starts[1:], None]
        units.extend((Slice(file, start, end),) for start, end in zip(starts, ends))
    return units + [()] * (count - len(units))
