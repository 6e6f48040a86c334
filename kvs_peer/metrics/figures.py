"""The figures kvs-peer reports: their names, and how a stats snapshot becomes them.

Pure: no sockets, no clock, no prometheus_client. Both outputs are built from the same
:class:`Figure` list, so ``/metrics`` (:mod:`.prometheus`) and ``--stats-interval`` JSON lines
(:func:`json_records`) carry the same names and values.

Every series is named ``kvs_peer_*`` and has a ``role`` label (``master``, ``viewer``,
``signer``, ``local``, or what a caller passes, e.g. ``recorder``); figures of one channel
also have a ``channel`` label. :data:`SERIES` is the catalog (the README's table lists it).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument
from .tally import HistogramValue

__all__ = [
    "SERIES",
    "Figure",
    "Kind",
    "Series",
    "figure",
    "json_records",
    "series_key",
    "signaling_figures",
    "signaling_problem",
]


class Kind(enum.StrEnum):
    """Prometheus metric types used by kvs-peer."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Series:
    """One named series: its exposition name (counters end in ``_total``), type and help."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    """Labels beyond ``role`` and ``channel``."""


def _catalog(
    *entries: tuple[str, Kind, str] | tuple[str, Kind, str, tuple[str, ...]],
) -> dict[str, Series]:
    return {entry[0]: Series(*entry) for entry in entries}


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM

SERIES: dict[str, Series] = _catalog(
    # every role
    ("kvs_peer_build_info", G, "1, with the kvs-peer version as a label", ("version",)),
    ("kvs_peer_healthy", G, "1 when /healthz answers 200, else 0"),
    # signaling (master, viewer)
    ("kvs_peer_signaling_connected", G, "1 while the signaling WebSocket is open"),
    ("kvs_peer_signaling_down_seconds", G, "seconds signaling has been failing to reconnect"),
    ("kvs_peer_signaling_reconnects_total", C, "signaling connections opened after the first"),
    ("kvs_peer_signaling_failed_attempts_total", C, "signaling connects that failed"),
    ("kvs_peer_signaling_go_aways_total", C, "GO_AWAY messages received"),
    ("kvs_peer_signaling_messages_sent_total", C, "signaling messages sent"),
    ("kvs_peer_signaling_messages_received_total", C, "signaling messages received"),
    # master
    ("kvs_peer_viewers_connected", G, "viewers connected now (both ends of DTLS up)"),
    ("kvs_peer_sessions_open", G, "viewer sessions open now, connected or connecting"),
    ("kvs_peer_offers_received_total", C, "SDP offers received from viewers"),
    ("kvs_peer_sessions_started_total", C, "viewer sessions started (offers accepted)"),
    ("kvs_peer_sessions_connected_total", C, "viewer sessions that connected"),
    ("kvs_peer_sessions_failed_total", C, "viewer sessions that failed or never connected"),
    ("kvs_peer_sessions_refused_total", C, "offers refused: max viewers connected"),
    ("kvs_peer_sessions_evicted_total", C, "connecting sessions closed for a newer offer"),
    ("kvs_peer_sessions_replaced_total", C, "sessions replaced by a re-offer of their viewer"),
    ("kvs_peer_session_setup_seconds", H, "offer to connected, per viewer session"),
    ("kvs_peer_frames_encoded_total", C, "video frames encoded (once for every viewer)"),
    ("kvs_peer_keyframes_total", C, "keyframes encoded"),
    ("kvs_peer_encode_seconds_total", C, "seconds spent encoding video"),
    ("kvs_peer_frames_sent_total", C, "video frames handed to viewers' senders (all viewers)"),
    ("kvs_peer_queue_drops_total", C, "frames dropped by queues that fell behind"),
    ("kvs_peer_rtt_seconds", G, "round-trip time to the farthest viewer (RTCP)"),
    # master and viewer media
    ("kvs_peer_fps", G, "video frames per second (master: encoded; viewer: received)"),
    ("kvs_peer_bytes_sent_total", C, "bytes sent on peer connections (RTP, RTCP, data)"),
    ("kvs_peer_bytes_received_total", C, "bytes received on peer connections"),
    ("kvs_peer_packets_lost_total", C, "RTP packets lost (master: as viewers report)"),
    ("kvs_peer_nacks_total", C, "packets asked for again (master: received; viewer: sent)"),
    ("kvs_peer_plis_total", C, "keyframe requests, PLI and FIR (master: received; viewer: sent)"),
    # viewer
    ("kvs_peer_frames_received_total", C, "video frames received and decoded"),
    ("kvs_peer_audio_frames_received_total", C, "audio frames received"),
    ("kvs_peer_time_to_first_frame_seconds", H, "viewer start to its first video frame"),
    ("kvs_peer_video_flowing", G, "1 while video frames arrive"),
    ("kvs_peer_offers_sent_total", C, "SDP offers sent to the master"),
    ("kvs_peer_answers_received_total", C, "SDP answers received from the master"),
    ("kvs_peer_peer_reconnects_total", C, "new offers after a failed or lost connection"),
    # recording
    ("kvs_peer_recorder_files_total", C, "recording files started"),
    ("kvs_peer_recorder_bytes_total", C, "bytes written to recording files"),
    ("kvs_peer_recorder_frames_written_total", C, "frames (video and audio) written"),
    ("kvs_peer_recorder_frames_dropped_total", C, "frames dropped: the writer was behind"),
    ("kvs_peer_recorder_errors_total", C, "recording failures"),
    # control plane, signer, emulator
    (
        "kvs_peer_control_plane_calls_total",
        C,
        "KVS control-plane API calls made, by operation",
        ("operation",),
    ),
    ("kvs_peer_signer_requests_total", C, "signer API requests, by HTTP status", ("status",)),
    ("kvs_peer_signer_request_seconds", H, "signer API request latency"),
    ("kvs_peer_emulator_channels", G, "signaling channels in the local emulator"),
    ("kvs_peer_emulator_masters_connected", G, "masters connected to the local emulator"),
    ("kvs_peer_emulator_viewers_connected", G, "viewers connected to the local emulator"),
)

TIME_TO_FIRST_FRAME_BOUNDS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Histogram buckets (seconds) of time to first frame and session setup."""

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram buckets (seconds) of request latencies."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One value of one series, with all its labels (``role``, ``channel``, extras)."""

    series: Series
    value: float | HistogramValue
    labels: Mapping[str, str] = field(default_factory=dict)


def figure(
    name: str, value: float | HistogramValue, base: Mapping[str, str], **extra: str
) -> Figure:
    """The figure of catalog series ``name`` with ``base`` labels plus ``extra`` ones.

    Raises:
        InvalidArgument: ``name`` is not in :data:`SERIES`, or ``extra`` does not name its
            labels.
    """
    series = SERIES.get(name)
    if series is None:
        raise InvalidArgument(f"no series {name!r}: use a name from figures.SERIES")
    if set(extra) != set(series.labels):
        raise InvalidArgument(
            f"{name} takes labels {series.labels}, not {tuple(extra)}: pass exactly those"
        )
    return Figure(series, value, {**base, **extra})


def signaling_figures(
    base: Mapping[str, str], stats: Any, *, connected: bool, now: float
) -> list[Figure]:
    """Figures of a :class:`~kvs_peer.signaling.SignalingStats` (``now``: ``time.time()``)."""
    down = 0.0 if connected or stats.retrying_since is None else now - stats.retrying_since
    return [
        figure("kvs_peer_signaling_connected", float(connected), base),
        figure("kvs_peer_signaling_down_seconds", max(0.0, down), base),
        figure("kvs_peer_signaling_reconnects_total", stats.reconnects, base),
        figure("kvs_peer_signaling_failed_attempts_total", stats.failed_attempts, base),
        figure("kvs_peer_signaling_go_aways_total", stats.go_aways, base),
        figure("kvs_peer_signaling_messages_sent_total", stats.messages_sent, base),
        figure("kvs_peer_signaling_messages_received_total", stats.messages_received, base),
    ]


def signaling_problem(stats: Any, *, connected: bool, now: float, grace: float) -> str | None:
    """Why signaling counts as unhealthy, or None.

    Healthy: connected, connecting for the first time, or reconnecting for less than
    ``grace`` seconds (``now``: ``time.time()``, as ``stats.retrying_since``).
    """
    if connected or stats.retrying_since is None:
        return None
    down = now - stats.retrying_since
    if down <= grace:
        return None
    return f"signaling has failed to connect for {down:.0f} s (last error: {stats.last_error})"


def series_key(figure: Figure, suffix: str = "", group: Iterable[str] = ("role", "channel")) -> str:
    """The figure's name (plus ``suffix``) with its labels other than ``group`` in exposition
    syntax, e.g. ``kvs_peer_signer_requests_total{status="200"}``: a JSON stats line's key."""
    name = figure.series.name + suffix
    extra = [(k, v) for k, v in figure.labels.items() if k not in group]
    if not extra:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(extra))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> float | int:
    if math.isfinite(value) and value == int(value):
        return int(value)
    return round(value, 6)


def json_records(figures: Iterable[Figure], *, time: str) -> list[dict[str, Any]]:
    """One JSON object per (role, channel): ``{"time", "role", "channel"?, <series>: value}``.

    Keys are :func:`series_key`; a histogram gives ``<name>_count`` and ``<name>_sum`` (its
    buckets stay on ``/metrics``).
    """
    records: dict[tuple[str, str | None], dict[str, Any]] = {}
    for fig in figures:
        role, channel = fig.labels.get("role", ""), fig.labels.get("channel")
        record = records.get((role, channel))
        if record is None:
            record = {"time": time, "role": role}
            if channel is not None:
                record["channel"] = channel
            records[(role, channel)] = record
        if isinstance(fig.value, HistogramValue):
            record[series_key(fig, "_count")] = fig.value.count
            record[series_key(fig, "_sum")] = _number(fig.value.sum)
        else:
            record[series_key(fig)] = _number(float(fig.value))
    return list(records.values())
