"""Master: publish one video (and optional audio) source to up to N viewers of a channel.

::

    async with Master(access, video=TestPatternTrack()) as master:
        await master.wait_closed()

Data flows one way: source -> one shared encoder -> a packet track per viewer -> that
viewer's RTCRtpSender. Each viewer's SDP_OFFER creates one :class:`ViewerSession` (one
RTCPeerConnection); a re-offer from the same client id replaces it; sessions that fail, close
or never connect are closed and forgotten. Peer connections do not depend on the signaling
socket, so they keep streaming while signaling reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from ._tasks import invoke
from .access import ChannelAccess
from .errors import InvalidArgument, SessionError
from .media.encoder import AudioFanout, SharedVideoEncoder, attach_keyframe_requests, force_h264
from .media.redact import redact_urls
from .media.rtpsender import use_fast_send
from .peer import SignalingPeer
from .protocol import (
    GoAway,
    IceCandidate,
    ReconnectIceServer,
    Role,
    SdpOffer,
    StatusResponse,
)
from .reconnect import Refresh
from .session import (
    RemoteCandidates,
    enable_loopback_candidates,
    rtc_configuration,
    split_mdns_candidates,
)
from .signaling import Connected, Disconnected, SignalingClient, SignalingEvent

__all__ = ["Master", "MasterStats", "ViewerSession"]

logger = logging.getLogger(__name__)

MessageCallback = Callable[[str, str | bytes], Any]


@dataclass
class ViewerSession:
    """One viewer's peer connection on the master."""

    client_id: str
    pc: RTCPeerConnection
    created_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    channel: Any = None
    """The viewer's data channel, once it opened one."""
    candidates: RemoteCandidates = field(init=False)
    _tracks: list[MediaStreamTrack] = field(default_factory=list)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.candidates = RemoteCandidates(self.pc, label=f"viewer {self.client_id}")

    @property
    def state(self) -> str:
        """aiortc's connection state: new, connecting, connected, failed or closed."""
        return self.pc.connectionState

    @property
    def tracks(self) -> tuple[MediaStreamTrack, ...]:
        """This viewer's own tracks (a ``PacketTrack`` for video, one for audio)."""
        return tuple(self._tracks)

    async def close(self) -> None:
        """Close the peer connection and release this viewer's tracks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.candidates.close()
        for track in self._tracks:
            track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()


@dataclass
class MasterStats:
    """What the master has done so far."""

    offers: int = 0
    sessions_started: int = 0
    sessions_connected: int = 0
    sessions_replaced: int = 0
    sessions_failed: int = 0
    refused_over_limit: int = 0
    last_answer_time: float | None = None
    """Seconds from the last offer to its answer being sent."""


class Master(SignalingPeer):
    """Connect as MASTER and stream to every viewer that sends an offer.

    Args:
        access: where signed URLs and ICE servers come from (:class:`~kvs_peer.access.AwsAccess`
            or :class:`~kvs_peer.access.SignerAccess`), with role MASTER.
        video: a video source track (e.g. from :func:`kvs_peer.media.open_video_source`),
            encoded once for all viewers with H.264; None sends no video.
        audio: an audio source track, encoded with Opus once for all viewers; None for none.
        on_message: ``callback(client_id, message)`` for data-channel messages from viewers.
        max_viewers: sessions allowed at once (KVS allows 10 viewers per channel).
        connect_timeout: seconds a new session may take to connect before it is dropped.
        bitrate: video bitrate in bit/s.
        gop: keyframe interval in frames.
        preset: x264 speed preset (``ultrafast`` for the least CPU, e.g. on a Raspberry Pi).
        loopback_candidates: also gather 127.0.0.1 host candidates (hosts with only ``lo``).
        signaling: extra keyword arguments for :class:`~kvs_peer.signaling.SignalingClient`.
    """

    def __init__(
        self,
        access: ChannelAccess,
        *,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
        on_message: MessageCallback | None = None,
        max_viewers: int = 10,
        connect_timeout: float = 30.0,
        bitrate: int = 1_000_000,
        gop: int = 60,
        preset: str = "veryfast",
        loopback_candidates: bool = False,
        signaling: Mapping[str, Any] | None = None,
    ) -> None:
        if access.role is not Role.MASTER:
            raise InvalidArgument("Master needs channel access with role MASTER")
        if max_viewers < 1:
            raise InvalidArgument("max_viewers must be at least 1")
        self.access = access
        self._on_message = on_message
        self.max_viewers = max_viewers
        self._connect_timeout = connect_timeout
        self._loopback = loopback_candidates
        self._encoder = (
            SharedVideoEncoder(video, bitrate=bitrate, gop=gop, preset=preset)
            if video is not None
            else None
        )
        self._audio = AudioFanout(audio) if audio is not None else None
        super().__init__(SignalingClient(access, role=Role.MASTER, **dict(signaling or {})))
        self._sessions: dict[str, ViewerSession] = {}
        self._changed = asyncio.Condition()
        self.stats = MasterStats()
        self.end_reason: str | None = None
        """Why the master stopped on its own (its source ended), or None."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to signaling and start answering viewers.

        The master stops by itself (:meth:`wait_closed` returns, :attr:`end_reason` says why)
        when its video source ends, or its audio source when it sends no video: a file played
        to its end without ``loop``, or a camera gone for good. There is nothing left to send.
        """
        await super().start()
        source = self._encoder if self._encoder is not None else self._audio
        if source is not None:
            kind = "video" if source is self._encoder else "audio"
            self._tasks.spawn(self._stop_when_ended(source, kind), "watch-source")

    async def _stop_when_ended(self, source: SharedVideoEncoder | AudioFanout, kind: str) -> None:
        await source.wait_ended()
        # The pump's own failure (the encoder's), else the source track's (a camera error).
        error = source.error or getattr(source.source, "error", None)
        self.end_reason = f"the {kind} source " + (
            f"failed: {redact_urls(str(error))}" if error is not None else "ended"
        )
        logger.warning("%s: the master stops", self.end_reason)
        if self._runner is not None:
            self._runner.cancel()  # wait_closed() returns; close() releases the rest

    async def _release(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self._encoder is not None:
            await self._encoder.close()
        if self._audio is not None:
            await self._audio.close()  # both close their source
        await self._notify()

    # -- viewers -----------------------------------------------------------------------------

    @property
    def encoder(self) -> SharedVideoEncoder | None:
        """The shared video encoder (counters such as ``frames_encoded``), None without video."""
        return self._encoder

    @property
    def audio_fanout(self) -> AudioFanout | None:
        """The shared audio fan-out (counters such as ``frames_encoded``), None without audio."""
        return self._audio

    @property
    def viewers(self) -> Mapping[str, ViewerSession]:
        """Current sessions by viewer client id (read-only view)."""
        return dict(self._sessions)

    async def wait_for_viewers(
        self, count: int, *, connected: bool = True, timeout: float = 30.0
    ) -> None:
        """Wait until ``count`` sessions exist (and are connected, by default)."""

        def ready() -> bool:
            sessions = self._sessions.values()
            n = (
                sum(1 for s in sessions if s.connected_at is not None)
                if connected
                else len(self._sessions)
            )
            return n >= count or self._closed

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ready), timeout)

    async def send(self, message: str | bytes, client_id: str | None = None) -> int:
        """Send on the data channel of one viewer, or of all; returns how many got it."""
        targets = (
            [self._sessions[client_id]]
            if client_id in self._sessions
            else ([] if client_id is not None else list(self._sessions.values()))
        )
        sent = 0
        for session in targets:
            if session.channel is not None and session.channel.readyState == "open":
                session.channel.send(message)
                sent += 1
        return sent

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- signaling events --------------------------------------------------------------------

    async def _handle(self, event: SignalingEvent) -> None:
        match event:
            case SdpOffer(sender_client_id=None):
                logger.warning("ignoring an SDP offer without a sender client id")
            case SdpOffer():
                await self._on_offer(event)
            case IceCandidate(sender_client_id=sender) if sender is not None:
                session = self._sessions.get(sender)
                if session is not None:
                    session.candidates.add(event)
            case ReconnectIceServer():
                logger.info("RECONNECT_ICE_SERVER: refreshing ICE servers for new sessions")
                self.access.invalidate(Refresh.ICE)
            case GoAway():
                logger.info("GO_AWAY: signaling reconnects, sessions keep streaming")
            case StatusResponse():
                logger.warning(
                    "signaling reported a failure for %s: %s %s %s",
                    event.correlation_id,
                    event.error_type,
                    event.status_code,
                    event.description,
                )
            case Connected(reconnect=True):
                logger.info("signaling reconnected; %d sessions live", len(self._sessions))
            case Disconnected():
                logger.info("signaling disconnected (%s); sessions keep streaming", event.code)

    async def _on_offer(self, offer: SdpOffer) -> None:
        client_id = offer.sender_client_id
        assert client_id is not None
        self.stats.offers += 1
        old = self._sessions.pop(client_id, None)
        if old is not None:
            self.stats.sessions_replaced += 1
            self.signaling.forget(client_id)
            logger.info("viewer %s re-offered: replacing its session", client_id)
            self._tasks.spawn(old.close(), f"close-{client_id}")
        if len(self._sessions) >= self.max_viewers:
            self.stats.refused_over_limit += 1
            logger.warning(
                "viewer %s refused: %d viewers already (max_viewers)", client_id, self.max_viewers
            )
            return
        ice = await self.access.ice_config()
        pc = RTCPeerConnection(
            rtc_configuration(ice.servers, transport_policy=ice.transport_policy)
        )
        session = ViewerSession(client_id, pc)
        self._sessions[client_id] = session
        self.stats.sessions_started += 1
        # Negotiate concurrently: one slow viewer (ICE gathering can take 5 s) must not hold
        # up the others' offers and candidates.
        self._tasks.spawn(
            self._negotiate(session, offer, time.monotonic()), f"negotiate-{client_id}"
        )

    async def _negotiate(self, session: ViewerSession, offer: SdpOffer, started: float) -> None:
        pc = session.pc
        client_id = session.client_id

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            logger.info("viewer %s: %s", client_id, state)
            if state == "connected" and session.connected_at is None:
                session.connected_at = time.monotonic()
                self.stats.sessions_connected += 1
                await self._notify()
            elif state in ("failed", "closed"):
                if state == "failed":
                    self.stats.sessions_failed += 1
                await self._drop(session, f"connection {state}")

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            session.channel = channel

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                if self._on_message is not None:
                    self._deliver(client_id, message)

        kinds = _offered_kinds(offer.sdp)
        try:
            if not kinds:
                raise SessionError(client_id, f"viewer {client_id} sent an offer with no media")
            # Only add what the viewer asked for: aiortc cannot answer with a transceiver
            # that matches no m-line of the offer.
            if self._encoder is not None and "video" in kinds:
                track = self._encoder.subscribe()
                session._tracks.append(track)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                # Must happen before setRemoteDescription: aiortc fixes the answer's codecs
                # there, and our packets are H.264 whatever the viewer prefers.
                force_h264(transceiver)
                attach_keyframe_requests(transceiver.sender, track)
                use_fast_send(transceiver.sender)
            if self._audio is not None and "audio" in kinds:
                audio = self._audio.subscribe()
                session._tracks.append(audio)
                # Sends the fan-out's shared Opus payloads if Opus is negotiated, else (PCMU,
                # PCMA) encodes this viewer's copy itself.
                use_fast_send(pc.addTransceiver(audio, direction="sendonly").sender)
            sdp, mdns_candidates = split_mdns_candidates(offer.sdp)
            for event in mdns_candidates:
                session.candidates.add(event)  # held until the offer is applied
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            except Exception as exc:
                if self._encoder is not None and "video" in kinds and "H264" not in offer.sdp:
                    reason = "it offers no H.264 video, which kvs-peer sends"
                else:
                    reason = str(exc)
                raise SessionError(
                    client_id, f"viewer {client_id} sent an unusable offer: {reason}"
                ) from exc
            session.candidates.remote_description_set()
            if self._loopback:
                enable_loopback_candidates(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await self.signaling.send_answer(pc.localDescription.sdp, recipient_client_id=client_id)
            self.stats.last_answer_time = time.monotonic() - started
            logger.info(
                "answered viewer %s in %.0f ms", client_id, self.stats.last_answer_time * 1000
            )
            await self._notify()
            await asyncio.sleep(self._connect_timeout)
            if session.connected_at is None and self._sessions.get(client_id) is session:
                self.stats.sessions_failed += 1
                await self._drop(session, f"not connected after {self._connect_timeout:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.sessions_failed += 1
            logger.warning("viewer %s: %s", client_id, exc)
            await self._drop(session, "negotiation failed")

    def _deliver(self, client_id: str, message: str | bytes) -> None:
        assert self._on_message is not None
        self._tasks.spawn(
            invoke(self._on_message, client_id, message, what="on_message"),
            f"message-{client_id}",
        )

    async def _drop(self, session: ViewerSession, why: str) -> None:
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
            self.signaling.forget(session.client_id)
            logger.info("viewer %s removed: %s", session.client_id, why)
        await session.close()
        await self._notify()


def _offered_kinds(sdp: str) -> set[str]:
    """Media kinds with an m-line in an SDP (``video``, ``audio``, ``application``)."""
    return {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}
