"""Stream a camera, a media file or a test pattern to a KVS signaling channel as master.

Usage (AWS credentials and region from the default chain, or the variables that
``kvs-peer local`` prints for the local emulator)::

    python examples/camera_master.py --channel my-camera --source testsrc

``--source`` takes ``testsrc`` (a moving test pattern), a V4L2 device (``/dev/video0``, a USB
camera), an OpenCV camera index (``0``), a media file (``--loop`` plays it over and over) or
an ``rtsp://`` URL. A camera that drops is opened again while viewers stay connected.

Without AWS credentials on the device, through a signer service::

    KVS_PEER_SIGNER_TOKEN=... python examples/camera_master.py --channel my-camera \\
        --signer https://signer.example.com --source /dev/video0

This example decodes every source and encodes the picture once with libx264, however many
viewers join (``--preset ultrafast`` takes the least CPU). On a Raspberry Pi that encoding is
the cost to avoid: ``kvs-peer master`` sends a camera's own H.264 (``rpicam-vid`` on stdin, a
UVC camera's H.264) to viewers without encoding it again; see docs/raspberry-pi.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from kvs_peer.access import AwsAccess, SignerAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.cli import bitrate
from kvs_peer.errors import KvsPeerError
from kvs_peer.master import Master
from kvs_peer.media import open_audio_source, open_video_source
from kvs_peer.media.presets import X264_PRESETS
from kvs_peer.media.sources import describe_url
from kvs_peer.protocol import Role


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel", required=True)
    parser.add_argument("--source", default="/dev/video0")
    parser.add_argument("--audio", default="none", help="tone, a file/URL, or none")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument(
        "--bitrate", type=bitrate, default=800_000, help="bit/s: 800000, 800k or 1.5M"
    )
    parser.add_argument("--loop", action="store_true", help="play a media file over and over")
    parser.add_argument(
        "--preset",
        default="veryfast",
        choices=X264_PRESETS,
        help="x264 speed preset; ultrafast takes the least CPU (Raspberry Pi)",
    )
    parser.add_argument("--region", help="AWS region (default from the environment)")
    parser.add_argument("--endpoint-url", default=os.environ.get("KVS_PEER_ENDPOINT_URL"))
    parser.add_argument("--signer", help="signer service URL (no AWS credentials needed)")
    parser.add_argument("--duration", type=float, help="stop after S seconds")
    args = parser.parse_args()
    # Libraries' INFO lines (aioice logs every ICE check) would bury kvs-peer's own.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kvs_peer").setLevel(logging.INFO)
    # OpenCV prints "[ WARN ]" lines of its own (camera probes) past logging; it reads this
    # when cv2 loads, which opening a camera does. A value the user set wins.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

    # Opening can block for seconds (an RTSP camera): keep it off the event loop.
    video = await asyncio.to_thread(
        open_video_source,
        args.source,
        width=args.width,
        height=args.height,
        fps=args.fps,
        loop=args.loop,
        reopen=True,  # a camera that reboots or is replugged comes back on its own
    )
    audio = await asyncio.to_thread(open_audio_source, args.audio, loop=args.loop)
    if args.signer:
        token = os.environ.get("KVS_PEER_SIGNER_TOKEN")
        access = SignerAccess(args.signer, args.channel, Role.MASTER, token=token)
        await run(access, video, audio, args)
    else:
        async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as r:
            await run(AwsAccess(r, args.channel, Role.MASTER, create=True), video, audio, args)


async def run(access, video, audio, args: argparse.Namespace) -> None:
    async with Master(
        access, video=video, audio=audio, bitrate=args.bitrate, preset=args.preset
    ) as master:
        # describe_url hides a camera password (rtsp://user:secret@...) from the output
        print(f"streaming {describe_url(args.source)} on {args.channel!r}", flush=True)
        try:
            await asyncio.wait_for(master.wait_closed(), args.duration)
        except TimeoutError:
            pass


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except KvsPeerError as exc:  # its message says what to do: no traceback needed
        sys.exit(f"error: {exc}")
