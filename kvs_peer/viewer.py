"""Viewer: join a channel, receive video (and audio), record it, hand frames to user code.

::

    async with Viewer(access, record="out.mkv") as viewer:
        async for frame in viewer.frames():
            image = frame.to_ndarray(format="bgr24")

The viewer keeps one client id for its whole life (KVS counts stale ids against the viewer
limit, ``rules.MAX_VIEWERS``), sends an offer as soon as signaling is connected, and sends a
new one when the peer connection fails or when signaling comes back and the connection never
came up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from ._tasks import cancel_and_wait, invoke
from .access import ChannelAccess
from .aiortc_internals import open_data_channel, use_jitter_buffer
from .errors import (
    InvalidArgument,
    InvalidState,
    KvsPeerError,
    MediaError,
    SessionError,
    WaitTimeout,
)
from .gathering import BackgroundGathering
from .media.encoded import EncodedFrame, ReceiverTap, sps_size
from .media.jitter import MarkerJitterBuffer
from .peer import SignalingPeer
from .peerlink import IcePlan, PeerLink
from .protocol import GoAway, IceCandidate, ReconnectIceServer, Role, SdpAnswer, StatusResponse
from .reconnect import Refresh
from .rules import new_client_id
from .signaling import Connected, SignalingClient, SignalingEvent

__all__ = ["Viewer", "ViewerStats", "new_client_id"]

logger = logging.getLogger(__name__)

OFFER_RETRY = 2.0
"""Seconds before trying again after an offer could not be made (signer, control plane)."""

VIDEO_STALL = 2.0
"""Seconds without a frame after which video counts as stopped (three frame intervals of a
slower source, if longer)."""

_CHANNEL_POLL = 0.02
"""Seconds between checks whether aiortc has sent the data channel's OPEN."""

FrameCallback = Callable[[av.VideoFrame], Any]


@dataclass
class ViewerStats:
    """What the viewer has received so far."""

    started_at: float = 0.0
    offers_sent: int = 0
    connected_at: float | None = None
    first_frame_at: float | None = None
    frames_received: int = 0
    """Complete video frames received (counted before decoding)."""
    audio_frames_received: int = 0
    frames_decoded: int = 0
    """Video frames decoded: only while something asks for frames (``on_frame``,
    :meth:`Viewer.frames`, a recorder that re-encodes)."""
    width: int | None = None
    height: int | None = None
    last_frame_at: float | None = None
    peer_reconnects: int = 0
    messages_received: int = 0
    first_offer_at: float | None = None
    signaling_connected_at: float | None = None
    """When signaling first connected (``time.monotonic()``, as every ``*_at`` here)."""
    first_answer_at: float | None = None
    answers_received: int = 0
    offer_error: str | None = None
    """Why the latest offer could not be sent (signer, control plane), or None."""
    lost_at: float | None = None
    """When a peer connection last failed or was closed by the master."""
    lost_state: str | None = None
    """That connection's state: ``failed`` or ``closed``."""
    video_gaps: list[tuple[float, float]] = field(default_factory=list)
    """Pauses in the video: (seconds after start, length in seconds), each longer than
    :meth:`stall_seconds`."""

    @property
    def time_to_first_frame(self) -> float | None:
        """Seconds from start to the first complete video frame (before decoding)."""
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

    def stall_seconds(self) -> float:
        """How long without a frame counts as stopped video: :data:`VIDEO_STALL`, or three
        frame intervals of a source slower than that."""
        interval = 1 / self.fps() if self.fps() > 0 else 0.0
        return max(VIDEO_STALL, 3 * interval)

    def video_problem(self, now: float | None = None) -> str | None:
        """Why video is not flowing at ``now`` (default: the current time), or None if it is.

        The viewer only sees its own side: a master that is not connected and one that
        refuses the viewer (at its viewer limit) look the same, an offer nobody answers.
        """
        now = time.monotonic() if now is None else now
        if self.last_frame_at is not None:
            silent = now - self.last_frame_at
            if silent <= self.stall_seconds():
                return None
            if self.lost_at is not None and self.lost_at >= self.last_frame_at - VIDEO_STALL:
                cause = f"the peer connection {self.lost_state}: the master left or the network "
                cause += "dropped"
            else:
                cause = "the master stopped sending video"
            return (
                f"video stopped {self.last_frame_at - self.started_at:.1f} s into the run, "
                f"{silent:.1f} s before its end ({cause})"
            )
        if self.first_offer_at is None:
            if self.offer_error is not None:
                return f"no video: no offer could be sent ({self.offer_error})"
            return "no video: no offer was sent (signaling did not connect in time)"
        waited = now - self.first_offer_at
        if self.answers_received == 0:
            offers = f"{self.offers_sent} offer{'s' if self.offers_sent != 1 else ''}"
            return (
                f"no video: no answer from a master within {waited:.0f} s ({offers} sent): no "
                "master is connected to the channel, or it refused this viewer (at its viewer "
                "limit); start the master, or check how many viewers it serves"
            )
        if self.connected_at is None:
            return (
                f"no video: the master answered but no connection came up within {waited:.0f} s: "
                "no network path between the two (firewall, NAT); a TURN server may help"
            )
        return "no video: connected, but the master sent no video (does it stream video?)"


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
            e.g. :class:`kvs_peer.media.recorder.Recorder`; its ``start()``, if any, runs
            before signaling connects (a bad path fails at once). When it fails (raises, or
            sets its ``error``) the viewer stops: :meth:`wait_closed` raises
            :class:`~kvs_peer.errors.MediaError`, :meth:`frames` ends, and :meth:`close`
            raises it if nobody waited.
        frame_queue: frames kept for :meth:`frames` consumers; older ones are dropped.
        reconnect: send a new offer when the peer connection fails.
        connect_timeout: seconds an offer may take to connect before a new one is sent.
        loopback_candidates: also gather 127.0.0.1 host candidates (hosts with only ``lo``).
        relay_only: gather and use TURN relay candidates only (ICE transport policy
            ``relay``); the channel's ICE configuration must include a TURN server.
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
        relay_only: bool = False,
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
        self._taps: dict[str, ReceiverTap] = {}
        # Per kind: whether the recorder took the latest frame as received (not decoded).
        self._stored_encoded: dict[str, bool] = {}
        self._reconnect = reconnect
        self._connect_timeout = connect_timeout
        # The loopback hook adds a host address even where the relay policy asks for none.
        self._loopback = loopback_candidates and not relay_only
        self._relay_only = relay_only
        super().__init__(
            SignalingClient(
                access, role=Role.VIEWER, client_id=access.client_id, **dict(signaling or {})
            )
        )
        self._link: PeerLink | None = None
        self.channel: RTCDataChannel | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._offer_lock = asyncio.Lock()
        self._first_frame = asyncio.Event()
        self._connected_event = asyncio.Event()
        self.stats = ViewerStats()
        self.error: KvsPeerError | None = None
        """Why the viewer stopped on its own (its recording failed), or None."""
        self.end_reason: str | None = None
        """The same in words, or None."""
        self._error_raised = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the recorder, connect to signaling; the first offer goes out once connected.

        Raises:
            MediaError: the recorder cannot write where it should (checked before connecting).
        """
        start_recorder = getattr(self.recorder, "start", None)
        if start_recorder is not None:
            result = start_recorder()
            if inspect.isawaitable(result):
                await result
        self.stats.started_at = time.monotonic()
        await super().start()

    async def wait_closed(self) -> None:
        """Wait until the viewer stops: :meth:`close`, signaling gave up for good, or the
        recording failed (the viewer then stops by itself: :attr:`error`, :attr:`end_reason`).

        Raises:
            SignalingError: why signaling gave up.
            MediaError: the recording failed (disk full, folder removed, ...).
        """
        await super().wait_closed()
        if self.error is not None:
            self._error_raised = True
            raise self.error

    async def _release(self) -> None:
        await cancel_and_wait(self._watchdog)
        await self._close_pc()
        self._end_frames()
        if self.recorder is not None:
            try:
                result = self.recorder.close()
                if inspect.isawaitable(result):
                    await result
            except KvsPeerError as exc:
                self.error = self.error or exc
        # A failed recording is raised once: by wait_closed() if the caller waited, else here.
        if self.error is not None and not self._error_raised:
            self._error_raised = True
            raise self.error

    def _end_frames(self) -> None:
        for queue in self._queues:
            if queue.full():  # make room: the end marker must get through
                queue.get_nowait()
            queue.put_nowait(None)

    async def wait_first_frame(self, timeout: float = 30.0) -> float:
        """Wait for the first video frame; returns the time to first frame in seconds.

        Raises:
            WaitTimeout: no frame within ``timeout`` seconds; the message says how far the
                connection got, which names the likely cause.
        """
        try:
            await asyncio.wait_for(self._first_frame.wait(), timeout)
        except TimeoutError:
            raise WaitTimeout(f"no video frame within {timeout:g} s: {self._how_far()}") from None
        assert self.stats.time_to_first_frame is not None
        return self.stats.time_to_first_frame

    def _how_far(self) -> str:
        """Where the connection to the master stands, as the likely cause of a stall."""
        channel = self.access.channel
        if self.stats.signaling_connected_at is None:
            return f"signaling to channel {channel!r} is not connected yet"
        state = self.connection_state
        if state == "connected":
            return "the peer connection is up but the master sends no video"
        if state in ("connecting", "failed"):
            return (
                f"the peer connection is {state}: ICE or DTLS did not complete (a firewall "
                "between the peers? use TURN, e.g. --relay-only to check)"
            )
        return (
            f"no master answered on channel {channel!r}: is one streaming there, with a "
            "free viewer seat?"
        )

    @property
    def pc(self) -> RTCPeerConnection | None:
        """The current peer connection (a new one per offer), or None."""
        return self._link.pc if self._link is not None else None

    @property
    def _gathering(self) -> BackgroundGathering | None:
        return self._link.gathering if self._link is not None else None

    @property
    def connection_state(self) -> str:
        """new, connecting, connected, failed or closed: the peer connection's state, but
        ``connected`` only once the master's DTLS accepted us too."""
        return self._link.dtls.state if self._link is not None else "new"

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until the peer connection is connected.

        Raises:
            WaitTimeout: not connected within ``timeout`` seconds (the message says why).
        """
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError:
            raise WaitTimeout(f"not connected within {timeout:g} s: {self._how_far()}") from None

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
        link, self._link = self._link, None
        self.channel = None
        if link is not None:
            await link.close()

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
                self.stats.offer_error = str(exc)
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
        plan = await IcePlan.fetch(self.access, relay_only=self._relay_only)
        link = self._link = PeerLink.planned(
            plan,
            lambda line, mid, index: self.signaling.send_ice_candidate(
                line, sdp_mid=mid, sdp_mline_index=index
            ),
            label=f"viewer {self.client_id}",
            loopback=self._loopback,
        )
        pc, dtls = link.pc, link.dtls
        if self._want_video:
            receiver = pc.addTransceiver("video", direction="recvonly").receiver
            # Frames leave on their marked last packet, not one frame later (media/jitter.py).
            use_jitter_buffer(receiver, MarkerJitterBuffer())
            self._tap(receiver, "video")
        if self._want_audio:
            self._tap(pc.addTransceiver("audio", direction="recvonly").receiver, "audio")
        if self._want_data:
            self._setup_channel(pc.createDataChannel("kvs-peer"))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.spawn(self._consume(track), f"consume-{track.kind}")

        def mark_connected() -> None:
            # Both ends must be up: aiortc's state alone says nothing of the master's DTLS.
            if pc is self.pc and dtls.connected and not self._connected_event.is_set():
                self.stats.connected_at = time.monotonic()
                self._connected_event.set()

        dtls.on_confirmed = mark_connected

        async def on_state(state: str) -> None:
            if pc is not self.pc:
                return
            if state == "connected":
                mark_connected()
            elif state in ("failed", "closed"):
                self.stats.lost_at, self.stats.lost_state = time.monotonic(), state
                # "closed" here means the master ended the session (DTLS close), e.g. it
                # restarted: offer again so a new master picks us up.
                self._reoffer(f"peer connection {state}")

        link.on_state(on_state)
        await link.offer(self.signaling.send_offer)
        self.stats.offers_sent += 1
        self.stats.offer_error = None
        if self.stats.first_offer_at is None:
            self.stats.first_offer_at = time.monotonic()
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
        elif pc is self.pc and self.connection_state != "connected":
            self._reoffer(f"not connected after {delay:g} s")

    def _setup_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        self._tasks.spawn(self._open_on_send(channel), "data-channel-open")

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self.stats.messages_received += 1
            if self._on_message is not None:
                self._tasks.spawn(
                    invoke(self._on_message, message, what="on_message"), "on-message"
                )

    async def _open_on_send(self, channel: RTCDataChannel) -> None:
        """Count the channel open once its DATA_CHANNEL_OPEN is sent, as browsers do.

        aiortc waits for the master's DATA_CHANNEL_ACK, which the KVS C SDK (v1.14 and
        earlier, in most cameras) never sends: the channel would stay ``connecting`` forever.
        RFC 8832 (section 6) lets the opener send right after the OPEN, and the OPEN travels
        first on the same ordered stream. aiortc assigns the stream id in the same step as it
        sends the OPEN, so an id means the OPEN is out; a later ACK changes nothing.
        """
        while channel is self.channel and channel.readyState == "connecting":
            if channel.id is not None:
                open_data_channel(channel)  # aiortc has no public way; this channel only
                logger.debug("viewer %s: data channel open (OPEN sent)", self.client_id)
                return
            await asyncio.sleep(_CHANNEL_POLL)

    async def _on_answer(self, answer: SdpAnswer) -> None:
        link = self._link
        if link is None or link.pc.signalingState != "have-local-offer":
            logger.debug("ignoring an answer with no offer outstanding")
            return
        self.stats.answers_received += 1
        if self.stats.first_answer_at is None:
            self.stats.first_answer_at = time.monotonic()
        try:
            await link.apply_remote(answer.sdp, "answer")
        except Exception as exc:
            raise SessionError(None, f"the master's answer was refused: {exc}") from exc

    async def _handle(self, event: SignalingEvent) -> None:
        match event:
            case Connected(reconnect=False):
                self.stats.signaling_connected_at = time.monotonic()
                await self._offer()
            case Connected(reconnect=True):
                if self.pc is None or self.connection_state != "connected":
                    await self._offer()
            case SdpAnswer():
                await self._on_answer(event)
            case IceCandidate():
                if self._link is not None:
                    self._link.candidates.add(event)
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

    def _tap(self, receiver: Any, kind: str) -> None:
        """See each received frame before aiortc decodes it, and decode only when asked."""
        holder: list[ReceiverTap] = []
        tap = ReceiverTap(receiver, kind, lambda frame: self._on_encoded(frame, holder[0]))
        holder.append(tap)
        if tap.installed:
            self._taps[kind] = tap
        else:
            self._taps.pop(kind, None)

    def _on_encoded(self, frame: EncodedFrame, tap: ReceiverTap) -> bool:
        """Count and record one received frame; returns whether it should be decoded."""
        if frame.kind == "audio":
            self.stats.audio_frames_received += 1
        else:
            self._count_video(frame.arrival)
            if frame.codec == "h264" and (self.stats.width is None or frame.keyframe):
                size = sps_size(frame.data)
                if size is not None:
                    self.stats.width, self.stats.height = size
        recorder = self.recorder
        accepts = getattr(recorder, "accepts_encoded", None)
        stored = accepts is not None and accepts(frame.kind, frame.codec)
        self._stored_encoded[frame.kind] = stored
        if stored:
            self._to_recorder(lambda: recorder.write_encoded(frame, tap.request_keyframe))
        if self.error is not None:
            return False
        if recorder is not None and not stored:
            return True
        return frame.kind == "video" and (self._on_frame is not None or bool(self._queues))

    def _count_video(self, now: float) -> None:
        stats = self.stats
        if stats.first_frame_at is None:
            stats.first_frame_at = now
            self._first_frame.set()
            logger.info(
                "viewer %s: first frame after %.0f ms",
                self.client_id,
                (now - stats.started_at) * 1000,
            )
        elif stats.last_frame_at is not None and (
            now - stats.last_frame_at > stats.stall_seconds()
        ):
            stats.video_gaps.append(
                (stats.last_frame_at - stats.started_at, now - stats.last_frame_at)
            )
        stats.frames_received += 1
        stats.last_frame_at = now

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # With a tap in place the frame was counted (and maybe recorded) before decoding.
            tapped = track.kind in self._taps
            if isinstance(frame, av.AudioFrame):
                if not tapped:
                    self.stats.audio_frames_received += 1
                if not self._stored_encoded.get("audio"):
                    self._record(frame, audio=True)
                continue
            if not isinstance(frame, av.VideoFrame):
                continue  # aiortc's remote tracks give decoded frames only
            if not tapped:
                self._count_video(time.monotonic())
            self.stats.frames_decoded += 1
            self.stats.width, self.stats.height = frame.width, frame.height
            if not self._stored_encoded.get("video"):
                self._record(frame, audio=False)
            if self.error is not None:
                return  # stopped: frames() consumers have seen the end
            for queue in self._queues:
                if queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(frame)
            if self._on_frame is not None:
                await invoke(self._on_frame, frame, what="on_frame")

    def _record(self, frame: av.VideoFrame | av.AudioFrame, *, audio: bool) -> None:
        recorder = self.recorder
        if recorder is not None:
            write = recorder.write_audio if audio else recorder.write_video
            self._to_recorder(lambda: write(frame))

    def _to_recorder(self, write: Callable[[], object]) -> None:
        """Hand a frame to the recorder; a failed recording stops the viewer.

        A viewer asked to record is useless once the recording fails (disk full, folder
        removed): running on would look fine while nothing is kept.
        """
        recorder = self.recorder
        if recorder is None or self.error is not None:
            return
        try:
            write()
            failure: BaseException | None = getattr(recorder, "error", None)
        except Exception as exc:  # a user's sink: whatever it raises ends the recording
            failure = exc
        if failure is None:
            return
        where = getattr(recorder, "path", None)
        self.error = MediaError(
            f"recording{f' to {where}' if where else ''} failed: {failure}; "
            "check the free space and that the folder still exists"
        )
        self.error.__cause__ = failure
        self.end_reason = f"the recording failed: {failure}"
        logger.warning("viewer %s stops: %s", self.client_id, self.end_reason)
        self._end_frames()
        if self._runner is not None:
            self._runner.cancel()  # wait_closed() raises self.error; close() releases the rest
