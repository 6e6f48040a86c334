"""H.264 passthrough: send what the camera already encoded, to every viewer, without re-encoding.

::

    stdin / FIFO / .h264 file  (Annex-B, split here)  \\
    rtsp:// rtmp:// srt:// tcp:// files with H.264     -> H264Source (worker thread: access
      (PyAV demux, no decoding)                       /     units, SPS/PPS, RTP payloads)
        -> PassthroughVideo (GOP since the last IDR kept)
            -> PassthroughTrack per viewer -> fast send loop (rtpsender) -> RTP
            -> DecodedH264Track -> SharedVideoEncoder, for viewers that cannot take the
               stream's profile (--video-mode auto)

Each access unit is split into RTP payloads once, in the source's thread, into the same
:class:`~kvs_peer.media.encoder.EncodedVideo` the shared encoder makes, so the send loop, NACK
history and stats work unchanged.

**Joins and PLI without a keyframe on demand.** An RTSP camera cannot be asked for an IDR,
and its GOP is 1-4 s. :class:`PassthroughVideo` keeps the access units since the last IDR
(bounded) and gives a joining viewer, or one that sends a PLI, a burst from that IDR. The burst's
RTP timestamps are squeezed to one tick apart, ending at the newest frame's timestamp (or just
after what that viewer last got, for a PLI), so the receiver decodes them at once and the live
frames that follow play on time. The burst is paced (``burst_rate``), IDR first.

**Profiles.** The answer must name the stream's profile, and aiortc only knows Constrained
Baseline and Baseline (it would answer 42e01f for a High stream). :func:`route_video` picks, per
viewer, an offered H.264 payload type whose profile can decode the stream (packetization-mode
1), hides the others from aiortc, and writes the stream's ``profile-level-id`` into the answer.
A viewer that offered no such profile gets the shared encoder (``auto``) or is refused
(``passthrough``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import select
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
from aiortc import MediaStreamError, MediaStreamTrack

from ..aiortc_internals import H264Encoder, negotiated_codecs
from ..errors import InvalidArgument, KvsPeerError, MediaError, SessionError
from ..reconnect import backoff
from .broadcast import Broadcast
from .capture import _END, _Handoff
from .encoder import EncodedVideo, PacketTrack, SharedVideoEncoder
from .h264 import (
    AccessUnit,
    AccessUnitAssembler,
    AnnexBSplitter,
    ParameterSetCache,
    Sps,
    can_decode,
    parse_avcc,
    profile_of,
    split_annexb,
    split_length_prefixed,
)
from .redact import describe_url, redact_urls, url_scheme
from .timing import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, ThreadPacer
from .v4l2 import h264_refusal, is_v4l2_device, v4l2_options, wants_h264

__all__ = [
    "VIDEO_MODES",
    "DecodedH264Track",
    "H264Source",
    "PassthroughTrack",
    "PassthroughVideo",
    "VideoRoute",
    "open_h264_source",
    "open_master_video",
    "route_video",
]

logger = logging.getLogger(__name__)

VIDEO_MODES = ("auto", "passthrough", "transcode")
_RAW_SUFFIXES = (".h264", ".264", ".avc", ".h26l")
_CHUNK = 1 << 16
_AIORTC_PROFILE = "42e01f"  # the Constrained Baseline entry of aiortc's H.264 capabilities


# -- source ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unit:
    """One access unit from a reader, with its timing."""

    unit: AccessUnit
    media_time: float | None  # seconds, for pacing (decode order); None: live, stamp "now"
    offset: float = 0.0  # presentation minus decode time, seconds (B-frames)


_Reader = Iterator[_Unit]


class _UnitHandoff(_Handoff):
    """Access units from the worker thread to the event loop.

    Files wait for room (nothing is read ahead of its viewers). A live source never waits:
    when the loop falls this far behind, the backlog is dropped and the stream resumes at
    the next IDR (dropping single H.264 frames would break every frame after them).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int, *, block: bool) -> None:
        super().__init__(loop, maxlen, block=block)
        self._resync = False

    def _admit(self, stop: threading.Event, keyframe: bool) -> bool:
        if self._block:
            while len(self._items) >= self._maxlen and not stop.is_set():
                self._cond.wait(0.1)
        elif len(self._items) >= self._maxlen:
            self.dropped += len(self._items)
            self._items.clear()
            self._resync = True
        if self._resync:
            if not keyframe:
                self.dropped += 1
                return False
            self._resync = False
        return True


class H264Source(MediaStreamTrack):
    """An H.264 elementary stream as access units: ``recv()`` returns ``EncodedVideo``.

    Reads, splits and packetizes in one daemon thread (started at the first ``recv()``; for a
    live source :class:`PassthroughVideo` starts reading at once and keeps reading). Access
    units before the first IDR are dropped; cached SPS/PPS go in front of every IDR. Build one
    with :func:`open_h264_source`.

    Args:
        open_reader: opens the input and returns an iterator of access units; called again to
            loop a file or reopen a live source. It may block (it runs in the thread).
        description: what it is, for logs and errors (never a password).
        live: the source paces itself (pipe, camera, stream): units are stamped on arrival and
            never waited for; otherwise they are paced by their media time.
        loop: open a file again at its end.
        reopen: open a live source again, with backoff, when it ends (not stdin).
        fps: frame rate of raw streams (pacing files; the transcode path's rate control).
        first: an already opened reader for the first pass.
        extradata_nals: SPS/PPS known before the first unit (a container's extradata).

    Attributes:
        sps: the stream's latest SPS (profile, level, size), None before the first.
        access_units: access units handed out.
        dropped: units dropped (before the first IDR, or a backlog the loop did not take).
        opens: times the input was opened (including the first).
        error: what made the source fail, or None.
    """

    kind = "video"

    def __init__(
        self,
        open_reader: Callable[[], _Reader],
        *,
        description: str,
        live: bool,
        loop: bool = False,
        reopen: bool = False,
        fps: float | None = None,
        first: _Reader | None = None,
        extradata_nals: list[bytes] | None = None,
    ) -> None:
        super().__init__()
        self._open_reader = open_reader
        self.description = description
        self.live = live
        self._loop_file = loop and not live
        self._reopen = reopen and live
        self.fps = fps
        self._first = first
        self._cache = ParameterSetCache()
        if extradata_nals:
            self._cache.learn(extradata_nals)
        self.sps: Sps | None = self._cache.sps
        self._sps_event = threading.Event()
        if self.sps is not None:
            self._sps_event.set()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._handoff: _UnitHandoff | None = None
        self._packer = H264Encoder()  # only its pack(), which keeps no state
        self.access_units = 0
        self.dropped = 0
        self.opens = 0
        self.reopening = False
        self.error: BaseException | None = None

    @property
    def width(self) -> int | None:
        """Picture width from the SPS, once known."""
        return self.sps.width if self.sps else None

    @property
    def height(self) -> int | None:
        """Picture height from the SPS, once known."""
        return self.sps.height if self.sps else None

    @property
    def profile_level_id(self) -> str | None:
        """The stream's ``profile-level-id`` (e.g. ``640028``), once an SPS was seen."""
        return self.sps.profile_level_id if self.sps else None

    def start(self) -> None:
        """Start reading now (otherwise the first ``recv()`` does); must run on the loop."""
        if self._thread is None and self.readyState == "live":
            self._handoff = _UnitHandoff(
                asyncio.get_running_loop(), 90 if self.live else 4, block=not self.live
            )
            self._thread = threading.Thread(
                target=self._run, name=f"kvs-h264 {self.description}", daemon=True
            )
            self._thread.start()

    async def recv(self) -> EncodedVideo:  # type: ignore[override]
        """The next access unit, packetized.

        Raises:
            MediaStreamError: stopped, or the source ended or failed (see :attr:`error`).
        """
        if self.readyState != "live":
            raise MediaStreamError
        self.start()
        assert self._handoff is not None
        item: EncodedVideo = await self._handoff.get()  # or _END, once the source is done
        if item is _END:
            self.stop()
            raise MediaStreamError
        return item

    async def wait_sps(self, timeout: float) -> Sps | None:
        """Wait up to ``timeout`` s for the first SPS; the SPS, or None."""
        if self.sps is None:
            await asyncio.to_thread(self._sps_event.wait, timeout)
        return self.sps

    def stop(self) -> None:
        """Stop reading (idempotent); the thread is a daemon, a blocked read cannot hold exit."""
        super().stop()
        self._stop_event.set()
        self._sps_event.set()
        if self._handoff is not None:
            self._handoff.wake()
        first, self._first = self._first, None
        if first is not None and self._thread is None:
            _close_reader(first)

    # -- worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        stop = self._stop_event
        pacer = ThreadPacer(stop, paced=not self.live)
        delays = backoff(base=0.5, cap=10.0)
        try:
            while not stop.is_set():
                reader, self._first = self._first, None
                if reader is None:
                    try:
                        reader = self._open_reader()
                    except (KvsPeerError, OSError, av.FFmpegError) as exc:
                        if not self._reopen:
                            raise
                        logger.warning(
                            "%s: cannot open it yet (%s); trying again",
                            self.description,
                            redact_urls(str(exc)),
                        )
                        stop.wait(next(delays))
                        continue
                self.opens += 1
                opened = time.monotonic()
                if self.reopening:
                    logger.info("%s is back", self.description)
                self.reopening = False
                try:
                    for item in reader:
                        if stop.is_set():
                            return
                        self._emit(item, pacer)
                finally:
                    _close_reader(reader)
                if stop.is_set():
                    return
                if self._loop_file:
                    continue
                if not self._reopen:
                    return
                if time.monotonic() - opened > 5.0:
                    delays = backoff(base=0.5, cap=10.0)
                self.reopening = True
                logger.warning("%s ended; opening it again", self.description)
                stop.wait(next(delays))
        except Exception as exc:
            if not stop.is_set():
                self.error = exc
                logger.error("%s failed: %s", self.description, redact_urls(str(exc)))
        finally:
            self._sps_event.set()
            assert self._handoff is not None
            self._handoff.put(_END, stop)

    def _emit(self, item: _Unit, pacer: ThreadPacer) -> None:
        unit = self._cache.complete(item.unit)
        sps = self._cache.sps
        if sps is not self.sps:
            if self.sps is None and sps is not None:
                logger.info("%s: H.264 %s", self.description, sps.describe())
            self.sps = sps
            self._sps_event.set()
        if not unit.has_picture:
            return
        if self.access_units == 0 and not (unit.is_idr and self._cache.ready):
            self.dropped += 1  # nobody could decode it: wait for the first IDR
            return
        pts = pacer.wait(item.media_time) + round(item.offset * VIDEO_CLOCK_RATE)
        packet = av.Packet(unit.annexb())
        packet.pts = pts
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = unit.is_idr
        payloads, timestamp = self._packer.pack(packet)
        self.access_units += 1
        assert self._handoff is not None
        before = self._handoff.dropped
        self._handoff.put(
            EncodedVideo(packet, tuple(payloads), timestamp),
            self._stop_event,
            keyframe=unit.is_idr,
        )
        self.dropped += self._handoff.dropped - before


def _close_reader(reader: _Reader) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:  # closing must not mask why the reader stopped
            # FFmpeg repeats the URL (and its password) in its error texts.
            logger.debug("error while closing an H.264 reader: %s", redact_urls(str(exc)))


def _read_annexb(
    fd: int, *, fps: float, paced: bool, stop: threading.Event, close: bool
) -> _Reader:
    """Access units from an Annex-B byte stream on ``fd`` (pipe, FIFO or regular file)."""
    splitter = AnnexBSplitter()
    assembler = AccessUnitAssembler()
    index = 0
    try:
        while not stop.is_set():
            if not paced:
                # A pipe may stay silent: wake up now and then to notice stop().
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
            chunk = os.read(fd, _CHUNK)
            nals = splitter.feed(chunk) if chunk else splitter.flush()
            units = assembler.push_all(nals)
            if not chunk:
                last = assembler.flush()
                if last is not None:
                    units.append(last)
            for unit in units:
                yield _Unit(unit, index / fps if paced else None)
                if unit.has_picture:
                    index += 1
            if not chunk:
                return
    finally:
        if close:
            os.close(fd)


_DAMAGED = (
    "its H.264 is damaged ({}), so it cannot be passed through: decode and re-encode it "
    "instead (video mode 'transcode', --video-mode transcode), or fix the source"
)


def _read_container(container: Any, *, live: bool) -> _Reader:
    """Access units from a PyAV container's H.264 stream, demuxed, never decoded.

    Raises:
        MediaError: the stream's avcC header or a length-prefixed packet is malformed.
    """
    try:
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata or b""
        try:
            length_size = parse_avcc(extradata)[0] if extradata[:1] == b"\x01" else 0
        except ValueError as exc:
            raise MediaError(_DAMAGED.format(exc)) from None
        time_base = stream.time_base
        first: float | None = None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            data = bytes(packet)
            try:
                nals = (
                    split_length_prefixed(data, length_size) if length_size else split_annexb(data)
                )
            except ValueError as exc:
                raise MediaError(_DAMAGED.format(exc)) from None
            if not nals:
                continue
            dts = packet.dts if packet.dts is not None else packet.pts
            media_time = None
            offset = 0.0
            if dts is not None and time_base is not None:
                seconds = float(dts * time_base)
                if first is None:
                    first = seconds
                media_time = None if live else seconds - first
                if packet.pts is not None:
                    offset = max(0.0, float((packet.pts - dts) * time_base))
            yield _Unit(AccessUnit(tuple(nals)), media_time, offset)
    finally:
        container.close()


def _extradata_nals(container: Any) -> list[bytes]:
    extradata = container.streams.video[0].codec_context.extradata or b""
    if not extradata:
        return []
    if extradata[:1] == b"\x01":
        try:
            _, sps, pps = parse_avcc(extradata)
        except ValueError:
            return []
        return sps + pps
    return split_annexb(extradata)


def open_h264_source(
    spec: str,
    *,
    source_format: str | None = None,
    fps: float | None = None,
    loop: bool = False,
    options: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    reopen: bool = False,
) -> H264Source | None:
    """Open ``spec`` as an H.264 elementary stream for passthrough, if it is one.

    - ``"-"``: an Annex-B stream on stdin (``rpicam-vid -o -``, ``ffmpeg -f h264 -``); live;
    - a FIFO, or any path with ``source_format="h264"``, or a ``.h264``/``.264`` file: Annex-B
      read directly (no seeking: ``loop`` opens the file again; a FIFO is live and, with
      ``reopen``, waits for the next writer);
    - a URL (``rtsp://``, ``rtmp://``, ``srt://``, ``tcp://``, ...) or media file whose video
      is H.264: demuxed by PyAV, never decoded.

    Args:
        spec: which source.
        source_format: ``"h264"`` forces Annex-B; None guesses as above.
        fps: frame rate of raw Annex-B streams (30 if None): pacing of files.
        loop: play a file again at its end.
        options: FFmpeg input options for PyAV sources.
        timeout: seconds to wait when opening a network source.
        reopen: open a live source again, with backoff, when it ends.

    Returns:
        The source, or None if ``spec`` is not H.264 (another codec, the test pattern, a
        camera): use :func:`~kvs_peer.media.sources.open_video_source` for it.

    Raises:
        InvalidArgument: an unknown ``source_format``.
        MediaError: the input cannot be opened.
    """
    spec = spec.strip()
    if source_format not in (None, "h264"):
        raise InvalidArgument(f"unknown --source-format {source_format!r}: use h264")
    rate = fps or 30.0
    if spec == "-":
        return _annexb_source(0, "H.264 on stdin", rate, loop=False, reopen=False, close=False)
    is_url = url_scheme(spec) not in ("", "file")
    if not is_url:
        path = urlsplit(spec).path if spec.lower().startswith("file://") else spec
        if source_format == "h264" or path.lower().endswith(_RAW_SUFFIXES) or _is_fifo(path):
            return _annexb_path_source(path, rate, loop=loop, reopen=reopen)
        if not os.path.exists(path) or spec.isdigit() or spec.startswith("/dev/video"):
            return None
    elif source_format == "h264":
        raise InvalidArgument("--source-format h264 is for stdin, FIFOs and files, not URLs")
    from .sources import _open_input

    kind_spec = spec if is_url else path
    container, description, live = _open_input(kind_spec, "video", options=options, timeout=timeout)
    stream = container.streams.video[0]
    if stream.codec_context.name != "h264":
        container.close()
        return None

    def reopen_container() -> _Reader:
        again, _, _ = _open_input(kind_spec, "video", options=options, timeout=timeout)
        return _read_container(again, live=live)

    rate_guess = stream.average_rate or stream.guessed_rate
    return H264Source(
        reopen_container,
        description=description,
        live=live,
        loop=loop,
        reopen=reopen,
        fps=fps or (float(rate_guess) if rate_guess else None),
        first=_read_container(container, live=live),
        extradata_nals=_extradata_nals(container),
    )


def _open_v4l2_h264(
    device: str,
    *,
    width: int | None,
    height: int | None,
    fps: float | None,
    options: Mapping[str, str] | None,
    timeout: float,
    reopen: bool,
) -> H264Source | None:
    """A V4L2 camera's own H.264 output, or None (logged) if it has none to give.

    Untested on hardware: no V4L2 camera was available (see :mod:`.v4l2`).
    """
    from .sources import _open_container

    if not os.access(device, os.R_OK | os.W_OK):
        return None  # missing or not permitted: the raw open says so, with its advice
    description = f"camera {device}"
    ffmpeg_options = v4l2_options(width=width, height=height, fps=fps, options=options, h264=True)

    def open_camera() -> Any:
        return _open_container(
            device,
            description,
            format="v4l2",
            options=ffmpeg_options,
            timeout=timeout,
            kind="video",
            missing=f"camera device {device} not found",
        )

    container, error = None, None
    try:
        container = open_camera()
    except MediaError as exc:
        error = str(exc).removeprefix(f"cannot open {description}: ").split(";")[0]
    codec = container.streams.video[0].codec_context.name if container is not None else None
    refusal = h264_refusal(codec=codec, error=error)
    if refusal is not None:
        if container is not None:
            container.close()
        logger.warning(
            "%s: %s; capturing raw frames and encoding them instead", description, refusal
        )
        return None
    assert container is not None
    logger.info("%s: passing its H.264 output through (input_format=h264)", description)
    return H264Source(
        lambda: _read_container(open_camera(), live=True),
        description=f"{description} (H.264)",
        live=True,
        reopen=reopen,
        fps=fps,
        first=_read_container(container, live=True),
        extradata_nals=_extradata_nals(container),
    )


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _annexb_source(
    fd: int, description: str, fps: float, *, loop: bool, reopen: bool, close: bool
) -> H264Source:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise MediaError(f"cannot read {description}: {exc.strerror}") from None
    # stdin redirected from a file (`< clip.h264`) is paced like a file; a pipe is live.
    live = not stat.S_ISREG(mode)
    holder: list[H264Source] = []

    def reader() -> _Reader:
        return _read_annexb(fd, fps=fps, paced=not live, stop=holder[0]._stop_event, close=close)

    source = H264Source(reader, description=description, live=live, loop=False, fps=fps)
    holder.append(source)
    return source


def _annexb_path_source(path: str, fps: float, *, loop: bool, reopen: bool) -> H264Source:
    if not os.path.exists(path):
        raise MediaError(f"video file {path!r} not found: check the path")
    if os.path.isdir(path):
        raise MediaError(f"video source {path!r} is a directory, not an H.264 stream")
    fifo = _is_fifo(path)
    if not fifo and not os.access(path, os.R_OK):
        raise MediaError(f"cannot open video file {path!r}: permission denied")
    description = f"H.264 {'FIFO' if fifo else 'file'} {path!r}"
    holder: list[H264Source] = []

    def reader() -> _Reader:
        # A FIFO's open blocks until a writer comes: that is in the worker thread.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise MediaError(f"cannot open {description}: {exc.strerror}") from None
        return _read_annexb(fd, fps=fps, paced=not fifo, stop=holder[0]._stop_event, close=True)

    source = H264Source(
        reader, description=description, live=fifo, loop=loop, reopen=reopen, fps=fps
    )
    holder.append(source)
    return source


def open_master_video(
    spec: str,
    *,
    video_mode: str = "auto",
    source_format: str | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    loop: bool = False,
    options: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    reopen: bool = False,
) -> MediaStreamTrack:
    """Open a master's video source: an :class:`H264Source` where passthrough is possible.

    ``transcode`` keeps the decoding sources of
    :func:`~kvs_peer.media.sources.open_video_source`, except for stdin, FIFOs and raw
    ``.h264`` files, which are always read by :class:`H264Source` (the master then decodes
    them). ``auto`` and ``passthrough`` try :func:`open_h264_source` first, and open a V4L2
    camera (``/dev/videoN``) with ``input_format=h264``: one that refuses is captured raw and
    encoded, with a warning, in either mode.

    Raises:
        InvalidArgument: an unknown mode, or ``passthrough`` with a source that is not H.264.
        MediaError: the source cannot be opened.
    """
    from .sources import open_video_source

    if video_mode not in VIDEO_MODES:
        raise InvalidArgument(f"unknown video mode {video_mode!r}: use {', '.join(VIDEO_MODES)}")
    if is_v4l2_device(spec) and wants_h264(video_mode, options):
        camera = _open_v4l2_h264(
            spec.strip(),
            width=width,
            height=height,
            fps=fps,
            options=options,
            timeout=timeout,
            reopen=reopen,
        )
        if camera is not None:
            return camera
        # A camera without H.264 output is still a camera: raw frames and the encoder, in
        # passthrough mode too (the warning above says why).
        video_mode = "transcode"
    raw = (
        spec.strip() == "-"
        or source_format is not None
        or spec.strip().lower().endswith(_RAW_SUFFIXES)
        or _is_fifo(spec.strip())
    )
    if video_mode != "transcode" or raw:
        source = open_h264_source(
            spec,
            source_format=source_format,
            fps=fps,
            loop=loop,
            options=options,
            timeout=timeout,
            reopen=reopen,
        )
        if source is not None:
            if (width or height) and video_mode == "passthrough":
                logger.warning(
                    "--width/--height do not apply to passthrough: the stream is sent as it is"
                )
            return source
        if video_mode == "passthrough":
            raise InvalidArgument(
                f"video source {describe_url(spec)} is not H.264, so it cannot be passed "
                "through: use --video-mode auto (or transcode) to encode it"
            )
    return open_video_source(
        spec,
        width=width,
        height=height,
        fps=fps,
        loop=loop,
        options=options,
        timeout=timeout,
        reopen=reopen,
    )


# -- fan-out -------------------------------------------------------------------------------------


class PassthroughTrack(PacketTrack):
    """One viewer's view of a :class:`PassthroughVideo`.

    Joins and PLI/FIR are served from the cached GOP (see :class:`PassthroughVideo`) instead
    of asking an encoder for a keyframe.

    Attributes:
        replays: bursts this track got from the cached GOP.
    """

    def __init__(
        self,
        video: PassthroughVideo,
        queue_size: int,
        *,
        burst_timestamps: str,
        burst_rate: float | None,
    ) -> None:
        super().__init__(video, queue_size)  # type: ignore[arg-type]
        self._video = video
        self._burst_timestamps = burst_timestamps
        self._burst_rate = burst_rate
        self._replay_left = 0
        self._replay_end: int | None = None
        self._last_timestamp: int | None = None
        self._last_replay = -float("inf")
        self._discard = False  # the fan-out's own keep-reading subscriber queues nothing
        self.replays = 0

    def request_keyframe(self) -> None:
        """Serve a join or PLI/FIR: a burst from the last IDR (rate-limited)."""
        self.keyframe_requests += 1
        self._video._replay(self)

    async def recv(self) -> av.Packet[Any]:
        """For aiortc's own send loop: the packet, with the timestamp this track gives it."""
        encoded = await self.recv_encoded()
        if encoded.packet.pts == encoded.timestamp:
            return encoded.packet
        packet = av.Packet(bytes(encoded.packet))
        packet.pts = encoded.timestamp
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = encoded.is_keyframe
        return packet

    async def recv_encoded(self) -> EncodedVideo:
        """The next access unit; bursts are paced by ``burst_rate``.

        Raises:
            MediaStreamError: the track was stopped or the source ended.
        """
        encoded = await super().recv_encoded()
        if self._replay_left:
            self._replay_left -= 1
            if self._burst_rate and self._replay_left:
                # Spread the burst: sent in one go, a 1080p GOP overflows socket buffers
                # and NACK history (128 packets) alike.
                await asyncio.sleep(encoded.packet.size * 8 / self._burst_rate)
        elif self._replay_end is not None:
            if encoded.timestamp <= self._replay_end:
                encoded = EncodedVideo(encoded.packet, encoded.payloads, self._replay_end + 1)
            self._replay_end = None
        self._last_timestamp = encoded.timestamp
        return encoded

    @property
    def replaying(self) -> bool:
        """Whether a burst is still queued for sending."""
        return self._replay_left > 0

    def _offer(self, packet: EncodedVideo) -> None:
        if self._discard:
            return
        if self._waiting_keyframe:
            if not packet.is_keyframe:
                if self.resyncs:
                    self.packets_dropped += 1
                return
            self._waiting_keyframe = False
            self._ask_on_recv = False
        elif len(self._queue) - self._replay_left >= self._queue_size:
            self.packets_dropped += len(self._queue)
            self._queue.clear()
            self._replay_left = 0
            self.resyncs += 1
            if not packet.is_keyframe:
                self._waiting_keyframe = True
                self._ask_on_recv = True
                self.packets_dropped += 1
                return
        self._put(packet)

    def _load_burst(self, gop: list[EncodedVideo], *, join: bool) -> None:
        self.packets_dropped += len(self._queue)
        self._queue.clear()
        newest = gop[-1].timestamp
        if join and self._burst_timestamps == "original":
            burst = list(gop)
        else:
            if join or self._last_timestamp is None:
                first = newest - (len(gop) - 1)
            else:
                first = self._last_timestamp + 1
            burst = [
                EncodedVideo(item.packet, item.payloads, first + index)
                for index, item in enumerate(gop)
            ]
        for item in burst:
            self._put(item)
        self._replay_left = len(burst)
        self._replay_end = burst[-1].timestamp
        self._waiting_keyframe = False
        self._ask_on_recv = False
        self._last_replay = time.monotonic()
        self.replays += 1


class PassthroughVideo(Broadcast[PassthroughTrack]):
    """Fans an :class:`H264Source` out to viewers, keeping the GOP since the last IDR.

    A live source is read from :meth:`start` on, viewers or not, so the cached GOP is current
    when someone joins; a file is read only while someone watches.

    Args:
        source: the H.264 source.
        queue_size: live access units queued per viewer before it counts as too slow (bursts
            come on top).
        max_gop_frames: most access units kept since the last IDR; a longer GOP is dropped
            from the cache (joiners then wait for the next IDR).
        max_gop_bytes: the same bound in bytes.
        burst_timestamps: ``"compress"`` (default): a joiner's burst is stamped one tick
            apart, ending at the newest frame's timestamp; ``"original"``: as they were. PLI
            bursts are always compressed (after what the viewer last got).
        burst_rate: bits per second a burst is paced at, or None for no pacing.
        min_replay_gap: seconds between two bursts for one viewer (PLI storms).
        close_source: stop ``source`` in :meth:`close`.

    Attributes:
        frames_forwarded: access units handed to viewers' tracks.
        keyframes: IDRs seen.
        replays: bursts sent (joins and PLI/FIR).
        replayed_frames: access units sent in bursts.
        viewers_refused: viewers refused (``passthrough`` mode, incompatible profile).
    """

    def __init__(
        self,
        source: H264Source,
        *,
        queue_size: int = 30,
        max_gop_frames: int = 300,
        max_gop_bytes: int = 16 << 20,
        burst_timestamps: str = "compress",
        burst_rate: float | None = 50e6,
        min_replay_gap: float = 1.0,
        close_source: bool = True,
    ) -> None:
        if not isinstance(source, H264Source):
            raise InvalidArgument("PassthroughVideo needs an H264Source (open_h264_source)")
        if burst_timestamps not in ("compress", "original"):
            raise InvalidArgument("burst_timestamps must be 'compress' or 'original'")
        if queue_size < 2 or max_gop_frames < 1 or max_gop_bytes < 1:
            raise InvalidArgument("queue_size must be >= 2 and the GOP bounds positive")
        super().__init__(
            source, queue_size=queue_size, close_source=close_source, name="H.264 passthrough"
        )
        self._h264 = source
        self._max_gop_frames = max_gop_frames
        self._max_gop_bytes = max_gop_bytes
        self._burst_timestamps = burst_timestamps
        self._burst_rate = burst_rate
        self._min_replay_gap = min_replay_gap
        self._gop: list[EncodedVideo] | None = None
        self._gop_bytes = 0
        self._keeper: PassthroughTrack | None = None
        self.frames_forwarded = 0
        self.keyframes = 0
        self.replays = 0
        self.replayed_frames = 0
        self.viewers_refused = 0

    @property
    def frames_encoded(self) -> int:
        """Same as :attr:`frames_forwarded`, under the shared encoder's name for status lines."""
        return self.frames_forwarded

    @property
    def sps(self) -> Sps | None:
        """The stream's latest SPS."""
        return self._h264.sps

    @property
    def gop_frames(self) -> int:
        """Access units cached since the last IDR (0 when none is usable)."""
        return len(self._gop or ())

    def start(self) -> None:
        """For a live source, start reading now and keep reading while this is open."""
        if not self._h264.live or self._keeper is not None or self._closed or self._ended:
            return
        self._h264.start()
        # A subscriber that never reads keeps the pump running with no viewer, so the GOP
        # cache stays current; it queues nothing.
        self._keeper = self.subscribe()
        self._keeper._discard = True
        self._activate(self._keeper)

    def subscribe(self, *, burst_timestamps: str | None = None) -> PassthroughTrack:
        """A new viewer track (idle until its first ``recv()``).

        Raises:
            InvalidState: this is closed or the source has ended.
        """
        track = super().subscribe()
        if burst_timestamps is not None:
            track._burst_timestamps = burst_timestamps
        return track

    def decoded(self, *, width: int | None = None, height: int | None = None) -> DecodedH264Track:
        """A track of decoded frames of this stream, for the shared encoder (transcode path)."""
        return DecodedH264Track(self, width=width, height=height)

    async def wait_sps(self, timeout: float) -> Sps | None:
        """Wait up to ``timeout`` s until the stream's SPS is known.

        Starts reading a source that is not live yet (a file waits for its first viewer):
        its reader blocks after a few access units until they are taken, so nothing is lost
        and the file still plays from its start.
        """
        if self._h264.sps is None and not self._closed and not self._ended:
            self._h264.start()
        return await self._h264.wait_sps(timeout)

    def _new_track(self) -> PassthroughTrack:
        return PassthroughTrack(
            self,
            self._queue_size,
            burst_timestamps=self._burst_timestamps,
            burst_rate=self._burst_rate,
        )

    async def _produce(self, item: EncodedVideo) -> list[EncodedVideo]:
        self.frames_forwarded += 1
        size = item.packet.size
        if item.is_keyframe:
            self.keyframes += 1
            self._gop = [item]
            self._gop_bytes = size
        elif self._gop is not None:
            self._gop.append(item)
            self._gop_bytes += size
            if len(self._gop) > self._max_gop_frames or self._gop_bytes > self._max_gop_bytes:
                logger.info(
                    "H.264 passthrough: GOP over %d frames or %d bytes; joiners wait for the "
                    "next IDR",
                    self._max_gop_frames,
                    self._max_gop_bytes,
                )
                self._gop = None
        return [item]

    def _replay(self, track: PassthroughTrack) -> None:
        join = not track.active or track._last_timestamp is None
        if not join and time.monotonic() - track._last_replay < self._min_replay_gap:
            return  # a burst was just sent: the next IDR or request will do
        if not self._gop:
            track._waiting_keyframe = True  # nothing cached yet: start at the next IDR
            return
        track._load_burst(list(self._gop), join=join)
        self.replays += 1
        self.replayed_frames += len(self._gop)

    async def close(self) -> None:
        """End every subscriber, stop reading, stop the source (idempotent)."""
        self._keeper = None
        await super().close()


class DecodedH264Track(MediaStreamTrack):
    """Frames decoded from a :class:`PassthroughVideo`, for viewers that need the encoder.

    Decodes in a worker thread. A join starts with the cached GOP, of which only the last
    frame is handed on (the others are decoded only as references).

    Args:
        video: the stream to decode.
        width: scale to this width (even), or keep the stream's.
        height: scale to this height (even), or keep the stream's.
    """

    kind = "video"

    def __init__(
        self, video: PassthroughVideo, *, width: int | None = None, height: int | None = None
    ) -> None:
        super().__init__()
        self._video = video
        self._track: PassthroughTrack | None = None
        self._width = width
        self._height = height
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._codec: Any = None
        self._pending: deque[av.VideoFrame] = deque()
        self.fps = video.source.fps  # type: ignore[attr-defined]
        self.frames_decoded = 0
        self.decode_seconds = 0.0

    @property
    def reopening(self) -> bool:
        """Whether the source is being opened again."""
        return bool(getattr(self._video.source, "reopening", False))

    async def recv(self) -> av.VideoFrame:
        """The next decoded yuv420p frame.

        Raises:
            MediaStreamError: stopped, or the stream ended.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._track is None:
            self._track = self._video.subscribe(burst_timestamps="original")
            self._track._burst_rate = None
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kvs-h264-decode"
            )
        loop = asyncio.get_running_loop()
        while not self._pending:
            encoded = await self._track.recv_encoded()
            data = bytes(encoded.packet)
            keep = not self._track.replaying  # inside a burst, only its last frame is shown
            frames = await loop.run_in_executor(self._executor, self._decode, data, keep)
            self._pending.extend(frames)
        return self._pending.popleft()

    def _decode(self, data: bytes, keep: bool) -> list[av.VideoFrame]:
        started = time.perf_counter()
        if self._codec is None:
            self._codec = av.CodecContext.create("h264", "r")
        out = []
        try:
            frames = self._codec.decode(av.Packet(data))
        except av.FFmpegError as exc:
            logger.debug("H.264 decode error (waiting for the next good frame): %s", exc)
            frames = []
        for frame in frames:
            self.frames_decoded += 1
            if not keep:
                continue
            width = self._width or frame.width - frame.width % 2
            height = self._height or frame.height - frame.height % 2
            if frame.format.name != "yuv420p" or (width, height) != (frame.width, frame.height):
                frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts = None  # the encoder stamps it on arrival
            out.append(frame)
        self.decode_seconds += time.perf_counter() - started
        return out

    def stop(self) -> None:
        """Stop decoding and unsubscribe (idempotent)."""
        super().stop()
        if self._track is not None:
            self._track.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


# -- per-viewer routing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OfferedH264:
    payload_type: int
    profile_level_id: str
    packetization_mode: str


def _video_section(lines: list[str]) -> tuple[int, int] | None:
    start = next((i for i, line in enumerate(lines) if line.startswith("m=video")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return start, end


def _fmtp(line: str) -> tuple[int, dict[str, str]]:
    head, _, params = line[len("a=fmtp:") :].partition(" ")
    values = {}
    for item in params.split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            values[key.lower()] = value
    return int(head), values


def offered_h264(sdp: str) -> list[_OfferedH264]:
    """The H.264 payload types of the first video section of an SDP, in its order."""
    lines = sdp.splitlines()
    section = _video_section(lines)
    if section is None:
        return []
    body = lines[section[0] : section[1]]
    h264 = [
        int(line[len("a=rtpmap:") :].split()[0])
        for line in body
        if line.startswith("a=rtpmap:") and line.split()[1].upper().startswith("H264/")
    ]
    params = dict(_fmtp(line) for line in body if line.startswith("a=fmtp:"))
    return [
        _OfferedH264(
            pt,
            params.get(pt, {}).get("profile-level-id", _AIORTC_PROFILE).lower(),
            params.get(pt, {}).get("packetization-mode", "0"),
        )
        for pt in h264
    ]


def _keep_only(sdp: str, payload_type: int) -> str:
    """The offer with every other H.264 payload type (and its RTX) removed from the first video
    section, and ``payload_type`` relabelled with the profile aiortc knows."""
    lines = sdp.splitlines()
    section = _video_section(lines)
    assert section is not None
    start, end = section
    body = lines[start:end]
    h264 = {o.payload_type for o in offered_h264(sdp)}
    drop = h264 - {payload_type}
    for line in body:
        if line.startswith("a=fmtp:"):
            pt, values = _fmtp(line)
            if values.get("apt", "").isdigit() and int(values["apt"]) in drop:
                drop.add(pt)
    out = []
    for line in body:
        match = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", line)
        if match and int(match.group(1)) in drop:
            continue
        if line.startswith(f"a=fmtp:{payload_type} "):
            line = re.sub(r"profile-level-id=[0-9a-fA-F]{6}", "", line).rstrip(";")
            line = line.replace(" ;", " ")
            line += (";" if not line.endswith(" ") else "") + f"profile-level-id={_AIORTC_PROFILE}"
        if line.startswith("m=video"):
            fields = line.split(" ")
            line = " ".join(
                fields[:3] + [f for f in fields[3:] if not f.isdigit() or int(f) not in drop]
            )
        out.append(line)
    newline = "\r\n" if "\r\n" in sdp else "\n"
    return newline.join(lines[:start] + out + lines[end:]) + newline


def _answer_profile(sdp: str, payload_type: int, profile_level_id: str) -> str:
    pattern = re.compile(
        rf"^(a=fmtp:{payload_type} .*?profile-level-id=)[0-9a-fA-F]{{6}}", re.MULTILINE
    )
    return pattern.sub(lambda m: m.group(1) + profile_level_id, sdp, count=1)


@dataclass(frozen=True, slots=True)
class VideoRoute:
    """How one viewer gets video: the fan-out to subscribe to, and SDP rewrites.

    Attributes:
        fanout: a :class:`PassthroughVideo` or a :class:`SharedVideoEncoder`.
        passthrough: whether the viewer gets the camera's own H.264.
        payload_type: the offered payload type used for passthrough.
        profile_level_id: what the answer announces for passthrough.
    """

    fanout: PassthroughVideo | SharedVideoEncoder
    passthrough: bool
    payload_type: int | None = None
    profile_level_id: str | None = None

    def offer(self, sdp: str) -> str:
        """The offer as aiortc must see it (call before ``setRemoteDescription``)."""
        if not self.passthrough or self.payload_type is None:
            return sdp
        return _keep_only(sdp, self.payload_type)

    def negotiated(self, transceiver: Any) -> None:
        """Call right after ``setRemoteDescription``: send on the offered payload type.

        aiortc keeps its own payload type for a codec the offer numbered below 96 (Chromium
        numbers its extra H.264 profiles 35-63), so it would answer and send H.264 on a
        payload type the viewer never offered. The negotiated codec list is this
        transceiver's own (``_codecs``, filled by ``setRemoteDescription``; the answer and the
        sender both read it), so renumbering it there touches no other peer connection.
        """
        if not self.passthrough or self.payload_type is None:
            return
        codecs = negotiated_codecs(transceiver)
        if not codecs:
            return
        old = {c.payloadType for c in codecs if c.mimeType.lower() == "video/h264"}
        if old == {self.payload_type}:
            return
        for codec in codecs:
            if codec.mimeType.lower() == "video/h264":
                codec.payloadType = self.payload_type
        # RTX for the old number would name a payload type that no longer exists.
        codecs[:] = [
            c
            for c in codecs
            if not (c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") in old)
        ]

    def answer(self, sdp: str) -> str:
        """The answer as the viewer must see it (the stream's ``profile-level-id``)."""
        if not self.passthrough or self.payload_type is None or self.profile_level_id is None:
            return sdp
        return _answer_profile(sdp, self.payload_type, self.profile_level_id)


def _choose_payload_type(offer_sdp: str, profile_level_id: str) -> _OfferedH264 | None:
    usable = [
        o
        for o in offered_h264(offer_sdp)
        if o.packetization_mode == "1" and can_decode(o.profile_level_id, profile_level_id)
    ]
    if not usable:
        return None
    exact = [o for o in usable if profile_of(o.profile_level_id) == profile_of(profile_level_id)]
    return (exact or usable)[0]


async def route_video(
    offer_sdp: str,
    *,
    passthrough: PassthroughVideo | None,
    encoder: SharedVideoEncoder | None,
    mode: str,
    viewer: str,
    sps_timeout: float = 5.0,
) -> VideoRoute:
    """Decide how a viewer gets video: the stream as it is, or the shared encoder.

    Args:
        offer_sdp: the viewer's offer.
        passthrough: the H.264 fan-out, if the source is H.264.
        encoder: the shared encoder, if transcoding is allowed.
        mode: ``auto``, ``passthrough`` or ``transcode``.
        viewer: the viewer's client id, for messages.
        sps_timeout: how long to wait for the stream's first SPS (a pipe just started).

    Raises:
        SessionError: the viewer cannot be served (passthrough only, incompatible profile).
    """
    if passthrough is not None and mode != "transcode":
        sps = await passthrough.wait_sps(sps_timeout)
        if sps is not None:
            chosen = _choose_payload_type(offer_sdp, sps.profile_level_id)
            if chosen is not None:
                return VideoRoute(passthrough, True, chosen.payload_type, sps.profile_level_id)
        if mode == "passthrough" or encoder is None:
            passthrough.viewers_refused += 1
            offered = ", ".join(
                f"{o.profile_level_id} (packetization-mode {o.packetization_mode})"
                for o in offered_h264(offer_sdp)
            )
            what = (
                f"the stream's H.264 {sps.describe()}"
                if sps is not None
                else "the stream (no H.264 parameter sets from the source yet)"
            )
            raise SessionError(
                viewer,
                f"viewer {viewer} refused: it cannot take {what}; it offered "
                f"{offered or 'no H.264'}. Use --video-mode auto to encode for such viewers",
            )
    if encoder is None:
        raise SessionError(viewer, f"viewer {viewer}: no video encoder for this source")
    return VideoRoute(encoder, False)
