"""Viewer: join a channel, receive video (and audio), record it, hand frames to user code.

::

    async with Viewer(access, record="out.mkv") as viewer:
        async for frame in viewer.frames():
            image = frame.to_ndarray(format="bgr24")

The viewer keeps one client id for its whole life (KVS counts stale ids against the
10-viewer limit), sends an offer as soon as signaling is connected, and sends a new one when
the peer connection fails or when signaling comes back and the connection never came up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ._tasks import invoke
from .access import ChannelAccess
from .errors import InvalidArgument, InvalidState, KvsPeerError, SessionError
from .peer import SignalingPeer
from .protocol import GoAway, IceCandidate, ReconnectIceServer, Role, SdpAnswer, StatusResponse
from .reconnect import Refresh
from .session import (
    RemoteCandidates,
    enable_loopback_candidates,
    rtc_configuration,
    split_mdns_candidates,
)
from .signaling import Connected, SignalingClient, SignalingEvent

__all__ = ["Viewer", "ViewerStats", "new_client_id"]

logger = logging.getLogger(__name__)

OFFER_RETRY = 2.0
"""Seconds before trying again after an offer could not be made (signer, control plane)."""

FrameCallback = Callable[[av.VideoFrame], Any]


def new_client_id(prefix: str = "kvs-peer") -> str:
    """A fresh viewer client id, valid for KVS (keep it for the viewer's whole life)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class ViewerStats:
    """What the viewer has received so far."""

    started_at: float = 0.0
    offers_sent: int = 0
    connected_at: float | None = None
    first_frame_at: float | None = None
    frames_received: int = 0
    audio_frames_received: int = 0
    width: int | None = None
    height: int | None = None
    last_frame_at: float | None = None
    peer_reconnects: int = 0
    messages_received: int = 0

    @property
    def time_to_first_frame(self) -> float | None:
        """Seconds from start to the first decoded video frame."""
        if self.first_frame_at is None:
            return None
        return self.first_frame_at - self.started_at

    def fps(self, now: float | None = None) -> float:
        """Average frames per second since the first frame."""
        if self.first_frame_at is None or self.frames_received < 2:
            return 0.0
        end = self.last_frame_at if now is None else now
        span = (end or self.first_frame_at) - self.first_frame_at
        return (self.frames_received - 1) / span if span > 0 else 0.0


class Viewer(SignalingPeer):
    """Connect as VIEWER, offer to receive media, and consume what arrives.

    Args:
        access: channel access with role VIEWER; its ``client_id`` is this viewer's id.
        video: receive video.
        audio: receive audio.
        data_channel: open a data channel to the master (``send``, ``on_message``).
        on_frame: callback for each decoded ``av.VideoFrame`` (sync or async; keep it quick,
            or hand work to a thread: it runs on the event loop).
        on_message: callback for data-channel messages.
        recorder: a sink with ``write_video(frame)``/``write_audio(frame)`` and ``close()``,
            e.g. :class:`kvs_peer.media.recorder.Recorder`.
        frame_queue: frames kept for :meth:`frames` consumers; older ones are dropped.
        reconnect: send a new offer when the peer connection fails.
        connect_timeout: seconds an offer may take to connect before a new one is sent.
        loopback_candidates: also gather 127.0.0.1 host candidates (hosts with only ``lo``).
        signaling: extra keyword arguments for :class:`~kvs_peer.signaling.SignalingClient`.
    """

    def __init__(
        self,
        access: ChannelAccess,
        *,
        video: bool = True,
        audio: bool = False,
        data_channel: bool = False,
        on_frame: FrameCallback | None = None,
        on_message: Callable[[str | bytes], Any] | None = None,
        recorder: Any = None,
        frame_queue: int = 8,
        reconnect: bool = True,
        connect_timeout: float = 30.0,
        loopback_candidates: bool = False,
        signaling: Mapping[str, Any] | None = None,
    ) -> None:
        if access.role is not Role.VIEWER:
            raise InvalidArgument("Viewer needs channel access with role VIEWER")
        if access.client_id is None:
            raise InvalidArgument("Viewer needs a client id (see kvs_peer.viewer.new_client_id)")
        if not (video or audio or data_channel):
            raise InvalidArgument("a viewer must receive video, audio or use a data channel")
        self.access = access
        self.client_id = access.client_id
        self._want_video = video
        self._want_audio = audio
        self._want_data = data_channel
        self._on_frame = on_frame
        self._on_message = on_message
        self.recorder = recorder
        self._frame_queue_size = max(1, frame_queue)
        self._queues: list[asyncio.Queue[av.VideoFrame | None]] = []
        self._reconnect = reconnect
        self._connect_timeout = connect_timeout
        self._loopback = loopback_candidates
        super().__init__(
            SignalingClient(
                access, role=Role.VIEWER, client_id=access.client_id, **dict(signaling or {})
            )
        )
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self._candidates: RemoteCandidates | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._offer_lock = asyncio.Lock()
        self._first_frame = asyncio.Event()
        self._connected_event = asyncio.Event()
        self.stats = ViewerStats()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to signaling; the first offer goes out once it is connected."""
        self.stats.started_at = time.monotonic()
        await super().start()

    async def _release(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._close_pc()
        if self.recorder is not None:
            result = self.recorder.close()
            if inspect.isawaitable(result):
                await result
        for queue in self._queues:
            if queue.full():  # make room: the end marker must get through
                queue.get_nowait()
            queue.put_nowait(None)

    async def wait_first_frame(self, timeout: float = 30.0) -> float:
        """Wait for the first video frame; returns the time to first frame in seconds."""
        await asyncio.wait_for(self._first_frame.wait(), timeout)
        assert self.stats.time_to_first_frame is not None
        return self.stats.time_to_first_frame

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until the peer connection is connected."""
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    async def frames(self) -> AsyncIterator[av.VideoFrame]:
        """Iterate over received video frames (the newest ones, if the consumer is slow)."""
        queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue(self._frame_queue_size)
        self._queues.append(queue)
        try:
            while True:
                frame = await queue.get()
                if frame is None:
                    return
                yield frame
        finally:
            self._queues.remove(queue)

    async def send(self, message: str | bytes) -> None:
        """Send on the data channel (needs ``data_channel=True`` and an open channel)."""
        if self.channel is None or self.channel.readyState != "open":
            raise InvalidState("the data channel is not open yet (pass data_channel=True)")
        self.channel.send(message)

    # -- negotiation -------------------------------------------------------------------------

    async def _close_pc(self) -> None:
        pc, self.pc = self.pc, None
        candidates, self._candidates = self._candidates, None
        self.channel = None
        if candidates is not None:
            await candidates.close()
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()

    async def _offer(self) -> None:
        """Create a fresh peer connection and send its offer, one offer at a time.

        A failure (control plane, signer, signaling) is logged and retried after
        ``OFFER_RETRY`` seconds rather than ending the viewer.
        """
        async with self._offer_lock:
            try:
                await self._offer_locked()
            except KvsPeerError as exc:
                if self._closed:
                    return
                logger.warning(
                    "viewer %s: offer failed (%s); trying again in %g s",
                    self.client_id,
                    exc,
                    OFFER_RETRY,
                )
                self._arm_watchdog(None, OFFER_RETRY)

    def _reoffer(self, why: str) -> None:
        if self._closed or not self._reconnect or self._offer_lock.locked():
            return  # an offer is already on its way
        logger.info("viewer %s: %s, offering again", self.client_id, why)
        self.stats.peer_reconnects += 1
        self._tasks.spawn(self._offer(), "reoffer")

    async def _offer_locked(self) -> None:
        await self._close_pc()
        self._connected_event.clear()
        ice = await self.access.ice_config()
        pc = RTCPeerConnection(
            rtc_configuration(ice.servers, transport_policy=ice.transport_policy)
        )
        self.pc = pc
        self._candidates = RemoteCandidates(pc, label=f"viewer {self.client_id}")
        if self._want_video:
            pc.addTransceiver("video", direction="recvonly")
        if self._want_audio:
            pc.addTransceiver("audio", direction="recvonly")
        if self._want_data:
            self._setup_channel(pc.createDataChannel("kvs-peer"))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.spawn(self._consume(track), f"consume-{track.kind}")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            state = pc.connectionState
            logger.info("viewer %s: peer connection %s", self.client_id, state)
            if state == "connected":
                self.stats.connected_at = time.monotonic()
                self._connected_event.set()
            elif state in ("failed", "closed"):
                # "closed" here means the master ended the session (DTLS close), e.g. it
                # restarted: offer again so a new master picks us up.
                self._reoffer(f"peer connection {state}")

        if self._loopback:
            enable_loopback_candidates(pc)
        await pc.setLocalDescription(await pc.createOffer())
        await self.signaling.send_offer(pc.localDescription.sdp)
        self.stats.offers_sent += 1
        logger.info("viewer %s: offer sent", self.client_id)
        self._arm_watchdog(pc, self._connect_timeout)

    def _arm_watchdog(self, pc: RTCPeerConnection | None, delay: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.create_task(self._watch(pc, delay))

    async def _watch(self, pc: RTCPeerConnection | None, delay: float) -> None:
        await asyncio.sleep(delay)
        if pc is None:
            self._reoffer("retrying a failed offer")
        elif pc is self.pc and pc.connectionState != "connected":
            self._reoffer(f"not connected after {delay:g} s")

    def _setup_channel(self, channel: Any) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self.stats.messages_received += 1
            if self._on_message is not None:
                self._tasks.spawn(
                    invoke(self._on_message, message, what="on_message"), "on-message"
                )

    async def _on_answer(self, answer: SdpAnswer) -> None:
        pc = self.pc
        if pc is None or pc.signalingState != "have-local-offer":
            logger.debug("ignoring an answer with no offer outstanding")
            return
        sdp, mdns_candidates = split_mdns_candidates(answer.sdp)
        if self._candidates is not None:
            for event in mdns_candidates:
                self._candidates.add(event)  # held until the answer is applied
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        except Exception as exc:
            raise SessionError(None, f"the master's answer was refused: {exc}") from exc
        if self._candidates is not None:
            self._candidates.remote_description_set()

    async def _handle(self, event: SignalingEvent) -> None:
        match event:
            case Connected(reconnect=False):
                await self._offer()
            case Connected(reconnect=True):
                if self.pc is None or self.pc.connectionState != "connected":
                    await self._offer()
            case SdpAnswer():
                await self._on_answer(event)
            case IceCandidate():
                if self._candidates is not None:
                    self._candidates.add(event)
            case ReconnectIceServer():
                self.access.invalidate(Refresh.ICE)
            case GoAway():
                logger.info("GO_AWAY: signaling reconnects, media keeps flowing")
            case StatusResponse():
                logger.warning(
                    "signaling reported a failure for %s: %s %s",
                    event.correlation_id,
                    event.error_type,
                    event.description,
                )

    # -- media -------------------------------------------------------------------------------

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "audio":
                self.stats.audio_frames_received += 1
                if self.recorder is not None:
                    self.recorder.write_audio(frame)
                continue
            stats = self.stats
            if stats.first_frame_at is None:
                stats.first_frame_at = now
                self._first_frame.set()
                logger.info(
                    "viewer %s: first frame after %.0f ms",
                    self.client_id,
                    (now - stats.started_at) * 1000,
                )
            stats.frames_received += 1
            stats.last_frame_at = now
            stats.width, stats.height = frame.width, frame.height
            if self.recorder is not None:
                self.recorder.write_video(frame)
            for queue in self._queues:
                if queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(frame)
            if self._on_frame is not None:
                await invoke(self._on_frame, frame, what="on_frame")
