"""Benchmark worker processes, driven by :mod:`benchmarks.master_cpu` over stdin/stdout.

Three roles, each in its own process so the CPU of one is measured alone:

``master``   kvs-peer's :class:`~kvs_peer.master.Master` (``--impl ours``) or the plain aiortc
             master of :mod:`benchmarks.baseline` (``--impl baseline``) streaming a 640x480@30
             test pattern on a channel of the local emulator.
``viewers``  any number of kvs-peer :class:`~kvs_peer.viewer.Viewer` receivers (plain aiortc
             receivers that decode every frame), the same for both masters.
``encode``   libx264 cost per frame with kvs-peer's encoder settings and aiortc's defaults.

Each reads one JSON command per line and answers with one JSON line (see ``_master`` and
``_viewers`` for the commands). Not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_REGION, DEFAULT_SECRET_ACCESS_KEY
from kvs_peer.protocol import Role

from .measure import CpuSample, JsonLines, cpu_window

logger = logging.getLogger("benchmarks.worker")


def _resolver(endpoint: str) -> ChannelResolver:
    # The emulator's default credentials, never the environment's: nothing here may reach AWS.
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name=DEFAULT_REGION,
    )
    return ChannelResolver(region=DEFAULT_REGION, endpoint_url=endpoint, session=session)


def _rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- master ---------------------------------------------------------------------------------


def _ours_details(master: Any) -> dict[str, Any]:
    encoder = master.encoder
    out: dict[str, Any] = {}
    if encoder is not None:
        for name in (
            "frames_encoded",
            "keyframes",
            "forced_keyframes",
            "encoder_contexts",
            "encode_seconds",
        ):
            out[name] = getattr(encoder, name)
    drops = resyncs = 0
    for session in master.viewers.values():
        for track in session.tracks:
            drops += getattr(track, "packets_dropped", 0)  # audio tracks have none
            resyncs += getattr(track, "resyncs", 0)
    out["packets_dropped"] = drops
    out["resyncs"] = resyncs
    return out


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v - before.get(k, 0), 4) for k, v in after.items()}


async def _master(args: argparse.Namespace, io: JsonLines) -> None:
    from kvs_peer.master import Master
    from kvs_peer.media import TestPatternTrack, ToneTrack

    from .baseline import AiortcDefaultMaster

    source = TestPatternTrack(args.width, args.height, args.fps)
    audio = ToneTrack() if args.audio else None
    async with _resolver(args.endpoint) as resolver:
        access = AwsAccess(resolver, args.channel, Role.MASTER)
        master: Any
        if args.impl == "ours":
            master = Master(access, video=source, audio=audio, loopback_candidates=args.loopback)
        else:
            master = AiortcDefaultMaster(
                access, source, audio=audio, codec=args.codec, loopback_candidates=args.loopback
            )

        def status() -> dict[str, Any]:
            if args.impl == "ours":
                sessions = master.viewers
                connected = sum(1 for s in sessions.values() if s.connected_at is not None)
                return {"sessions": len(sessions), "connected": connected}
            return {"sessions": len(master.sessions), "connected": master.connected}

        async with master:
            io.send(event="ready", pid=os.getpid())
            async for command in io.commands():
                match command.get("cmd"):
                    case "status":
                        io.send(**status())
                    case "measure":
                        details = _ours_details(master) if args.impl == "ours" else {}
                        profile = command.get("profile")
                        # cProfile sees only the thread it runs on: here the event loop, where
                        # per-viewer work (packetizing, SRTP, sending) happens.
                        profiler = cProfile.Profile() if profile else None
                        start = CpuSample.now()
                        if profiler is not None:
                            profiler.enable()
                        await asyncio.sleep(float(command["seconds"]))
                        if profiler is not None:
                            profiler.disable()
                        end = CpuSample.now()
                        if profiler is not None:
                            profiler.dump_stats(profile)
                        after = _ours_details(master) if args.impl == "ours" else {}
                        io.send(
                            t0=start.wall,
                            t1=end.wall,
                            cpu=cpu_window(start, end),
                            encoder=_delta(details, after),
                            rssMiB=_rss_mib(),
                            peakRssMiB=_peak_rss_mib(),
                            **status(),
                        )
                    case "quit":
                        break
                    case other:
                        io.send(error=f"unknown command {other!r}")
    io.send(event="bye")


# -- viewers --------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One viewer and what it received."""

    viewer: Any = None
    frames: int = 0
    window_frames: int = 0
    check: Any = None
    started: float = 0.0
    timings: dict[str, Any] = field(default_factory=dict)

    def on_frame(self, frame: Any) -> None:
        self.frames += 1
        if self.check is not None:
            self.window_frames += 1
            self.check.add(frame)


async def _viewers(args: argparse.Namespace, io: JsonLines) -> None:
    from kvs_peer.testing.video import VideoCheck
    from kvs_peer.viewer import Viewer, new_client_id

    slots: dict[str, _Slot] = {}

    async def join(resolver: ChannelResolver, timeout: float) -> dict[str, Any]:
        client_id = new_client_id("bench")
        slot = _Slot()
        access = AwsAccess(resolver, args.channel, Role.VIEWER, client_id=client_id)
        slot.viewer = Viewer(
            access, on_frame=slot.on_frame, audio=args.audio, loopback_candidates=args.loopback
        )
        slots[client_id] = slot
        await slot.viewer.start()
        signaling_up = time.monotonic()
        ttff = await slot.viewer.wait_first_frame(timeout)
        stats = slot.viewer.stats
        return {
            "id": client_id,
            "ttffMs": round(ttff * 1000, 1),
            "signalingMs": round((signaling_up - stats.started_at) * 1000, 1),
            "connectedMs": (
                round((stats.connected_at - stats.started_at) * 1000, 1)
                if stats.connected_at is not None
                else None
            ),
            "offersSent": stats.offers_sent,
        }

    async def leave(client_id: str) -> None:
        slot = slots.pop(client_id, None)
        if slot is not None:
            await slot.viewer.close()

    async with _resolver(args.endpoint) as resolver:
        # Resolve once up front, as a long-running viewer application would have: the joins
        # below then measure signaling and media, not boto3 client construction.
        await AwsAccess(
            resolver, args.channel, Role.VIEWER, client_id=new_client_id("warmup")
        ).resolve()
        io.send(event="ready", pid=os.getpid())
        try:
            async for command in io.commands():
                match command.get("cmd"):
                    case "join":
                        count = int(command.get("count", 1))
                        timeout = float(command.get("timeout", 30))
                        results = await asyncio.gather(
                            *(join(resolver, timeout) for _ in range(count)),
                            return_exceptions=True,
                        )
                        failed = [repr(r) for r in results if isinstance(r, BaseException)]
                        io.send(
                            joined=[r for r in results if not isinstance(r, BaseException)],
                            failed=failed,
                        )
                    case "leave":
                        ids = command.get("ids") or list(slots)
                        await asyncio.gather(*(leave(i) for i in ids), return_exceptions=True)
                        io.send(left=len(ids), remaining=len(slots))
                    case "measure":
                        for slot in slots.values():
                            slot.window_frames = 0
                            slot.check = VideoCheck()
                        start = CpuSample.now()
                        await asyncio.sleep(float(command["seconds"]))
                        end = CpuSample.now()
                        wall = end.wall - start.wall
                        per_viewer = []
                        for client_id, slot in slots.items():
                            check, slot.check = slot.check, None
                            per_viewer.append(
                                {
                                    "id": client_id,
                                    "frames": slot.window_frames,
                                    "fps": round(slot.window_frames / wall, 2),
                                    "video": check.summary() if check is not None else None,
                                }
                            )
                        io.send(
                            t0=start.wall,
                            t1=end.wall,
                            cpu=cpu_window(start, end),
                            viewers=per_viewer,
                            rssMiB=_rss_mib(),
                        )
                    case "quit":
                        break
                    case other:
                        io.send(error=f"unknown command {other!r}")
        finally:
            await asyncio.gather(*(leave(i) for i in list(slots)), return_exceptions=True)
    io.send(event="bye")


# -- encoder cost ---------------------------------------------------------------------------


async def _frames(width: int, height: int, count: int) -> list[Any]:
    from kvs_peer.media import TestPatternTrack

    # The same moving picture the masters send; a high rate only makes collecting it quick
    # (the picture moves per frame, not per second).
    source = TestPatternTrack(width, height, 120)
    try:
        frames = [await source.recv() for _ in range(count)]
    finally:
        source.stop()
    for index, frame in enumerate(frames):
        frame.pts = index * 3000  # 30 fps in 90 kHz units, as the masters stamp them
    return frames


def _cost(frames: int, start: CpuSample, end: CpuSample, fps: float) -> dict[str, Any]:
    cpu = (end.user - start.user) + (end.system - start.system)
    ms = cpu / frames * 1000
    return {
        "frames": frames,
        "cpuMsPerFrame": round(ms, 3),
        "wallMsPerFrame": round((end.wall - start.wall) / frames * 1000, 3),
        "coresAtFps": round(ms * fps / 1000, 4),
    }


async def _encode(args: argparse.Namespace, io: JsonLines) -> None:
    import av
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from kvs_peer.media import SharedVideoEncoder

    class _Replay(MediaStreamTrack):
        kind = "video"

        def __init__(self, frames: list[av.VideoFrame]) -> None:
            super().__init__()
            self._frames = iter(frames)

        async def recv(self) -> av.VideoFrame:
            try:
                return next(self._frames)
            except StopIteration:
                raise MediaStreamError from None

    results: dict[str, Any] = {}

    # kvs-peer: the real SharedVideoEncoder (its settings, its worker thread), one subscriber.
    frames = await _frames(args.width, args.height, args.frames)
    encoder = SharedVideoEncoder(_Replay(frames), fps=args.fps)
    track = encoder.subscribe()
    start = CpuSample.now()
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
    end = CpuSample.now()
    await encoder.close()
    ours = _cost(encoder.frames_encoded, start, end, args.fps)
    ours["settings"] = f"libx264 preset={encoder.preset}, tune=zerolatency, Baseline"
    results["ours"] = ours

    # aiortc: its own encoder classes with their defaults (libx264 default preset "medium").
    for name, factory, settings in (
        ("aiortcH264", H264Encoder, "libx264 default preset (medium), tune=zerolatency, Baseline"),
        ("aiortcVP8", Vp8Encoder, "libvpx realtime, cpu-used -6 (aiortc default)"),
    ):
        frames = await _frames(args.width, args.height, args.frames)
        codec = factory()
        start = CpuSample.now()
        for index, frame in enumerate(frames):
            codec.encode(frame, force_keyframe=index == 0)
        end = CpuSample.now()
        result = _cost(len(frames), start, end, args.fps)
        result["settings"] = settings
        results[name] = result
    io.send(encoderCost=results)


# -- entry point ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("role", choices=["master", "viewers", "encode"])
    parser.add_argument("--endpoint", help="emulator endpoint URL")
    parser.add_argument("--channel", help="signaling channel name")
    parser.add_argument("--impl", choices=["ours", "baseline"], default="ours")
    parser.add_argument("--codec", choices=["h264", "vp8"], default="h264")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--loopback", action="store_true")
    parser.add_argument("--audio", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    return parser


async def _main(args: argparse.Namespace) -> None:
    io = JsonLines()
    if args.role == "encode":
        await _encode(args, io)
        return
    if not args.endpoint or not args.channel:
        raise SystemExit("--endpoint and --channel are required for the master and viewers roles")
    await io.open()
    await (_master(args, io) if args.role == "master" else _viewers(args, io))


def main(argv: list[str] | None = None) -> None:
    """Run one worker role until stdin closes or ``{"cmd": "quit"}`` arrives."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
