"""What a job has committed, kept beside its results, so that a rerun resumes it.

Under `<output_result_prefix>-job/` (`layout.OutputLayout`):
- `job.json`: what job this is (the settings that shape its output, and its input files
  with their sizes). A rerun with other settings or other inputs would mix two jobs'
  lines in one set of shards, so it is refused; `--overwrite` starts over instead.
- `committed/NNNNN-of-NNNNN.json`: one per committed unit, written after the unit's
  shards are in place, holding its counts. A unit is done exactly when its record exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec

from ..errors import SetupError
from ..inputs.sources import InputFile
from ..inputs.units import Unit
from ..spec import JobSpec
from .files import claim_file, read_files, remove, remove_partials, write_atomically
from .layout import canonical, committed_unit
from .reading import load_job_record
from .sinks import JobSummary, Sink, UnitCounts
from .verify import hash_into, problems

log = logging.getLogger("batch_predict")

_FORMAT_VERSION = 1

#: The settings that change what a job writes. Batch size, device, decode threads and the
#: error-rate limit do not, so a rerun may change them (a smaller batch after running out
#: of memory, another GPU).
_OUTPUT_SETTINGS = (
    "input_file_format", "model_dir", "signature_name", "label_map",
    "score_threshold", "output_raw", "max_image_pixels", "max_record_bytes", "output_error_prefix", "model_spec",
    "image_column", "key_column",
    "model_options",
    "output_format", "precision",
)


#: The files whose contents, not only whose paths, make a job: edit one and it is another job.
_HASHED_FILES = ("model_dir", "model_spec", "label_map")


class JobConflict(SetupError, ValueError):
    """The output prefixes hold another job's outputs; the message says what differs."""


def job_identity(spec: JobSpec, files: Sequence[InputFile], units: Sequence[Unit]) -> dict[str, Any]:
    """The settings and inputs that determine a job's output, as stored in `job.json`."""
    settings: dict[str, Any] = {name: getattr(spec, name) for name in _OUTPUT_SETTINGS}
    for name in ("model_dir", "label_map", "output_error_prefix", "model_spec"):
        if settings[name]:
            settings[name] = canonical(settings[name])
    settings["model_options"] = list(spec.model_options)  # as job.json gives it back
    settings["num_output_shards"] = len(units)
    listing = "".join(f"{f.url}\t{f.size}\n" for f in files)
    inputs = {
        "files": len(files),
        "bytes": sum(f.size for f in files),
        "sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
    }
    contents = {name: content_digest(getattr(spec, name)) for name in _HASHED_FILES if getattr(spec, name)}
    return {"settings": settings, "inputs": inputs, "contents": contents}


def content_digest(url: str) -> str | None:
    """SHA-256 of a file's bytes, or of a folder's files (each one's path in it, and bytes); None
    when it cannot be read (the model's loader says why, at load)."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
        paths = sorted(fs.find(root)) if fs.isdir(root) else [root]
        digest = hashlib.sha256()
        for path in paths:
            digest.update(posixpath.relpath(path, root).encode("utf-8", "backslashreplace") + b"\0")
            with fs.open(path, "rb") as f:
                hash_into(digest, f)
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    said = []
    for name, now in current["settings"].items():
        then = stored.get("settings", {}).get(name)
        if then != now:
            said.append(f"--{name} was {_shown(then)}, now {_shown(now)}")
    then_in, now_in = stored.get("inputs", {}), current["inputs"]
    if then_in != now_in:
        said.append(
            f"the input files differ: {then_in.get('files')} files of {then_in.get('bytes')} bytes then, "
            f"{now_in['files']} files of {now_in['bytes']} bytes now"
        )
    then_contents = stored.get("contents")  # absent from job.json of versions before contents were hashed
    if then_contents is not None:
        said += [f"the contents of --{name} changed" for name, now in current["contents"].items()
                 if then_contents.get(name) != now]
    return said


class JobState:
    """The commit records of one job under its result prefix, and the sink its units commit into."""

    def __init__(self, sink: Sink, units: Sequence[Unit], identity: dict[str, Any]) -> None:
        self.sink = sink
        self.layout = sink.layout
        self.units = list(units)
        self.identity = identity
        self._fs, self._committed_dir = fsspec.core.url_to_fs(self.layout.committed_dir)
        self._stored: dict[str, Any] | None = None
        self._overwrite = False
        self._distrusted: set[int] = set()

    @classmethod
    def open(cls, spec: JobSpec, files: Sequence[InputFile], units: Sequence[Unit], sink: Sink) -> "JobState":
        """The job's state, checked but not yet changed (`begin` writes).

        Fails before any input is read when an output location cannot be written
        (`OutputError`) or, unless `spec.overwrite`, when the prefixes hold a different job
        (`JobConflict`).
        """
        state = cls(sink, units, job_identity(spec, files, units))
        sink.check()
        state._overwrite = spec.overwrite
        state._stored = state._stored_identity()
        if not spec.overwrite and state._stored is not None and (said := _differences(state._stored, state.identity)):
            raise JobConflict(
                f"{state.layout.job_record} records a different job writing to these output prefixes ("
                + "; ".join(said)
                + "). Rerun with the same arguments to resume it, pass --overwrite to start over, "
                "or choose other output prefixes."
            )
        return state

    def begin(self) -> None:
        """Record the job in `job.json`, first removing an earlier job's outputs if overwriting.

        Called once the model has loaded, so that a job failing at setup leaves the
        prefixes as they were. `job.json` is claimed, not overwritten: if another job wrote one
        since `open` looked, this job goes on only if it is the same job (the pods of one
        Indexed Job), else it is refused before its first unit (`JobConflict`).
        """
        overwriting = self._overwrite
        if overwriting:
            self._start_over()
        if self._stored is None or overwriting:
            text = json.dumps({"version": _FORMAT_VERSION, **self.identity}, indent=2)
            if not overwriting and not claim_file(self.layout.job_record, text):
                stored = self._stored_identity() or {}
                if said := _differences(stored, self.identity):
                    raise JobConflict(f"another job began writing to these output prefixes meanwhile "
                                      f"({'; '.join(said)}); choose other output prefixes")
            elif overwriting:
                write_atomically(self.layout.job_record, text)
            self._stored, self._overwrite = self.identity, False

    def joined(self) -> None:
        """Another process began this job (a worker's parent, after the worker's model loaded):
        this one only adds its commits to it."""
        self._stored, self._overwrite = self.identity, False

    def _stored_identity(self) -> dict[str, Any] | None:
        try:
            return load_job_record(self.layout.result_prefix)
        except ValueError as exc:
            raise JobConflict(f"{self.layout.job_record} is unreadable ({exc}); pass --overwrite to start over") from None

    def _start_over(self) -> None:
        """Remove every output of an earlier job under both prefixes, its records first."""
        layout = self.layout
        for path in (layout.committed_dir, layout.timeline_dir, layout.job_record, layout.summary):
            remove(path)
        self.sink.remove()

    def committed(self, verify: bool = False) -> dict[int, UnitCounts]:
        """{unit index: its counts} for every unit of this job committed so far, by any process.

        None yet when overwriting: what is there belongs to the job being replaced. A commit
        record that cannot be read does not count (its unit runs again), and with `verify`
        neither does one whose outputs are no longer as committed (`verify.problems`): this run
        redoes those units, and until it has, they do not count for it.
        """
        if self._overwrite:
            return {}
        records = self._records()
        if verify:
            for index, (path, record) in records.items():
                if found := problems(record.get("fingerprint")):
                    log.warning("unit %d is committed (%s) but %s; running it again", index, path, "; ".join(found))
                    self._distrusted.add(index)
        return {index: counts for index, (_, record) in records.items()
                if index not in self._distrusted and (counts := UnitCounts.from_json(record["counts"]))}

    def _records(self) -> dict[int, tuple[str, dict[str, Any]]]:
        """{unit index: (path, commit record)} of the records that can be read."""
        try:
            listing = self._fs.ls(self._committed_dir, detail=False)
        except FileNotFoundError:
            return {}
        wanted = {}
        for path in listing:
            unit = committed_unit(path)
            if unit is not None and unit[1] == len(self.units):
                wanted[path] = unit[0]
        found = {}
        for path, data in read_files(self._fs, wanted).items():
            try:
                record = json.loads(data)
                UnitCounts.from_json(record["counts"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s is not a readable commit record (%s: %s); its unit runs again",
                            path, type(exc).__name__, exc)
                continue
            found[wanted[path]] = (path, record)
        return found

    def _tidy(self) -> None:
        """Remove what writers killed mid-file left of the job's own files: commit records,
        timelines, job.json and the summary (the sink tidies its outputs)."""
        layout = self.layout
        remove_partials(layout.committed_dir)
        remove_partials(layout.timeline_dir)
        remove_partials(layout.job_dir, "job.json")
        folder, name = posixpath.split(layout.summary)
        remove_partials(folder, name)

    def commit(self, unit: Unit, counts: UnitCounts) -> None:
        """Record `unit` as done; its shards must already be in place."""
        result_path, error_path = self.sink.locations(unit)
        record = {
            "unit": unit.index,
            "of": unit.count,
            "slices": [piece.to_json() for piece in unit.slices],
            "result_file": result_path,
            "error_file": error_path,
            "counts": dataclasses.asdict(counts),
            "fingerprint": self.sink.fingerprint(unit),
        }
        write_atomically(self.layout.commit_record(unit.index, unit.count), json.dumps(record))
        self._distrusted.discard(unit.index)

    def summarize(self, files: int, wall_time_s: float, predicted_now: int, *, write: bool = True) -> JobSummary:
        """The counts of every committed unit; once all are, also written to `<prefix>-summary.json`
        (with `write`), after tidying what killed writers left.

        Wall time and speed are this run's; counts are the whole job's, whichever
        processes and reruns committed them.
        """
        committed = self.committed()
        summary = JobSummary.of_units(
            committed.values(),
            files=files,
            units=len(self.units),
            wall_time_s=round(wall_time_s, 3),
            images_per_second=round(predicted_now / wall_time_s, 2) if wall_time_s > 0 else 0.0,
        )
        if summary.complete:
            paths = [self.sink.locations(unit) for unit in self.units]
            summary.result_files = list(dict.fromkeys(r for r, _ in paths))  # one database serves every unit
            summary.error_files = list(dict.fromkeys(e for _, e in paths))
            if write:
                self.sink.tidy()
                self._tidy()
                write_atomically(self.layout.summary, json.dumps(summary.to_json(), indent=2))
        return summary


def _shown(value: Any) -> str:
    """A setting as the user gave it; None is a flag left to its default."""
    return "its default" if value is None else repr(value)
