"""A viewer's part of the emulator's storage session (JoinStorageSessionAsViewer).

What KVS documents (docs/protocol.md#storage-sessions): after ConnectAsViewer and
JoinStorageSessionAsViewer, the storage session offers to the viewer over the viewer's own
signaling connection ("viewer participants switch from controlling to controlled"), the
viewer answers, and it receives the master's video and the mixed audio through the storage
session; viewers cannot send video, audio is optional Opus.

Emulated: the offer (candidates first, no ``senderClientId``), the answer check, and the
master's video and audio relayed as the storage peer receives them (re-encoded by aiortc,
H.264 and Opus). Not emulated [unsure: nothing documents how the service mixes]: a viewer's
audio is received and dropped, neither mixed into other viewers' audio nor sent to the master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame
from av.packet import Packet

from .controlplane import StorageJoin
from .storage import viewer_answer_problem
from .storage_peer import OfferingPeer, SendFrame, SessionState, prefer_codec

__all__ = ["StorageViewerPeer", "TrackSource", "ViewerSessionInfo"]

logger = logging.getLogger(__name__)

TrackSource = Callable[[str], MediaStreamTrack | None]
"""``source(kind)``: a fresh subscription to the master's ``kind`` track, or None while the
storage session has no master (or the master sends no such track)."""

_SOURCE_POLL = 0.05
"""Seconds between looks for a master track while there is none."""


@dataclass
class ViewerSessionInfo:
    """What a viewer's storage session did, for tests."""

    channel_arn: str
    client_id: str
    started_at: float
    """``time.time()`` of the join."""
    state: SessionState = SessionState.OFFERING
    end_reason: str | None = None
    answer_correlation_id: str | None = None


class _RelayedTrack(MediaStreamTrack):
    """The master's track of one kind as a viewer gets it; waits while there is no master
    and follows a new master session (a re-join) without renegotiation."""

    def __init__(self, kind: str, source: TrackSource) -> None:
        super().__init__()
        self.kind = kind
        self._source = source
        self._current: MediaStreamTrack | None = None

    async def recv(self) -> Frame | Packet[Any]:
        while self.readyState == "live":
            if self._current is None:
                self._current = self._source(self.kind)
                if self._current is None:
                    await asyncio.sleep(_SOURCE_POLL)
                    continue
            try:
                return await self._current.recv()
            except MediaStreamError:  # that master session ended: wait for the next one
                self._current = None
        raise MediaStreamError

    def stop(self) -> None:
        if self._current is not None:
            self._current.stop()
            self._current = None
        super().stop()


class StorageViewerPeer(OfferingPeer):
    """One viewer in a channel's storage session.

    Takes the arguments of :class:`~.storage_peer.StoragePeer` (``join`` is the accepted
    JoinStorageSessionAsViewer, ``send`` reaches the viewer) with ``source`` (the master's
    tracks, see :data:`TrackSource`) instead of a recording path.
    """

    info: ViewerSessionInfo

    def __init__(
        self,
        join: StorageJoin,
        *,
        send: SendFrame,
        source: TrackSource,
        ice_servers: list[RTCIceServer],
        max_duration: float | None,
        on_end: Callable[[StorageViewerPeer], None],
    ) -> None:
        assert join.client_id is not None, "a viewer's join names its client id"
        super().__init__(
            join,
            ViewerSessionInfo(join.channel_arn, join.client_id, time.time()),
            label=f"storage session of {join.channel_name} (viewer {join.client_id})",
            send=send,
            ice_servers=ice_servers,
            max_duration=max_duration,
            on_end=on_end,
        )
        self._relayed = [_RelayedTrack("video", source), _RelayedTrack("audio", source)]
        self._drains: set[asyncio.Task[None]] = set()

    def _setup(self, pc: RTCPeerConnection) -> None:
        video, audio = self._relayed
        prefer_codec(pc.addTransceiver(video, direction="sendonly"), "video/H264")
        prefer_codec(pc.addTransceiver(audio, direction="sendrecv"), "audio/opus")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.ensure_future(self._drain(track))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    @staticmethod
    async def _drain(track: MediaStreamTrack) -> None:
        # The viewer's audio: read so aiortc's jitter buffer does not grow; not mixed.
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    def _answer_problem(self, sdp: str) -> str | None:
        return viewer_answer_problem(sdp)

    async def _finished(self) -> None:
        for track in self._relayed:
            track.stop()
        for task in list(self._drains):
            task.cancel()
