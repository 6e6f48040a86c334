"""Prometheus figures of ``kvs-peer record``'s supervisor: uploads, spool, worker processes.

The series are ``kvs_peer_record_*`` (listed in docs/deploy.md); they are defined here, next
to the service they describe, rather than in :data:`kvs_peer.metrics.figures.SERIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..metrics.figures import Figure, Kind, Series

if TYPE_CHECKING:
    from .service import Plan, RecordService

__all__ = ["RECORD_SERIES", "RecordServiceSource"]

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
        return figures

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        # An S3 outage is not a reason to restart the pod (the spool is there for it), but
        # workers that keep dying are.
        stats = self._service.stats
        if self._plan.groups and stats.workers_running == 0 and stats.worker_restarts:
            return "no worker process is running (they keep exiting: see the logs)"
        return None
