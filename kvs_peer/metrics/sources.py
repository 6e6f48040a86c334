"""Sources: read live kvs-peer objects at sampling time and name what they hold.

Each source wraps one object (a :class:`~kvs_peer.master.Master`, a
:class:`~kvs_peer.viewer.Viewer`, a recorder, a :class:`~kvs_peer.channel.ChannelResolver`,
the local emulator) and turns the stats it already keeps into :class:`~.figures.Figure`
values when a scrape or a stats line asks; nothing is added to media paths. A source may
keep state between samples (rates, totals of viewers that left); sampling is serialised by
:class:`~kvs_peer.metrics.hub.Metrics`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .figures import (
    TIME_TO_FIRST_FRAME_BOUNDS,
    Figure,
    figure,
    signaling_figures,
    signaling_problem,
)
from .tally import Buckets, Rate, Tally

if TYPE_CHECKING:
    from ..channel import ChannelResolver
    from ..emulator import LocalKvs
    from ..master import Master
    from ..viewer import Viewer

__all__ = [
    "ControlPlaneSource",
    "EmulatorSource",
    "LinkTotals",
    "MasterSource",
    "RecorderSource",
    "Source",
    "StoppedSource",
    "ViewerSource",
    "link_totals",
]


class Source(Protocol):
    """What :class:`~kvs_peer.metrics.hub.Metrics` reads."""

    async def sample(self, now: float, wall: float) -> list[Figure]:
        """Current figures (``now``: ``time.monotonic()``, ``wall``: ``time.time()``)."""
        ...

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        """Why the process should count as unhealthy, or None (see ``/healthz``)."""
        ...


@dataclass(frozen=True, slots=True)
class LinkTotals:
    """What one peer connection's ``getStats()`` adds up to."""

    bytes_sent: int = 0
    bytes_received: int = 0
    packets_lost: int = 0
    round_trip_time: float | None = None


def link_totals(stats: Iterable[Any]) -> LinkTotals:
    """Reduce the values of an aiortc ``RTCStatsReport``.

    Bytes come from the transports (RTP, RTCP and data channels: what a bandwidth figure
    should show). Losses are those we see (``inbound-rtp``) plus those the remote reports
    in RTCP (``remote-inbound-rtp``): a master only has the latter, a viewer the former.
    """
    sent = received = lost = 0
    rtts: list[float] = []
    for stat in stats:
        kind = getattr(stat, "type", "")
        if kind == "transport":
            sent += stat.bytesSent
            received += stat.bytesReceived
        elif kind in ("inbound-rtp", "remote-inbound-rtp"):
            lost += max(stat.packetsLost or 0, 0)
            rtt = getattr(stat, "roundTripTime", None)
            if rtt is not None:
                rtts.append(rtt)
    return LinkTotals(sent, received, lost, max(rtts) if rtts else None)


async def _pc_totals(pc: Any) -> LinkTotals | None:
    # A connection closing under us has no stats to give: it counts as gone.
    with contextlib.suppress(Exception):
        return link_totals((await pc.getStats()).values())
    return None


class _LinkTallies:
    """Monotonic link totals over peer connections that come and go."""

    def __init__(self) -> None:
        self.bytes_sent = Tally()
        self.bytes_received = Tally()
        self.packets_lost = Tally()
        self.nacks = Tally()
        self.plis = Tally()

    async def update(self, key: int, pc: Any) -> float | None:
        """Read ``pc`` (tracked as ``key``); returns its round-trip time if known."""
        from .rtcp import rtcp_counts

        totals = await _pc_totals(pc)
        if totals is not None:
            self.bytes_sent.update(key, totals.bytes_sent)
            self.bytes_received.update(key, totals.bytes_received)
            self.packets_lost.update(key, totals.packets_lost)
        counts = rtcp_counts(pc)
        if counts is not None:
            self.nacks.update(key, counts.nacks)
            self.plis.update(key, counts.plis)
        return totals.round_trip_time if totals is not None else None

    def retire_missing(self, present: Iterable[int]) -> None:
        keys = set(present)
        for tally in self._all():
            tally.retire_missing(keys)

    def _all(self) -> tuple[Tally, ...]:
        return (self.bytes_sent, self.bytes_received, self.packets_lost, self.nacks, self.plis)

    def figures(self, base: Mapping[str, str]) -> list[Figure]:
        return [
            figure("kvs_peer_bytes_sent_total", self.bytes_sent.total, base),
            figure("kvs_peer_bytes_received_total", self.bytes_received.total, base),
            figure("kvs_peer_packets_lost_total", self.packets_lost.total, base),
            figure("kvs_peer_nacks_total", self.nacks.total, base),
            figure("kvs_peer_plis_total", self.plis.total, base),
        ]


def _signaling_problem(peer: Any, wall: float, grace: float) -> str | None:
    signaling = peer.signaling
    return signaling_problem(signaling.stats, connected=signaling.connected, now=wall, grace=grace)


class MasterSource:
    """Figures of a :class:`~kvs_peer.master.Master`: signaling, viewer sessions, encoder and
    link totals summed over its viewers.

    Sessions are watched by :meth:`tick` (every second while metrics are served) and by
    each sample: setup times, frames sent and queue drops of a viewer are counted up to the
    last tick before it left. Byte, loss and NACK/PLI totals come from ``getStats()``, read
    only at samples (scrapes, stats lines): a viewer keeps what it had reached by the last
    one, so the bytes of a viewer gone within one scrape interval are not counted.

    Args:
        master: the master (started or not).
        channel: its channel name (the ``channel`` label).
        role: the ``role`` label.
    """

    def __init__(self, master: Master, *, channel: str, role: str = "master") -> None:
        self._master = master
        self.labels = {"role": role, "channel": channel}
        self._links = _LinkTallies()
        self._frames_sent = Tally()
        self._drops = Tally()
        self._setup = Buckets(TIME_TO_FIRST_FRAME_BOUNDS)
        self._seen: dict[int, Any] = {}
        """Sessions of the previous sample (held so their ids stay unique), by id."""
        self._setups_observed = 0
        self._fps = Rate()

    def tick(self, now: float) -> list[Any]:
        """Cheap look at the sessions (no ``getStats()``); returns them."""
        stats = self._master.stats
        # From the stats, not the sessions: one that connected and left between two samples
        # counts too.
        new = stats.sessions_connected - self._setups_observed
        if new > 0:
            for seconds in list(stats.recent_setup_seconds)[-new:]:
                self._setup.observe(max(0.0, seconds))
            self._setups_observed = stats.sessions_connected
        sessions = list(self._master.viewers.values())
        for session in sessions:
            key = id(session)
            video = [t for t in session.tracks if getattr(t, "kind", "") == "video"]
            self._frames_sent.update(key, sum(getattr(t, "packets_delivered", 0) for t in video))
            self._drops.update(
                key,
                sum(
                    getattr(t, "packets_dropped", 0) + getattr(t, "frames_dropped", 0)
                    for t in session.tracks
                ),
            )
        self._seen = {id(s): s for s in sessions}
        for tally in (self._links, self._frames_sent, self._drops):
            tally.retire_missing(self._seen)
        return sessions

    async def sample(self, now: float, wall: float) -> list[Figure]:
        master, base = self._master, self.labels
        sessions = self.tick(now)
        rtts: list[float] = []
        connected = sum(1 for s in sessions if s.connected_at is not None)
        for session in sessions:
            rtt = await self._links.update(id(session), session.pc)
            if rtt is not None:
                rtts.append(rtt)
        stats = master.stats
        encoder = master.encoder
        encoded = encoder.frames_encoded if encoder is not None else 0
        figures = signaling_figures(
            base, master.signaling.stats, connected=master.signaling.connected, now=wall
        )
        figures += [
            figure("kvs_peer_viewers_connected", connected, base),
            figure("kvs_peer_sessions_open", len(sessions), base),
            figure("kvs_peer_offers_received_total", stats.offers, base),
            figure("kvs_peer_sessions_started_total", stats.sessions_started, base),
            figure("kvs_peer_sessions_connected_total", stats.sessions_connected, base),
            figure("kvs_peer_sessions_failed_total", stats.sessions_failed, base),
            figure("kvs_peer_sessions_refused_total", stats.refused_over_limit, base),
            figure("kvs_peer_sessions_evicted_total", stats.sessions_evicted, base),
            figure("kvs_peer_sessions_replaced_total", stats.sessions_replaced, base),
            figure("kvs_peer_session_setup_seconds", self._setup.value(), base),
            figure("kvs_peer_frames_encoded_total", encoded, base),
            figure("kvs_peer_keyframes_total", getattr(encoder, "keyframes", 0), base),
            figure("kvs_peer_encode_seconds_total", getattr(encoder, "encode_seconds", 0.0), base),
            figure("kvs_peer_frames_sent_total", self._frames_sent.total, base),
            figure("kvs_peer_queue_drops_total", self._drops.total, base),
            *self._links.figures(base),
        ]
        fps = self._fps.update(now, encoded)
        if fps is not None:  # a rate needs two samples: none rather than a false 0
            figures.append(figure("kvs_peer_fps", fps, base))
        if rtts:
            figures.append(figure("kvs_peer_rtt_seconds", max(rtts), base))
        return figures

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return _signaling_problem(self._master, wall, grace)


class RecorderSource:
    """Figures of a :class:`~kvs_peer.media.recorder.Recorder` (or any object with its
    ``stats()`` and ``error``): files, bytes on disk, frames, failures.

    Bytes are the sizes of the files it started, read at each sample (only the file being
    written changes); a file deleted later (uploaded) keeps its last size in the total.

    Args:
        recorder: the recorder.
        labels: ``role`` and ``channel`` labels.
    """

    def __init__(self, recorder: Any, labels: Mapping[str, str]) -> None:
        self._recorder = recorder
        self.labels = dict(labels)
        self._bytes = Tally()
        self._done: set[str] = set()

    async def sample(self, now: float, wall: float) -> list[Figure]:
        stats = self._recorder.stats()
        files = [str(path) for path in stats.files]
        for index, path in enumerate(files):
            if path in self._done:
                continue
            with contextlib.suppress(OSError):
                self._bytes.update(path, os.stat(path).st_size)
            if index < len(files) - 1:
                self._done.add(path)  # a finished segment no longer grows
        base = self.labels
        return [
            figure("kvs_peer_recorder_files_total", len(files), base),
            figure("kvs_peer_recorder_bytes_total", self._bytes.total, base),
            figure(
                "kvs_peer_recorder_frames_written_total",
                stats.frames_written + stats.audio_frames_written,
                base,
            ),
            figure("kvs_peer_recorder_frames_dropped_total", stats.frames_dropped, base),
            figure(
                "kvs_peer_recorder_errors_total",
                int(getattr(self._recorder, "error", None) is not None),
                base,
            ),
        ]

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return None  # a failed recording stops its viewer, which ends the process


class ViewerSource:
    """Figures of a :class:`~kvs_peer.viewer.Viewer`: signaling, frames, time to first
    frame, offers, link totals of its peer connections and, when it records, its recorder.

    Args:
        viewer: the viewer (started or not).
        channel: its channel name (the ``channel`` label).
        role: the ``role`` label (e.g. ``recorder`` for a recording service's viewers).
    """

    def __init__(self, viewer: Viewer, *, channel: str, role: str = "viewer") -> None:
        self._viewer = viewer
        self.labels = {"role": role, "channel": channel}
        self._links = _LinkTallies()
        self._pc: Any = None
        self._ttff = Buckets(TIME_TO_FIRST_FRAME_BOUNDS)
        self._ttff_seen = False
        self._fps = Rate()
        recorder = getattr(viewer, "recorder", None)
        self._recorder = (
            RecorderSource(recorder, self.labels) if hasattr(recorder, "stats") else None
        )

    async def sample(self, now: float, wall: float) -> list[Figure]:
        viewer, base = self._viewer, self.labels
        stats = viewer.stats
        pc = viewer.pc
        if pc is not None:
            self._pc = pc  # held so its id stays unique until the next sample
            await self._links.update(id(pc), pc)
        self._links.retire_missing([id(pc)] if pc is not None else [])
        if not self._ttff_seen and stats.time_to_first_frame is not None:
            self._ttff_seen = True
            self._ttff.observe(stats.time_to_first_frame)
        flowing = stats.last_frame_at is not None and stats.video_problem(now) is None
        fps = self._fps.update(now, stats.frames_received)
        if fps is None:
            fps = stats.fps(now)  # first sample: the average since the first frame
        figures = signaling_figures(
            base, viewer.signaling.stats, connected=viewer.signaling.connected, now=wall
        )
        figures += [
            figure("kvs_peer_frames_received_total", stats.frames_received, base),
            figure("kvs_peer_audio_frames_received_total", stats.audio_frames_received, base),
            figure("kvs_peer_fps", fps, base),
            figure("kvs_peer_time_to_first_frame_seconds", self._ttff.value(), base),
            figure("kvs_peer_video_flowing", float(flowing), base),
            figure("kvs_peer_offers_sent_total", stats.offers_sent, base),
            figure("kvs_peer_answers_received_total", stats.answers_received, base),
            figure("kvs_peer_peer_reconnects_total", stats.peer_reconnects, base),
            *self._links.figures(base),
        ]
        if self._recorder is not None:
            figures += await self._recorder.sample(now, wall)
        return figures

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return _signaling_problem(self._viewer, wall, grace)


class ControlPlaneSource:
    """Control-plane calls a :class:`~kvs_peer.channel.ChannelResolver` made, by operation.

    Args:
        resolver: the resolver (its ``calls`` counts).
        role: the ``role`` label.
    """

    def __init__(self, resolver: ChannelResolver, *, role: str) -> None:
        self.resolver = resolver
        self.labels = {"role": role}

    async def sample(self, now: float, wall: float) -> list[Figure]:
        calls = dict(self.resolver.calls)
        return [
            figure("kvs_peer_control_plane_calls_total", count, self.labels, operation=operation)
            for operation, count in sorted(calls.items())
        ]

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return None


class EmulatorSource:
    """Channels and connections of a :class:`~kvs_peer.emulator.LocalKvs`."""

    def __init__(self, kvs: LocalKvs, *, role: str = "local") -> None:
        self._kvs = kvs
        self.labels = {"role": role}

    async def sample(self, now: float, wall: float) -> list[Figure]:
        names = self._kvs.channel_names()
        presences = [self._kvs.connected(name) for name in names]
        base = self.labels
        return [
            figure("kvs_peer_emulator_channels", len(names), base),
            figure("kvs_peer_emulator_masters_connected", sum(p.master for p in presences), base),
            figure(
                "kvs_peer_emulator_viewers_connected", sum(len(p.viewers) for p in presences), base
            ),
        ]

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return None


class StoppedSource:
    """A part of the process that stopped for good (one camera of a multi-camera master):
    no figures, and ``/healthz`` unhealthy from then on, so a probe or a person sees it
    while the rest of the process keeps working.

    Args:
        reason: what stopped and why, the ``/healthz`` problem line.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def sample(self, now: float, wall: float) -> list[Figure]:
        return []

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return self.reason
