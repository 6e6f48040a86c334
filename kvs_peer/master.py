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
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection

from ._memory import release_free_memory
from ._tasks import invoke
from .access import ChannelAccess
from .errors import InvalidArgument, SessionError, WaitTimeout
from .gathering import BackgroundGathering
from .ingestion import StorageLink, StorageOptions
from .media.encoder import (
    AudioFanout,
    PacketTrack,
    SharedVideoEncoder,
    attach_keyframe_requests,
    force_h264,
)
from .media.passthrough import VIDEO_MODES, H264Source, PassthroughVideo, VideoRoute, route_video
from .media.redact import redact_urls
from .media.rtpsender import use_fast_send
from .peer import SignalingPeer
from .peerconnection import (
    RemoteCandidates,
    RemoteDtls,
)
from .peerlink import IcePlan, PeerLink
from .protocol import (
    GoAway,
    IceCandidate,
    ReconnectIceServer,
    Role,
    SdpOffer,
    StatusResponse,
)
from .reconnect import Refresh
from .rules import MAX_VIEWERS
from .signaling import Connected, Disconnected, SignalingClient, SignalingEvent
from .takeover import TakeoverWatch

__all__ = ["Master", "MasterStats", "ViewerSession"]

logger = logging.getLogger(__name__)

MessageCallback = Callable[[str, str | bytes], Any]

SETUP_HISTORY = 256
"""Session setup times :class:`MasterStats` keeps for readers that sample now and then."""

MEMORY_RELEASE_DELAY = 2.0
"""Seconds after a session closes before freed memory is handed back (once per wave)."""


@dataclass
class ViewerSession:
    """One viewer's peer connection on the master."""

    client_id: str
    link: PeerLink
    """The peer connection and its wiring (candidates, DTLS watch, gathering)."""
    created_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    channel: Any = None
    """The viewer's data channel, once it opened one."""
    _closed: bool = False
    _negotiation: asyncio.Task[None] | None = None
    _deadline: asyncio.TimerHandle | None = None

    @property
    def pc(self) -> RTCPeerConnection:
        """The viewer's peer connection."""
        return self.link.pc

    @property
    def candidates(self) -> RemoteCandidates:
        """The viewer's trickled candidates."""
        return self.link.candidates

    @property
    def dtls(self) -> RemoteDtls:
        """Whether the viewer accepted our DTLS certificate (see :class:`RemoteDtls`)."""
        return self.link.dtls

    @property
    def gathering(self) -> BackgroundGathering | None:
        """STUN/TURN candidates trickled after the answer (None: relay-only, aiortc gathers)."""
        return self.link.gathering

    @property
    def state(self) -> str:
        """new, connecting, connected, failed or closed: aiortc's connection state, but
        ``connected`` only once the viewer's DTLS accepted us too."""
        return self.dtls.state

    @property
    def tracks(self) -> tuple[MediaStreamTrack, ...]:
        """This viewer's own tracks (a ``PacketTrack`` for video, one for audio)."""
        return tuple(self.link.tracks)

    def _disarm(self) -> None:
        # A pending timer keeps the session alive: cancel it the moment it is not needed.
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def close(self) -> None:
        """Close the peer connection and release this viewer's tracks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._disarm()
        negotiation, self._negotiation = self._negotiation, None
        if negotiation is not None and negotiation is not asyncio.current_task():
            negotiation.cancel()
        await self.link.close()


@dataclass
class MasterStats:
    """What the master has done so far."""

    offers: int = 0
    sessions_started: int = 0
    sessions_connected: int = 0
    sessions_replaced: int = 0
    sessions_failed: int = 0
    sessions_evicted: int = 0
    """Sessions not connected yet, closed to make room for a newer offer (master full)."""
    refused_over_limit: int = 0
    last_answer_time: float | None = None
    """Seconds from the last offer to its answer being sent."""
    recent_setup_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=SETUP_HISTORY))
    """Offer-to-connected seconds of the last ``SETUP_HISTORY`` sessions, as they connected
    (metrics read the ones added since they last looked: a session may be gone by then)."""


class Master(SignalingPeer):
    """Connect as MASTER and stream to every viewer that sends an offer.

    Args:
        access: where signed URLs and ICE servers come from (:class:`~kvs_peer.access.AwsAccess`
            or :class:`~kvs_peer.access.SignerAccess`), with role MASTER.
        video: a video source track (e.g. from :func:`kvs_peer.media.open_video_source`),
            encoded once for all viewers with H.264; None sends no video.
        audio: an audio source track, encoded with Opus once for all viewers; None for none.
        on_message: ``callback(client_id, message)`` for data-channel messages from viewers.
        max_viewers: sessions allowed at once (KVS allows ``MAX_VIEWERS`` per channel). When
            every slot is taken, a new offer takes the place of the oldest session that has
            not connected yet; connected sessions are never closed for a newcomer.
        connect_timeout: seconds from its offer a new session may take to connect before it
            is dropped.
        bitrate: video bitrate in bit/s.
        gop: keyframe interval in frames.
        preset: x264 speed preset (``ultrafast`` for the least CPU, e.g. on a Raspberry Pi).
        video_mode: with an H.264 source (:func:`kvs_peer.media.open_master_video`),
            ``auto`` sends the stream as it is to viewers that offered its profile and encodes
            for the others, ``passthrough`` refuses the others, ``transcode`` encodes for
            everyone (:mod:`kvs_peer.media.passthrough`). Other sources are always encoded.
        video_encoder: FFmpeg H.264 encoder of the transcode path (``libx264``; hardware
            ones such as ``h264_v4l2m2m`` are untested).
        loopback_candidates: also gather 127.0.0.1 host candidates (hosts with only ``lo``).
        relay_only: gather and use TURN relay candidates only (ICE transport policy
            ``relay``); the channel's ICE configuration must include a TURN server.
        takeover_check: seconds between checks that the channel's viewers still reach this
            master and not a newer one (:mod:`kvs_peer.takeover`; each check briefly connects
            a probe viewer); None disables them.
        signaling: extra keyword arguments for :class:`~kvs_peer.signaling.SignalingClient`.
        storage: WebRTC ingestion: join the storage session of the channel's linked KVS
            stream and stream into it (:mod:`kvs_peer.ingestion`); needs AWS access and a
            video source. Viewers then go through the storage session, not this master.
        storage_options: timeouts and re-join policy of ``storage``.
    """

    def __init__(
        self,
        access: ChannelAccess,
        *,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
        on_message: MessageCallback | None = None,
        max_viewers: int = MAX_VIEWERS,
        connect_timeout: float = 30.0,
        bitrate: int = 1_000_000,
        gop: int = 60,
        preset: str = "veryfast",
        video_mode: str = "auto",
        video_encoder: str = "libx264",
        loopback_candidates: bool = False,
        relay_only: bool = False,
        takeover_check: float | None = 60.0,
        signaling: Mapping[str, Any] | None = None,
        storage: bool = False,
        storage_options: StorageOptions | None = None,
    ) -> None:
        if access.role is not Role.MASTER:
            raise InvalidArgument("Master needs channel access with role MASTER")
        if max_viewers < 1:
            raise InvalidArgument("max_viewers must be at least 1")
        self.access = access
        self._on_message = on_message
        self.max_viewers = max_viewers
        self._connect_timeout = connect_timeout
        # The loopback hook adds a host address even where the relay policy asks for none.
        self._loopback = loopback_candidates and not relay_only
        self._relay_only = relay_only
        if video_mode not in VIDEO_MODES:
            raise InvalidArgument(f"video_mode must be one of {', '.join(VIDEO_MODES)}")
        self._video_mode = video_mode
        # An H.264 source is forwarded as it is; the encoder, if any, gets its decoded frames.
        self._passthrough = PassthroughVideo(video) if isinstance(video, H264Source) else None
        if self._passthrough is None and video is not None and video_mode == "passthrough":
            raise InvalidArgument(
                "video_mode 'passthrough' needs an H.264 source (open_master_video)"
            )
        transcode_source = video
        if self._passthrough is not None:
            transcode_source = self._passthrough.decoded() if video_mode != "passthrough" else None
        self._encoder = (
            SharedVideoEncoder(
                transcode_source, bitrate=bitrate, gop=gop, preset=preset, codec=video_encoder
            )
            if transcode_source is not None
            else None
        )
        self._audio = AudioFanout(audio) if audio is not None else None
        super().__init__(SignalingClient(access, role=Role.MASTER, **dict(signaling or {})))
        self._sessions: dict[str, ViewerSession] = {}
        self._memory_release_pending = False
        self._changed = asyncio.Condition()
        self.stats = MasterStats()
        self.end_reason: str | None = None
        """Why the master stopped on its own (its source ended, another master took the
        channel over), or None."""
        self._takeover = (
            # Frequent checks (tests) get short probes; 5 s is plenty on any real network.
            TakeoverWatch(
                self.signaling,
                access,
                access.channel,
                interval=takeover_check,
                timeout=min(5.0, max(1.0, takeover_check)),
            )
            if takeover_check is not None and hasattr(access, "for_viewer")
            else None
        )
        self._storage = (
            StorageLink(
                access,
                self.signaling,
                encoder=self._encoder,
                audio=self._audio,
                passthrough=self._passthrough,
                video_mode=self._video_mode,
                options=storage_options,
                loopback_candidates=loopback_candidates,
                relay_only=relay_only,
                on_fatal=self._fail,
            )
            if storage
            else None
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to signaling and start answering viewers.

        The master stops by itself (:meth:`wait_closed` returns, :attr:`end_reason` says why)
        when its video source ends, or its audio source when it sends no video: a file played
        to its end without ``loop``, or a camera gone for good. There is nothing left to send.

        With ``storage``, the channel's media storage is checked first.

        Raises:
            ChannelError: ``storage`` on a channel that stores no media (or cannot be read).
        """
        if self._storage is not None:
            try:
                await self._storage.prepare()
            except BaseException:
                await self.close()
                raise
        await super().start()
        if self._passthrough is not None:
            self._passthrough.start()  # first: the storage session's route waits for its SPS
        if self._storage is not None:
            self._tasks.spawn(self._storage.run(), "storage-session")
        source = self._passthrough or self._encoder or self._audio
        if source is not None:
            kind = "audio" if source is self._audio else "video"
            self._tasks.spawn(self._stop_when_ended(source, kind), "watch-source")
        if self._takeover is not None:
            self._tasks.spawn(self._stop_when_taken_over(self._takeover), "watch-takeover")

    async def _stop_when_taken_over(self, watch: TakeoverWatch) -> None:
        error = await watch.run()
        self.end_reason = "another master took the channel over"
        logger.error("%s; the master stops", error)
        self._fail(error)  # wait_closed() raises it; close() releases the rest

    async def _stop_when_ended(
        self, source: PassthroughVideo | SharedVideoEncoder | AudioFanout, kind: str
    ) -> None:
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
        if self._storage is not None:
            await self._storage.close()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self._encoder is not None:
            await self._encoder.close()
        if self._passthrough is not None:
            await self._passthrough.close()
        if self._audio is not None:
            await self._audio.close()  # both close their source
        await self._notify()

    # -- viewers -----------------------------------------------------------------------------

    @property
    def storage(self) -> StorageLink | None:
        """The storage-session link (``storage=True``; its ``stats``), else None."""
        return self._storage

    @property
    def passthrough(self) -> PassthroughVideo | None:
        """The H.264 passthrough fan-out (``frames_forwarded``, ``replays``), None unless the
        source is H.264."""
        return self._passthrough

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
        """Wait until ``count`` sessions exist (and are connected, by default), or the
        master closed.

        Raises:
            WaitTimeout: fewer viewers within ``timeout`` seconds.
        """

        def ready() -> bool:
            sessions = self._sessions.values()
            n = (
                sum(1 for s in sessions if s.connected_at is not None)
                if connected
                else len(self._sessions)
            )
            return n >= count or self._closed

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                have = sum(1 for s in self._sessions.values() if s.connected_at is not None)
                raise WaitTimeout(
                    f"{have} of {count} viewers connected within {timeout:g} s "
                    f"({len(self._sessions)} sessions in all)"
                ) from None

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
        if self._storage is not None and self._storage.handle(event):
            return
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
            # Not signaling.forget(): the buffer has just seen this new offer, and the
            # candidates that follow it belong to the new session.
            self.stats.sessions_replaced += 1
            logger.info("viewer %s re-offered: replacing its session", client_id)
            self._tasks.spawn(old.close(), f"close-{client_id}")
        if not self._make_room(client_id):
            return
        plan = await IcePlan.fetch(self.access, relay_only=self._relay_only)
        if not self._make_room(client_id):  # sessions may have come and gone meanwhile
            return
        link = PeerLink.planned(
            plan,
            lambda line, mid, index: self.signaling.send_ice_candidate(
                line, sdp_mid=mid, sdp_mline_index=index, recipient_client_id=client_id
            ),
            label=f"viewer {client_id}",
            loopback=self._loopback,
        )
        session = ViewerSession(client_id, link)
        self._sessions[client_id] = session
        self.stats.sessions_started += 1
        session._deadline = asyncio.get_running_loop().call_later(
            self._connect_timeout, self._expire, session
        )
        # Negotiate concurrently: one slow viewer (ICE gathering can take 5 s) must not hold
        # up the others' offers and candidates.
        session._negotiation = self._tasks.spawn(
            self._negotiate(session, offer, time.monotonic()), f"negotiate-{client_id}"
        )

    def _make_room(self, client_id: str) -> bool:
        """Whether a session for ``client_id`` fits, closing the oldest one still connecting
        if the master is full: offers that never connect must not keep viewers out."""
        if len(self._sessions) < self.max_viewers:
            return True
        # A session whose DTLS is up on our side waits for the viewer's first packet (up to
        # ~1.5 s) to count as connected: it is no stuck offer, so it is never the one evicted.
        pending = [
            s
            for s in self._sessions.values()
            if s.connected_at is None and s.pc.connectionState != "connected"
        ]
        if not pending:
            self.stats.refused_over_limit += 1
            logger.warning(
                "viewer %s refused: %d viewers connected already (max_viewers)",
                client_id,
                self.max_viewers,
            )
            return False
        victim = min(pending, key=lambda s: s.created_at)
        self.stats.sessions_evicted += 1
        self._tasks.spawn(
            self._drop(victim, f"not connected yet, its place goes to viewer {client_id}"),
            f"evict-{victim.client_id}",
        )
        # _drop has not run yet: take the place now so this offer is not refused.
        del self._sessions[victim.client_id]
        self.signaling.forget(victim.client_id)
        return True

    def _expire(self, session: ViewerSession) -> None:
        session._deadline = None
        if session.connected_at is not None or self._sessions.get(session.client_id) is not session:
            return
        self.stats.sessions_failed += 1
        why = f"not connected after {self._connect_timeout:g} s"
        if session.pc.connectionState == "connected":
            why += " (DTLS is up on our side only: the viewer refused our certificate?)"
        self._tasks.spawn(self._drop(session, why), f"expire-{session.client_id}")

    async def _negotiate(self, session: ViewerSession, offer: SdpOffer, started: float) -> None:
        link = session.link
        pc = link.pc
        client_id = session.client_id

        async def mark_connected() -> None:
            # Both ends must be up: aiortc's state alone says nothing of the viewer's DTLS.
            if session.connected_at is None and session.dtls.connected:
                session.connected_at = time.monotonic()
                session._disarm()
                self.stats.sessions_connected += 1
                self.stats.recent_setup_seconds.append(session.connected_at - session.created_at)
                logger.info("viewer %s: connected", client_id)
                await self._notify()

        session.dtls.on_confirmed = lambda: self._tasks.spawn(
            mark_connected(), f"connected-{client_id}"
        )

        async def on_state(state: str) -> None:
            if state == "connected":
                await mark_connected()
            elif state in ("failed", "closed"):
                if state == "failed":
                    self.stats.sessions_failed += 1
                await self._drop(session, f"connection {state}")

        link.on_state(on_state)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
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
            route: VideoRoute | None = None
            if (self._encoder or self._passthrough) is not None and "video" in kinds:
                # The stream as it is if the viewer takes its profile, else the encoder.
                route = await route_video(
                    offer.sdp,
                    passthrough=self._passthrough,
                    encoder=self._encoder,
                    mode=self._video_mode,
                    viewer=client_id,
                )
                track = route.fanout.subscribe()
                link.tracks.append(track)
                if isinstance(track, PacketTrack):
                    # Its keyframe is encoded while ICE and DTLS run (passthrough tracks
                    # start at the cached IDR anyway).
                    track.prime()
                transceiver = pc.addTransceiver(track, direction="sendonly")
                # Must happen before setRemoteDescription: aiortc fixes the answer's codecs
                # there, and our packets are H.264 whatever the viewer prefers.
                force_h264(transceiver)
                attach_keyframe_requests(transceiver.sender, track)
                use_fast_send(transceiver.sender)
            if self._audio is not None and "audio" in kinds:
                audio = self._audio.subscribe()
                link.tracks.append(audio)
                # Sends the fan-out's shared Opus payloads if Opus is negotiated, else (PCMU,
                # PCMA) encodes this viewer's copy itself.
                use_fast_send(pc.addTransceiver(audio, direction="sendonly").sender)
            try:
                # Passthrough: only the payload type the stream uses.
                await link.apply_remote(offer.sdp, "offer", route.offer if route else None)
            except Exception as exc:
                if route is not None and "H264" not in offer.sdp:
                    reason = "it offers no H.264 video, which kvs-peer sends"
                else:
                    reason = str(exc)
                raise SessionError(
                    client_id, f"viewer {client_id} sent an unusable offer: {reason}"
                ) from exc
            if route is not None:
                route.negotiated(transceiver)  # passthrough: the offered payload type
            await link.answer(
                lambda sdp: self.signaling.send_answer(sdp, recipient_client_id=client_id),
                route.answer if route else None,  # passthrough: the stream's profile-level-id
            )
            self.stats.last_answer_time = time.monotonic() - started
            logger.info(
                "answered viewer %s in %.0f ms", client_id, self.stats.last_answer_time * 1000
            )
            await self._notify()
            # Done: the session's deadline (armed with the offer) or its connection state
            # ends it; this task keeps no reference to it.
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
        if not session._closed:
            logger.info("viewer %s removed: %s", session.client_id, why)
        await session.close()
        self._release_memory_soon()
        await self._notify()

    def _release_memory_soon(self) -> None:
        """Hand what closed sessions freed back to the system, a moment after they closed.

        Without it a master's RSS stays about 20 % above its idle level after a wave of
        viewers although nothing is alive (docs/reliability.md, "Master under churn").
        """
        if self._memory_release_pending:
            return
        self._memory_release_pending = True

        async def release() -> None:
            try:
                # Closed sessions' objects are cycles: the collector frees them a little later.
                await asyncio.sleep(MEMORY_RELEASE_DELAY)
            finally:
                self._memory_release_pending = False
            await asyncio.to_thread(release_free_memory)

        self._tasks.spawn(release(), "release-memory")


def _offered_kinds(sdp: str) -> set[str]:
    """Media kinds with an m-line in an SDP (``video``, ``audio``, ``application``)."""
    return {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}
