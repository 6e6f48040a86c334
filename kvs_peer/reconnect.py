"""Reconnect policy for the signaling connection. Pure: no clock, no I/O.

The policy mirrors the KVS C SDK (kvs-signaling.md 6.1, 9): exponential backoff from 100 ms
doubling to a 10 s cap with full jitter; what to refresh before the next attempt depends on
why the last one failed.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import HandshakeRejected, InvalidArgument

__all__ = ["Decision", "Refresh", "backoff", "decide", "rotate_at"]

# Documented hard cap (kvs-signaling.md 4.1); one user saw 2 h, so 1 h is the safe bound.
MAX_CONNECTION_DURATION = 3600.0
ROTATE_MARGIN = 300.0


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
    """Describe the channel and fetch its endpoints again (404, 400, GO_AWAY)."""
    CREDENTIALS = "credentials"
    """Credentials or clock are suspect (403): re-resolve the endpoint; the next signature
    is made with freshly read credentials and the clock offset learned meanwhile."""
    ICE = "ice"
    """TURN servers rotate (RECONNECT_ICE_SERVER): fetch the ICE configuration again."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether and how to try again after a failed connect or a dropped connection."""

    retry: bool
    refresh: Refresh


def decide(
    error: BaseException | None, *, attempt: int, max_rejected_attempts: int = 5
) -> Decision:
    """Decide what to do after ``error`` ended (or prevented) a connection.

    Args:
        error: the exception, or None for a clean close by the service (e.g. 1001 at the
            connection cap) or a GO_AWAY.
        attempt: how many attempts in a row have failed, including this one (1 = first).
        max_rejected_attempts: give up after this many refusals in a row with HTTP 403/404:
            those rarely heal by waiting, and retrying forever would hide a configuration error.
    """
    if error is None:
        return Decision(True, Refresh.ENDPOINT)
    if isinstance(error, HandshakeRejected):
        if error.status == 403:
            return Decision(attempt < max_rejected_attempts, Refresh.CREDENTIALS)
        if error.status == 404:
            return Decision(attempt < max_rejected_attempts, Refresh.ENDPOINT)
        # 400 (throttled, viewer cap), 5xx: transient from our side's point of view.
        return Decision(True, Refresh.ENDPOINT)
    return Decision(True, Refresh.URL)
