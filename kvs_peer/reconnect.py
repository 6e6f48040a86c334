"""Reconnect policy for the signaling connection. Pure: no clock, no I/O.

One table, :data:`POLICY`, used for the first connect and for every reconnect. It mirrors the
KVS C SDK state machine (docs/protocol.md#connection-lifetime): what to refresh before the
next attempt depends on why the last one failed (404 re-describes the channel, 403 refreshes
credentials and clock, 400/5xx fetch the endpoint again), with exponential backoff from 100
ms doubling to a 10 s cap and full jitter. Unlike the C SDK, a run ends when a person is
needed: the same rejection keeps coming back although what it pointed at was refreshed each
time.

Counting rules (:class:`ReconnectPolicy`):

- network failures, throttling, server errors and closes never end a run: they back off,
  capped, for ever (a camera on a flaky link must come back on its own);
- a rejection that needs a person (channel missing, credentials refused, bad configuration)
  ends the run once it comes ``gives_up_after`` times in a row, each after the refresh the
  previous one asked for; network failures in between neither count nor break the streak;
- a success resets everything (streaks and backoff).
"""

from __future__ import annotations

import enum
import random
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import (
    AccessDenied,
    ChannelError,
    ChannelNotFound,
    HandshakeRejected,
    InvalidArgument,
    SignerError,
    Throttled,
)
from .rules import MAX_CONNECTION_DURATION

__all__ = [
    "POLICY",
    "Decision",
    "Failure",
    "ReconnectPolicy",
    "Refresh",
    "Rule",
    "backoff",
    "classify",
    "decide",
    "rotate_at",
]

ROTATE_MARGIN = 300.0
"""Seconds before :data:`~kvs_peer.rules.MAX_CONNECTION_DURATION` at which a connection is
replaced (one user saw KVS keep connections 2 h, the documented 1 h is the safe bound)."""
MAX_REJECTIONS = 3
"""Default streak of same-kind rejections (each after a refresh) that ends a run."""


def backoff(
    *,
    base: float = 0.1,
    cap: float = 10.0,
    factor: float = 2.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays (seconds) for successive attempts: full jitter over an exponential ceiling.

    Args:
        base: ceiling of the first delay.
        cap: largest ceiling.
        factor: growth of the ceiling per attempt.
        rng: random source; pass a seeded ``random.Random`` for reproducible tests.
    """
    if base <= 0 or cap < base or factor < 1:
        raise InvalidArgument("backoff needs 0 < base <= cap and factor >= 1")
    rng = rng or random.Random()
    ceiling = base
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(cap, ceiling * factor)


def rotate_at(
    connected_at: float,
    *,
    max_duration: float = MAX_CONNECTION_DURATION,
    margin: float = ROTATE_MARGIN,
) -> float:
    """When to replace a connection opened at ``connected_at`` before the service cuts it.

    Returns ``connected_at + max_duration - margin``, never earlier than half the duration so
    a tiny test duration still leaves the connection some life.
    """
    return connected_at + max(max_duration - margin, max_duration / 2)


class Refresh(enum.Enum):
    """What to refresh before the next connect attempt."""

    URL = "url"
    """Only a freshly signed URL (always done)."""
    ENDPOINT = "endpoint"
    """Describe the channel and fetch its endpoints again (404, 400, 5xx, GO_AWAY): a channel
    re-created under the same name has a new ARN."""
    CREDENTIALS = "credentials"
    """Credentials or clock are suspect (403): read credentials again and re-describe the
    channel, which also re-learns the clock offset from the control plane's ``Date``."""
    ICE = "ice"
    """TURN servers rotate (RECONNECT_ICE_SERVER): fetch the ICE configuration again."""


class Failure(enum.Enum):
    """Why a connect attempt failed or a connection ended, as far as the policy cares."""

    NETWORK = "network"
    """Refused, reset, timed out, unreachable control plane or signer."""
    CLOSED = "closed"
    """The service closed an open connection (1000/1001/1006, cap, idle)."""
    THROTTLED = "throttled"
    """HTTP 400 on the upgrade (3 connects/s, viewer cap), a throttled control-plane call."""
    SERVER = "server"
    """HTTP 5xx from the service, the signer or the control plane."""
    NOT_FOUND = "not-found"
    """HTTP 404 on the upgrade, or the control plane does not know the channel."""
    DENIED = "denied"
    """HTTP 403 on the upgrade, credentials or IAM refused by the control plane or signer."""
    INVALID = "invalid"
    """Bad configuration on our side (a URL that is not ws://, a refused parameter)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the policy table."""

    refresh: Refresh
    gives_up_after: int | None
    """Same-kind failures in a row that end the run; None: never (back off for ever)."""
    hint: str
    """What a person should do once the run ends for this reason."""


POLICY: Mapping[Failure, Rule] = MappingProxyType(
    {
        Failure.NETWORK: Rule(Refresh.URL, None, "check the network and the endpoint"),
        Failure.CLOSED: Rule(Refresh.URL, None, "nothing: the service closes connections"),
        Failure.THROTTLED: Rule(
            Refresh.ENDPOINT, None, "connect less often, or free a viewer slot on the channel"
        ),
        Failure.SERVER: Rule(Refresh.ENDPOINT, None, "wait: the service is failing"),
        Failure.NOT_FOUND: Rule(
            Refresh.ENDPOINT,
            MAX_REJECTIONS,
            "the channel stays missing after describing it again: create it "
            "(create=True in Python, --create-channel on the command line) or check its name "
            "and region",
        ),
        Failure.DENIED: Rule(
            Refresh.CREDENTIALS,
            MAX_REJECTIONS,
            "access stays refused after refreshing credentials and clock: check the "
            "credentials, the machine clock and the IAM policy (kinesisvideo:ConnectAs*)",
        ),
        Failure.INVALID: Rule(Refresh.URL, 1, "fix the configuration named in the error"),
    }
)
"""The reconnect policy: what each kind of failure refreshes and when it ends a run."""


def classify(error: BaseException | None) -> Failure:
    """Map an exception from a connect attempt (None: the service closed the connection)."""
    if error is None:
        return Failure.CLOSED
    if _untrusted_certificate(error):
        # A certificate the device does not trust stays untrusted however often it retries:
        # the user must point AWS_CA_BUNDLE at the right CA (or fix the endpoint).
        return Failure.INVALID
    if isinstance(error, HandshakeRejected):
        return _by_status(error.status)
    if isinstance(error, SignerError):
        if error.status == 0:
            return Failure.NETWORK
        if error.status == 502 and error.code == "aws_access_denied":
            return Failure.DENIED  # the signer's own IAM: its operator must act
        if error.status == 400:
            return Failure.INVALID  # the signer names the parameter to fix
        return _by_status(error.status)
    if isinstance(error, ChannelNotFound):
        return Failure.NOT_FOUND
    if isinstance(error, AccessDenied):
        return Failure.DENIED
    if isinstance(error, Throttled):
        return Failure.THROTTLED
    if isinstance(error, ChannelError):
        # No AWS error code: the control plane could not be reached.
        return Failure.NETWORK if error.code is None else Failure.SERVER
    if isinstance(error, InvalidArgument):
        return Failure.INVALID
    return Failure.NETWORK


def _untrusted_certificate(error: BaseException) -> bool:
    """True when a certificate verification failure is anywhere in the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _by_status(status: int) -> Failure:
    if status in (401, 403):
        return Failure.DENIED
    if status == 404:
        return Failure.NOT_FOUND
    if status in (400, 429):
        return Failure.THROTTLED
    if status >= 500:
        return Failure.SERVER
    return Failure.INVALID


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether and how to try again after a failed connect or a dropped connection."""

    retry: bool
    refresh: Refresh
    failure: Failure = Failure.NETWORK
    streak: int = 1
    """Failures of this kind in a row, this one included (network failures in between
    do not count)."""
    delay: float = 0.0
    """Seconds to wait before the next attempt (0 when not retrying)."""

    @property
    def hint(self) -> str:
        """What a person should do when this decision ends the run."""
        return POLICY[self.failure].hint


def decide(error: BaseException | None, *, streak: int = 1) -> Decision:
    """Look up ``error`` in :data:`POLICY`: retry, and what to refresh first.

    Args:
        error: the exception, or None for a close by the service.
        streak: failures of the same kind in a row, this one included.
    """
    failure = classify(error)
    rule = POLICY[failure]
    retry = rule.gives_up_after is None or streak < rule.gives_up_after
    return Decision(retry, rule.refresh, failure, streak)


class ReconnectPolicy:
    """The counting half of the policy: streaks of same-kind rejections and the backoff.

    One instance per signaling client, for its whole life: the first connect and every
    reconnect go through :meth:`failed`, and :meth:`succeeded` resets everything.

    Args:
        base: first backoff ceiling, seconds.
        cap: largest backoff ceiling, seconds.
        rng: random source for the jitter.
    """

    def __init__(
        self, *, base: float = 0.1, cap: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()
        self._delays = backoff(base=base, cap=cap, rng=self._rng)
        self._kind: Failure | None = None
        self._streak = 0
        self.attempts = 0
        """Failures since the last success, of every kind."""

    def failed(self, error: BaseException | None) -> Decision:
        """Record one failure; returns what to do next (with the delay to wait)."""
        self.attempts += 1
        failure = classify(error)
        if POLICY[failure].gives_up_after is None:
            # Never ends a run; leaves a rejection streak as it is (nothing was learned).
            streak = self._streak + 1 if failure is self._kind else 1
            if self._kind is None or POLICY[self._kind].gives_up_after is None:
                self._kind, self._streak = failure, streak
        else:
            streak = self._streak + 1 if failure is self._kind else 1
            self._kind, self._streak = failure, streak
        decision = decide(error, streak=streak)
        if not decision.retry:
            return decision
        if POLICY[failure].gives_up_after is not None and streak == 1:
            # The first rejection of a kind after a run of network failures (an emulator
            # back with a re-created channel) is news: refresh and retry soon, without the
            # ceiling the outage grew.
            delay = self._rng.uniform(0, self._base)
        else:
            delay = next(self._delays)
        return Decision(True, decision.refresh, failure, streak, delay)

    def succeeded(self, *, stable: bool = True) -> None:
        """A connection opened: forget every streak and failure count.

        Args:
            stable: also restart the backoff. A client passes False when the socket has
                just opened and True once it proved stable, so a service that accepts and
                at once closes again is not hammered without delay.
        """
        if stable:
            self._delays = backoff(base=self._base, cap=self._cap, rng=self._rng)
        self._kind = None
        self._streak = 0
        self.attempts = 0
