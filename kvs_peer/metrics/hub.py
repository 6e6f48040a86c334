"""One process's metrics: the sources it watches, its own registry, its health.

::

    metrics = Metrics(role="master")
    metrics.add(MasterSource(master, channel="cam"))
    await metrics.refresh()          # sample every source
    text = metrics.exposition()      # Prometheus text format
    records = metrics.records()      # the same figures as JSON objects

Nothing is global: each :class:`Metrics` owns a ``CollectorRegistry``, never
prometheus_client's default one, so several in one process (tests, a recorder's workers)
stay apart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from .. import __version__
from .figures import Figure, figure, json_records
from .prometheus import FigureCollector
from .sources import ControlPlaneSource, Source

__all__ = ["HEALTH_GRACE", "Health", "Metrics"]

logger = logging.getLogger(__name__)

HEALTH_GRACE = 60.0
"""Seconds signaling may fail to reconnect before ``/healthz`` says the process is unhealthy
(the reconnect backoff tops out at 10 s: this is several attempts)."""

S = TypeVar("S", bound=Source)


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of ``/healthz``.

    Attributes:
        healthy: whether a probe should count the process as alive.
        status: ``ok``, ``starting`` (nothing watched yet) or ``unhealthy``.
        problems: why not, one line per failing source.
    """

    healthy: bool
    status: str
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "problems": list(self.problems)}


class Metrics:
    """The metrics of one process (one command).

    Args:
        role: the ``role`` label of process-wide figures (``master``, ``signer``...).
        grace: see :data:`HEALTH_GRACE`.
        process_metrics: also expose prometheus_client's ``process_*`` series (CPU, memory,
            open files) for this process.
        clock: monotonic clock; ``wall``: wall clock (``time.time``), for tests.
    """

    def __init__(
        self,
        role: str,
        *,
        grace: float = HEALTH_GRACE,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.role = role
        self.grace = grace
        self._clock = clock
        self._wall = wall
        self._sources: list[Source] = []
        self._lock = asyncio.Lock()
        self._figures: list[Figure] = []
        self._sampled_at = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FigureCollector(lambda: self._figures))
        if process_metrics:
            ProcessCollector(registry=self.registry)

    # -- sources -----------------------------------------------------------------------------

    def add(self, source: S) -> S:
        """Watch ``source`` from now on; returns it."""
        self._sources.append(source)
        return source

    def remove(self, source: Source) -> None:
        """Stop watching ``source`` (its series disappear from the next sample)."""
        if source in self._sources:
            self._sources.remove(source)

    def watch_access(self, access: Any) -> None:
        """Count the control-plane calls of ``access``'s resolver (AWS access; a signer
        access makes none). A resolver shared by several accesses is counted once."""
        resolver = getattr(access, "resolver", None)
        if resolver is None or not hasattr(resolver, "calls"):
            return
        if any(getattr(s, "resolver", None) is resolver for s in self._sources):
            return
        self.add(ControlPlaneSource(resolver, role=self.role))

    async def watch(self, interval: float = 1.0) -> None:
        """Call every source's ``tick(now)``, if it has one, every ``interval`` seconds, for
        ever: cheap looks (no ``getStats()``) that catch what comes and goes between
        samples. :func:`~kvs_peer.metrics.options.serve_metrics` runs it while anything
        reads the metrics."""
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for source in list(self._sources):
                tick = getattr(source, "tick", None)
                if tick is None:
                    continue
                try:
                    tick(now)
                except Exception:
                    logger.warning("metrics: watching %r failed", source, exc_info=True)

    # -- reading -----------------------------------------------------------------------------

    def health(self) -> Health:
        """Whether the process is healthy, from what every source says now."""
        if not self._sources:
            return Health(True, "starting")
        now, wall = self._clock(), self._wall()
        problems = tuple(
            p for p in (s.problem(now, wall, self.grace) for s in self._sources) if p is not None
        )
        return Health(not problems, "unhealthy" if problems else "ok", problems)

    async def refresh(self) -> list[Figure]:
        """Sample every source (one sampling at a time); returns the figures."""
        async with self._lock:
            now, wall = self._clock(), self._wall()
            base = {"role": self.role}
            figures = [
                figure("kvs_peer_build_info", 1, base, version=__version__),
                figure("kvs_peer_healthy", float(self.health().healthy), base),
            ]
            for source in list(self._sources):
                try:
                    figures += await source.sample(now, wall)
                except Exception:
                    # Metrics must never take the command down: skip this source's figures.
                    logger.warning("metrics: sampling %r failed", source, exc_info=True)
            self._figures = figures
            self._sampled_at = wall
            return figures

    @property
    def figures(self) -> list[Figure]:
        """The figures of the latest :meth:`refresh`."""
        return list(self._figures)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (the latest sample's figures)."""
        return generate_latest(self.registry)

    def records(self) -> list[dict[str, Any]]:
        """The latest sample as JSON objects, one per (role, channel)."""
        stamp = dt.datetime.fromtimestamp(self._sampled_at, dt.UTC)
        time_text = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json_records(self._figures, time=time_text)
