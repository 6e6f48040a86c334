"""The baseline master: aiortc used the plain, documented way, one encoder per viewer.

Per viewer offer: a new ``RTCPeerConnection``, ``MediaRelay().subscribe(source)`` as its
track (sharing one track object between senders would split the frames between viewers,
docs/protocol.md#aiortc-notes, item 1), aiortc's own encoder in its ``RTCRtpSender`` (so N viewers
cost N encodes, re-created as REMB moves the bitrate), and the codec pinned with
``setCodecPreferences`` before ``setRemoteDescription``. Signaling goes through kvs-peer's
:class:`~kvs_peer.signaling.SignalingClient` only so both masters meet viewers the same way; no
kvs-peer media code is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from kvs_peer.access import ChannelAccess
from kvs_peer.errors import InvalidArgument
from kvs_peer.peerconnection import candidate_from_json, enable_loopback_candidates
from kvs_peer.protocol import IceCandidate, Role, SdpOffer
from kvs_peer.signaling import SignalingClient

__all__ = ["CODECS", "AiortcDefaultMaster"]

logger = logging.getLogger(__name__)

CODECS = {"h264": "video/H264", "vp8": "video/VP8"}


class AiortcDefaultMaster:
    """Answer every viewer with a plain aiortc peer connection fed through ``MediaRelay``.

    Args:
        access: channel access with role MASTER.
        source: the video track (yuv420p frames, so ``MediaRelay`` can share them safely).
        audio: an audio track, relayed to each viewer that offers audio and encoded (Opus) by
            each sender, as aiortc does by default; None for none.
        codec: ``"h264"`` (what kvs-peer sends) or ``"vp8"`` (aiortc's first preference).
        loopback_candidates: also gather 127.0.0.1 host candidates.
    """

    def __init__(
        self,
        access: ChannelAccess,
        source: MediaStreamTrack,
        *,
        audio: MediaStreamTrack | None = None,
        codec: str = "h264",
        loopback_candidates: bool = False,
    ) -> None:
        if access.role is not Role.MASTER:
            raise InvalidArgument("the baseline master needs channel access with role MASTER")
        if codec not in CODECS:
            raise InvalidArgument(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
        self._source = source
        self._audio = audio
        self._mime = CODECS[codec]
        self._loopback = loopback_candidates
        self._relay = MediaRelay()
        self.signaling = SignalingClient(access, role=Role.MASTER)
        self.sessions: dict[str, RTCPeerConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AiortcDefaultMaster:
        await self.signaling.connect()
        self._runner = asyncio.create_task(self._run(), name="baseline-master")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(
            *(t for t in (self._runner, *self._tasks) if t is not None), return_exceptions=True
        )
        pcs = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        await self.signaling.close()
        self._source.stop()
        if self._audio is not None:
            self._audio.stop()

    @property
    def connected(self) -> int:
        """Sessions whose peer connection is connected."""
        return sum(1 for pc in self.sessions.values() if pc.connectionState == "connected")

    async def _run(self) -> None:
        async for event in self.signaling:
            match event:
                case SdpOffer(sender_client_id=str() as client_id):
                    task = asyncio.create_task(self._answer(client_id, event.sdp))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                case IceCandidate(sender_client_id=str() as client_id):
                    pc = self.sessions.get(client_id)
                    candidate = candidate_from_json(
                        event.candidate, event.sdp_mid, event.sdp_mline_index
                    )
                    if pc is not None and candidate is not None:
                        with contextlib.suppress(Exception):
                            await pc.addIceCandidate(candidate)

    async def _answer(self, client_id: str, sdp: str) -> None:
        old = self.sessions.pop(client_id, None)
        if old is not None:
            await old.close()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.sessions[client_id] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                if self.sessions.get(client_id) is pc:
                    del self.sessions[client_id]
                await pc.close()

        transceiver = pc.addTransceiver(self._relay.subscribe(self._source), direction="sendonly")
        transceiver.setCodecPreferences(
            [
                codec
                for codec in RTCRtpSender.getCapabilities("video").codecs
                if codec.mimeType in (self._mime, "video/rtx")
            ]
        )
        if self._audio is not None and "m=audio" in sdp:
            pc.addTransceiver(self._relay.subscribe(self._audio), direction="sendonly")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            if self._loopback:
                enable_loopback_candidates(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await self.signaling.send_answer(pc.localDescription.sdp, recipient_client_id=client_id)
        except Exception as exc:
            logger.warning("baseline master: viewer %s failed: %s", client_id, exc)
            self.sessions.pop(client_id, None)
            await pc.close()
