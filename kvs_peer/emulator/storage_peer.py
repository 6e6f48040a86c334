"""The emulator's storage session for one channel: an aiortc peer that records the master.

What the real storage session does, as far as it is known (docs/protocol.md#storage-sessions): it is
the controlling peer and offers to the master over the master's own signaling connection,
sending its ICE candidates first and the SDP_OFFER after, without ``senderClientId``; it
accepts H.264 video and Opus audio (video-only too) and reports a rejected answer with a
STATUS_RESPONSE for the answer's ``correlationId``; it ends the session after at most one
hour. Media goes to a Matroska file per session (:class:`~kvs_peer.media.Recorder`,
re-encoded from the decoded frames: KVS, too, stores what it received transcoded for audio).

aiortc gathers before it offers, so the candidates it put in its offer are taken out of the
SDP and sent as ICE_CANDIDATE messages first: the master must buffer them until the offer
(KVS's media server is known to send them early, docs/protocol.md#storage-sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from .._tasks import cancel_and_wait
from ..media.recorder import Recorder
from ..peerconnection import candidate_from_json
from ..protocol import (
    Action,
    ClientMessage,
    MessageType,
    candidate_payload,
    decode_payload,
    encode_event,
    encode_payload,
    sdp_payload,
)
from ..rules import MAX_STATUS_DESCRIPTION
from ..sdp import for_kvs_peers
from .controlplane import StorageJoin
from .storage import answer_codec_problem, sent_kinds

__all__ = [
    "OfferingPeer",
    "SendFrame",
    "SessionInfo",
    "SessionState",
    "StoragePeer",
    "prefer_codec",
    "recording_name",
]

logger = logging.getLogger(__name__)

SendFrame = Callable[[str], bool]
"""Delivers one service frame to a participant (master or viewer); False when it is not
connected."""


class SessionState(enum.StrEnum):
    """Where a storage session is."""

    OFFERING = "offering"
    """Candidates and offer sent; waiting for the master's answer."""
    CONNECTING = "connecting"
    CONNECTED = "connected"
    ENDED = "ended"


def recording_name(started: dt.datetime) -> str:
    """File name of a session's recording: UTC start time to the millisecond, ``.mkv``."""
    return started.strftime("%Y%m%dT%H%M%S.") + f"{started.microsecond // 1000:03d}Z.mkv"


def _split_candidates(sdp: str) -> tuple[str, list[tuple[str, str | None, int]]]:
    """The SDP without its ``a=candidate``/``a=end-of-candidates`` lines, and the candidates
    as (``candidate:...`` line, mid, m-line index)."""
    kept: list[str] = []
    found: list[tuple[str, str | None, int]] = []
    index = -1
    mid: str | None = None
    pending: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            found.extend((c, mid, index) for c in pending)
            pending, mid = [], None
            index += 1
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :].strip()
        elif line.startswith("a=candidate:"):
            pending.append(line[2:])
            continue
        elif line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    found.extend((c, mid, index) for c in pending)
    # BUNDLE: every m-line repeats the same candidates; one set (the first m-line's) suffices.
    first = [entry for entry in found if entry[2] == 0] or found
    return "\r\n".join(kept) + "\r\n", first


def prefer_codec(transceiver: RTCRtpTransceiver, mime: str) -> None:
    """Offer only ``mime`` (e.g. ``video/H264``) on ``transceiver``."""
    capabilities = RTCRtpReceiver.getCapabilities(transceiver.kind)
    assert capabilities is not None  # None only for a kind aiortc does not know
    codecs = capabilities.codecs
    chosen = [c for c in codecs if c.mimeType.lower() == mime.lower()]
    transceiver.setCodecPreferences(chosen)


class PeerInfo(Protocol):
    """What :class:`OfferingPeer` keeps up to date on its session's info record."""

    state: SessionState
    end_reason: str | None
    answer_correlation_id: str | None


@dataclass
class SessionInfo:
    """What a storage session did, for tests and the emulator page."""

    channel_arn: str
    stream_name: str
    path: Path
    started_at: float
    """``time.time()`` of the join."""
    state: SessionState = SessionState.OFFERING
    end_reason: str | None = None
    frames_written: int = 0
    audio_frames_written: int = 0
    answer_correlation_id: str | None = None
    """The ``correlationId`` of the accepted answer (what a STATUS_RESPONSE would name)."""


class OfferingPeer(ABC):
    """The storage session's side of one participant's peer connection.

    It offers (candidates first, then the SDP without ``senderClientId``), holds the
    participant's candidates until its answer, refuses a bad answer with a STATUS_RESPONSE
    for its ``correlationId`` and ends once. Subclasses choose the transceivers
    (:meth:`_setup`), judge the answer (:meth:`_answer_problem`) and act on an accepted one
    (:meth:`_accepted`).

    Args:
        join: the accepted join.
        info: the session's record (kept up to date: state, end reason, correlation id).
        label: names the session in logs.
        send: delivers a frame to the participant.
        ice_servers: what the peer may use (the emulator's own TURN, or none).
        max_duration: seconds after which the session ends, or None.
        on_end: called once with this peer when the session has ended.
    """

    def __init__(
        self,
        join: StorageJoin,
        info: PeerInfo,
        *,
        label: str,
        send: SendFrame,
        ice_servers: list[RTCIceServer],
        max_duration: float | None,
        on_end: Callable[[Self], None],
    ) -> None:
        self.join = join
        self.info = info
        self.label = label
        self._on_end = on_end
        self._send = send
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self._max_duration = max_duration
        self._inbox: asyncio.Queue[ClientMessage] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None
        self._answered = False
        self._held: list[ClientMessage] = []
        self._ended = asyncio.Event()

    @property
    def state(self) -> SessionState:
        """Where the session is."""
        return self.info.state

    # -- what subclasses decide ----------------------------------------------------------------

    @abstractmethod
    def _setup(self, pc: RTCPeerConnection) -> None:
        """Add the transceivers (and track handlers) before the offer."""

    @abstractmethod
    def _answer_problem(self, sdp: str) -> str | None:
        """Why the answer cannot be accepted, or None."""

    async def _accepted(self, sdp: str) -> None:  # noqa: B027 (an optional hook)
        """The answer was accepted (called before it is applied)."""

    async def _finished(self) -> None:  # noqa: B027 (an optional hook)
        """The peer connection is closed: release what the subclass holds."""

    # -- the offer/answer flow -----------------------------------------------------------------

    async def start(self, *, drop_offer: bool = False) -> None:
        """Gather, then send the candidates and the offer.

        Args:
            drop_offer: fault injection: lose the candidates and the offer (the join was
                answered 200 but the participant never hears of it).
        """
        pc = self._pc
        self._setup(pc)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            logger.info("%s: peer connection %s", self.label, state)
            if state == "connected" and self.info.state is not SessionState.ENDED:
                self.info.state = SessionState.CONNECTED
            elif state in ("failed", "closed"):
                self.end(f"peer connection {state}")

        if self._max_duration is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self._max_duration, self.end, "the session reached its maximum duration"
            )
        self._worker = asyncio.create_task(self._work(), name="kvs-emulator-storage-peer")
        await pc.setLocalDescription(await pc.createOffer())
        # As KVS's media server (a browser-like peer): one sha-256 fingerprint and trickle
        # advertised. The C SDK checks only the last fingerprint, as sha-256, and without
        # trickle holds its answer until its own gathering ends (10 s).
        sdp, candidates = _split_candidates(for_kvs_peers(pc.localDescription.sdp))
        if drop_offer:
            logger.info("%s: offer dropped (fault knob)", self.label)
            return
        for line, mid, index in candidates:
            payload = encode_payload(candidate_payload(line, mid, index))
            self._send(encode_event(MessageType.ICE_CANDIDATE, message_payload=payload))
        offer = encode_payload(sdp_payload("offer", sdp))
        if not self._send(encode_event(MessageType.SDP_OFFER, message_payload=offer)):
            self.end("the participant left before the offer")
            return
        logger.info("%s: sent %d candidates and the offer", self.label, len(candidates))

    def receive(self, message: ClientMessage) -> None:
        """A message the participant sent to the storage session (answer or candidate)."""
        if self.info.state is not SessionState.ENDED:
            self._inbox.put_nowait(message)

    async def _work(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._handle(message)
            except Exception as exc:  # remote input: end this session, keep the emulator
                logger.info("%s: %s", self.label, exc)
                self.end(f"bad message from the participant: {exc}")
                return

    async def _handle(self, message: ClientMessage) -> None:
        payload = decode_payload(message.message_payload) or {}
        if message.action is Action.ICE_CANDIDATE:
            if not self._answered:
                self._held.append(message)
                return
            mid = payload.get("sdpMid")
            index = payload.get("sdpMLineIndex")
            candidate = candidate_from_json(
                str(payload.get("candidate") or ""),
                mid if isinstance(mid, str) else None,
                index if isinstance(index, int) else None,
            )
            if candidate is not None:
                await self._pc.addIceCandidate(candidate)
            return
        if message.action is not Action.SDP_ANSWER or self._answered:
            self._reject(message, "the storage session expects one SDP_ANSWER to its offer")
            return
        sdp = payload.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            self._reject(message, "the answer has no sdp")
            return
        problem = self._answer_problem(sdp)
        if problem is not None:
            self._reject(message, problem)
            self.end(f"answer rejected: {problem}")
            return
        self._answered = True
        self.info.state = SessionState.CONNECTING
        self.info.answer_correlation_id = message.correlation_id
        await self._accepted(sdp)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        held, self._held = self._held, []
        for item in held:
            await self._handle(item)

    def _reject(self, message: ClientMessage, description: str) -> None:
        logger.info("%s refused: %s", self.label, description)
        if message.correlation_id is None:
            return  # failures are silent without a correlationId (docs/protocol.md#status_response)
        status = {
            "correlationId": message.correlation_id,
            "description": description[:MAX_STATUS_DESCRIPTION],
            "errorType": "InvalidArgumentException",
            "statusCode": "400",
            "success": False,
        }
        self._send(encode_event(MessageType.STATUS_RESPONSE, status_response=status))

    def end(self, reason: str) -> None:
        """End the session (idempotent): close the peer connection, finish the file."""
        if self._ending is not None:
            return
        self.info.state = SessionState.ENDED
        self.info.end_reason = reason
        logger.info("%s ended: %s", self.label, reason)
        self._ending = asyncio.ensure_future(self._finish())

    async def _finish(self: Self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(self._worker)
        with contextlib.suppress(Exception):
            await self._pc.close()
        await self._finished()
        self._ended.set()
        self._on_end(self)

    async def wait_ended(self) -> None:
        """Wait until :meth:`end` has finished (file closed)."""
        await self._ended.wait()


class StoragePeer(OfferingPeer):
    """The storage session of a master: record what it sends, relay it to storage viewers.

    Args:
        join: the accepted JoinStorageSession.
        send: delivers a frame to the channel's master.
        path: where the recording goes (its folder is created).
        ice_servers: what the peer may use (the emulator's own TURN, or none).
        max_duration: seconds after which the session ends, or None.
        on_end: called once with this peer when the session has ended.
    """

    info: SessionInfo

    def __init__(
        self,
        join: StorageJoin,
        *,
        send: SendFrame,
        path: Path,
        ice_servers: list[RTCIceServer],
        max_duration: float | None,
        on_end: Callable[[StoragePeer], None],
    ) -> None:
        super().__init__(
            join,
            SessionInfo(join.channel_arn, join.stream_name, path, time.time()),
            label=f"storage session of {join.channel_name}",
            send=send,
            ice_servers=ice_servers,
            max_duration=max_duration,
            on_end=on_end,
        )
        self._recorder: Recorder | None = None
        self._relay = MediaRelay()
        self._tracks: dict[str, MediaStreamTrack] = {}

    def subscribe(self, kind: str) -> MediaStreamTrack | None:
        """A copy of the master's ``kind`` track for a storage viewer (None until it has
        one); every subscriber and the recorder get every frame."""
        track = self._tracks.get(kind)
        if track is None or track.readyState != "live":
            return None
        return self._relay.subscribe(track)

    def _setup(self, pc: RTCPeerConnection) -> None:
        prefer_codec(pc.addTransceiver("video", direction="recvonly"), "video/H264")
        prefer_codec(pc.addTransceiver("audio", direction="recvonly"), "audio/opus")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tracks[track.kind] = track
            self._record(track)

    def _record(self, track: MediaStreamTrack) -> None:
        if self._recorder is not None and (track.kind == "video" or self._recorder.audio):
            self._recorder.add_track(self._relay.subscribe(track))

    def _answer_problem(self, sdp: str) -> str | None:
        return answer_codec_problem(sdp)

    async def _accepted(self, sdp: str) -> None:
        self.info.path.parent.mkdir(parents=True, exist_ok=True)
        self._recorder = Recorder(self.info.path, audio="audio" in sent_kinds(sdp))
        self._recorder.start()
        for track in self._tracks.values():
            self._record(track)

    async def _finished(self) -> None:
        if self._recorder is not None:
            try:
                await self._recorder.close()
            except Exception as exc:  # a full disk must not take the emulator down
                logger.warning("recording %s failed: %s", self.info.path, exc)
            self.refresh_counters()

    def refresh_counters(self) -> SessionInfo:
        """The session's info with the recorder's current counters."""
        if self._recorder is not None:
            self.info.frames_written = self._recorder.frames_written
            self.info.audio_frames_written = self._recorder.audio_frames_written
        return self.info
