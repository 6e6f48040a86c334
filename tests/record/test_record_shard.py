"""Rendezvous sharding: every channel on exactly one replica, little movement on resize."""

from __future__ import annotations

from collections import Counter

import pytest

from kvs_peer.errors import InvalidArgument
from kvs_peer.record.shard import Shard, owner, parse_shard, select

CHANNELS = [f"cam-{i}" for i in range(3000)]


def test_three_replicas_cover_every_channel_exactly_once() -> None:
    shares = [select(CHANNELS, Shard(i, 3)) for i in range(3)]
    counted = Counter(c for share in shares for c in share)
    assert set(counted) == set(CHANNELS)
    assert set(counted.values()) == {1}
    # Balanced within a few percent (each share is binomial around 1000).
    assert all(900 < len(share) < 1100 for share in shares), [len(s) for s in shares]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 10])
def test_growing_by_one_moves_about_one_in_count_plus_one(count: int) -> None:
    before = {c: owner(c, count) for c in CHANNELS}
    after = {c: owner(c, count + 1) for c in CHANNELS}
    moved = [c for c in CHANNELS if before[c] != after[c]]
    # Only channels the new replica takes move; nothing moves between the old ones.
    assert all(after[c] == count for c in moved)
    expected = len(CHANNELS) / (count + 1)
    assert abs(len(moved) - expected) < 0.15 * expected, (len(moved), expected)
    # Shrinking back moves exactly the same channels.
    assert {c for c in CHANNELS if owner(c, count) != after[c]} == set(moved)


def test_owner_is_a_pure_function_of_name_and_count() -> None:
    assert [owner(c, 5) for c in CHANNELS[:50]] == [owner(c, 5) for c in CHANNELS[:50]]
    assert select(["b", "a", "a"], Shard(0, 1)) == ["a", "b"]


def test_parse_shard() -> None:
    assert parse_shard("1/3") == Shard(1, 3)
    assert parse_shard("auto/4", hostname="recorder-3") == Shard(3, 4)
    assert parse_shard("auto/12", hostname="kvs-peer-record-10") == Shard(10, 12)


@pytest.mark.parametrize(
    ("text", "hostname", "message"),
    [
        ("3/3", None, "outside 0..2"),
        ("0/0", None, "count must be from 1"),
        ("1-3", None, "write INDEX/COUNT"),
        ("auto/3", "laptop", "does not end in -<number>"),
        ("auto/3", "recorder-5", "outside 0..2"),
    ],
)
def test_bad_shard_is_explained(text: str, hostname: str | None, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_shard(text, hostname=hostname)
