"""Token buckets with an injected clock. Pure.

Used to pace signaling sends under the KVS per-connection quotas (``rules.SDP_RATE``,
``rules.ICE_RATE``, docs/protocol.md#limits) and by the signer service for per-token request
limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidArgument

__all__ = ["TokenBucket"]


@dataclass
class TokenBucket:
    """``rate`` tokens per second, bursting up to ``capacity``.

    Args:
        rate: tokens added per second.
        capacity: bucket size (largest burst); defaults to ``rate``.
    """

    rate: float
    capacity: float | None = None
    _tokens: float = field(init=False)
    _updated: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise InvalidArgument("rate must be positive")
        if self.capacity is None:
            self.capacity = max(1.0, self.rate)
        if self.capacity < 1:
            raise InvalidArgument("capacity must be at least 1")
        self._tokens = self.capacity

    def _refill(self, now: float) -> None:
        assert self.capacity is not None
        if self._updated is not None and now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        if self._updated is None or now > self._updated:
            self._updated = now

    def try_take(self, now: float, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if available at time ``now``; return whether it was allowed."""
        self._refill(now)
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def delay(self, now: float, tokens: float = 1.0) -> float:
        """Seconds to wait from ``now`` until ``tokens`` can be taken (0 if now)."""
        self._refill(now)
        missing = tokens - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, now: float, tokens: float = 1.0) -> float:
        """Reserve ``tokens`` (going into debt if needed); return how long to wait before use."""
        wait = self.delay(now, tokens)
        self._tokens -= tokens
        return wait
