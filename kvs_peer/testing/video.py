"""Check received video: stamped frame counters advance, no long freezes, right size.

Frames from :class:`kvs_peer.media.sources.TestPatternTrack` carry a counter and a capture
time in their pixels (:mod:`kvs_peer.media.stamp`). A :class:`VideoCheck` fed with every
received frame tells whether the video really flows and how late it arrives.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VideoCheck"]


@dataclass
class VideoCheck:
    """Accumulates facts about a stream of received video frames.

    Call :meth:`add` for each frame (cheap: reads a band of luma pixels), then
    :meth:`summary` or :meth:`assert_ok`.
    """

    frames: int = 0
    stamped: int = 0
    """Frames whose stamp could be read."""
    first_counter: int | None = None
    last_counter: int | None = None
    backwards: int = 0
    """Stamped frames whose counter did not increase."""
    skipped: int = 0
    """Counter values never seen between two received frames (lost or dropped frames)."""
    latencies_ms: list[float] = field(default_factory=list)
    longest_gap_s: float = 0.0
    """Longest time between two received frames (a freeze)."""
    width: int | None = None
    height: int | None = None
    _last_arrival: float | None = None

    def add(self, frame: Any, *, now: float | None = None) -> None:
        """Record one received ``av.VideoFrame``; ``now`` is ``time.time()`` at arrival."""
        from kvs_peer.media.stamp import read_stamp

        arrival = time.time() if now is None else now
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        if self._last_arrival is not None:
            self.longest_gap_s = max(self.longest_gap_s, arrival - self._last_arrival)
        self._last_arrival = arrival
        stamp = read_stamp(frame)
        if stamp is None:
            return
        self.stamped += 1
        if self.first_counter is None:
            self.first_counter = stamp.counter
        elif self.last_counter is not None:
            if stamp.counter <= self.last_counter:
                self.backwards += 1
            else:
                self.skipped += stamp.counter - self.last_counter - 1
        self.last_counter = stamp.counter
        self.latencies_ms.append(arrival * 1000 - stamp.timestamp_ms)

    @property
    def counters_advanced(self) -> int:
        """How far the counter moved from the first to the last stamped frame."""
        if self.first_counter is None or self.last_counter is None:
            return 0
        return self.last_counter - self.first_counter

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts (latency is capture-to-arrival, same-machine clocks)."""
        lat = sorted(self.latencies_ms)
        return {
            "frames": self.frames,
            "stampedFrames": self.stamped,
            "firstCounter": self.first_counter,
            "lastCounter": self.last_counter,
            "countersAdvanced": self.counters_advanced,
            "countersBackwards": self.backwards,
            "countersSkipped": self.skipped,
            "latencyMedianMs": round(statistics.median(lat), 1) if lat else None,
            "latencyP95Ms": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
            "longestGapMs": round(self.longest_gap_s * 1000, 1),
            "width": self.width,
            "height": self.height,
        }

    def assert_ok(
        self,
        *,
        min_frames: int = 1,
        max_gap_s: float | None = 2.0,
        size: tuple[int, int] | None = None,
        min_stamped_ratio: float = 0.9,
    ) -> None:
        """Raise AssertionError (with the facts) unless the video flowed as expected.

        Args:
            min_frames: frames that must have arrived.
            max_gap_s: longest allowed freeze between frames; None skips the check.
            size: expected ``(width, height)``.
            min_stamped_ratio: share of frames whose stamp must be readable.
        """
        facts = self.summary()
        problems = []
        if self.frames < min_frames:
            problems.append(f"only {self.frames} frames, expected at least {min_frames}")
        if self.frames and self.stamped < min_stamped_ratio * self.frames:
            problems.append(f"only {self.stamped}/{self.frames} frames had a readable stamp")
        if self.backwards:
            problems.append(f"frame counter went backwards {self.backwards} times")
        if self.frames >= 2 and self.counters_advanced <= 0:
            problems.append("frame counter never advanced (frozen picture)")
        if max_gap_s is not None and self.longest_gap_s > max_gap_s:
            problems.append(f"video froze for {self.longest_gap_s:.2f} s (max {max_gap_s} s)")
        if size is not None and (self.width, self.height) != size:
            problems.append(f"frames are {self.width}x{self.height}, expected {size[0]}x{size[1]}")
        if problems:
            raise AssertionError("; ".join(problems) + f" -- {facts}")
