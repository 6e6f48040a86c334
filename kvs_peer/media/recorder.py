"""Sinks for received media: a crash-tolerant recorder, PNG snapshots, numpy conversion.

:class:`Recorder` encodes and muxes in its own worker thread (aiortc's ``MediaRecorder`` encodes
on the event loop, stalling everything else for the length of each encode), keeps a bounded
queue (a writer that falls behind drops frames and counts them instead of growing memory), and
writes Matroska with ``flush_packets=1`` and half-second clusters, so a killed process leaves a
file that plays up to about half a second before the kill (measured in the tests).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from ..errors import InvalidArgument, InvalidState, MediaError

__all__ = [
    "Recorder",
    "RecorderStats",
    "check_output_path",
    "frame_to_ndarray",
    "save_snapshot",
]

logger = logging.getLogger(__name__)

_FORMATS = {
    ".mkv": "matroska",
    ".mka": "matroska",
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".ts": "mpegts",
}
_AUDIO_CODECS = {"matroska": "libopus", "mp4": "aac", "mov": "aac", "mpegts": "aac"}
# Samples per encoder input frame: Opus takes 20 ms frames, AAC exactly 1024 samples.
_AUDIO_FRAME_SIZES = {"libopus": 960, "aac": 1024}
_MS = fractions.Fraction(1, 1000)
_AUDIO_RATE = 48_000
# A jump of the input timestamps by more than this (seconds) is a discontinuity, not time.
_MAX_GAP = 5.0
_CLOSE = object()


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters of a :class:`Recorder` at one moment.

    Attributes:
        frames_written: video frames encoded.
        audio_frames_written: audio frames encoded.
        frames_dropped: frames (video or audio) refused because the writer was behind.
        files: paths of the files started so far, in order.
    """

    frames_written: int
    audio_frames_written: int
    frames_dropped: int
    files: tuple[Path, ...]


class _Timeline:
    """Maps one input stream's timestamps to recording seconds.

    Each stream is anchored at its first frame's arrival (aiortc tracks start at random RTP
    timestamps, and audio and video have unrelated origins), then follows its own timestamps
    so network jitter does not shake the recording; a jump larger than ``_MAX_GAP`` or a step
    backwards re-anchors at the arrival time.
    """

    def __init__(self) -> None:
        self._media0: float | None = None
        self._arrival0 = 0.0
        self._last: float | None = None

    def seconds(self, frame: Any, arrival: float) -> float:
        media = (
            float(frame.pts * frame.time_base)
            if frame.pts is not None and frame.time_base
            else None
        )
        if media is None:
            return arrival
        if self._media0 is None:
            self._media0, self._arrival0 = media, arrival
        value = self._arrival0 + (media - self._media0)
        if self._last is not None and not (0 <= value - self._last <= _MAX_GAP):
            self._media0, self._arrival0 = media, arrival
            value = arrival
        self._last = value
        return value


class _Segment:
    """One output file: container, streams, encoders. Used only by the writer thread."""

    def __init__(
        self,
        path: Path,
        format_name: str,
        *,
        video_size: tuple[int, int] | None,
        audio_layout: str | None,
        fps: float,
        gop_seconds: float,
        video_options: dict[str, str],
        start: float,
    ) -> None:
        self.path = path
        self.start = start
        options = {"flush_packets": "1"}
        if format_name == "matroska":
            # Matroska holds a cluster in memory until it closes; with flush_packets a closed
            # cluster is on disk. Half-second clusters: a crash loses about half a second.
            options["cluster_time_limit"] = "500"
        self.container = av.open(str(path), "w", format=format_name, container_options=options)
        self.video: Any = None
        self.audio: Any = None
        self._last_video_ms = -1
        self._audio_next: int | None = None
        if video_size is not None:
            stream = self.container.add_stream(
                "libx264",
                rate=fractions.Fraction(fps).limit_denominator(1001),
                options=dict(video_options),
            )
            stream.width, stream.height = video_size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = _MS
            stream.time_base = _MS
            stream.codec_context.gop_size = max(1, round(gop_seconds * fps))
            self.video = stream
        if audio_layout is not None:
            codec = _AUDIO_CODECS.get(format_name, "aac")
            stream = self.container.add_stream(codec, rate=_AUDIO_RATE)
            stream.layout = audio_layout
            stream.codec_context.time_base = fractions.Fraction(1, _AUDIO_RATE)
            self.audio = stream
            self._resampler = av.AudioResampler(
                format=stream.codec_context.codec.audio_formats[0].name,
                layout=audio_layout,
                rate=_AUDIO_RATE,
                frame_size=_AUDIO_FRAME_SIZES.get(codec, 1024),
            )

    def write_video(self, frame: av.VideoFrame, seconds: float) -> None:
        ms = round((seconds - self.start) * 1000)
        if ms <= self._last_video_ms:
            ms = self._last_video_ms + 1
        self._last_video_ms = ms
        frame.pts = ms
        frame.time_base = _MS
        self.container.mux(self.video.encode(frame))

    def write_audio(self, frame: av.AudioFrame, seconds: float) -> int:
        position = round((seconds - self.start) * _AUDIO_RATE)
        if self._audio_next is None or abs(position - self._audio_next) > _AUDIO_RATE // 5:
            self._audio_next = max(0, position)
        written = 0
        for out in self._resampler.resample(frame):
            out.pts = self._audio_next
            out.time_base = fractions.Fraction(1, _AUDIO_RATE)
            self._audio_next += out.samples
            self.container.mux(self.audio.encode(out))
            written += 1
        return written

    def close(self) -> None:
        try:
            if self.video is not None:
                self.container.mux(self.video.encode(None))
            if self.audio is not None:
                self.container.mux(self.audio.encode(None))
        finally:
            self.container.close()


class Recorder:
    """Records decoded video (and optionally audio) frames to files, off the event loop.

    Feed it with :meth:`add_track` (an aiortc remote track) or :meth:`write_video` /
    :meth:`write_audio`. Frames are only read, never modified: the writer thread encodes a copy.

    Containers, from ``path``'s suffix unless ``container`` names an FFmpeg format:
    ``.mkv`` (Matroska, the default, also for a path without suffix), ``.ts`` (MPEG-TS), and
    ``.mp4``/``.mov``. **MP4/MOV files are unreadable if the process dies before** :meth:`close`
    (their index is written at the end). Killed after 3 s at 30 fps, a Matroska file kept about
    76 of 90 frames (its last half-second cluster is lost) and an MPEG-TS file all of them.

    Segments: with ``segment_seconds``, a new file starts at the first video frame after each
    ``segment_seconds`` of media, each file self-contained (starts with a keyframe). Names are
    ``path`` formatted with ``index`` when it contains ``{index}`` (e.g.
    ``"cam-{index:05d}.mkv"``), else ``<stem>-0000<suffix>``, ``<stem>-0001<suffix>``, ...
    Without segments the file is ``path`` itself.

    Video is H.264 (libx264, yuv420p) at the size of the first frame; later frames of another
    size are scaled to it. Audio (``audio=True``) is Opus in Matroska, AAC otherwise. With both,
    a file starts at the first video frame and earlier audio is dropped.

    Args:
        path: output file (or pattern, see above).
        container: FFmpeg format name overriding the suffix (``"matroska"``, ``"mp4"``, ...).
        segment_seconds: rotate files after this many seconds, or ``None`` for one file.
        video: record video frames.
        audio: record audio frames.
        fps: nominal frame rate for the encoder (timestamps come from the frames).
        preset: x264 preset; ``veryfast`` keeps a 640x480 recording around 0.1 core.
        crf: x264 constant quality (lower is better, 18-28 is sensible).
        gop_seconds: keyframe interval (seek granularity).
        queue_size: frames buffered for the writer before new ones are dropped.

    Raises:
        InvalidArgument: bad options, or an unknown suffix without ``container``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        container: str | None = None,
        segment_seconds: float | None = None,
        video: bool = True,
        audio: bool = False,
        fps: float = 30.0,
        preset: str = "veryfast",
        crf: int = 23,
        gop_seconds: float = 2.0,
        queue_size: int = 60,
    ) -> None:
        self.path = Path(path)
        if container is None:
            suffix = self.path.suffix.lower()
            if not suffix:
                container = "matroska"
            elif suffix in _FORMATS:
                container = _FORMATS[suffix]
            else:
                raise InvalidArgument(
                    f"unknown recording format {suffix!r}: use .mkv (recommended), .ts or .mp4, "
                    "or pass container='<ffmpeg format>'"
                )
        if not (video or audio):
            raise InvalidArgument("a recorder needs video, audio or both")
        if segment_seconds is not None and segment_seconds <= 0:
            raise InvalidArgument("segment_seconds must be positive or None")
        if queue_size < 1:
            raise InvalidArgument("queue_size must be at least 1")
        if not 0 < fps <= 240:
            raise InvalidArgument(f"fps must be within (0, 240], got {fps}")
        self.container = container
        self.segment_seconds = segment_seconds
        self.video = video
        self.audio = audio
        self._fps = fps
        self._gop = gop_seconds
        self._video_options = {"preset": preset, "crf": str(crf), "tune": "zerolatency"}
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._lock = threading.Lock()
        self._files: list[Path] = []
        self.error: BaseException | None = None
        self.frames_written = 0
        self.audio_frames_written = 0
        self.frames_dropped = 0

    async def __aenter__(self) -> Recorder:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def files(self) -> list[Path]:
        """Files started so far, in order."""
        with self._lock:
            return list(self._files)

    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        return RecorderStats(
            frames_written=self.frames_written,
            audio_frames_written=self.audio_frames_written,
            frames_dropped=self.frames_dropped,
            files=tuple(self.files),
        )

    def segment_path(self, index: int) -> Path:
        """The file name of segment ``index`` (see the class docstring)."""
        if "{index" in self.path.name:
            return self.path.with_name(self.path.name.format(index=index))
        if self.segment_seconds is None:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{index:04d}{self.path.suffix}")

    def start(self) -> None:
        """Start the writer thread (idempotent; ``async with`` calls it).

        Raises:
            MediaError: no file can be created where the recording goes (see
                :func:`check_output_path`).
            InvalidState: the recorder was closed.
        """
        if self._closed:
            raise InvalidState("this recorder is closed; create a new one")
        if self._thread is not None:
            return
        check_output_path(self.segment_path(0), what="recording")
        self._thread = threading.Thread(target=self._run, name="kvs-recorder", daemon=True)
        self._thread.start()

    def write_video(self, frame: av.VideoFrame) -> bool:
        """Queue a video frame. Never blocks.

        Returns:
            ``False`` if the frame was dropped (writer behind, recorder closed or failed, or
            video not recorded).
        """
        return self.video and self._put("video", frame)

    def write_audio(self, frame: av.AudioFrame) -> bool:
        """Queue an audio frame. Never blocks.

        Returns:
            ``False`` if the frame was dropped.
        """
        return self.audio and self._put("audio", frame)

    def add_track(self, track: MediaStreamTrack) -> asyncio.Task[None]:
        """Record an aiortc track until it ends or the recorder closes.

        Returns:
            The reading task (done when the track ends).
        """
        self.start()
        task = asyncio.get_running_loop().create_task(self._read_track(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop reading tracks, write what is queued, finalize the files (idempotent).

        Raises:
            MediaError: the writer failed (for example disk full); the message says why.
        """
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        thread = self._thread
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._finish, thread)
        if self.error is not None:
            raise MediaError(f"recording to {self.path} failed: {self.error}") from self.error

    def _finish(self, thread: threading.Thread) -> None:
        # A blocking put is fine here: the writer drains the queue until it sees _CLOSE.
        while thread.is_alive():
            try:
                self._queue.put(_CLOSE, timeout=0.1)
                break
            except queue.Full:
                continue
        thread.join()

    async def _read_track(self, track: MediaStreamTrack) -> None:
        put = self.write_video if track.kind == "video" else self.write_audio
        try:
            while True:
                put(await track.recv())
        except MediaStreamError:
            pass

    def _put(self, kind: str, frame: Any) -> bool:
        if self._closed or self.error is not None:
            return False
        if self._thread is None:
            try:
                self.start()
            except MediaError as exc:
                # write_* never raise (they run in frame callbacks): close() reports it.
                self.error = exc
                logger.error("%s", exc)
                return False
        try:
            self._queue.put_nowait((kind, frame, time.monotonic()))
            return True
        except queue.Full:
            self.frames_dropped += 1
            return False

    # Writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        segment: _Segment | None = None
        timelines = {"video": _Timeline(), "audio": _Timeline()}
        reformatter = VideoReformatter()
        video_size: tuple[int, int] | None = None
        # aiortc decodes Opus to stereo; mono input is upmixed by the resampler.
        audio_layout = "stereo"
        index = 0
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    break
                kind, frame, arrival = item
                seconds = timelines[kind].seconds(frame, arrival)
                if kind == "video":
                    if video_size is None:
                        video_size = (
                            frame.width - frame.width % 2,
                            frame.height - frame.height % 2,
                        )
                    copy = _own_video_frame(frame, video_size, reformatter)
                    if segment is not None and self._due(segment, seconds):
                        segment.close()
                        segment = None
                        index += 1
                    if segment is None:
                        segment = self._open(index, video_size, audio_layout, seconds)
                    segment.write_video(copy, seconds)
                    self.frames_written += 1
                else:
                    if segment is None and self.video:
                        continue  # a file starts with video
                    if segment is not None and not self.video and self._due(segment, seconds):
                        segment.close()
                        segment = None
                        index += 1
                    if segment is None:
                        segment = self._open(index, None, audio_layout, seconds)
                    if segment.audio is not None:
                        self.audio_frames_written += segment.write_audio(frame, seconds)
        except Exception as exc:
            self.error = exc
            logger.error("recorder writing %s failed: %s", self.path, exc)
            self._drain()
        finally:
            if segment is not None:
                try:
                    segment.close()
                except Exception as exc:
                    self.error = self.error or exc
                    logger.error("recorder could not finalize %s: %s", segment.path, exc)

    def _due(self, segment: _Segment, seconds: float) -> bool:
        return self.segment_seconds is not None and seconds - segment.start >= self.segment_seconds

    def _open(
        self,
        index: int,
        video_size: tuple[int, int] | None,
        audio_layout: str,
        start: float,
    ) -> _Segment:
        path = self.segment_path(index)
        try:
            segment = _Segment(
                path,
                self.container,
                video_size=video_size if self.video else None,
                audio_layout=audio_layout if self.audio else None,
                fps=self._fps,
                gop_seconds=self._gop,
                video_options=self._video_options,
                start=start,
            )
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"cannot create {path}: {exc}") from exc
        with self._lock:
            self._files.append(path)
        logger.info("recording to %s", path)
        return segment

    def _drain(self) -> None:
        # After a failure keep consuming, so close() (waiting to put _CLOSE) cannot block.
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            self.frames_dropped += 1


def check_output_path(path: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Check that a file can be created at ``path``, and leave nothing behind.

    Recordings and snapshots are written long after a command starts (at the first frame, at
    the end): checking first turns a typo in a path into an error before anything connects.
    The check creates and removes a hidden probe file, so it catches read-only and pseudo
    file systems (``/proc``) that permission bits do not reveal.

    Args:
        path: the file to be written.
        what: names the file in the error message (``"recording"``, ``"snapshot"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MediaError: the folder does not exist or refuses new files, or ``path`` is a folder.
    """
    target = Path(path)
    directory = target.parent
    if target.is_dir():
        raise MediaError(f"cannot write the {what} to {target}: it is a folder; give a file name")
    if not directory.is_dir():
        raise MediaError(
            f"cannot write the {what} to {target}: folder {directory} does not exist; "
            "create it or choose another path"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".kvs-peer-probe-", dir=directory)
    except OSError as exc:
        raise MediaError(
            f"cannot write the {what} to {target}: {exc.strerror or exc} in {directory}; "
            "choose a folder you can write to"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return target


def _own_video_frame(
    frame: av.VideoFrame, size: tuple[int, int], reformatter: VideoReformatter
) -> av.VideoFrame:
    """A yuv420p frame of ``size`` that nobody else holds.

    Uses this recorder's own reformatter: ``frame.reformat()`` caches one converter on the
    frame, which crashes when two threads convert the same frame (PyAV 18).
    """
    width, height = size
    if frame.format.name != "yuv420p" or (frame.width, frame.height) != size:
        converted = reformatter.reformat(frame, width=width, height=height, format="yuv420p")
        if converted is not frame:
            return converted
    copy = av.VideoFrame(width, height, "yuv420p")
    for source, target in zip(frame.planes, copy.planes, strict=True):
        _plane(target)[:] = _plane(source)
    return copy


def _plane(plane: Any) -> np.ndarray:
    raw = np.frombuffer(plane, np.uint8)
    return raw[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)[
        :, : plane.width
    ]


def frame_to_ndarray(frame: av.VideoFrame, format: str = "bgr24") -> np.ndarray:
    """Convert a video frame to a numpy array (``bgr24`` suits OpenCV).

    Uses a private converter rather than ``frame.to_ndarray()``, which caches one converter
    on the frame and crashes when another thread converts the same frame at the same time.

    Args:
        frame: the frame; it is not modified.
        format: any PyAV pixel format with an ndarray form (``bgr24``, ``rgb24``, ``gray``,
            ``yuv420p``, ...).

    Returns:
        A new array (height x width x 3 for ``bgr24``/``rgb24``).

    Raises:
        InvalidArgument: unknown or unsupported format.
    """
    try:
        converted = VideoReformatter().reformat(frame, format=format)
        array = converted.to_ndarray()
    except (ValueError, av.FFmpegError) as exc:
        raise InvalidArgument(
            f"cannot convert a {frame.format.name} frame to {format}: {exc}"
        ) from None
    return array.copy() if converted is frame else array


def save_snapshot(frame: av.VideoFrame | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write one frame as a PNG file, atomically (a reader never sees half a file).

    Args:
        frame: an ``av.VideoFrame`` (any format) or a height x width x 3 ``uint8`` BGR array
            (OpenCV convention) or a 2-D gray array.
        path: target file; must end in ``.png``.

    Returns:
        The path written.

    Raises:
        InvalidArgument: ``path`` is not ``.png`` or ``frame`` is not an image.
        MediaError: the file cannot be written.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InvalidArgument(f"snapshots are PNG: {target.name!r} should end in .png")
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or not (
            frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)
        ):
            raise InvalidArgument("a snapshot array must be uint8, HxW (gray) or HxWx3 (BGR)")
        image = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(frame), format="gray" if frame.ndim == 2 else "bgr24"
        )
    elif isinstance(frame, av.VideoFrame):
        image = frame
    else:
        raise InvalidArgument(f"cannot snapshot a {type(frame).__name__}")
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height = image.width, image.height
    encoder.pix_fmt = "gray" if image.format.name == "gray" else "rgb24"
    rgb = VideoReformatter().reformat(image, format=encoder.pix_fmt)
    data = b"".join(bytes(packet) for packet in [*encoder.encode(rgb), *encoder.encode(None)])
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise MediaError(f"cannot write snapshot {target}: {exc.strerror or exc}") from None
    return target
