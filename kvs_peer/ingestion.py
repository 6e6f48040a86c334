"""WebRTC ingestion for the master: stream into the KVS stream linked to the channel.

With media storage enabled on a channel, the master calls JoinStorageSession once its
signaling is open, and KVS's storage session offers to it over that signaling connection,
without ``senderClientId`` (docs/protocol.md#storage-sessions). :class:`StorageLink` keeps
the master joined: it answers each offer with a fresh peer connection (H.264, Opus, no data channel,
video-only allowed), sends the answer with a ``correlationId`` so a rejection comes back as a
STATUS_RESPONSE (fatal: it names the reason), fetches the ICE configuration again before each
re-join, retries with jittered backoff when no offer comes, re-joins when the storage peer
drops, and re-joins on its own before the session's one-hour limit.

Unproven against the real service: aiortc answers with its candidates inside the SDP and does
not trickle them (docs/protocol.md#storage-sessions); only the emulator has accepted such
answers so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection

from ._tasks import TaskSet
from .access import AwsAccess, ChannelAccess, IceConfig
from .errors import (
    AccessDenied,
    ChannelError,
    ChannelNotFound,
    InvalidArgument,
    KvsPeerError,
    SessionError,
)
from .media.encoder import AudioFanout, SharedVideoEncoder, attach_keyframe_requests, force_h264
from .media.passthrough import PassthroughVideo, route_video
from .media.rtpsender import use_fast_send
from .peerconnection import (
    link_stats,
    rtc_configuration,
)
from .peerlink import PeerLink
from .protocol import IceCandidate, SdpOffer, StatusResponse
from .reconnect import Refresh
from .rules import STORAGE_SESSION_LIMIT
from .signaling import Connected, SignalingClient

__all__ = ["StorageLink", "StorageOptions", "StorageStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageOptions:
    """How a master stays joined to its channel's storage session.

    Attributes:
        offer_timeout: seconds to wait for the offer after a successful JoinStorageSession
            before joining again (the JS sample re-joins every ~6 s; one offer per call).
        connect_timeout: seconds from the offer for the peer connection to connect (the JS
            sample allows 30 s).
        rejoin_after: seconds after a session connected at which the master joins again on
            its own, before KVS ends the session (one hour); None never does.
        backoff_base: first retry delay in seconds; doubled per failed attempt, with jitter.
        backoff_cap: longest retry delay in seconds.
        join_timeout: HTTP timeout of one JoinStorageSession call (the JS sample uses 6 s).
    """

    offer_timeout: float = 10.0
    connect_timeout: float = 30.0
    rejoin_after: float | None = STORAGE_SESSION_LIMIT - 300.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    join_timeout: float = 6.0

    def __post_init__(self) -> None:
        for name in ("offer_timeout", "connect_timeout", "backoff_base", "join_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"storage option {name} must be a positive number of seconds")
        if self.backoff_cap < self.backoff_base:
            raise InvalidArgument("storage option backoff_cap must be at least backoff_base")
        if self.rejoin_after is not None and not 0 < self.rejoin_after <= STORAGE_SESSION_LIMIT:
            raise InvalidArgument(
                "storage option rejoin_after must be within "
                f"(0, {STORAGE_SESSION_LIMIT:g}] seconds: KVS ends the session after one hour"
            )


@dataclass
class StorageStats:
    """What the storage link has done (status line, ``--json``, metrics)."""

    stream_arn: str | None = None
    joins: int = 0
    """JoinStorageSession calls answered 200."""
    join_failures: int = 0
    offers: int = 0
    rejoins: int = 0
    """Joins after the first session connected (drops, limits, planned re-joins)."""
    sessions_connected: int = 0
    offer_timeouts: int = 0
    joined: bool = False
    """A session was offered and answered and has not ended."""
    connected: bool = False
    """The storage peer is connected (media flows into the stream)."""
    bytes_sent: int = 0
    """Bytes sent on storage-session peer connections that have ended (see
    :meth:`StorageLink.bytes_sent` for the running total)."""
    last_error: str | None = None


class _Session:
    """One storage-session peer connection (a fresh one per offer)."""

    def __init__(self, link: PeerLink, offer: SdpOffer) -> None:
        self.link = link
        self.pc = link.pc
        self.offer = offer
        self.correlation_id = str(int(time.time() * 1000))
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.bytes_sent = 0

    async def close(self) -> None:
        self.ended.set()
        await self.link.close()


class StorageLink:
    """Keeps a master joined to its channel's storage session.

    Args:
        access: AWS channel access of the master (JoinStorageSession needs credentials: a
            signer-only device cannot call it).
        signaling: the master's signaling client (the offer arrives on it).
        encoder: the master's shared video encoder.
        passthrough: the master's H.264 passthrough fan-out (an H.264 source); the storage
            session records H.264, so one of the two is required.
        video_mode: ``auto``, ``passthrough`` or ``transcode``, as for viewers: the stream
            as it is when the storage session's offer takes its profile.
        audio: the master's Opus fan-out, or None to send video only.
        options: timeouts and retry policy.
        loopback_candidates: also gather 127.0.0.1 candidates.
        relay_only: use TURN relay candidates only.
        on_fatal: called with the error that must stop the master (a rejected answer, a
            channel without storage, denied access).
        rng: random source for backoff jitter.
    """

    def __init__(
        self,
        access: ChannelAccess,
        signaling: SignalingClient,
        *,
        encoder: SharedVideoEncoder | None,
        audio: AudioFanout | None,
        passthrough: PassthroughVideo | None = None,
        video_mode: str = "auto",
        options: StorageOptions | None = None,
        loopback_candidates: bool = False,
        relay_only: bool = False,
        on_fatal: Callable[[KvsPeerError], None],
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(access, AwsAccess):
            raise InvalidArgument(
                "storage mode needs AWS credentials (JoinStorageSession is an AWS API call): "
                "use --region/--endpoint-url rather than --signer"
            )
        if encoder is None and passthrough is None:
            raise InvalidArgument(
                "storage mode needs a video source: the storage session records H.264 video "
                "(audio is optional)"
            )
        self._access = access
        self._signaling = signaling
        self._encoder = encoder
        self._passthrough = passthrough
        self._video_mode = video_mode
        self._audio = audio
        self.options = options or StorageOptions()
        self._loopback = loopback_candidates and not relay_only
        self._relay_only = relay_only
        self._on_fatal = on_fatal
        self._rng = rng or random.Random()
        self.stats = StorageStats()
        self._arn: str | None = None
        self._endpoint: str | None = None
        self._ice: IceConfig | None = None
        self._current: _Session | None = None
        self._offers: asyncio.Queue[_Session] = asyncio.Queue()
        self._closing = TaskSet()
        self._warned_viewers: set[str] = set()
        self._signaling_up = asyncio.Event()
        self._signaling_up.set()

    # -- setup ---------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check that the channel stores media and find its WEBRTC endpoint.

        Raises:
            ChannelError: the channel has no media storage enabled (with what to do).
            ChannelNotFound, AccessDenied: as the control plane says.
        """
        resolver = self._access.resolver
        channel = self._access.channel
        resolved = await self._access.resolve()
        config = await resolver.media_storage(channel)
        stream = config.get("StreamARN")
        if config.get("Status") != "ENABLED" or not stream:
            raise ChannelError(
                f"channel {channel!r} does not store media (media storage "
                f"{config.get('Status', 'DISABLED')}): link it to a stream with data retention "
                "using UpdateMediaStorageConfiguration (`aws kinesisvideo "
                "update-media-storage-configuration --channel-arn ARN "
                "--media-storage-configuration StreamARN=STREAM_ARN,Status=ENABLED`), or run "
                "without --storage",
                code="InvalidArgumentException",
            )
        self._arn = resolved.arn
        self._endpoint = await resolver.webrtc_endpoint(resolved.arn)
        self.stats.stream_arn = stream
        logger.info("channel %s stores its media in %s", channel, stream)

    # -- signaling events ------------------------------------------------------------------

    def handle(self, event: Any) -> bool:
        """Take the storage session's events (and viewers' direct offers); True if taken."""
        if isinstance(event, Connected):
            self._signaling_up.set()
            return False
        if isinstance(event, SdpOffer):
            if event.sender_client_id is not None:
                viewer = event.sender_client_id
                if viewer not in self._warned_viewers:
                    self._warned_viewers.add(viewer)
                    logger.warning(
                        "viewer %s offered to the master directly, but this channel stores "
                        "media: viewers must join the storage session "
                        "(JoinStorageSessionAsViewer); its offer is not answered",
                        viewer,
                    )
                return True
            self._take_offer(event)
            return True
        if isinstance(event, IceCandidate) and event.sender_client_id is None:
            if self._current is not None:
                self._current.link.candidates.add(event)
            return True
        if isinstance(event, StatusResponse) and self._current is not None:
            if event.correlation_id == self._current.correlation_id:
                reason = event.description or event.error_type or "no reason given"
                error = SessionError(
                    None,
                    f"the storage session rejected the master's answer: {reason} "
                    f"({event.error_type or 'error'} {event.status_code or ''})".rstrip()
                    + "; kvs-peer sends H.264 and Opus, check the source and --audio",
                )
                self.stats.last_error = str(error)
                logger.error("%s", error)
                self._on_fatal(error)
                return True
        return False

    def _take_offer(self, offer: SdpOffer) -> None:
        # The peer connection is made here, synchronously: the candidates the signaling
        # client held back are delivered right after this offer and need its session.
        self.stats.offers += 1
        ice = self._ice
        servers = ice.servers if ice is not None else ()
        policy = "relay" if self._relay_only else (ice.transport_policy if ice else "all")
        # aiortc gathers STUN/TURN candidates itself, and the storage session's state is
        # aiortc's alone: no DTLS watch, no RTCP counts.
        link = PeerLink(
            rtc_configuration(servers, transport_policy=policy),
            label="storage session",
            loopback=self._loopback,
            instrument=False,
        )
        session = _Session(link, offer)
        old, self._current = self._current, session
        if old is not None:
            # No re-negotiation in storage mode: a new offer means a new peer connection.
            self._retire(old)
        self._offers.put_nowait(session)

    def _retire(self, session: _Session) -> None:
        self._closing.spawn(self._close_session(session), "kvs-ingestion-close")

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Join, answer, stay joined; re-join after drops and before the limit. Runs until
        cancelled; fatal errors go to ``on_fatal``."""
        failures = 0
        pending: _Session | None = None
        while True:
            if pending is None and not self._offers.empty():
                pending = self._offers.get_nowait()  # offered again while we were busy
            if pending is None:
                joined = await self._join()
                if not joined:
                    failures += 1
                    await asyncio.sleep(self._delay(failures))
                    continue
                try:
                    pending = await asyncio.wait_for(self._offers.get(), self.options.offer_timeout)
                except TimeoutError:
                    self.stats.offer_timeouts += 1
                    failures += 1
                    delay = self._delay(failures)
                    logger.warning(
                        "no offer from the storage session %.0f s after JoinStorageSession; "
                        "joining again in %.1f s",
                        self.options.offer_timeout,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
            session, pending = pending, None
            if session is not self._current:
                continue  # a newer offer replaced it already
            if not await self._negotiate(session):
                failures += 1
                await asyncio.sleep(self._delay(failures))
                continue
            failures = 0
            pending = await self._stay(session)
            self.stats.rejoins += 1

    def _delay(self, failures: int) -> float:
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * 2.0 ** (failures - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _join(self) -> bool:
        assert self._arn is not None and self._endpoint is not None
        if not self._signaling.connected:
            self._signaling_up.clear()
        await self._signaling_up.wait()  # the offer comes over signaling: it must be open
        # The storage session's next candidates must wait for its next offer again.
        self._signaling.forget(None)
        if self.stats.joins:
            # The C SDK refreshes ICE before every re-join (docs/protocol.md#storage-sessions).
            self._access.invalidate(Refresh.ICE)
        try:
            self._ice = await self._access.ice_config()
            await self._access.resolver.join_storage_session(
                self._endpoint, self._arn, timeout=self.options.join_timeout
            )
        except (AccessDenied, ChannelNotFound) as exc:
            self.stats.last_error = str(exc)
            self._on_fatal(exc)
            await asyncio.Event().wait()  # the master stops us
        except ChannelError as exc:
            self.stats.join_failures += 1
            self.stats.last_error = str(exc)
            logger.warning("JoinStorageSession failed: %s", exc)
            return False
        self.stats.joins += 1
        logger.info("joined the storage session of %s", self._access.channel)
        return True

    async def _negotiate(self, session: _Session) -> bool:
        link = session.link
        pc = link.pc

        def on_state(state: str) -> None:
            if state == "connected":
                session.connected.set()
            elif state in ("failed", "closed"):
                session.ended.set()

        link.on_state(on_state)

        sdp = session.offer.sdp
        kinds = {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}
        try:
            if "video" not in kinds:
                raise SessionError(None, "the storage session's offer has no video section")
            route = await route_video(
                sdp,
                passthrough=self._passthrough,
                encoder=self._encoder,
                mode=self._video_mode,
                viewer="the storage session",
            )
            track = route.fanout.subscribe()
            link.tracks.append(track)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            force_h264(transceiver)  # before setRemoteDescription: the answer's codecs
            attach_keyframe_requests(transceiver.sender, track)
            use_fast_send(transceiver.sender)
            if self._audio is not None and "audio" in kinds:
                audio = self._audio.subscribe()
                link.tracks.append(audio)
                use_fast_send(pc.addTransceiver(audio, direction="sendonly").sender)
            # Passthrough: only the payload type the stream uses.
            await link.apply_remote(sdp, "offer", route.offer)
            route.negotiated(transceiver)
            await link.answer(
                lambda answer: self._signaling.send_storage_answer(
                    answer, correlation_id=session.correlation_id
                ),
                route.answer,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.last_error = f"answering the storage session failed: {exc}"
            logger.warning("%s", self.stats.last_error)
            self._drop(session)
            return False
        self.stats.joined = True
        connected = asyncio.ensure_future(session.connected.wait())
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            await asyncio.wait(
                {connected, ended},
                timeout=self.options.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            connected.cancel()
            ended.cancel()
        if not session.connected.is_set() or session.ended.is_set():
            self.stats.last_error = (
                "the storage session's peer connection ended before it connected"
                if session.ended.is_set()
                else f"the storage session did not connect within "
                f"{self.options.connect_timeout:g} s"
            )
            logger.warning("%s; joining again", self.stats.last_error)
            self._drop(session)
            return False
        self.stats.connected = True
        self.stats.sessions_connected += 1
        logger.info(
            "connected to the storage session: media is stored in %s", self.stats.stream_arn
        )
        return True

    def _drop(self, session: _Session) -> None:
        if self._current is session:
            self._current = None
            self.stats.joined = self.stats.connected = False
        self._retire(session)

    async def _stay(self, session: _Session) -> _Session | None:
        """Wait until the session ends, a new offer replaces it, or it is time to re-join.

        Returns:
            A new offer's session to answer next, or None to join again.
        """
        rejoin = self.options.rejoin_after
        ended = asyncio.ensure_future(session.ended.wait())
        offer = asyncio.ensure_future(self._offers.get())
        try:
            done, _ = await asyncio.wait(
                {ended, offer}, timeout=rejoin, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ended.cancel()
            if not offer.done():
                offer.cancel()
        session.bytes_sent = await self._bytes(session)
        if offer in done:
            logger.info("the storage session offered again: new peer connection")
            self.stats.connected = False
            return offer.result()
        if ended in done:
            logger.warning("the storage session ended (peer connection closed); joining again")
        else:
            logger.info("re-joining the storage session before its one-hour limit")
        # Planned re-join: the current connection keeps streaming until the new offer
        # replaces it (make before break); a dropped one is gone already.
        if ended in done:
            self._drop(session)
        return None

    async def _close_session(self, session: _Session) -> None:
        if not session.ended.is_set() or session.pc.connectionState != "closed":
            session.bytes_sent = await self._bytes(session)
        self.stats.bytes_sent += session.bytes_sent
        await session.close()

    @staticmethod
    async def _bytes(session: _Session) -> int:
        with contextlib.suppress(Exception):
            return (await link_stats(session.pc)).bytes_sent
        return session.bytes_sent

    # -- reporting -----------------------------------------------------------------------------

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        """The current storage-session peer connection, if any."""
        return self._current.pc if self._current is not None else None

    async def bytes_sent(self) -> int:
        """Bytes sent to storage sessions so far (ended ones and the current one)."""
        current = await self._bytes(self._current) if self._current is not None else 0
        return self.stats.bytes_sent + current

    async def close(self) -> None:
        """Close the current peer connection. Idempotent."""
        current, self._current = self._current, None
        if current is not None:
            await self._close_session(current)
        while not self._offers.empty():
            await self._offers.get_nowait().close()
        await self._closing.wait()
        self.stats.joined = self.stats.connected = False
