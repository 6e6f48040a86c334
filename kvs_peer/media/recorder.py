"""Sinks for received media: a crash-tolerant recorder, PNG snapshots, numpy conversion.

:class:`Recorder` stores received H.264 and Opus as they arrived (passthrough, see
:mod:`.encoded`), or encodes decoded frames again. It muxes and encodes in its own worker
thread (aiortc's ``MediaRecorder`` encodes on the event loop, stalling everything else for the
length of each encode), keeps a bounded queue (a writer that falls behind drops frames and
counts them instead of growing memory), and writes Matroska with ``flush_packets=1`` and
half-second clusters, so a killed process leaves a file that plays up to about half a second
before the kill (measured in the tests).
"""

from __future__ import annotations

import asyncio
import fractions
import io
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import av
import numpy as np
from aiortc import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from .._tasks import TaskSet
from ..errors import InvalidArgument, InvalidState, MediaError
from .encoded import EncodedFrame, H264Continuity

__all__ = [
    "RECORDING_FORMATS",
    "Recorder",
    "RecorderStats",
    "check_output_path",
    "frame_to_ndarray",
    "save_snapshot",
]

logger = logging.getLogger(__name__)

RECORDING_FORMATS: Mapping[str, str] = MappingProxyType(
    {
        ".mkv": "matroska",
        ".mka": "matroska",
        ".mp4": "mp4",
        ".m4v": "mp4",
        ".mov": "mov",
        ".ts": "mpegts",
    }
)
"""The file suffixes a :class:`Recorder` writes, each with its FFmpeg container (a name
without a suffix is Matroska; ``container=`` writes any other)."""
_AUDIO_CODECS: dict[str, Literal["libopus", "aac"]] = {
    "matroska": "libopus",
    "mp4": "aac",
    "mov": "aac",
    "mpegts": "aac",
}
# Samples per encoder input frame: Opus takes 20 ms frames, AAC exactly 1024 samples.
_AUDIO_FRAME_SIZES = {"libopus": 960, "aac": 1024}
_MS = fractions.Fraction(1, 1000)
_RTP_VIDEO = fractions.Fraction(1, 90_000)
_MODES = ("auto", "passthrough", "transcode")
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
        frames_skipped: received H.264 frames not stored as they arrived because no decoder
            could use them: before the first IDR, or after a lost frame until the next IDR.
        video_passthrough: whether video is stored as received (True), re-encoded (False),
            or not decided yet (None: no video frame so far).
    """

    frames_written: int
    audio_frames_written: int
    frames_dropped: int
    files: tuple[Path, ...]
    frames_skipped: int = 0
    video_passthrough: bool | None = None


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
    """One output file: container, streams, encoders. Used only by the writer thread.

    With ``video_template`` (the IDR access unit the file starts with) video is stored as
    received: the stream's parameters and SPS/PPS extradata come from probing that access
    unit, and the packets keep their SPS/PPS in band. Received Opus packets go into the Opus
    stream as they are (:meth:`write_audio_packet`).
    """

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
        video_template: bytes | None = None,
    ) -> None:
        self.path = path
        self.start = start
        self.video_copy = video_template is not None
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
        self._last_video_pts = -1
        self._last_audio_pts = -1
        if video_template is not None:
            with av.open(io.BytesIO(video_template), format="h264") as probe:
                self.video = self.container.add_stream_from_template(probe.streams.video[0])
            self.video.time_base = _RTP_VIDEO
        elif video_size is not None:
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
            audio = self.container.add_stream(codec, rate=_AUDIO_RATE)
            audio.layout = audio_layout
            audio.codec_context.time_base = fractions.Fraction(1, _AUDIO_RATE)
            self.audio = audio
            formats = audio.codec_context.codec.audio_formats
            assert formats  # every audio encoder lists the sample formats it takes
            self._resampler = av.AudioResampler(
                format=formats[0].name,
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

    def write_video_packet(self, data: bytes, keyframe: bool, seconds: float) -> None:
        # WebRTC H.264 has no B-frames: decode order is presentation order, dts = pts.
        pts = max(round((seconds - self.start) * 90_000), self._last_video_pts + 1)
        self._last_video_pts = pts
        packet = av.Packet(data)
        packet.stream = self.video
        packet.pts = packet.dts = pts
        packet.time_base = _RTP_VIDEO
        packet.is_keyframe = keyframe
        self.container.mux(packet)

    def write_audio_packet(self, data: bytes, seconds: float) -> None:
        pts = max(round((seconds - self.start) * _AUDIO_RATE), self._last_audio_pts + 1)
        self._last_audio_pts = pts
        packet = av.Packet(data)
        packet.stream = self.audio
        packet.pts = packet.dts = pts
        packet.time_base = fractions.Fraction(1, _AUDIO_RATE)
        self.container.mux(packet)

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
            if self.video is not None and not self.video_copy:
                self.container.mux(self.video.encode(None))
            if self.audio is not None:
                self.container.mux(self.audio.encode(None))
        finally:
            self.container.close()


class Recorder:
    """Records received video (and optionally audio) to files, off the event loop.

    Two ways in. **Passthrough** (:meth:`write_encoded`; a :class:`~kvs_peer.viewer.Viewer`
    uses it by itself): H.264 and Opus are stored as they arrived, nothing is decoded or
    encoded, each file starts at an IDR and a lost frame skips to the next IDR; keyframes are
    asked for through the ``request_keyframe`` callback. **Transcode** (:meth:`add_track`, an
    aiortc remote track, or :meth:`write_video` / :meth:`write_audio`): decoded frames are
    encoded again (libx264); frames are only read, never modified (the writer thread encodes
    a copy). ``mode="auto"`` takes received frames as they are when it can
    (:meth:`accepts_encoded`: H.264 video; Opus audio in Matroska) and decoded frames
    otherwise (VP8, PCMU, AAC containers).

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

    Transcoded video is H.264 (libx264, yuv420p) at the size of the first frame; later frames
    of another size are scaled to it. Audio (``audio=True``) is Opus in Matroska, AAC
    otherwise. With both, a file starts at the first video frame (passthrough: the first IDR)
    and earlier audio is dropped. Passthrough segments rotate at the first IDR after
    ``segment_seconds`` (a keyframe is requested then).

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
        mode: ``"auto"`` (passthrough where the codec allows), ``"passthrough"`` (received
            video must be H.264) or ``"transcode"`` (always decode and encode again).

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
        mode: str = "auto",
    ) -> None:
        if mode not in _MODES:
            raise InvalidArgument(
                f"unknown recording mode {mode!r}: use auto, passthrough or transcode"
            )
        self.mode = mode
        self.path = Path(path)
        if container is None:
            suffix = self.path.suffix.lower()
            if not suffix:
                container = "matroska"
            elif suffix in RECORDING_FORMATS:
                container = RECORDING_FORMATS[suffix]
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
        self._tasks = TaskSet()
        self._closed = False
        self._lock = threading.Lock()
        self._files: list[Path] = []
        self.error: BaseException | None = None
        self.frames_written = 0
        self.audio_frames_written = 0
        self.frames_dropped = 0
        self.frames_skipped = 0
        self.video_passthrough: bool | None = None
        # Event loop side of passthrough: where the H.264 stream can be stored from.
        self._continuity = H264Continuity()
        # Set by the writer thread when a segment is due and waits for an IDR.
        self._keyframe_wanted = False

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
            frames_skipped=self.frames_skipped,
            video_passthrough=self.video_passthrough,
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
        if self.video_passthrough is None:
            self.video_passthrough = False
        return self.video and self._put("video", frame)

    def write_audio(self, frame: av.AudioFrame) -> bool:
        """Queue an audio frame. Never blocks.

        Returns:
            ``False`` if the frame was dropped.
        """
        return self.audio and self._put("audio", frame)

    def accepts_encoded(self, kind: str, codec: str) -> bool:
        """Whether received ``kind`` frames of ``codec`` go to :meth:`write_encoded` (stored
        as they are) rather than being decoded for :meth:`write_video` / :meth:`write_audio`.

        Args:
            kind: ``"video"`` or ``"audio"``.
            codec: the codec name as negotiated (``"H264"``, ``"VP8"``, ``"opus"``...).
        """
        codec = codec.lower()
        if self.mode == "transcode" or not (self.video if kind == "video" else self.audio):
            return False
        if kind == "video":
            # Explicit passthrough takes any video codec, to refuse it with a clear error.
            return codec == "h264" or self.mode == "passthrough"
        return codec == "opus" and _AUDIO_CODECS.get(self.container) == "libopus"

    def write_encoded(
        self, frame: EncodedFrame, request_keyframe: Callable[[], object] | None = None
    ) -> bool:
        """Queue a received frame to be stored as it is. Never blocks; call on the event loop.

        Video waits for an IDR (at the start, after a lost frame, for a due segment) and calls
        ``request_keyframe`` meanwhile.

        Args:
            frame: an H.264 access unit or an Opus packet (see :meth:`accepts_encoded`).
            request_keyframe: asks the sender for an IDR (the viewer sends a PLI).

        Returns:
            ``False`` if the frame was not stored (skipped, dropped, or the recorder failed).
        """
        if frame.kind == "audio":
            return self.audio and self._put("audio-copy", frame)
        if not self.video:
            return False
        if frame.codec != "h264":
            if self.error is None:
                self.error = MediaError(
                    f"the sender's video is {frame.codec.upper()}, which a passthrough "
                    "recording cannot store: record with mode auto or transcode"
                )
                logger.error("%s", self.error)
            return False
        self.video_passthrough = True
        losses = self._continuity.losses
        data, idr = self._continuity.push(frame.data)
        if self._continuity.losses > losses:
            logger.info("recording %s: a video frame was lost, waiting for a keyframe", self.path)
        if data is None or (self._keyframe_wanted and not idr):
            if request_keyframe is not None:
                request_keyframe()
            if data is None:
                self.frames_skipped += 1
                return False
        if idr:
            self._keyframe_wanted = False
        copy = EncodedFrame(
            frame.kind, frame.codec, data, frame.timestamp, frame.clock_rate, frame.arrival
        )
        if self._put("video-copy", (copy, idr)):
            return True
        # A dropped frame breaks the chain of references: what follows waits for an IDR.
        self._continuity.resync()
        if request_keyframe is not None:
            request_keyframe()
        return False

    def add_track(self, track: MediaStreamTrack) -> asyncio.Task[None]:
        """Record an aiortc track until it ends or the recorder closes.

        Returns:
            The reading task (done when the track ends).
        """
        self.start()
        return self._tasks.spawn(self._read_track(track), "kvs-recorder-track")

    async def close(self) -> None:
        """Stop reading tracks, write what is queued, finalize the files (idempotent).

        Raises:
            MediaError: the writer failed (for example disk full); the message says why.
        """
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel()
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
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.write_video(frame)
                elif isinstance(frame, av.AudioFrame):
                    self.write_audio(frame)
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
        arrival = frame.arrival if isinstance(frame, EncodedFrame) else time.monotonic()
        if kind == "video-copy":
            arrival = frame[0].arrival
        try:
            self._queue.put_nowait((kind, frame, arrival))
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
                if kind == "video-copy":
                    frame, idr = frame
                seconds = timelines[kind.split("-")[0]].seconds(frame, arrival)
                if kind == "video-copy":
                    if segment is not None and (
                        not segment.video_copy or (idr and self._due(segment, seconds))
                    ):
                        segment.close()
                        segment = None
                        index += 1
                    elif segment is not None and self._due(segment, seconds):
                        self._keyframe_wanted = True
                    if segment is None:
                        if not idr:
                            self.frames_skipped += 1
                            continue
                        segment = self._open(index, None, audio_layout, seconds, frame.data)
                    segment.write_video_packet(frame.data, idr, seconds)
                    self.frames_written += 1
                elif kind == "video":
                    if video_size is None:
                        video_size = (
                            frame.width - frame.width % 2,
                            frame.height - frame.height % 2,
                        )
                    copy = _own_video_frame(frame, video_size, reformatter)
                    if segment is not None and (segment.video_copy or self._due(segment, seconds)):
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
                    if segment.audio is None:
                        continue
                    if kind == "audio-copy":
                        segment.write_audio_packet(frame.data, seconds)
                        self.audio_frames_written += 1
                    else:
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
        video_template: bytes | None = None,
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
                video_template=video_template if self.video else None,
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
