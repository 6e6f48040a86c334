"""H.264 passthrough against transcoding, and against the C SDK's sample master: JSON out.

::

    .venv/bin/python -m benchmarks.passthrough --json passthrough.json

One run has three parts (``--parts cpu,join,floor``):

1. **cpu**: a clip encoded once (libx264, stamped pattern, 1920x1080@30, GOP ``--gop``;
   Constrained Baseline so that kvs-peer's aiortc viewers, which offer only Baseline, take it
   as it is) is fed in real time to ``kvs-peer master --video-mode MODE`` from each source in
   ``--sources``: ``stdin`` (a feeder process writing its access units to the master's stdin,
   as ``rpicam-vid -o -`` does) and ``rtsp`` (``benchmarks.rtsp_clip``, an RTSP camera serving
   the same bytes over RTP/TCP). For each mode and viewer count, N kvs-peer viewers connect
   from this process; the master process's CPU (``/proc/PID/stat``, all threads) is read over
   ``--seconds`` once every viewer has its first frame, with each viewer's frame rate.
2. **join**: a master in this process passes a live FIFO stream through; one viewer watches
   while ``--joins`` others join one by one at random points of the GOP; time from
   ``Viewer.start()`` to the first decoded frame.
3. **floor**: the C SDK's sample master (``../shared/interop/kvs-c-sdk``, its own
   1280x720@25 Baseline frames and Opus) and ``kvs-peer master --source - --video-mode
   passthrough`` fed those same frames (the sample's ``frame-NNNN.h264`` files concatenated in
   order) stream to ``--floor-viewers`` viewers (offering video and audio) through the
   emulator on port 443 with TLS and TURN, which the C SDK needs; the same CPU measurement.
   kvs-peer sends no audio there (it has no Opus passthrough), so the C SDK does a little more.

The cpu and floor viewers count complete frames (``ViewerStats.frames_received``) without
decoding them, so that 10 viewers of a 1080p stream leave the 2 cores to the master; the join
viewers decode, and their clock stops at the first decoded frame. A measurement, not a test:
it prints the targets' verdicts (``PASS``/``FAIL``) and exits 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from benchmarks.measure import BenchmarkError, finish, pass_fail

# The test suite's helpers (not a package); appended, so nothing in tests/ shadows a module.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
from support import process_env

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "media" / "h264_writer.py"
CSDK_HELPERS = ROOT / "tests" / "interop"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("cpu", "join", "floor")
SOURCES = ("stdin", "rtsp")
MODES = ("passthrough", "transcode")
CSDK_SIZE, CSDK_FPS = "1280x720", 25.0
"""What the C SDK sample's frames are (their README's GStreamer pipeline)."""

FEEDER = r"""
import sys, time
from benchmarks.rtsp_clip import access_units
chunks = access_units(open(sys.argv[1], "rb").read())
fps = float(sys.argv[2])
out = sys.stdout.buffer
start = time.monotonic()
index = 0
try:
    while True:
        delay = start + index / fps - time.monotonic()
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


def concatenate_frames(folder: Path, out: Path) -> int:
    """Write ``frame-0001.h264``, ``frame-0002.h264``, ... in numeric order as one stream."""
    frames = sorted(folder.glob("frame-*.h264"), key=lambda p: int(p.stem.split("-")[1]))
    if not frames:
        raise BenchmarkError(f"no frame-NNNN.h264 files in {folder}")
    with open(out, "wb") as stream:
        for frame in frames:
            stream.write(frame.read_bytes())
    return len(frames)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def device_env(kvs: Any) -> dict[str, str]:
    """Environment of a kvs-peer process under test, pointed at the emulator ``kvs``."""
    # A cache folder that stays empty: every run resolves its channel as a first start does.
    extra = {"KVS_PEER_CACHE_DIR": tempfile.gettempdir() + "/kvs-peer-bench-cache-none"}
    if kvs.ssl_context() is not None:
        # environment() sets AWS_CA_BUNDLE for boto3; the signaling WebSocket uses the default
        # trust store, which OpenSSL lets SSL_CERT_FILE replace.
        extra["SSL_CERT_FILE"] = str(kvs.ca_cert_path)
    return process_env(kvs, **extra)


@contextlib.contextmanager
def child(
    command: list[str], *, interrupt: bool = False, **kwargs: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the block; killed at the end (after SIGINT with ``interrupt``)."""
    process = subprocess.Popen(command, **kwargs)
    try:
        yield process
    finally:
        if interrupt:  # a profiled master writes its profile on a clean exit
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        process.kill()
        process.wait()


@contextlib.contextmanager
def rtsp_camera(clip: Path, fps: float) -> Iterator[str]:
    """``benchmarks.rtsp_clip`` serving ``clip``; yields its URL."""
    command = [sys.executable, "-m", "benchmarks.rtsp_clip", str(clip), "--fps", str(fps)]
    with child(command, stdout=subprocess.PIPE, cwd=ROOT) as camera:
        assert camera.stdout is not None
        url = camera.stdout.readline().decode().strip()
        if not url.startswith("rtsp://"):
            raise BenchmarkError(f"the RTSP camera did not start (printed {url!r})")
        yield url


@contextlib.contextmanager
def kvs_peer_master(
    kvs: Any,
    channel: str,
    source: str,
    clip: Path,
    fps: float,
    options: list[str],
    log: Path,
    profile: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``kvs-peer master --source SOURCE``; for ``-``, a feeder pacing ``clip`` into stdin.

    With ``profile``, the master runs under cProfile (its event loop thread) and writes there.
    """
    command = [sys.executable, "-m", "kvs_peer", "master", "--channel", channel]
    if profile is not None:
        command[1:1] = ["-m", "cProfile", "-o", str(profile)]
    command += ["--source", source, "--fps", str(fps), "--json", *options]
    with contextlib.ExitStack() as stack:
        stdin: Any = subprocess.DEVNULL
        if source == "-":
            feeder = stack.enter_context(
                child(
                    [sys.executable, "-c", FEEDER, str(clip), str(fps)],
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                )
            )
            stdin = feeder.stdout
        master = stack.enter_context(
            child(
                command,
                interrupt=profile is not None,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context(open(log, "wb")),
                env=device_env(kvs),
            )
        )
        if source == "-":
            stdin.close()  # the master holds the pipe now
        try:
            yield master
        except TimeoutError:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise BenchmarkError(
                f"kvs-peer master on {channel} timed out (exit status {master.poll()}); "
                "its log ends:\n" + "\n".join(tail)
            ) from None


async def measure(
    kvs: Any,
    channel: str,
    pid: int,
    viewers: int,
    args: argparse.Namespace,
    *,
    audio: bool = False,
    alive: Any = None,
) -> dict[str, Any]:
    """Connect ``viewers`` viewers to ``channel`` and measure process ``pid``'s CPU."""
    from kvs_peer.access import AwsAccess
    from kvs_peer.protocol import Role
    from kvs_peer.viewer import Viewer

    signaling = {"ssl": kvs.ssl_context()} if kvs.ssl_context() is not None else None
    async with asyncio.timeout(30):
        await kvs.wait_connected(channel, master=True)
    async with contextlib.AsyncExitStack() as stack:
        resolver = await stack.enter_async_context(kvs.resolver())
        peers = []
        for index in range(viewers):
            # No frame callback: the viewers count complete frames without decoding them,
            # so 10 of them at 1080p leave the 2 cores to the master (real viewers are
            # elsewhere).
            access = AwsAccess(resolver, channel, Role.VIEWER, client_id=f"v{index}")
            peers.append(
                await stack.enter_async_context(Viewer(access, audio=audio, signaling=signaling))
            )
        for peer in peers:
            await peer.wait_first_frame(timeout=30)
        await asyncio.sleep(args.settle)
        frames_before = [p.stats.frames_received for p in peers]
        before, started = cpu_seconds(pid), time.time()
        await asyncio.sleep(args.seconds)
        if alive is not None:
            alive()
        used, elapsed = cpu_seconds(pid) - before, time.time() - started
        fps = [
            (p.stats.frames_received - b) / elapsed
            for p, b in zip(peers, frames_before, strict=True)
        ]
        audio_frames = sum(p.stats.audio_frames_received for p in peers)
    return {
        "viewers": viewers,
        "masterCores": round(used / elapsed, 4),
        "viewerFpsMin": round(min(fps), 1),
        "viewerFpsMedian": round(statistics.median(fps), 1),
        "audioFrames": audio_frames,
    }


async def cpu_part(kvs: Any, args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for size, counts in ((args.size, args.viewers), (args.small_size, args.small_viewers)):
        if not counts:
            continue
        clip = scratch / f"clip-{size}.h264"
        make_clip(clip, size, args.fps, args.gop, args.gop / args.fps * 2, args.bitrate)
        for source in args.sources:
            with contextlib.ExitStack() as stack:
                spec = "-"
                if source == "rtsp":
                    spec = stack.enter_context(rtsp_camera(clip, args.fps))
                for mode in args.modes:
                    for viewers in counts:
                        channel = f"pt-{source}-{mode}-{viewers}-{random.randrange(1 << 30)}"
                        kvs.create_channel(channel)
                        options = ["--video-mode", mode, "--gop", str(args.gop)]
                        options += ["--bitrate", str(args.bitrate)]
                        options += ["--max-viewers", str(max(10, viewers))]
                        log = scratch / f"{channel}.log"
                        profile = args.profile and args.profile / f"{channel}.prof"
                        with kvs_peer_master(
                            kvs, channel, spec, clip, args.fps, options, log, profile
                        ) as m:
                            row = await measure(kvs, channel, m.pid, viewers, args)
                        row = {"source": source, "size": size, "mode": mode, **row}
                        del row["audioFrames"]
                        print(json.dumps(row), file=sys.stderr)
                        rows.append(row)
    return rows


def start_camera(fifo: Path, size: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """A live stamped camera writing into ``fifo`` in real time."""
    os.mkfifo(fifo)
    options = ["--size", size, "--fps", str(args.fps), "--gop", str(args.gop)]
    return subprocess.Popen(
        [sys.executable, str(WRITER), *options, "--bitrate", str(args.bitrate)],
        stdout=os.open(fifo, os.O_RDWR),
        stderr=subprocess.DEVNULL,
    )


async def join_part(kvs: Any, args: argparse.Namespace, size: str) -> dict[str, Any]:
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
                    decoded = asyncio.Event()
                    access = AwsAccess(resolver, channel, Role.VIEWER, client_id=f"j{index}")
                    # The clock stops at the first *decoded* frame: the callback makes the
                    # viewer decode.
                    async with Viewer(access, on_frame=lambda frame, e=decoded: e.set()):
                        async with asyncio.timeout(30):
                            await decoded.wait()
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


@contextlib.asynccontextmanager
async def tls_emulator_on_443() -> AsyncIterator[Any]:
    """The emulator as the C SDK needs it: HTTPS/WSS on 443, TURN in GetIceServerConfig.

    Port 443 is shared with the C SDK interop tests: wait up to a minute for it.
    """
    from kvs_peer.emulator import EmulatorConfig, LocalKvs
    from kvs_peer.errors import InvalidArgument

    deadline = time.monotonic() + 60
    while True:
        kvs = LocalKvs(EmulatorConfig(turn=True, turn_port=0), port=443, tls=True)
        try:
            await kvs.start()
            break
        except InvalidArgument as exc:  # the bind failure, reworded
            if "in use" not in str(exc) or time.monotonic() > deadline:
                raise BenchmarkError(f"{exc} (the C SDK needs port 443)") from None
            await asyncio.sleep(1)
    try:
        yield kvs
    finally:
        await kvs.close()


async def floor_part(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(CSDK_HELPERS))
    from csdk import MASTER, CsdkEnvironment, csdk_dir, start_sample  # test helpers

    root = csdk_dir()
    binary = root / "bin" / MASTER
    if not os.access(binary, os.X_OK):
        raise BenchmarkError(f"the C SDK sample master is not at {binary} (see its README)")
    stream = scratch / "csdk-frames.h264"
    frames = concatenate_frames(root / "frames" / "h264SampleFrames", stream)
    rows: list[dict[str, Any]] = []
    async with tls_emulator_on_443() as kvs:
        env = CsdkEnvironment(
            access_key_id=kvs.credentials.access_key,
            secret_access_key=kvs.credentials.secret_key,
            region=kvs.region,
            ca_cert_path=kvs.ca_cert_path,
        )
        for viewers in args.floor_viewers:
            channel = f"floor-csdk-{viewers}-{random.randrange(1 << 30)}"
            async with start_sample(root, MASTER, [channel], env) as sample:
                await sample.wait_for_line(r"Channel \S+ set up done", 30)

                def still_running(sample: Any = sample) -> None:
                    if sample.exited:
                        raise BenchmarkError(f"the C SDK master exited:\n{sample.tail()}")

                row = await measure(
                    kvs, channel, sample.process.pid, viewers, args, audio=True, alive=still_running
                )
            rows.append({"master": "csdk", "frames": frames, **row})
            print(json.dumps(rows[-1]), file=sys.stderr)

            channel = f"floor-kvs-peer-{viewers}-{random.randrange(1 << 30)}"
            kvs.create_channel(channel)
            options = ["--video-mode", "passthrough", "--max-viewers", str(max(10, viewers))]
            log = scratch / f"{channel}.log"
            with kvs_peer_master(kvs, channel, "-", stream, CSDK_FPS, options, log) as master:
                row = await measure(kvs, channel, master.pid, viewers, args, audio=True)
            rows.append({"master": "kvs-peer", "frames": frames, **row})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _cores(rows: list[dict[str, Any]], **match: Any) -> float | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return float(row["masterCores"])
    return None


def _verdict(value: float | None, limit: float | None, text: str) -> dict[str, Any]:
    if value is None or limit is None:
        return {"verdict": "NOT MEASURED", "target": text}
    return {
        "verdict": pass_fail(value, limit),
        "target": text,
        "value": round(value, 4),
        "limit": round(limit, 4),
    }


def verdicts(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The issue's targets, each PASS, FAIL or NOT MEASURED."""
    result: dict[str, Any] = {}
    cpu = report.get("cpu", [])
    for source in args.sources:
        at = {"source": source, "size": args.size}
        many = _cores(cpu, mode="passthrough", viewers=10, **at)
        one_transcode = _cores(cpu, mode="transcode", viewers=1, **at)
        result[f"{source}Passthrough10Cores"] = _verdict(
            many, 0.15, f"{source}: passthrough to 10 viewers <= 0.15 cores"
        )
        result[f"{source}Passthrough10VsTranscode1"] = _verdict(
            many,
            None if one_transcode is None else 0.2 * one_transcode,
            f"{source}: passthrough to 10 viewers <= 0.2 x transcode to 1 viewer",
        )
    join = report.get("join")
    result["joinP50"] = _verdict(
        None if join is None else join["ttffP50Ms"], 300, "late-join first frame p50 <= 300 ms"
    )
    floor = report.get("floor", [])
    for viewers in args.floor_viewers:
        csdk = _cores(floor, master="csdk", viewers=viewers)
        ours = _cores(floor, master="kvs-peer", viewers=viewers)
        result[f"floor{viewers}"] = _verdict(
            ours,
            None if csdk is None else 2 * csdk,
            f"{viewers} viewer(s): kvs-peer passthrough <= 2 x the C SDK sample master",
        )
    return result


def render(report: dict[str, Any]) -> str:
    lines = []
    if report.get("cpu"):
        lines.append("source | size      | viewers | passthrough (fps min) | transcode (fps min)")
        keys = sorted({(r["source"], r["size"], r["viewers"]) for r in report["cpu"]})
        for source, size, viewers in keys:
            cells = []
            for mode in MODES:
                row = next(
                    (
                        r
                        for r in report["cpu"]
                        if (r["source"], r["size"], r["viewers"], r["mode"])
                        == (source, size, viewers, mode)
                    ),
                    None,
                )
                cells.append(
                    "-" if row is None else f"{row['masterCores']:.3f} ({row['viewerFpsMin']:g})"
                )
            lines.append(f"{source:6} | {size:9} | {viewers:7} | {cells[0]:21} | {cells[1]}")
    if report.get("join"):
        join = report["join"]
        lines.append(
            f"\nlate join ({join['size']}, GOP {join['gopSeconds']:g} s, {join['joins']} joins): "
            f"p50 {join['ttffP50Ms']} ms, p90 {join['ttffP90Ms']} ms"
        )
    if report.get("floor"):
        lines.append("\nviewers | C SDK sample master | kvs-peer passthrough | ratio | fps min")
        for viewers in sorted({r["viewers"] for r in report["floor"]}):
            csdk = next(
                r for r in report["floor"] if r["viewers"] == viewers and r["master"] == "csdk"
            )
            ours = next(
                r for r in report["floor"] if r["viewers"] == viewers and r["master"] == "kvs-peer"
            )
            ratio = (
                ours["masterCores"] / csdk["masterCores"] if csdk["masterCores"] else float("inf")
            )
            lines.append(
                f"{viewers:7} | {csdk['masterCores']:19.3f} | {ours['masterCores']:20.3f} | "
                f"{ratio:5.2f} | {csdk['viewerFpsMin']:g} / {ours['viewerFpsMin']:g}"
            )
    lines.append("\nTargets")
    for item in report["targets"].values():
        detail = f": {item['value']:g} vs {item['limit']:g}" if "value" in item else ""
        lines.append(f"  {item['verdict']:12} {item['target']}{detail}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kvs_peer.emulator import LocalKvs

    report: dict[str, Any] = {
        "fps": args.fps,
        "gop": args.gop,
        "bitrate": args.bitrate,
        "cpuCount": os.cpu_count(),
        "loadAverageAtStart": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        if "cpu" in args.parts or "join" in args.parts:
            async with LocalKvs() as kvs:
                if "cpu" in args.parts:
                    report["cpu"] = await cpu_part(kvs, args, Path(scratch))
                if "join" in args.parts:
                    report["join"] = await join_part(kvs, args, args.size)
                    print(json.dumps(report["join"]), file=sys.stderr)
        if "floor" in args.parts:
            report["floor"] = await floor_part(args, Path(scratch))
    report["loadAverageAtEnd"] = os.getloadavg()
    report["targets"] = verdicts(report, args)
    return report


def _choices(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    values = [v for v in text.split(",") if v]
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        raise argparse.ArgumentTypeError(f"{option}: choose from {','.join(allowed)}")
    return values


def _counts(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option}: expected numbers like 1,10") from None
    if any(not 1 <= v <= 10 for v in values):
        raise argparse.ArgumentTypeError(f"{option}: viewer counts must be in 1..10")
    return values


def add_clip_options(parser: argparse.ArgumentParser, *, bitrate: int) -> None:
    """Options of the clip :func:`make_clip` writes and of each measurement's window.

    ``--fps``, ``--gop`` and ``--bitrate`` (default ``bitrate``); ``--seconds`` measured after
    ``--settle``.
    """
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--gop", type=int, default=60)
    parser.add_argument("--bitrate", type=int, default=bitrate)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--settle", type=float, default=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="cpu,join,floor", help="cpu,join,floor")
    parser.add_argument("--sources", default="stdin,rtsp", help="stdin,rtsp")
    parser.add_argument("--modes", default="passthrough,transcode")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--viewers", default="1,10", help="viewer counts at --size")
    parser.add_argument("--small-size", default="640x480")
    parser.add_argument("--small-viewers", default="", help="viewer counts at --small-size")
    parser.add_argument("--floor-viewers", default="1,4", help="viewer counts for the C SDK part")
    add_clip_options(parser, bitrate=3_000_000)
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the report here")
    parser.add_argument(
        "--profile", type=Path, help="cProfile each cpu-part master into this folder"
    )
    args = parser.parse_args(argv)
    try:
        args.parts = _choices(args.parts, PARTS, "--parts")
        args.sources = _choices(args.sources, SOURCES, "--sources")
        args.modes = _choices(args.modes, MODES, "--modes")
        args.viewers = _counts(args.viewers, "--viewers")
        args.small_viewers = _counts(args.small_viewers, "--small-viewers")
        args.floor_viewers = _counts(args.floor_viewers, "--floor-viewers")
        if args.seconds <= 0 or args.settle < 0 or args.joins < 1 or args.fps <= 0:
            raise argparse.ArgumentTypeError(
                "--seconds and --fps must be greater than 0, --settle at least 0, --joins >= 1"
            )
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(run(args), args.json, lambda report: print(render(report)), echo=True)


if __name__ == "__main__":
    sys.exit(main())
