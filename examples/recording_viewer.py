"""Join a channel as a headless viewer and record to crash-safe Matroska segments.

Usage::

    python examples/recording_viewer.py --channel my-camera --out recordings/cam.mkv \\
        --segment 600

A new file starts every ``--segment`` seconds (``recordings/cam-0000.mkv``,
``recordings/cam-0001.mkv``, ...); the folder is created if it does not exist.
Matroska is written with packet flushing, so a power cut loses at most the last second or
two; the viewer keeps one client id and reconnects (new offer) when the connection drops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.errors import KvsPeerError
from kvs_peer.media import Recorder
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel", required=True)
    parser.add_argument("--out", default="recording.mkv")
    parser.add_argument("--segment", type=float, default=600.0, help="seconds per file")
    parser.add_argument("--region")
    parser.add_argument("--endpoint-url", default=os.environ.get("KVS_PEER_ENDPOINT_URL"))
    parser.add_argument("--duration", type=float, help="stop after S seconds")
    args = parser.parse_args()
    # Libraries' INFO lines (aioice logs every ICE check) would bury kvs-peer's own.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kvs_peer").setLevel(logging.INFO)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as resolver:
        access = AwsAccess(resolver, args.channel, Role.VIEWER, client_id=new_client_id("rec"))
        recorder = Recorder(args.out, segment_seconds=args.segment)
        async with Viewer(access, recorder=recorder) as viewer:
            try:
                # Returns early only if the recording fails (disk full): it raises MediaError.
                await asyncio.wait_for(viewer.wait_closed(), args.duration)
            except TimeoutError:
                pass
        stats = recorder.stats()
        print(
            f"received {viewer.stats.frames_received} frames, wrote {stats.frames_written} "
            f"(dropped {stats.frames_dropped}) to {', '.join(map(str, stats.files))}"
        )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except KvsPeerError as exc:  # its message says what to do: no traceback needed
        sys.exit(f"error: {exc}")
