"""Recording viewer CPU per 1080p30 channel: storing what arrives vs decoding and re-encoding.

::

    .venv/bin/python -m benchmarks.record_cpu --json record_cpu.json

One run: a stamped 1920x1080@30 H.264 clip (Constrained Baseline, GOP ``--gop``, made once
with ``tests/media/h264_writer.py``) is fed in real time to ``kvs-peer master --source -
--video-mode passthrough`` (so the master costs little), and for each ``--modes`` entry a
``kvs-peer viewer --channel ... --record out.mkv --record-mode MODE`` process records it
through the local KVS emulator:

* ``passthrough`` (``--record-mode auto``): received H.264 stored as it arrives, no decoding;
* ``transcode``: every frame decoded (aiortc's decoder) and encoded again (libx264
  ``veryfast``, the Recorder's default);
* ``receive`` (optional): a viewer that records nothing and decodes nothing, the floor.

Once the recording file has started it waits ``--settle`` s, then reads the viewer process's
CPU (``/proc/PID/stat``, all threads) over ``--seconds``, stops the viewer with SIGINT and
decodes the file to count the frames it holds (a transcoding viewer that falls behind drops
frames, which would make it look cheaper than it is). Channels per core is 1 / (passthrough
cores per channel): derived from the measured figure, not from running that many channels.

A measurement, not a test: it prints the target's verdict (``PASS``/``FAIL``: passthrough at
least 5 x cheaper) and exits 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import finish
from benchmarks.passthrough import (
    add_clip_options,
    cpu_seconds,
    device_env,
    kvs_peer_master,
    make_clip,
)

MODES = ("passthrough", "transcode", "receive")
RECORD_MODES = {"passthrough": "auto", "transcode": "transcode"}
TARGET_RATIO = 5.0


def count_frames(path: Path) -> dict[str, Any]:
    """Video frames in ``path`` (decoded, so each one is known to be whole) and their span."""
    import av

    frames, first, last = 0, None, None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames += 1
            moment = float(frame.time or 0.0)
            first = moment if first is None else first
            last = moment
    span = (last or 0.0) - (first or 0.0)
    return {"frames": frames, "seconds": round(span, 2)}


async def record_once(
    kvs: Any, channel: str, mode: str, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """Run one recording viewer process on ``channel`` and measure it."""
    out = scratch / f"{channel}-{mode}.mkv"
    command = [sys.executable, "-m", "kvs_peer", "viewer", "--channel", channel, "--json"]
    if mode != "receive":
        command += ["--record", str(out), "--record-mode", RECORD_MODES[mode]]
    viewer = await asyncio.create_subprocess_exec(
        *command,
        env=device_env(kvs),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60):
            # A recording starts with its file; a plain viewer once its process settled.
            while mode != "receive" and not (out.exists() and out.stat().st_size > 50_000):
                if viewer.returncode is not None:
                    raise RuntimeError(f"the {mode} viewer exited with {viewer.returncode}")
                await asyncio.sleep(0.05)
        await asyncio.sleep(args.settle + (3 if mode == "receive" else 0))
        before, started = cpu_seconds(viewer.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        used, elapsed = cpu_seconds(viewer.pid) - before, time.monotonic() - started
        viewer.send_signal(signal.SIGINT)
        stdout, _ = await asyncio.wait_for(viewer.communicate(), 30)
    finally:
        if viewer.returncode is None:
            viewer.kill()
            await viewer.wait()
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    row: dict[str, Any] = {
        "mode": mode,
        "viewerCores": round(used / elapsed, 4),
        "framesReceived": report["framesReceived"],
        "receivedFps": report["fps"],
    }
    if mode != "receive":
        stored = count_frames(out)
        row["framesInFile"] = stored["frames"]
        row["fileSeconds"] = stored["seconds"]
        row["fileFps"] = round(stored["frames"] / stored["seconds"], 1) if stored["seconds"] else 0
        if row["fileFps"]:
            row["cpuMsPerStoredFrame"] = round(row["viewerCores"] * 1000 / row["fileFps"], 2)
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kvs_peer.emulator import LocalKvs

    report: dict[str, Any] = {
        "size": args.size,
        "fps": args.fps,
        "gop": args.gop,
        "bitrate": args.bitrate,
        "cpuCount": os.cpu_count(),
        "loadAverageAtStart": os.getloadavg(),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        clip = scratch / "clip.h264"
        make_clip(clip, args.size, args.fps, args.gop, args.gop / args.fps * 2, args.bitrate)
        async with LocalKvs() as kvs:
            channel = f"rec-{random.randrange(1 << 30)}"
            kvs.create_channel(channel)
            options = ["--video-mode", "passthrough", "--gop", str(args.gop)]
            log = scratch / "master.log"
            with kvs_peer_master(kvs, channel, "-", clip, args.fps, options, log) as master:
                async with asyncio.timeout(30):
                    await kvs.wait_connected(channel, master=True)
                for mode in args.modes:
                    row = await record_once(kvs, channel, mode, args, scratch)
                    row["masterAlive"] = master.poll() is None
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
    report["rows"] = rows
    report["loadAverageAtEnd"] = os.getloadavg()
    report["summary"] = summarize(rows)
    return report


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cores = {row["mode"]: row["viewerCores"] for row in rows}
    summary: dict[str, Any] = {"cores": cores}
    passthrough, transcode = cores.get("passthrough"), cores.get("transcode")
    if passthrough:
        # Derived, not measured with that many channels: 1 / cores per channel.
        summary["channelsPerCore"] = int(1 / passthrough)
    if passthrough and transcode:
        ratio = transcode / passthrough
        summary["ratio"] = round(ratio, 1)
        # A transcoding viewer that cannot keep up drops frames and looks cheaper than it is:
        # per stored frame the comparison holds whatever each kept.
        per_frame = {r["mode"]: r.get("cpuMsPerStoredFrame") for r in rows}
        if per_frame.get("passthrough") and per_frame.get("transcode"):
            summary["ratioPerStoredFrame"] = round(
                per_frame["transcode"] / per_frame["passthrough"], 1
            )
        summary["target"] = {
            "target": f"passthrough recording >= {TARGET_RATIO:g} x cheaper than transcoding",
            "value": round(ratio, 1),
            "verdict": "PASS" if ratio >= TARGET_RATIO else "FAIL",
        }
    return summary


def render(report: dict[str, Any]) -> str:
    lines = [
        f"recording viewer, {report['size']}@{report['fps']:g} H.264 "
        f"(GOP {report['gop']}, {report['bitrate'] // 1000} kbit/s), one channel",
        f"{'mode':12} {'cores':>7} {'recv fps':>9} {'file frames':>12} {'file fps':>9} "
        f"{'ms/frame':>9}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['mode']:12} {row['viewerCores']:7.3f} {row['receivedFps']:9.1f} "
            f"{row.get('framesInFile', '-')!s:>12} {row.get('fileFps', '-')!s:>9} "
            f"{row.get('cpuMsPerStoredFrame', '-')!s:>9}"
        )
    summary = report["summary"]
    if "ratio" in summary:
        lines.append(
            f"transcode / passthrough = {summary['ratio']} x "
            f"({summary['target']['verdict']}, target >= {TARGET_RATIO:g} x)"
        )
    if "ratioPerStoredFrame" in summary:
        lines.append(f"per stored frame: {summary['ratioPerStoredFrame']} x")
    if "channelsPerCore" in summary:
        lines.append(
            f"1080p30 channels one core records (derived: 1 / passthrough cores): "
            f"{summary['channelsPerCore']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="passthrough,transcode", help="of " + ",".join(MODES))
    parser.add_argument("--size", default="1920x1080")
    add_clip_options(parser, bitrate=4_000_000)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    if args.seconds <= 0 or args.settle < 0 or args.fps <= 0:
        parser.error("--seconds and --fps must be greater than 0, --settle at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(run(args), args.json, lambda report: print(render(report)), echo=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
