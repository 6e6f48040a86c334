"""H.264 passthrough against transcoding: master CPU and late-join time, JSON out.

::

    .venv/bin/python -m benchmarks.passthrough --json passthrough.json

One run:

1. encodes a clip once (libx264, stamped pattern; Constrained Baseline so that kvs-peer's
   aiortc viewers, which offer only Baseline, can take it as it is), GOP ``--gop`` frames;
2. **CPU**: for each mode (``passthrough``, ``transcode``) and viewer count, starts
   ``kvs-peer master --source - --video-mode MODE`` with a feeder process writing the clip's
   access units to its stdin at ``--fps`` (the camera: ``rpicam-vid -o -``), connects N
   kvs-peer viewers from this process, and reads the master process's CPU
   (``/proc/PID/stat``) over ``--seconds`` once every viewer decodes; plus each viewer's
   decoded frame rate;
3. **join time**: a master in this process passes a live FIFO stream through; one viewer
   watches while ``--joins`` others join one by one, at random points of the GOP; time from
   ``Viewer.start()`` to the first decoded frame (signaling, ICE, DTLS and the GOP burst).

Viewers decode every frame in this process, so 10 viewers at 1080p do not keep up on a
2-core machine; the report says how many frames each decoded. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "media" / "h264_writer.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

FEEDER = r"""
import sys, time
from kvs_peer.media.h264 import AccessUnitAssembler, split_annexb
data = open(sys.argv[1], "rb").read()
fps = float(sys.argv[2])
assembler = AccessUnitAssembler()
units = assembler.push_all(split_annexb(data)) + [assembler.flush()]
chunks = [u.annexb() for u in units]
out = sys.stdout.buffer
start = time.monotonic()
index = 0
try:
    while True:
        due = start + index / fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.write(chunks[index % len(chunks)])
        out.flush()
        index += 1
except BrokenPipeError:
    pass
"""


def make_clip(path: Path, size: str, fps: float, gop: int, seconds: float, bitrate: int) -> None:
    options = ["--size", size, "--fps", str(fps), "--gop", str(gop), "--fast"]
    options += ["--frames", str(int(seconds * fps)), "--bitrate", str(bitrate)]
    with open(path, "wb") as out:
        subprocess.run([sys.executable, str(WRITER), *options], stdout=out, check=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def device_env(kvs: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=kvs.credentials.access_key,
        AWS_SECRET_ACCESS_KEY=kvs.credentials.secret_key,
        AWS_REGION=kvs.region,
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        KVS_PEER_ENDPOINT_URL=kvs.endpoint_url,
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    return env


def start_master(
    kvs: Any, clip: Path, channel: str, mode: str, viewers: int, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The camera (a feeder pacing the clip's access units) piped into ``kvs-peer master``."""
    feeder = subprocess.Popen(
        [sys.executable, "-c", FEEDER, str(clip), str(args.fps)], stdout=subprocess.PIPE
    )
    options = ["--video-mode", mode, "--fps", str(args.fps), "--gop", str(args.gop)]
    options += ["--bitrate", str(args.bitrate), "--json", "--max-viewers", str(max(10, viewers))]
    command = [sys.executable, "-m", "kvs_peer", "master", "--channel", channel, "--source", "-"]
    master = subprocess.Popen(
        [*command, *options],
        stdin=feeder.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=device_env(kvs),
    )
    assert feeder.stdout is not None
    feeder.stdout.close()  # the master holds the pipe now
    return feeder, master


def start_camera(fifo: Path, size: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """A live stamped camera writing into ``fifo`` in real time."""
    os.mkfifo(fifo)
    options = ["--size", size, "--fps", str(args.fps), "--gop", str(args.gop)]
    return subprocess.Popen(
        [sys.executable, str(WRITER), *options, "--bitrate", str(args.bitrate)],
        stdout=os.open(fifo, os.O_RDWR),
        stderr=subprocess.DEVNULL,
    )


async def cpu_run(
    kvs: Any, clip: Path, mode: str, viewers: int, args: argparse.Namespace
) -> dict[str, Any]:
    from kvs_peer.access import AwsAccess
    from kvs_peer.protocol import Role
    from kvs_peer.viewer import Viewer

    channel = f"pt-{mode}-{viewers}-{random.randrange(1 << 30)}"
    kvs.create_channel(channel)
    feeder, master = start_master(kvs, clip, channel, mode, viewers, args)
    counts = [0] * viewers
    try:
        async with asyncio.timeout(30):
            await kvs.wait_connected(channel, master=True)
        async with contextlib.AsyncExitStack() as stack:
            resolver = await stack.enter_async_context(kvs.resolver())
            peers = []
            for index in range(viewers):

                def count(frame: Any, index: int = index) -> None:
                    counts[index] += 1

                access = AwsAccess(resolver, channel, Role.VIEWER, client_id=f"v{index}")
                peers.append(await stack.enter_async_context(Viewer(access, on_frame=count)))
            for peer in peers:
                await peer.wait_first_frame(timeout=30)
            await asyncio.sleep(args.settle)
            before, frames_before, started = cpu_seconds(master.pid), list(counts), time.time()
            await asyncio.sleep(args.seconds)
            used, elapsed = cpu_seconds(master.pid) - before, time.time() - started
            fps = [(c - b) / elapsed for c, b in zip(counts, frames_before, strict=True)]
    finally:
        master.terminate()
        master.wait(20)
        feeder.kill()
        feeder.wait()
    return {
        "mode": mode,
        "viewers": viewers,
        "masterCores": round(used / elapsed, 4),
        "viewerFpsMin": round(min(fps), 1),
        "viewerFpsMedian": round(statistics.median(fps), 1),
    }


async def join_run(kvs: Any, args: argparse.Namespace, size: str) -> dict[str, Any]:
    from kvs_peer.access import AwsAccess
    from kvs_peer.master import Master
    from kvs_peer.media import open_master_video
    from kvs_peer.protocol import Role
    from kvs_peer.viewer import Viewer

    channel = f"pt-join-{random.randrange(1 << 30)}"
    kvs.create_channel(channel)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        fifo = Path(scratch) / "camera.h264"
        writer = start_camera(fifo, size, args)
        ttffs: list[float] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                resolver = await stack.enter_async_context(kvs.resolver())
                source = open_master_video(str(fifo), video_mode="passthrough")
                master = await stack.enter_async_context(
                    Master(
                        AwsAccess(resolver, channel, Role.MASTER),
                        video=source,
                        video_mode="passthrough",
                    )
                )
                first = Viewer(AwsAccess(resolver, channel, Role.VIEWER, client_id="watcher"))
                await stack.enter_async_context(first)
                await first.wait_first_frame(timeout=30)
                for index in range(args.joins):
                    await asyncio.sleep(rng.uniform(0.2, args.gop / args.fps))
                    started = time.perf_counter()
                    access = AwsAccess(resolver, channel, Role.VIEWER, client_id=f"j{index}")
                    async with Viewer(access) as joiner:
                        await joiner.wait_first_frame(timeout=30)
                        ttffs.append((time.perf_counter() - started) * 1000)
                passthrough = master.passthrough
                assert passthrough is not None
                replays = passthrough.replays
                replayed = passthrough.replayed_frames
        finally:
            writer.kill()
            writer.wait()
    ordered = sorted(ttffs)
    return {
        "size": size,
        "gopSeconds": args.gop / args.fps,
        "joins": len(ttffs),
        "ttffMs": [round(t) for t in ttffs],
        "ttffP50Ms": round(statistics.median(ttffs)),
        "ttffP90Ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]),
        "bursts": replays,
        "burstFramesMean": round(replayed / max(1, replays), 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kvs_peer.emulator import LocalKvs

    report: dict[str, Any] = {
        "fps": args.fps,
        "gop": args.gop,
        "bitrate": args.bitrate,
        "cpuCount": os.cpu_count(),
        "loadAverageAtStart": os.getloadavg(),
        "cpu": [],
    }
    async with LocalKvs() as kvs:
        with tempfile.TemporaryDirectory() as scratch:
            for size, counts in ((args.size, args.viewers), (args.small_size, args.small_viewers)):
                if not counts:
                    continue
                clip = Path(scratch) / f"clip-{size}.h264"
                make_clip(clip, size, args.fps, args.gop, args.gop / args.fps * 2, args.bitrate)
                for mode in args.modes:
                    for viewers in counts:
                        row = await cpu_run(kvs, clip, mode, viewers, args)
                        row["size"] = size
                        print(json.dumps(row), file=sys.stderr)
                        report["cpu"].append(row)
        report["join"] = await join_run(kvs, args, args.size)
        print(json.dumps(report["join"]), file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--viewers", default="1", help="viewer counts at --size")
    parser.add_argument("--small-size", default="640x480")
    parser.add_argument("--small-viewers", default="1,10", help="viewer counts at --small-size")
    parser.add_argument("--modes", default="passthrough,transcode")
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--gop", type=int, default=60)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    args.viewers = [int(v) for v in args.viewers.split(",") if v]
    args.small_viewers = [int(v) for v in args.small_viewers.split(",") if v]
    args.modes = args.modes.split(",")
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
