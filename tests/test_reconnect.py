"""Pure tests of the reconnect policy and token buckets."""

from __future__ import annotations

import random
import ssl

import pytest

from kvs_peer.errors import (
    AccessDenied,
    ChannelError,
    ChannelNotFound,
    HandshakeRejected,
    InvalidArgument,
    SignalingError,
    SignerError,
    Throttled,
)
from kvs_peer.ratelimit import TokenBucket
from kvs_peer.reconnect import (
    POLICY,
    Failure,
    ReconnectPolicy,
    Refresh,
    backoff,
    classify,
    decide,
    rotate_at,
)


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


@pytest.mark.parametrize(
    ("error", "failure", "refresh", "ends_after"),
    [
        (None, Failure.CLOSED, Refresh.URL, None),
        (SignalingError("connection refused"), Failure.NETWORK, Refresh.URL, None),
        (OSError("unreachable"), Failure.NETWORK, Refresh.URL, None),
        (ChannelError("could not reach the endpoint"), Failure.NETWORK, Refresh.URL, None),
        (SignerError(0, "could not reach the signer"), Failure.NETWORK, Refresh.URL, None),
        (HandshakeRejected(400), Failure.THROTTLED, Refresh.ENDPOINT, None),
        (Throttled("slow down"), Failure.THROTTLED, Refresh.ENDPOINT, None),
        (SignerError(429, "slow down"), Failure.THROTTLED, Refresh.ENDPOINT, None),
        (HandshakeRejected(503), Failure.SERVER, Refresh.ENDPOINT, None),
        (SignerError(503, "aws_unavailable"), Failure.SERVER, Refresh.ENDPOINT, None),
        (ChannelError("boom", code="InternalFailure"), Failure.SERVER, Refresh.ENDPOINT, None),
        (HandshakeRejected(404), Failure.NOT_FOUND, Refresh.ENDPOINT, 3),
        (ChannelNotFound("cam"), Failure.NOT_FOUND, Refresh.ENDPOINT, 3),
        (SignerError(404, "channel_not_found"), Failure.NOT_FOUND, Refresh.ENDPOINT, 3),
        (HandshakeRejected(403), Failure.DENIED, Refresh.CREDENTIALS, 3),
        (AccessDenied("no credentials"), Failure.DENIED, Refresh.CREDENTIALS, 3),
        (SignerError(401, "bad token"), Failure.DENIED, Refresh.CREDENTIALS, 3),
        (
            SignerError(502, "signer IAM", code="aws_access_denied"),
            Failure.DENIED,
            Refresh.CREDENTIALS,
            3,
        ),
        (InvalidArgument("not a ws:// URL"), Failure.INVALID, Refresh.URL, 1),
        (SignerError(400, "invalid_channel"), Failure.INVALID, Refresh.URL, 1),
    ],
)
def test_policy_table(
    error: BaseException | None, failure: Failure, refresh: Refresh, ends_after: int | None
) -> None:
    assert classify(error) is failure
    rule = POLICY[failure]
    assert rule.refresh is refresh and rule.gives_up_after == ends_after
    first = decide(error, streak=1)
    assert first.refresh is refresh and first.failure is failure
    if ends_after is None:
        assert decide(error, streak=10_000).retry
    else:
        if ends_after > 1:
            assert decide(error, streak=ends_after - 1).retry
        last = decide(error, streak=ends_after)
        assert not last.retry and last.hint == rule.hint


def test_every_rule_that_ends_a_run_says_what_to_do() -> None:
    ending = {f: r for f, r in POLICY.items() if r.gives_up_after is not None}
    assert set(ending) == {Failure.NOT_FOUND, Failure.DENIED, Failure.INVALID}
    assert "create" in ending[Failure.NOT_FOUND].hint
    assert "region" in ending[Failure.NOT_FOUND].hint
    assert "credentials" in ending[Failure.DENIED].hint
    assert "clock" in ending[Failure.DENIED].hint


def policy() -> ReconnectPolicy:
    return ReconnectPolicy(base=0.1, cap=1.0, rng=random.Random(3))


def test_network_failures_never_end_a_run_and_stay_capped() -> None:
    p = policy()
    decisions = [p.failed(SignalingError("refused")) for _ in range(500)]
    assert all(d.retry for d in decisions)
    assert max(d.delay for d in decisions) <= 1.0
    assert decisions[-1].streak == 500 and p.attempts == 500


def test_a_404_after_many_network_failures_is_not_final() -> None:
    # issue 10.1: four refused connects, then the re-created channel's old ARN gets a 404
    p = policy()
    for _ in range(4):
        assert p.failed(SignalingError("refused")).retry
    gone = p.failed(HandshakeRejected(404))
    assert gone.retry and gone.refresh is Refresh.ENDPOINT and gone.streak == 1


def test_the_first_rejection_after_an_outage_is_retried_soon() -> None:
    p = ReconnectPolicy(base=0.1, cap=10.0, rng=random.Random(11))
    for _ in range(30):
        p.failed(SignalingError("refused"))  # the ceiling is at the cap now
    assert p.failed(HandshakeRejected(404)).delay <= 0.1
    delays = [p.failed(SignalingError("refused")).delay for _ in range(20)]
    assert max(delays) > 1.0  # the network backoff did not restart


def test_same_kind_rejections_after_refreshes_end_a_run() -> None:
    p = policy()
    assert p.failed(HandshakeRejected(404)).retry  # refresh: describe again
    assert p.failed(SignalingError("blip")).retry  # neither counts nor breaks the streak
    second = p.failed(ChannelNotFound("cam"))  # describe says it is gone
    assert second.retry and second.streak == 2
    third = p.failed(ChannelNotFound("cam"))
    assert not third.retry and third.failure is Failure.NOT_FOUND and third.delay == 0


def test_a_different_rejection_starts_a_new_streak() -> None:
    p = policy()
    p.failed(HandshakeRejected(403))
    p.failed(HandshakeRejected(403))
    switched = p.failed(HandshakeRejected(404))
    assert switched.retry and switched.streak == 1
    assert p.failed(HandshakeRejected(403)).streak == 1


def test_success_resets_streaks_and_backoff() -> None:
    p = policy()
    p.failed(HandshakeRejected(403))
    p.failed(HandshakeRejected(403))
    for _ in range(20):
        p.failed(SignalingError("refused"))
    p.succeeded()
    assert p.attempts == 0
    assert p.failed(HandshakeRejected(403)).streak == 1  # not 3: no end
    assert p.failed(SignalingError("refused")).delay <= 0.2  # backoff restarted


def test_unstable_success_keeps_backing_off() -> None:
    p = ReconnectPolicy(base=0.1, cap=8.0, rng=random.Random(5))
    for _ in range(8):
        p.failed(None)
        p.succeeded(stable=False)  # accepted, then dropped at once
    delays = [p.failed(None).delay for _ in range(50)]
    assert max(delays) > 0.8  # the ceiling kept growing: no hammering


def test_an_invalid_configuration_ends_at_once() -> None:
    d = policy().failed(InvalidArgument("not a ws:// URL"))
    assert not d.retry and d.failure is Failure.INVALID


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


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


def test_an_untrusted_certificate_ends_the_run_instead_of_retrying() -> None:
    # botocore and websockets both wrap the ssl error; it is found anywhere in the chain.
    untrusted = _chained(ChannelError("could not reach the control plane"), ssl_error())
    assert classify(untrusted) is Failure.INVALID
    assert not decide(untrusted).retry
    # A plain unreachable control plane is still a network failure, retried.
    assert classify(ChannelError("could not reach the control plane")) is Failure.NETWORK


def ssl_error() -> BaseException:
    return ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
