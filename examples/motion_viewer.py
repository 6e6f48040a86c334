"""Analyse received frames: OpenCV motion detection on a channel's live video.

Usage::

    python examples/motion_viewer.py --channel my-camera --snapshots motion/

One line is printed per motion event, not per frame: motion after ``--cooldown`` seconds
(default 5) without a reported event starts a new one, and with ``--snapshots`` its first
frame is saved as a PNG.

Frames are pulled from ``viewer.frames()``, which keeps only the newest few: if the analysis
is slower than the stream, old frames are skipped instead of piling up. OpenCV runs in a
worker thread so the event loop (and the WebRTC connection) never waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.errors import KvsPeerError
from kvs_peer.media import frame_to_ndarray, save_snapshot
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id


class MotionDetector:
    """Background subtraction; reports the share of pixels that changed."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold
        self._background = cv2.createBackgroundSubtractorMOG2(history=100, detectShadows=False)

    def __call__(self, bgr: np.ndarray) -> float:
        small = cv2.resize(bgr, (320, 240))
        mask = self._background.apply(small)
        return float(np.count_nonzero(mask)) / mask.size


def save_frame(bgr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_snapshot(bgr, path)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel", required=True)
    parser.add_argument("--threshold", type=float, default=0.01, help="changed-pixel share")
    parser.add_argument("--snapshots", help="folder for PNGs of frames with motion")
    parser.add_argument(
        "--cooldown",
        type=float,
        default=5.0,
        help="seconds after a motion event before motion counts as a new one (default 5): "
        "motion lasts many frames, and one line and one picture of it are enough",
    )
    parser.add_argument("--region")
    parser.add_argument("--endpoint-url", default=os.environ.get("KVS_PEER_ENDPOINT_URL"))
    parser.add_argument("--duration", type=float, help="stop after S seconds")
    args = parser.parse_args()
    # Libraries' INFO lines (aioice logs every ICE check) would bury kvs-peer's own.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kvs_peer").setLevel(logging.INFO)
    detector = MotionDetector(args.threshold)
    events = 0
    motion_frames = 0
    last_event = -math.inf

    def analyse_frame(frame: object) -> tuple[np.ndarray, float]:
        bgr = frame_to_ndarray(frame)
        return bgr, detector(bgr)

    async def analyse(viewer: Viewer) -> None:
        nonlocal events, motion_frames, last_event
        async for frame in viewer.frames():
            # Conversion and analysis both run in a worker thread (frame_to_ndarray is
            # thread-safe), so the event loop only hands frames over.
            bgr, changed = await asyncio.to_thread(analyse_frame, frame)
            if changed < args.threshold:
                continue
            motion_frames += 1
            now = time.monotonic()
            if now - last_event < args.cooldown:
                continue
            last_event = now
            events += 1
            print(f"motion: {changed:.1%} of the picture changed", flush=True)
            if args.snapshots:
                path = Path(args.snapshots) / f"motion-{events:05d}.png"
                await asyncio.to_thread(save_frame, bgr, path)

    async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as resolver:
        access = AwsAccess(resolver, args.channel, Role.VIEWER, client_id=new_client_id("motion"))
        async with Viewer(access) as viewer:
            try:
                await asyncio.wait_for(analyse(viewer), args.duration)
            except TimeoutError:
                pass
    print(f"{events} motion events ({motion_frames} frames with motion)")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except KvsPeerError as exc:  # its message says what to do: no traceback needed
        sys.exit(f"error: {exc}")
