"""Find the input files: every file the patterns match, with the file system that reads it.
What is in them is read by the formats (`formats`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import SetupError
from ..records import safe_text

_GLOB_CHARS = frozenset("*?[")


class NoInputError(SetupError, FileNotFoundError):
    """An input pattern matched no file."""


@dataclass(frozen=True)
class InputFile:
    """One matched input file, with the file system that reads it and its size in bytes
    (0 when not known: such a file is never split into byte ranges)."""

    url: str
    fs: fsspec.AbstractFileSystem
    path: str
    size: int = 0


def expand_patterns(patterns: Iterable[str], storage: Callable[[str], dict] | None = None) -> list[InputFile]:
    """Every file matched by the patterns, sorted and without repeats.

    Raises `NoInputError` naming the first pattern that matches nothing, so that a typo
    fails the job before any work rather than silently shrinking it. `storage(pattern)` gives the
    fsspec options of the file system that lists and reads a pattern's files.
    """
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern, **(storage(pattern) if storage else {}))
        try:
            found = fs.glob(path, detail=True) if _GLOB_CHARS.intersection(path) else {path: fs.info(path)}
        except FileNotFoundError:
            found = {}
        except OSError as exc:  # a symlink loop, a permission: named, not a traceback
            raise NoInputError(f"cannot read input {pattern!r}: {exc}") from None
        matched = {p: info for p, info in found.items() if info.get("type") == "file"}
        if not matched:
            raise NoInputError(f"no input file matches {pattern!r}")
        for p in sorted(matched):
            if safe_text(p) != p:
                raise NoInputError(f"input file name {safe_text(p)!r} is not valid UTF-8 (the lines naming "
                                   "its records could not be written); rename it")
            url = p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p)
            files.setdefault(url, InputFile(url, fs, p, int(matched[p].get("size") or 0)))
    return sorted(files.values(), key=lambda f: f.url)
