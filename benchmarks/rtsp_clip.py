"""An RTSP camera that serves a pre-encoded H.264 clip in real time, looped.

::

    .venv/bin/python -m benchmarks.rtsp_clip clip.h264 --fps 30

Prints ``rtsp://127.0.0.1:PORT/live`` on stdout once it listens and serves until killed. It is
the test suite's RTSP server (``tests/media/rtsp_server.py``: the same RTSP exchange, RTP
interleaved over TCP) with the live libx264 encoder replaced by the clip's access units, so
the benchmark's RTSP source carries the very bytes its stdin source does and no encoder runs
in the camera.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av

from kvs_peer.media.h264 import AccessUnitAssembler, split_annexb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "media"))
from rtsp_server import RtspServer  # a test helper, not in a package

_TIME_BASE = fractions.Fraction(1, 90_000)


def access_units(data: bytes) -> list[bytes]:
    """The clip's access units, each as Annex-B bytes (SPS/PPS stay with their IDR)."""
    assembler = AccessUnitAssembler()
    units = assembler.push_all(split_annexb(data))
    last = assembler.flush()
    return [u.annexb() for u in [*units, *([last] if last is not None else [])]]


class ClipRtspServer(RtspServer):
    """:class:`RtspServer` sending ``units`` at ``fps`` instead of encoding a test pattern."""

    def __init__(self, units: list[bytes], fps: float, port: int = 0) -> None:
        super().__init__(fps=round(fps), port=port)
        self.units = units
        self.rate = fps

    async def packets(self) -> AsyncIterator[av.Packet]:
        start = time.monotonic()
        index = 0
        while True:
            delay = start + index / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(self.units[index % len(self.units)])
            packet.pts = round(index * 90_000 / self.rate)
            packet.time_base = _TIME_BASE
            yield packet
            index += 1


async def serve(units: list[bytes], fps: float) -> None:
    async with ClipRtspServer(units, fps) as server:
        print(server.url, flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip", type=Path, help="an H.264 Annex-B file")
    parser.add_argument("--fps", type=float, default=30)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(access_units(args.clip.read_bytes()), args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
