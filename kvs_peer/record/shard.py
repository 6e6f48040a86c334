"""Which replica records which channel: rendezvous (highest-random-weight) hashing. Pure.

Every replica computes, for every channel, a score per replica index from a hash of
``(channel, index)``; the channel belongs to the replica with the highest score. All replicas
agree without talking to each other, each channel has exactly one owner, and changing the
replica count from N to N+1 moves only the channels whose new replica wins, about 1/(N+1) of
them (and N+1 to N moves only the channels of the replica that went away).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = ["Shard", "owner", "parse_shard", "select"]

MAX_REPLICAS = 10_000

_SHARD_RE = re.compile(r"(auto|\d+)/(\d+)")
_ORDINAL_RE = re.compile(r".+-(\d+)")


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place among ``count`` replicas (``index`` counts from 0)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_REPLICAS:
            raise InvalidArgument(f"shard count must be from 1 to {MAX_REPLICAS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise InvalidArgument(
                f"shard index {self.index} is outside 0..{self.count - 1}: with {self.count} "
                f"replicas the indexes are 0 to {self.count - 1} (did the replica count change "
                "without the shard count?)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _score(channel: str, index: int) -> int:
    digest = hashlib.blake2b(f"{index}\x00{channel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(channel: str, count: int) -> int:
    """The index of the replica (out of ``count``) that records ``channel``."""
    if count < 1:
        raise InvalidArgument(f"replica count must be at least 1, got {count}")
    # Ties (a 64-bit collision) go to the lower index, so every replica still agrees.
    return max(range(count), key=lambda index: (_score(channel, index), -index))


def select(channels: Iterable[str], shard: Shard) -> list[str]:
    """The channels ``shard`` records, sorted, without duplicates."""
    return sorted({c for c in channels if owner(c, shard.count) == shard.index})


def parse_shard(text: str, *, hostname: str | None = None) -> Shard:
    """Parse ``--shard INDEX/COUNT``; ``auto/COUNT`` takes INDEX from ``hostname``.

    ``auto`` is for Kubernetes StatefulSets, whose pods are named ``<name>-<ordinal>``
    (``recorder-0``, ``recorder-1``, ...) and get that name as their hostname.

    Raises:
        InvalidArgument: malformed text, an index outside the count, or ``auto`` with a
            hostname that does not end in ``-<number>``.
    """
    match = _SHARD_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(
            f"--shard {text!r}: write INDEX/COUNT (e.g. 0/3), or auto/COUNT to take INDEX "
            "from a StatefulSet pod's hostname (recorder-2 -> 2)"
        )
    index_text, count_text = match.groups()
    if index_text == "auto":
        ordinal = _ORDINAL_RE.fullmatch(hostname or "")
        if ordinal is None:
            raise InvalidArgument(
                f"--shard auto/{count_text}: the hostname {hostname!r} does not end in "
                "-<number> as a StatefulSet pod's does (recorder-0); give the index instead"
            )
        index_text = ordinal.group(1)
    return Shard(int(index_text), int(count_text))
