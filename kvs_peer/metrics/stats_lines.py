"""``--stats-interval``: the metrics as one JSON line per (role, channel) every S seconds."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TextIO

from .._tasks import cancel_and_wait
from ..errors import InvalidArgument
from .hub import Metrics

__all__ = ["StatsLines"]

logger = logging.getLogger(__name__)


class StatsLines:
    """Print ``metrics.records()`` as JSON lines every ``interval`` seconds, and once more
    on exit (the final figures, as the command's ``--json`` report sees them).

    Keys are the series names of ``/metrics`` (see :func:`~kvs_peer.metrics.figures.json_records`),
    so a log pipeline and a Prometheus server read the same figures.

    Args:
        metrics: what to print.
        interval: seconds between lines (> 0).
        stream: where to write (default: stdout at the time of each write).

    Raises:
        InvalidArgument: ``interval`` is not positive.
    """

    def __init__(self, metrics: Metrics, interval: float, *, stream: TextIO | None = None) -> None:
        if not interval > 0:
            raise InvalidArgument(
                f"stats interval {interval!r} must be a positive number of seconds, e.g. 60"
            )
        self._metrics = metrics
        self._interval = interval
        self._stream = stream
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatsLines:
        self._task = asyncio.create_task(self._loop(), name="kvs-peer-stats-lines")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._emit()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._emit()

    async def _emit(self) -> None:
        try:
            await self._metrics.refresh()
            text = "".join(json.dumps(record) + "\n" for record in self._metrics.records())
        except Exception:  # stats lines must never take the command down
            logger.warning("stats line failed", exc_info=True)
            return
        stream = self._stream or sys.stdout
        stream.write(text)
        stream.flush()
