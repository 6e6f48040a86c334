"""Pure tests of the reconnect policy and token buckets."""

from __future__ import annotations

import random

import pytest

from kvs_peer.errors import HandshakeRejected, InvalidArgument, SignalingError
from kvs_peer.ratelimit import TokenBucket
from kvs_peer.reconnect import Refresh, backoff, decide, rotate_at


def test_backoff_full_jitter_under_exponential_ceiling() -> None:
    delays = backoff(base=0.1, cap=10.0, rng=random.Random(7))
    values = [next(delays) for _ in range(20)]
    ceilings = [min(10.0, 0.1 * 2**i) for i in range(20)]
    assert all(0 <= v <= c for v, c in zip(values, ceilings, strict=True))
    # jitter: not all equal to the ceiling, and late values can exceed early ceilings
    assert len(set(values)) == len(values)
    assert max(values[10:]) > 0.4


def test_backoff_is_reproducible_with_seed() -> None:
    a = backoff(rng=random.Random(1))
    b = backoff(rng=random.Random(1))
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 2, "cap": 1}, {"factor": 0.5}])
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        next(backoff(**kwargs))


def test_rotate_before_cap() -> None:
    assert rotate_at(100.0) == 100.0 + 3600 - 300
    # tiny durations (tests) still leave half the duration
    assert rotate_at(0.0, max_duration=2.0, margin=300) == 1.0


def test_decide_by_status() -> None:
    assert decide(None, attempt=1) == decide(None, attempt=99)
    assert decide(None, attempt=1).refresh is Refresh.ENDPOINT
    forbidden = decide(HandshakeRejected(403), attempt=1)
    assert forbidden.retry and forbidden.refresh is Refresh.CREDENTIALS
    assert not decide(HandshakeRejected(403), attempt=5).retry
    gone = decide(HandshakeRejected(404), attempt=2)
    assert gone.retry and gone.refresh is Refresh.ENDPOINT
    assert not decide(HandshakeRejected(404), attempt=5).retry
    # throttling and server errors are retried forever
    assert decide(HandshakeRejected(400), attempt=1000).retry
    assert decide(HandshakeRejected(503), attempt=1000).retry
    network = decide(SignalingError("reset"), attempt=1000)
    assert network.retry and network.refresh is Refresh.URL


def test_handshake_rejected_messages_say_what_to_do() -> None:
    assert "clock" in str(HandshakeRejected(403))
    assert "channel" in str(HandshakeRejected(404))
    assert "viewers" in str(HandshakeRejected(400, "ClientLimitExceeded"))
    assert "ClientLimitExceeded" in str(HandshakeRejected(400, "ClientLimitExceeded"))


def test_token_bucket_rate_and_burst() -> None:
    bucket = TokenBucket(5.0)
    assert all(bucket.try_take(0.0) for _ in range(5))
    assert not bucket.try_take(0.0)
    assert bucket.delay(0.0) == pytest.approx(0.2)
    assert bucket.try_take(0.2)
    assert not bucket.try_take(0.2)


def test_token_bucket_take_goes_into_debt() -> None:
    bucket = TokenBucket(20.0, capacity=1)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(0.05)
    assert bucket.take(0.0) == pytest.approx(0.10)


def test_token_bucket_time_going_backwards_does_not_add_tokens() -> None:
    bucket = TokenBucket(1.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": 1, "capacity": 0.5}])
def test_token_bucket_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        TokenBucket(**kwargs)
