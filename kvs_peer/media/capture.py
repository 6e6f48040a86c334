"""Thread-backed sources: PyAV (files, v4l2 devices, FFmpeg URLs) and OpenCV cameras.

Each track decodes or captures in one worker thread, started by its first ``recv()`` and
joined by ``stop()`` (threads are daemons, so a stuck device never delays exit). Frames are
converted to yuv420p in that thread, on frames nobody else holds. Live sources keep only the
newest frames, so a consumer that stops reading does not build a backlog; files block instead
(nothing is decoded for nobody) and are paced by their own timestamps.

Build them with :func:`kvs_peer.media.sources.open_video_source` /
:func:`~kvs_peer.media.sources.open_audio_source`, which open the input and report errors.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamError, MediaStreamTrack

from ..errors import MediaError
from .redact import redact_urls
from .timing import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    ThreadPacer,
)

__all__ = ["CameraTrack", "FileAudioTrack", "PyAVVideoTrack"]

logger = logging.getLogger(__name__)

# Seconds stop() waits for a worker thread.
_JOIN_TIMEOUT = 1.0


_END = object()


class _Handoff:
    """Frames from one worker thread to the event loop.

    Live producers drop the oldest frame when full; file producers wait for room, so a file
    is not decoded ahead of its consumer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int, *, block: bool) -> None:
        self._loop = loop
        self._maxlen = maxlen
        self._block = block
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event, *, keyframe: bool = True) -> None:
        """Hand ``item`` over (``_END`` always goes through); ``keyframe`` is for subclasses."""
        with self._cond:
            if item is not _END and not self._admit(stop, keyframe):
                return
            self._items.append(item)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            pass  # the loop is closed; nobody is waiting any more

    def _admit(self, stop: threading.Event, keyframe: bool) -> bool:
        """Make room for one item (called with the lock held); False drops the item."""
        if self._block:
            while len(self._items) >= self._maxlen and not stop.is_set():
                self._cond.wait(0.1)
        elif len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    async def get(self) -> Any:
        while True:
            # Clear before looking: a put() after the look schedules a set() we will see.
            self._ready.clear()
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
            await self._ready.wait()


class _ThreadedTrack(MediaStreamTrack):
    """A track fed by a worker thread that runs :meth:`_produce`."""

    def __init__(self, *, description: str, live: bool, buffer: int = 2) -> None:
        super().__init__()
        self.description = description
        self.live = live
        self.error: BaseException | None = None
        self._buffer = buffer
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._handoff: _Handoff | None = None

    @property
    def frames_dropped(self) -> int:
        """Frames a live source threw away because nobody read them in time."""
        return self._handoff.dropped if self._handoff else 0

    @abc.abstractmethod
    def _produce(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        """Read frames until ``stop`` is set, passing each to ``emit``; runs on the worker."""

    def _release(self) -> None:
        """Close the underlying container or device; runs on the worker thread."""

    def _run(self) -> None:
        assert self._handoff is not None
        handoff = self._handoff
        try:
            self._produce(lambda item: handoff.put(item, self._stop_event), self._stop_event)
        except Exception as exc:
            if not self._stop_event.is_set():
                self.error = exc
                logger.error("%s failed: %s", self.description, redact_urls(str(exc)))
        finally:
            try:
                self._release()
            except Exception as exc:
                logger.debug("%s: error while closing: %s", self.description, redact_urls(str(exc)))
            handoff.put(_END, self._stop_event)

    async def recv(self) -> Any:
        """Return the next frame.

        Raises:
            MediaStreamError: the track was stopped, or the source ended or failed (see
                :attr:`error`).
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._thread is None:
            self._handoff = _Handoff(asyncio.get_running_loop(), self._buffer, block=not self.live)
            self._thread = threading.Thread(
                target=self._run, name=f"kvs-source {self.description}", daemon=True
            )
            self._thread.start()
        assert self._handoff is not None
        item = await self._handoff.get()
        if item is _END:
            self.stop()
            raise MediaStreamError
        return item

    def stop(self) -> None:
        """Stop the track and join its worker thread (idempotent)."""
        super().stop()
        self._stop_event.set()
        if self._handoff is not None:
            self._handoff.wake()
        thread = self._thread
        if thread is None:
            # Never started: the container was opened by the factory and is closed here.
            try:
                self._release()
            except Exception as exc:
                logger.debug("%s: error while closing: %s", self.description, redact_urls(str(exc)))
        elif thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning(
                    "%s: worker thread still blocked after %.0f s; it is a daemon and will "
                    "not delay exit",
                    self.description,
                    _JOIN_TIMEOUT,
                )


class PyAVVideoTrack(_ThreadedTrack):
    """Video decoded by PyAV (FFmpeg) from an opened container: files, devices, URLs.

    Use :func:`open_video_source` rather than building one directly.

    Args:
        container: an ``av`` input container with a video stream; the track owns it.
        description: text for logs and errors (never a secret).
        width: output width, or ``None`` for the source's (rounded down to even).
        height: output height, or ``None`` for the source's (rounded down to even).
        live: the source paces itself (device, stream): keep only the newest frames.
        loop: restart a file at its end.
    """

    kind = "video"

    def __init__(
        self,
        container: Any,
        *,
        description: str,
        width: int | None = None,
        height: int | None = None,
        live: bool = False,
        loop: bool = False,
    ) -> None:
        super().__init__(description=description, live=live)
        self._container = container
        stream = container.streams.video[0]
        self.width = _even(width or stream.codec_context.width)
        self.height = _even(height or stream.codec_context.height)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._loop_file = loop and not live
        if self.width < 2 or self.height < 2:
            container.close()
            raise MediaError(f"{description}: the video stream has no usable frame size")

    def _produce(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        pacer = ThreadPacer(stop, paced=not self.live)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        frame_time = 1.0 / (self.fps or 30.0)
        offset = 0.0  # media time of the current pass's first frame, when looping
        while not stop.is_set():
            first_time: float | None = None
            last_time = 0.0
            frames = 0
            for frame in self._container.decode(stream):
                if stop.is_set():
                    return
                media_time = None
                if frame.time is not None:
                    if first_time is None:
                        first_time = frame.time
                    last_time = frame.time - first_time
                    media_time = offset + last_time
                # A frame straight from the decoder: nobody else holds it, so converting
                # it here cannot race (see the package docstring, trap 2).
                out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
                out.pts = pacer.wait(media_time)
                out.time_base = VIDEO_TIME_BASE
                emit(out)
                frames += 1
            if not self._loop_file or frames == 0:
                return
            offset += last_time + frame_time
            self._container.seek(0)

    def _release(self) -> None:
        self._container.close()


class CameraTrack(_ThreadedTrack):
    """A camera read through OpenCV (``cv2.VideoCapture``), by index.

    OpenCV picks the platform backend (V4L2 on Linux, AVFoundation on macOS, Media Foundation
    on Windows), so an index works everywhere. ``/dev/videoN`` paths go through PyAV's v4l2
    input instead (see :func:`open_video_source`). Frames are converted BGR -> yuv420p once,
    with ``cv2.cvtColor``, in the capture thread.

    Args:
        capture: an opened ``cv2.VideoCapture``; the track owns it.
        description: text for logs and errors.
        width: output width, or ``None`` for the camera's.
        height: output height, or ``None`` for the camera's.
    """

    kind = "video"

    def __init__(
        self,
        capture: Any,
        *,
        description: str,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(description=description, live=True)
        self._capture = capture
        self.width = _even(width) if width else None
        self.height = _even(height) if height else None

    def _produce(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        import cv2

        pacer = ThreadPacer(stop, paced=False)
        failures = 0
        while not stop.is_set():
            ok, image = self._capture.read()
            if not ok:
                failures += 1
                if failures > 50:
                    raise MediaError(
                        f"{self.description} stopped delivering frames: check that it is "
                        "still connected and not used by another program"
                    )
                stop.wait(0.05)
                continue
            failures = 0
            height, width = image.shape[:2]
            target = (self.width or _even(width), self.height or _even(height))
            if (width, height) != target:
                image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
            i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = pacer.wait(None)
            frame.time_base = VIDEO_TIME_BASE
            emit(frame)

    def _release(self) -> None:
        self._capture.release()


class FileAudioTrack(_ThreadedTrack):
    """Audio decoded by PyAV from a file or URL, as 20 ms ``s16`` frames at 48 kHz.

    Use :func:`open_audio_source` rather than building one directly.

    Args:
        container: an ``av`` input container with an audio stream; the track owns it.
        description: text for logs and errors.
        live: the source paces itself (stream): keep only the newest frames.
        loop: restart a file at its end.
    """

    kind = "audio"

    def __init__(
        self, container: Any, *, description: str, live: bool = False, loop: bool = False
    ) -> None:
        super().__init__(description=description, live=live, buffer=5)
        self._container = container
        self._loop_file = loop and not live

    def _produce(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        stream = self._container.streams.audio[0]
        layout = "stereo" if stream.codec_context.channels >= 2 else "mono"
        resampler = av.AudioResampler(
            format="s16", layout=layout, rate=AUDIO_SAMPLE_RATE, frame_size=AUDIO_FRAME_SAMPLES
        )
        pacer = ThreadPacer(stop, paced=not self.live)
        samples = 0
        while not stop.is_set():
            decoded = 0
            for frame in self._container.decode(stream):
                frame.pts = None  # the resampler re-times frames from the sample count
                for out in resampler.resample(frame):
                    if stop.is_set():
                        return
                    pacer.wait(samples / AUDIO_SAMPLE_RATE)
                    out.pts = samples
                    out.time_base = AUDIO_TIME_BASE
                    out.sample_rate = AUDIO_SAMPLE_RATE
                    samples += out.samples
                    emit(out)
                decoded += 1
            if not self._loop_file or decoded == 0:
                return
            self._container.seek(0)

    def _release(self) -> None:
        self._container.close()


def _even(value: int) -> int:
    return value - value % 2
