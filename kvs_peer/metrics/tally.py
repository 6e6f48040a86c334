"""Pure accumulators behind the metrics: totals that never go back, rates, bucket counts.

Prometheus counters must only grow (a drop reads as a process restart and ``rate()`` jumps),
yet many kvs-peer figures are sums over things that come and go: bytes of the viewers
connected now, sizes of the files recorded so far. :class:`Tally` keeps such a sum monotonic
by keeping what departed items had reached. No clock, no I/O: callers pass ``now``.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = ["Buckets", "HistogramValue", "Rate", "Tally"]


class Tally:
    """A monotonic total over items that come and go (viewer sessions, recorded files).

    Each :meth:`update` reports an item's own running total; an item missing from a
    :meth:`retire_missing` call is gone, and what it reached stays in :attr:`total`.
    Whatever an item added between its last update and its departure is not counted: a
    sampled figure, exact for items still present.
    """

    def __init__(self) -> None:
        self._current: dict[Hashable, float] = {}
        self._retired = 0.0

    def update(self, key: Hashable, value: float) -> None:
        """Set item ``key``'s running total (a smaller value than before is ignored)."""
        self._current[key] = max(self._current.get(key, 0.0), value)

    def retire_missing(self, present: Iterable[Hashable]) -> None:
        """Keep the totals of items not in ``present`` and forget those items."""
        keep = set(present)
        for key in [k for k in self._current if k not in keep]:
            self._retired += self._current.pop(key)

    @property
    def total(self) -> float:
        """What every item ever seen has reached."""
        return self._retired + sum(self._current.values())


class Rate:
    """Events per second over the last ``window`` seconds (at least), from a growing total.

    Args:
        window: seconds the rate spans once enough samples exist; sparse samples (a scrape
            every 15 s) give the rate since the previous one.
    """

    def __init__(self, window: float = 5.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, float]] = deque()

    def update(self, now: float, total: float) -> float | None:
        """Record ``total`` at ``now``; returns the rate, None until two samples span time."""
        samples = self._samples
        if samples and total < samples[-1][1]:
            samples.clear()  # the source restarted its count
        samples.append((now, total))
        while len(samples) > 2 and samples[1][0] <= now - self._window:
            samples.popleft()
        first_time, first_total = samples[0]
        return (total - first_total) / (now - first_time) if now > first_time else None


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """A histogram at one moment, as Prometheus exposes it.

    Attributes:
        buckets: ``(upper bound, cumulative count)`` pairs, ending with ``float("inf")``.
        count: observations.
        sum: their sum.
    """

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Buckets:
    """Counts observations into fixed buckets (a Prometheus histogram without the library).

    Args:
        bounds: upper bounds, increasing; ``+Inf`` is added.

    Raises:
        InvalidArgument: ``bounds`` do not increase strictly.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise InvalidArgument(
                f"histogram bounds {tuple(bounds)} must increase strictly, e.g. (0.1, 0.5, 1.0)"
            )
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def value(self) -> HistogramValue:
        """The cumulative counts so far."""
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramValue(tuple(cumulative), running, self._sum)
