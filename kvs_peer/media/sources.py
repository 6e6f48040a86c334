"""Media sources as aiortc tracks: test pattern, tone, and the factories for all sources.

Every video source hands out **yuv420p** frames with a 90 kHz ``pts``/``time_base``, paced in
real time. The conversion to yuv420p happens once, in the source, on a frame nobody else holds
yet (sharing one non-yuv420p frame between encoders that each reformat it crashes PyAV 18; see
the package docstring). Audio sources hand out 20 ms ``s16`` frames at 48 kHz.

The generated tracks (:class:`TestPatternTrack`, :class:`ToneTrack`) live here; files, devices
and URLs are decoded in worker threads by :mod:`kvs_peer.media.capture`. Pick a source with
:func:`open_video_source` / :func:`open_audio_source`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
from aiortc import MediaStreamError, MediaStreamTrack

from ..errors import InvalidArgument, MediaError, SourceUnavailable
from .capture import CameraTrack, FileAudioTrack, PyAVVideoTrack
from .redact import LIVE_SCHEMES, describe_url, redact_urls, url_scheme
from .stamp import MIN_HEIGHT, MIN_WIDTH, stamp_band_height, write_stamp
from .timing import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    AUDIO_TIME_BASE,
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
    Pacer,
)
from .v4l2 import is_v4l2_device, v4l2_options

__all__ = [
    "CameraTrack",
    "FileAudioTrack",
    "PyAVVideoTrack",
    "TestPatternTrack",
    "ToneTrack",
    "describe_url",
    "open_audio_source",
    "open_video_source",
]

logger = logging.getLogger(__name__)

_TEST_PATTERN_NAMES = frozenset({"testsrc", "test", "testpattern"})
# Failures no waiting cures: an unknown scheme, a refused user or password, a bad option.
# Everything else from a live URL (refused, timed out, unreachable, 404 from a relay whose
# camera has not published yet, 5xx) may be a source that is not up yet.
_WRONG_URL = (
    av.error.ProtocolNotFoundError,
    av.error.HTTPBadRequestError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.OptionNotFoundError,
    av.error.DemuxerNotFoundError,
)


class TestPatternTrack(MediaStreamTrack):
    """A moving test picture with a :mod:`~kvs_peer.media.stamp` in its top band.

    Scrolling diagonal stripes, colour bars and a bouncing box, all cut out of precomputed
    planes, so a frame costs a few memory copies (well under 1 ms at 640x480). The stamp
    carries :attr:`frames_generated` (the counter) and the capture time (``time.time()``, ms).

    Args:
        width: frame width in pixels, even, at least 64.
        height: frame height in pixels, even, at least 60.
        fps: frames per second (0 < fps <= 120).
        stamp: draw the counter/time stamp.

    Raises:
        InvalidArgument: bad size or rate.
    """

    __test__ = False  # not a pytest test class despite the name
    kind = "video"

    def __init__(
        self, width: int = 640, height: int = 480, fps: float = 30, *, stamp: bool = True
    ) -> None:
        super().__init__()
        _check_video_args(width, height, fps)
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            raise InvalidArgument(f"test pattern must be at least {MIN_WIDTH}x{MIN_HEIGHT}")
        self.width, self.height, self.fps = width, height, fps
        self.frames_generated = 0
        self._stamp = stamp
        self._pacer = Pacer(fps)
        self._band = stamp_band_height(height) if stamp else 0
        # Scrolling is a moving window over planes one period wider than the frame.
        self._period = max(2, (width // 4) & ~1)
        self._step = 4  # pixels per frame, even so the chroma window moves by whole samples
        self._luma, self._cb, self._cr = self._make_planes()
        self._box = max(8, (min(width, height) // 8) & ~1)

    def _make_planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, h, p = self.width, self.height, self._period
        x = np.arange(w + p)[None, :]
        y = np.arange(h)[:, None]
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y) / p)
        luma = (40 + 150 * stripes).astype(np.uint8)
        # Eight colour bars (Cb, Cr pairs) repeating every period, in chroma resolution.
        bars = np.array(
            [
                [128, 128],
                [44, 142],
                [156, 44],
                [72, 58],
                [184, 198],
                [100, 212],
                [212, 114],
                [128, 128],
            ],
            np.uint8,
        )
        cx = np.arange((w + p) // 2)
        index = (cx * 2 * len(bars) // p) % len(bars)
        cb = np.repeat(bars[index, 0][None, :], h // 2, axis=0)
        cr = np.repeat(bars[index, 1][None, :], h // 2, axis=0)
        band_c = -(-self._band // 2)
        cb[:band_c] = 128
        cr[:band_c] = 128
        return luma, cb, cr

    async def recv(self) -> av.VideoFrame:
        """Return the next frame, waiting until it is due.

        Raises:
            MediaStreamError: the track was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        slot = await self._pacer.next_slot()
        counter = self.frames_generated
        self.frames_generated += 1
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y_plane, u_plane, v_plane = (_plane_view(p) for p in frame.planes)
        w, h = self.width, self.height
        offset = (counter * self._step) % self._period
        y_plane[:] = self._luma[:, offset : offset + w]
        u_plane[:] = self._cb[:, offset // 2 : offset // 2 + w // 2]
        v_plane[:] = self._cr[:, offset // 2 : offset // 2 + w // 2]
        # Bouncing box below the stamp band, a triangle wave in both directions.
        span_x = max(1, w - self._box)
        span_y = max(1, h - self._band - self._box)
        bx = _triangle(counter * 5, span_x) & ~1
        by = (self._band + _triangle(counter * 3, span_y)) & ~1
        y_plane[by : by + self._box, bx : bx + self._box] = 235
        u_plane[by // 2 : (by + self._box) // 2, bx // 2 : (bx + self._box) // 2] = 128
        v_plane[by // 2 : (by + self._box) // 2, bx // 2 : (bx + self._box) // 2] = 128
        if self._stamp:
            write_stamp(y_plane, counter, int(time.time() * 1000))
        frame.pts = round(slot * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        return frame


class ToneTrack(MediaStreamTrack):
    """A sine tone: 20 ms ``s16`` frames at 48 kHz, paced in real time.

    Args:
        freq: tone frequency in Hz (0 < freq < 24000).
        amplitude: peak level, 0..1.
        layout: ``"mono"`` or ``"stereo"``.

    Raises:
        InvalidArgument: bad frequency, amplitude or layout.
    """

    kind = "audio"

    def __init__(
        self, freq: float = 440.0, *, amplitude: float = 0.2, layout: str = "mono"
    ) -> None:
        super().__init__()
        if not 0 < freq < AUDIO_SAMPLE_RATE / 2:
            raise InvalidArgument(f"tone frequency must be in (0, 24000) Hz, got {freq}")
        if not 0 <= amplitude <= 1:
            raise InvalidArgument(f"tone amplitude must be within 0..1, got {amplitude}")
        if layout not in ("mono", "stereo"):
            raise InvalidArgument(f"tone layout must be 'mono' or 'stereo', got {layout!r}")
        self.freq = freq
        self._amplitude = amplitude * 32767
        self._channels = 2 if layout == "stereo" else 1
        self._layout = layout
        self._pacer = Pacer(AUDIO_SAMPLE_RATE / AUDIO_FRAME_SAMPLES)

    async def recv(self) -> av.AudioFrame:
        """Return the next 20 ms frame, waiting until it is due.

        Raises:
            MediaStreamError: the track was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        slot = await self._pacer.next_slot()
        first = slot * AUDIO_FRAME_SAMPLES
        t = (first + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_SAMPLE_RATE
        samples = (self._amplitude * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        if self._channels == 2:
            samples = np.repeat(samples, 2)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout=self._layout)
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = first
        frame.time_base = AUDIO_TIME_BASE
        return frame


def _triangle(value: int, span: int) -> int:
    phase = value % (2 * span)
    return phase if phase < span else 2 * span - phase


def _plane_view(plane: Any) -> np.ndarray:
    raw = np.frombuffer(plane, np.uint8)
    return raw[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)[
        :, : plane.width
    ]


def open_video_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    loop: bool = False,
    options: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    reopen: bool = False,
) -> MediaStreamTrack:
    """Open a video source by name.

    ``spec`` is one of:

    - ``"testsrc"``: :class:`TestPatternTrack` (640x480 at 30 fps unless given);
    - a camera index such as ``"0"``: OpenCV ``VideoCapture`` (:class:`CameraTrack`);
    - ``"/dev/videoN"``: PyAV's ``v4l2`` input (Linux), ``width``/``height``/``fps`` are
      requested from the driver;
    - a URL with a scheme (``rtsp://``, ``rtmp://``, ``srt://``, ``udp://``, ``http(s)://``,
      ...): PyAV/FFmpeg. RTSP uses TCP unless ``options`` says otherwise. Streaming schemes
      are treated as live (not paced, newest frames kept); http(s) is paced like a file;
    - anything else: a media file path, decoded by PyAV and paced by its timestamps
      (``loop=True`` restarts it at the end).

    This call opens the source (blocking for up to ``timeout`` seconds on a network URL), so
    errors surface here rather than at the first frame. From a coroutine, use
    ``await asyncio.to_thread(open_video_source, ...)`` for URLs.

    Args:
        spec: which source, see above.
        width: output width (even); ``None`` keeps the source's size (640 for the pattern).
        height: output height (even); ``None`` keeps the source's size (480 for the pattern).
        fps: frame rate for the pattern and a hint for cameras; files keep their own.
        loop: restart a file at its end.
        options: extra FFmpeg input options for PyAV sources (e.g. ``{"rtsp_transport":
            "udp"}``).
        timeout: seconds to wait when opening or reading a network source.
        reopen: for live sources (cameras, streaming URLs), open the source again, with
            backoff, whenever it ends, instead of ending the track: a
            :class:`~kvs_peer.media.reopen.ReopeningVideoTrack`. Files and the test pattern
            ignore it (files have ``loop``). A streaming URL that cannot be reached yet
            (refused, timed out, not found on the server: a camera still booting) does not
            raise either: the track waits for it with the same backoff (its ``waiting`` is
            True until it opens). A wrong path, scheme or password still raises here.

    Returns:
        A video ``MediaStreamTrack`` producing yuv420p frames.

    Raises:
        InvalidArgument: empty spec or bad size/rate.
        SourceUnavailable: (a ``MediaError``, without ``reopen``) the URL cannot be reached.
        MediaError: the file is missing or unreadable, the device cannot be opened, the URL
            is malformed or refused our credentials, or there is no video stream.
    """

    def open_once() -> MediaStreamTrack:
        return _open_video_once(
            spec, width=width, height=height, fps=fps, loop=loop, options=options, timeout=timeout
        )

    if not reopen:
        return open_once()
    from .reopen import ReopeningVideoTrack

    try:
        track = open_once()
    except SourceUnavailable as exc:
        # Started before its camera (a power cut brings both up, the camera slower): wait.
        description = f"video URL {describe_url(spec.strip())}"
        logger.warning("%s: waiting for it (%s)", description, exc)
        return ReopeningVideoTrack(open_once, description=description)
    if getattr(track, "live", False):
        return ReopeningVideoTrack(open_once, first=track)
    return track


def _open_video_once(
    spec: str,
    *,
    width: int | None,
    height: int | None,
    fps: float | None,
    loop: bool,
    options: Mapping[str, str] | None,
    timeout: float,
) -> MediaStreamTrack:
    spec = spec.strip()
    if not spec:
        raise InvalidArgument(
            "empty video source: use 'testsrc', a file path, a camera index like 0, "
            "/dev/videoN or an rtsp:// URL"
        )
    _check_video_args(width, height, fps)
    if spec.lower() in _TEST_PATTERN_NAMES:
        return TestPatternTrack(width or 640, height or 480, fps or 30)
    if spec.isdigit():
        return _open_opencv_camera(int(spec), width, height, fps)
    if is_v4l2_device(spec):
        container = _open_container(
            spec,
            f"camera {spec}",
            format="v4l2",
            options=v4l2_options(width=width, height=height, fps=fps, options=options),
            timeout=timeout,
            kind="video",
            missing=f"camera device {spec} not found: check `ls /dev/video*` (or use an "
            "index such as 0 for OpenCV)",
        )
        return PyAVVideoTrack(
            container, description=f"camera {spec}", width=width, height=height, live=True
        )
    container, description, live = _open_input(spec, "video", options=options, timeout=timeout)
    return PyAVVideoTrack(
        container, description=description, width=width, height=height, live=live, loop=loop
    )


def open_audio_source(
    spec: str | None,
    *,
    loop: bool = False,
    options: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> MediaStreamTrack | None:
    """Open an audio source by name.

    ``spec`` is ``"none"`` / ``""`` / ``None`` (no audio: returns ``None``), ``"tone"`` or
    ``"tone:FREQ"`` (:class:`ToneTrack`), a URL with a scheme (PyAV, live for streaming
    schemes) or a media file path (PyAV, paced, ``loop`` restarts it). Audio from a file is
    opened separately from its video, so the two are not lip-synced.

    Args:
        spec: which source, see above.
        loop: restart a file at its end.
        options: extra FFmpeg input options.
        timeout: seconds to wait when opening or reading a network source.

    Returns:
        An audio ``MediaStreamTrack`` of 20 ms 48 kHz ``s16`` frames, or ``None``.

    Raises:
        InvalidArgument: malformed ``tone:`` frequency.
        MediaError: the file is missing or unreadable, or has no audio stream.
    """
    spec = (spec or "").strip()
    if spec.lower() in ("", "none"):
        return None
    if spec.lower() == "tone":
        return ToneTrack()
    if spec.lower().startswith("tone:"):
        try:
            freq = float(spec[5:])
        except ValueError:
            raise InvalidArgument(f"bad tone frequency in {spec!r}: use e.g. 'tone:440'") from None
        return ToneTrack(freq)
    container, description, live = _open_input(spec, "audio", options=options, timeout=timeout)
    return FileAudioTrack(container, description=description, live=live, loop=loop)


def _check_video_args(width: int | None, height: int | None, fps: float | None) -> None:
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value < 2 or value % 2):
            raise InvalidArgument(f"video {name} must be an even number >= 2, got {value}")
    if fps is not None and not 0 < fps <= 120:
        raise InvalidArgument(f"fps must be within (0, 120], got {fps}")


def _check_file(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise MediaError(
            f"{kind} file {path!r} not found: check the path, or use "
            + ("'testsrc' for a test pattern" if kind == "video" else "'tone' or 'none'")
        )
    if os.path.isdir(path):
        raise MediaError(f"{kind} source {path!r} is a directory, not a media file")


def _open_opencv_camera(
    index: int, width: int | None, height: int | None, fps: float | None
) -> CameraTrack:
    import cv2

    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise MediaError(
            f"cannot open camera {index}: no such camera, or it is used by another program "
            "(on Linux check `ls /dev/video*` and the video group)"
        )
    if width and height:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if fps:
        capture.set(cv2.CAP_PROP_FPS, fps)
    return CameraTrack(capture, description=f"camera {index}", width=width, height=height)


def _open_input(
    spec: str, kind: str, *, options: Mapping[str, str] | None, timeout: float
) -> tuple[Any, str, bool]:
    """Open a URL (``scheme://...``, not ``file://``) or a media file for its ``kind`` stream.

    Returns:
        The container, its description for logs and errors, and whether it is live (a
        streaming scheme: not paced, newest frames kept).
    """
    scheme = url_scheme(spec)
    if scheme and scheme != "file":
        ffmpeg_options = {"rtsp_transport": "tcp"} if scheme.startswith("rtsp") else {}
        ffmpeg_options.update(options or {})
        description = f"{kind} URL {describe_url(spec)}"
        live = scheme in LIVE_SCHEMES
        container = _open_container(
            spec,
            description,
            format=None,
            options=ffmpeg_options,
            timeout=timeout,
            kind=kind,
            missing=f"{description} not found: check the address",
            may_come_later=live,
        )
        return container, description, live
    path = urlsplit(spec).path if scheme == "file" else spec
    _check_file(path, kind)
    description = f"{kind} file {path!r}"
    container = _open_container(
        path,
        description,
        format=None,
        options=options,
        timeout=None,
        kind=kind,
        missing=f"{description} not found",
    )
    return container, description, False


def _open_container(
    target: str,
    description: str,
    *,
    format: str | None,
    options: Mapping[str, str] | None,
    timeout: float | None,
    kind: str,
    missing: str,
    may_come_later: bool = False,
) -> Any:
    """Open ``target`` with PyAV.

    Args:
        may_come_later: a live URL: failures that a source not up yet causes raise
            :class:`SourceUnavailable` instead of :class:`MediaError`.
    """
    try:
        container = av.open(
            target, mode="r", format=format, options=dict(options or {}), timeout=timeout
        )
    except FileNotFoundError:
        raise MediaError(missing) from None
    except PermissionError:
        raise MediaError(f"cannot open {description}: permission denied") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = redact_urls(getattr(exc, "strerror", None) or str(exc))
        if isinstance(exc, _WRONG_URL):
            raise MediaError(
                f"cannot open {description}: {reason}; check the scheme, address, user and password"
            ) from None
        if may_come_later and isinstance(exc, av.FFmpegError):
            raise SourceUnavailable(
                f"cannot open {description}: {reason}; check that the camera or server is up "
                "and reachable"
            ) from None
        raise MediaError(
            f"cannot open {description}: {reason}; check that it is a readable media source"
        ) from None
    streams = container.streams.video if kind == "video" else container.streams.audio
    if not streams:
        container.close()
        raise MediaError(f"{description} has no {kind} stream")
    return container
