"""Media clocks and real-time pacing shared by the sources.

Video timestamps use the 90 kHz RTP clock, audio 48 kHz. A paced source that falls behind
its schedule (slow consumer, slow decode, a pause) restarts the schedule at "now" instead of
bursting out the frames it missed.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "AUDIO_SAMPLE_RATE",
    "AUDIO_TIME_BASE",
    "VIDEO_CLOCK_RATE",
    "VIDEO_TIME_BASE",
    "Pacer",
    "ThreadPacer",
]

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_SAMPLE_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms, what aiortc's Opus encoder packs per RTP packet

# Seconds behind schedule after which a paced source skips ahead rather than bursting.
MAX_LATE = 0.25


class Pacer:
    """Real-time schedule of numbered slots for pull-driven (event loop) sources.

    Args:
        rate: slots per second (frames per second for video, 50 for 20 ms audio).
    """

    def __init__(self, rate: float) -> None:
        self._period = 1.0 / rate
        self._start: float | None = None
        self._slot = 0

    async def next_slot(self) -> int:
        """Wait until the next slot is due and return its number (the first is 0, at once)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return 0
        self._slot += 1
        due = self._start + self._slot * self._period
        if now - due > MAX_LATE:
            # Nobody read for a while: skip the missed slots rather than burst them out.
            self._slot = int((now - self._start) / self._period)
        elif due > now:
            await asyncio.sleep(due - now)
        return self._slot


class ThreadPacer:
    """Maps media time to wall-clock deadlines in a worker thread; pts follow the deadlines.

    Args:
        stop: set to interrupt a wait.
        paced: ``False`` for live inputs that pace themselves: never wait, stamp "now".
    """

    def __init__(self, stop: threading.Event, *, paced: bool) -> None:
        self._stop = stop
        self._paced = paced
        self._anchor: float | None = None
        self._origin: float | None = None
        self._last_pts = -1

    def wait(self, media_time: float | None) -> int:
        """Sleep until ``media_time`` is due; return the 90 kHz pts of that moment."""
        now = time.monotonic()
        if not self._paced or media_time is None:
            due = now
        else:
            if self._anchor is None:
                self._anchor = now - media_time
            due = self._anchor + media_time
            if now - due > MAX_LATE or due - now > 1.0:
                # Late (slow decode, blocked consumer) or a jump in the file's timestamps.
                self._anchor = now - media_time
                due = now
            elif due > now:
                self._stop.wait(due - now)
        if self._origin is None:
            self._origin = due
        pts = round((due - self._origin) * VIDEO_CLOCK_RATE)
        if pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts
