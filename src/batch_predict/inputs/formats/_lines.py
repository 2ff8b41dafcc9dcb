"""Lines of a binary stream, a too-long one skipped unread: shared by the line-based formats."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def lines(stream: Any, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """Each line of a binary stream and its length in bytes; None in place of a line longer than
    `max_bytes`, which is skipped without being held in memory."""
    while line := stream.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while rest := stream.readline(1 << 20):
            size += len(rest)
            if rest.endswith(b"\n"):
                break
        yield None, size
