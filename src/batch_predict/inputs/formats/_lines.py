"""Lines of a binary stream, a too-long one skipped unread: shared by the line-based formats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def lines(stream: Any, max_bytes: int, end: int | None = None) -> Iterator[tuple[int, bytes | None, int]]:
    """(offset, line, size in bytes) of each line of a binary stream that begins before byte `end`
    (None: all); the line is None where it is longer than `max_bytes`, skipped without being held
    in memory. Line-based formats cut a file into byte ranges by where lines begin."""
    offset = 0
    while (end is None or offset < end) and (line := stream.readline(max_bytes + 1)):
        size = len(line)
        if size > max_bytes and not line.endswith(b"\n"):
            while rest := stream.readline(1 << 20):
                size += len(rest)
                if rest.endswith(b"\n"):
                    break
            line = None
        yield offset, line, size
        offset += size
