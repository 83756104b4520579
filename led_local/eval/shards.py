"""Shards of a problem set: a problem belongs to shard ``hash(id) mod N``, never to a position.

The hash is the first 8 bytes of SHA-256 of the id's UTF-8 bytes, read big-endian, so every
machine, Python version and file order agrees, and adding or reordering problems never moves
the others. All samples of a problem go with it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TypeVar

from led_local.errors import LedError

T = TypeVar("T")


def shard_of(problem_id: str, n: int) -> int:
    """The shard (0..n-1) of ``problem_id`` among ``n`` shards."""
    if n < 1:
        raise LedError(f"the number of shards must be >= 1, got {n}")
    digest = hashlib.sha256(problem_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), with 0 <= I < N (I counts from 0, as Slurm array ids do)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise LedError(f"`shard` must be I/N (for example 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise LedError(f"`shard` I/N needs N >= 1, got {text!r}")
    if i >= n:
        raise LedError(f"`shard` I/N needs 0 <= I < N, got {text!r}")
    return i, n


def select(items: Sequence[T], index: int, n: int, *, key=lambda x: x.id) -> list[T]:
    """The items of shard ``index`` of ``n`` (their order kept); ``key`` gives a problem id."""
    return [x for x in items if shard_of(key(x), n) == index]


def split(items: Sequence[T], n: int, *, key=lambda x: x.id) -> list[list[T]]:
    """All ``n`` shards of ``items`` (each in the items' order; some may be empty)."""
    out: list[list[T]] = [[] for _ in range(n)]
    for x in items:
        out[shard_of(key(x), n)].append(x)
    return out
