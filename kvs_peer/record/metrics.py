"""Prometheus figures of ``kvs-peer record``: the supervisor's uploads, spool and worker
processes, and what each worker's viewers do, per channel.

The series are ``kvs_peer_record_*`` (listed in docs/deploy.md); they are defined here, next
to the service they describe, rather than in :data:`kvs_peer.metrics.figures.SERIES`. A
worker process samples its channels (:class:`ChannelRecordingSource`) and writes the figures
on its stdout (:func:`report_figures`); the supervisor serves the latest of each worker with
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..metrics.figures import Figure, Kind, Series
from ..metrics.relay import dump_figures
from ..metrics.sources import Source, ViewerSource

if TYPE_CHECKING:
    from .service import Plan, RecordService
    from .worker import ChannelRecording

__all__ = ["RECORD_SERIES", "REPORT_INTERVAL", "ChannelRecordingSource", "RecordServiceSource"]

logger = logging.getLogger(__name__)

REPORT_INTERVAL = 2.0
"""Seconds between the figures a worker process reports: how stale ``/metrics`` may be."""

_C, _G = Kind.COUNTER, Kind.GAUGE

RECORD_SERIES = {
    s.name: s
    for s in (
        Series("kvs_peer_record_channels", _G, "channels this replica records"),
        Series("kvs_peer_record_workers", _G, "worker processes this replica runs"),
        Series("kvs_peer_record_workers_running", _G, "worker processes running now"),
        Series("kvs_peer_record_worker_restarts_total", _C, "worker processes restarted"),
        Series("kvs_peer_record_segments_uploaded_total", _C, "segments S3 confirmed, by channel"),
        Series("kvs_peer_record_uploaded_bytes_total", _C, "bytes S3 confirmed, by channel"),
        Series("kvs_peer_record_upload_failures_total", _C, "upload attempts that failed"),
        Series("kvs_peer_record_spool_bytes", _G, "bytes in the local spool"),
        Series("kvs_peer_record_segments_pending", _G, "finished segments not uploaded yet"),
        Series(
            "kvs_peer_record_oldest_pending_seconds",
            _G,
            "age of the oldest segment not uploaded yet (0 when none)",
        ),
        Series(
            "kvs_peer_record_segments_dropped_total",
            _C,
            "segments deleted before upload because the spool was full (lost)",
        ),
        Series(
            "kvs_peer_record_segments_recovered_total",
            _C,
            "segments left by a dead process and kept for upload",
        ),
        Series(
            "kvs_peer_record_viewer_restarts_total",
            _C,
            "times a channel's viewer was started again, by channel (its counters restart at 0)",
        ),
    )
}


class RecordServiceSource:
    """Reads a :class:`~kvs_peer.record.service.RecordService` at sampling time."""

    def __init__(self, service: RecordService, plan: Plan) -> None:
        self._service = service
        self._plan = plan

    async def sample(self, now: float, wall: float) -> list[Figure]:
        service, plan = self._service, self._plan
        base = {"role": "record"}
        upload = service.uploader.stats
        stats = service.stats
        oldest = 0.0 if stats.oldest_pending is None else max(0.0, wall - stats.oldest_pending)

        def fig(name: str, value: float) -> Figure:
            return Figure(RECORD_SERIES[name], value, base)

        figures = [
            fig("kvs_peer_record_channels", len(plan.channels)),
            fig("kvs_peer_record_workers", len(plan.groups)),
            fig("kvs_peer_record_workers_running", stats.workers_running),
            fig("kvs_peer_record_worker_restarts_total", stats.worker_restarts),
            fig("kvs_peer_record_upload_failures_total", upload.failures),
            fig("kvs_peer_record_spool_bytes", stats.spool_bytes),
            fig("kvs_peer_record_segments_pending", stats.pending),
            fig("kvs_peer_record_oldest_pending_seconds", oldest),
            fig("kvs_peer_record_segments_dropped_total", service.spool.dropped_segments),
            fig("kvs_peer_record_segments_recovered_total", stats.recovered_segments),
        ]
        for channel in plan.channels:
            segments, sent = upload.by_channel.get(channel, (0, 0))
            labels = {**base, "channel": channel}
            figures.append(
                Figure(RECORD_SERIES["kvs_peer_record_segments_uploaded_total"], segments, labels)
            )
            figures.append(
                Figure(RECORD_SERIES["kvs_peer_record_uploaded_bytes_total"], sent, labels)
            )
        return figures + service.worker_figures()

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        # An S3 outage is not a reason to restart the pod (the spool is there for it), but
        # workers that keep dying are.
        stats = self._service.stats
        if self._plan.groups and stats.workers_running == 0 and stats.worker_restarts:
            return "no worker process is running (they keep exiting: see the logs)"
        return None


class ChannelRecordingSource:
    """Figures of one channel in a worker process: its viewer's (frames, fps, time to first
    frame, signaling, link and recording) and its restarts.

    A restarted viewer is a new :class:`~kvs_peer.viewer.Viewer`: its counters start at 0
    again, which Prometheus' ``rate()`` and ``increase()`` read as a counter reset.
    """

    def __init__(self, recording: ChannelRecording, *, role: str = "record") -> None:
        self._recording = recording
        self._role = role
        self._viewer: Any = None
        self._source: ViewerSource | None = None

    async def sample(self, now: float, wall: float) -> list[Figure]:
        recording = self._recording
        labels = {"role": self._role, "channel": recording.channel}
        figures = [
            Figure(
                RECORD_SERIES["kvs_peer_record_viewer_restarts_total"], recording.restarts, labels
            )
        ]
        viewer = recording.viewer
        if viewer is None:
            return figures
        if viewer is not self._viewer:
            self._viewer = viewer
            self._source = ViewerSource(viewer, channel=recording.channel, role=self._role)
        assert self._source is not None
        return figures + await self._source.sample(now, wall)

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return None


async def report_figures(
    sources: Sequence[Source],
    write: Callable[[str], None],
    stop: asyncio.Event,
    *,
    interval: float = REPORT_INTERVAL,
) -> None:
    """Sample ``sources`` and ``write`` their figures as one line every ``interval`` seconds
    until ``stop`` is set (a worker process's side of :class:`RecordServiceSource`).

    ``write`` raising ``OSError`` (the supervisor's end is gone) ends the reports.
    """
    while not stop.is_set():
        figures: list[Figure] = []
        now, wall = time.monotonic(), time.time()
        for source in sources:
            try:
                figures += await source.sample(now, wall)
            except Exception:
                # Metrics must never take the recording down: skip this source's figures.
                logger.warning("metrics: sampling %r failed", source, exc_info=True)
        try:
            write(dump_figures(figures))
        except OSError as exc:
            logger.info("metrics: cannot report figures any more (%s)", exc)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
