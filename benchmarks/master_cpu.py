"""Master CPU per viewer count and time to first frame: kvs-peer next to plain aiortc.

::

    .venv/bin/python -m benchmarks.master_cpu --viewers 1,2,4,10 --seconds 10 --json out.json

Three kinds of process, so the master's CPU is measured alone:

* this one runs the local KVS emulator (signaling only) and drives the others;
* a **master** process: kvs-peer's ``Master`` (one shared libx264 encoder, packets fanned
  out) or the baseline, aiortc's default pattern (``MediaRelay().subscribe(source)`` per
  viewer, aiortc's encoder per sender, H.264 forced; see :mod:`benchmarks.baseline`);
* a **viewers** process: N kvs-peer ``Viewer`` objects decoding every frame (the same
  receivers for both masters).

CPU: ``getrusage`` of the master process over ``--windows`` consecutive windows that start
``--settle`` seconds after every viewer decoded its first frame, reporting the median window;
achieved fps per viewer over the same window (CPU alone would hide dropped frames).

Time to first frame: from ``Viewer.start()`` to the first decoded frame, for a first viewer
(master up, nobody watching) and for a viewer joining while another one watches, median of
``--ttff-runs`` runs with a random pause between runs (so joins land at random points of the
keyframe interval). A measurement, not a test: the
exit code is 0 whether targets pass or not (2 for bad arguments, 1 if the harness broke).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .measure import BenchmarkError, Worker, add_output_options, finish, pass_fail, summarize

__all__ = ["BenchmarkError", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("ours", "baseline")
FLAT_LIMIT = 1.3
TTFF_FIRST_TARGET_MS = 150.0
TTFF_JOIN_TARGET_MS = 250.0
KEEPS_UP = 0.95
"""A viewer keeps up when it decodes at least this share of the source frame rate."""
BUSY_WARNING = 0.25
"""Cores used by other processes above which the report warns that numbers are noisy."""


# -- worker processes -------------------------------------------------------------------------


async def start_worker(
    role: str, args: list[str], log_dir: Path, *, ready_timeout: float = 60.0
) -> Worker:
    """A ``benchmarks.worker`` process in ``role``, its log a new file in ``log_dir``."""
    log = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
    return await Worker.start(
        role,
        ["benchmarks.worker", role, *args],
        log,
        ready_timeout=None if role == "encode" else ready_timeout,
    )


# -- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to measure; built from the command line (see :func:`parser`)."""

    viewers: tuple[int, ...]
    seconds: float
    settle: float
    windows: int
    ttff_runs: int
    impls: tuple[str, ...]
    codec: str
    width: int
    height: int
    fps: float
    loopback: bool
    seed: int
    parts: frozenset[str]
    profile: Path | None = None
    audio: bool = False

    def master_args(self, endpoint: str, channel: str, impl: str) -> list[str]:
        """Command-line arguments of a master worker."""
        args = [
            "--endpoint",
            endpoint,
            "--channel",
            channel,
            "--impl",
            impl,
            "--codec",
            self.codec,
            "--width",
            str(self.width),
            "--height",
            str(self.height),
            "--fps",
            str(self.fps),
        ]
        args = [*args, "--loopback"] if self.loopback else args
        return [*args, "--audio"] if self.audio else args

    def viewer_args(self, endpoint: str, channel: str) -> list[str]:
        """Command-line arguments of a viewers worker."""
        args = ["--endpoint", endpoint, "--channel", channel]
        args = [*args, "--loopback"] if self.loopback else args
        return [*args, "--audio"] if self.audio else args


def _channel(kvs: Any, prefix: str) -> str:
    name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
    kvs.create_channel(name)
    return name


async def cpu_run(
    kvs: Any, settings: Settings, impl: str, count: int, logs: Path
) -> dict[str, Any]:
    """Stream to ``count`` viewers and measure the master over ``settings.windows`` windows.

    The report is the median window by master CPU (the lower middle for an even count); every
    window's master CPU is kept in ``masterCoresAllWindows``.
    """
    channel = _channel(kvs, f"cpu-{impl}-{count}")
    endpoint = kvs.endpoint_url
    master = await start_worker("master", settings.master_args(endpoint, channel, impl), logs)
    try:
        viewers = await start_worker("viewers", settings.viewer_args(endpoint, channel), logs)
        try:
            joined = await viewers.call({"cmd": "join", "count": count, "timeout": 60}, 90)
            if joined["failed"]:
                raise BenchmarkError(
                    f"{impl}: {len(joined['failed'])} of {count} viewers got no frame: "
                    f"{joined['failed'][0]}; see {viewers.log} and {master.log}"
                )
            await asyncio.sleep(settings.settle)
            window: dict[str, Any] = {"cmd": "measure", "seconds": settings.seconds}
            timeout = settings.seconds * 3 + 30
            windows = []
            for index in range(settings.windows):
                master_window = dict(window)
                if settings.profile is not None and index == 0:
                    master_window["profile"] = str(
                        settings.profile / f"master-{impl}-{count}.pstats"
                    )
                windows.append(
                    await asyncio.gather(
                        master.call(master_window, timeout), viewers.call(window, timeout)
                    )
                )
        finally:
            await viewers.stop()
    finally:
        await master.stop()
    # The median window by master CPU: one 10 s window moves by a few hundredths of a core
    # with x264's own variance and the machine's, which is as much as 10 viewers cost.
    all_cores = [m["cpu"]["cores"] for m, _ in windows]
    m, v = sorted(windows, key=lambda pair: pair[0]["cpu"]["cores"])[(len(windows) - 1) // 2]
    fps = [viewer["fps"] for viewer in v["viewers"]]
    latencies = [
        viewer["video"]["latencyMedianMs"]
        for viewer in v["viewers"]
        if viewer["video"] and viewer["video"]["latencyMedianMs"] is not None
    ]
    machine = m["cpu"]["machineCores"]
    return {
        "impl": impl,
        "viewers": count,
        "masterCores": m["cpu"]["cores"],
        "masterCoresAllWindows": all_cores,
        "masterCpu": m["cpu"],
        "masterRssMiB": m["rssMiB"],
        "masterPeakRssMiB": m["peakRssMiB"],
        "masterSessions": {"sessions": m["sessions"], "connected": m["connected"]},
        "encoder": m["encoder"],
        "viewerProcessCores": v["cpu"]["cores"],
        "viewerProcessCpu": v["cpu"],
        "fpsMin": min(fps) if fps else 0.0,
        "fpsMean": round(sum(fps) / len(fps), 2) if fps else 0.0,
        "fps": fps,
        "latencyMedianMs": statistics.median(latencies) if latencies else None,
        "otherProcessesCores": (
            round(max(0.0, machine - m["cpu"]["cores"] - v["cpu"]["cores"]), 3)
            if machine is not None
            else None
        ),
        "perViewer": v["viewers"],
        "joins": joined["joined"],
        "windowOffsetMs": round((v["t0"] - m["t0"]) * 1000, 1),
    }


async def _wait_sessions(master: Worker, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = await master.call({"cmd": "status"})
        if status["sessions"] == count:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"master still has {status['sessions']} sessions, expected {count}; "
                f"see {master.log}"
            )
        await asyncio.sleep(0.05)


async def ttff_runs(
    kvs: Any, settings: Settings, impl: str, rng: random.Random, logs: Path
) -> dict[str, Any]:
    """Time to first frame of a first viewer and of a viewer joining a watched stream."""
    channel = _channel(kvs, f"ttff-{impl}")
    endpoint = kvs.endpoint_url
    master = await start_worker("master", settings.master_args(endpoint, channel, impl), logs)
    results: dict[str, Any] = {"first": [], "joining": [], "pausesS": []}
    try:
        viewers = await start_worker("viewers", settings.viewer_args(endpoint, channel), logs)
        try:

            async def one(kind: str, others: int) -> None:
                pause = rng.uniform(0.5, 2.5)
                results["pausesS"].append(round(pause, 3))
                await asyncio.sleep(pause)
                await _wait_sessions(master, others)
                reply = await viewers.call({"cmd": "join", "count": 1, "timeout": 30}, 60)
                if reply["failed"]:
                    raise BenchmarkError(f"{impl} {kind} viewer got no frame: {reply['failed']}")
                results[kind].append(reply["joined"][0])
                await viewers.call({"cmd": "leave", "ids": [reply["joined"][0]["id"]]})

            for _ in range(settings.ttff_runs):
                await one("first", 0)
            watcher = await viewers.call({"cmd": "join", "count": 1, "timeout": 30}, 60)
            if watcher["failed"]:
                raise BenchmarkError(f"{impl} watching viewer got no frame: {watcher['failed']}")
            results["watcher"] = watcher["joined"][0]
            for _ in range(settings.ttff_runs):
                await one("joining", 1)
        finally:
            await viewers.stop()
    finally:
        await master.stop()
    for kind in ("first", "joining"):
        results[f"{kind}Summary"] = summarize(r["ttffMs"] for r in results[kind])
    return results


async def encoder_cost(settings: Settings, logs: Path) -> dict[str, Any]:
    """CPU per encoded frame: kvs-peer's encoder settings against aiortc's defaults."""
    args = ["--width", str(settings.width), "--height", str(settings.height)]
    worker = await start_worker("encode", [*args, "--fps", str(settings.fps)], logs)
    try:
        return (await worker.read(180))["encoderCost"]
    finally:
        await worker.stop()


# -- environment and verdicts ----------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the numbers depend on."""
    import av

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return {
        "cpuCount": os.cpu_count(),
        "cpuModel": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiortc": _version("aiortc"),
        "av": _version("av"),
        "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        "kvsPeer": _version("kvs-peer"),
        "gitCommit": commit or None,
        "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _row(runs: list[dict[str, Any]], impl: str, count: int) -> dict[str, Any] | None:
    return next((r for r in runs if r["impl"] == impl and r["viewers"] == count), None)


def per_viewer_fit(report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Least-squares ``cores = fixed + perViewer * viewers`` for each master.

    Only windows in which every viewer kept up count: a saturated master's CPU says nothing
    about its cost per viewer.
    """
    fits: dict[str, Any] = {}
    for impl in settings.impls:
        points = [
            (r["viewers"], r["masterCores"])
            for r in report.get("cpu", [])
            if r["impl"] == impl and "error" not in r and r["fpsMin"] >= KEEPS_UP * settings.fps
        ]
        counts = {n for n, _ in points}
        if len(counts) < 2:
            continue
        mean_n = sum(n for n, _ in points) / len(points)
        mean_c = sum(c for _, c in points) / len(points)
        slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / sum(
            (n - mean_n) ** 2 for n, _ in points
        )
        fits[impl] = {
            "fixedCores": round(mean_c - slope * mean_n, 4),
            "perViewerCores": round(slope, 4),
            "viewerCounts": sorted(counts),
        }
    return fits


def verdicts(report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """PASS/FAIL for each target that was measured."""
    out: dict[str, Any] = {}
    runs = report.get("cpu", [])
    one, ten = _row(runs, "ours", 1), _row(runs, "ours", 10)
    if one and ten and "error" not in one and "error" not in ten:
        limit = FLAT_LIMIT * one["masterCores"]
        keeps_up = min(one["fpsMin"], ten["fpsMin"]) >= KEEPS_UP * settings.fps
        ok = ten["masterCores"] <= limit and keeps_up
        out["flatCpu"] = {
            "target": f"ours CPU with 10 viewers <= {FLAT_LIMIT} x ours CPU with 1 viewer",
            "oneViewerCores": one["masterCores"],
            "tenViewerCores": ten["masterCores"],
            "limitCores": round(limit, 4),
            "ratio": round(ten["masterCores"] / one["masterCores"], 3),
            "allViewersKeptUp": keeps_up,
            "verdict": "PASS" if ok else "FAIL",
        }
    else:
        out["flatCpu"] = {"verdict": "NOT MEASURED (needs 1 and 10 in --viewers)"}
    ttff = report.get("ttff", {}).get("ours")
    for kind, target in (("first", TTFF_FIRST_TARGET_MS), ("joining", TTFF_JOIN_TARGET_MS)):
        key = f"ttff{kind.capitalize()}"
        if ttff and "error" not in ttff:
            median = ttff[f"{kind}Summary"]["median"]
            out[key] = {
                "target": f"median time to first frame ({kind} viewer) <= {target:g} ms",
                "medianMs": median,
                "verdict": pass_fail(median, target),
            }
        else:
            out[key] = {"verdict": "NOT MEASURED"}
    return out


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def _ratio(ours: float | None, base: float | None) -> str:
    if not ours or not base:
        return "-"
    return f"{ours / base:.2f}x"


def print_report(report: dict[str, Any], settings: Settings) -> None:
    """The human-readable part: tables and verdicts."""
    env = report["environment"]
    w, h, fps = settings.width, settings.height, settings.fps
    print(
        f"\nkvs-peer master benchmark: {w}x{h}@{fps:g} test pattern"
        f"{' and a tone (Opus)' if settings.audio else ''}, {env['cpuCount']} CPUs, "
        f"Python {env['python']}, aiortc {env['aiortc']}, PyAV {env['av']}, "
        f"load at start {env['loadAverageAtStart']}"
    )
    runs = report.get("cpu", [])
    if runs:
        print(
            "\nMaster process CPU (cores = CPU-seconds per second over a "
            f"{settings.seconds:g} s window, median of {settings.windows}; "
            "ratio = ours / baseline)"
        )
        print(
            f"baseline = aiortc default: MediaRelay per viewer, one aiortc encoder per sender, "
            f"{settings.codec.upper()} forced"
        )
        header = (
            f"{'viewers':>7} | {'ours CPU':>8} | {'baseline CPU':>12} | {'ratio':>6} | "
            f"{'ours fps (min)':>14} | {'baseline fps (min)':>18} | {'latency ms':>11} | "
            f"{'other load':>11}"
        )
        print(header)
        print("-" * len(header))
        slow = KEEPS_UP * fps
        for count in settings.viewers:
            ours, base = _row(runs, "ours", count), _row(runs, "baseline", count)
            ok = [r for r in (ours, base) if r is not None and "error" not in r]

            def cell(r: dict[str, Any] | None, key: str, spec: str) -> str:
                if r is None:
                    return "-"
                if "error" in r:
                    return "error"
                return _fmt(r[key], spec)

            def fps_cell(r: dict[str, Any] | None) -> str:
                text = cell(r, "fpsMin", ".1f")
                if r is not None and "error" not in r and r["fpsMin"] < slow:
                    text += " SLOW"
                return text

            latency = " / ".join(_fmt(r["latencyMedianMs"], ".0f") for r in ok)
            others = " / ".join(_fmt(r["otherProcessesCores"], ".2f") for r in ok)
            ratio = (
                _ratio(ours["masterCores"], base["masterCores"])
                if ours and base and "error" not in ours and "error" not in base
                else "-"
            )
            print(
                f"{count:>7} | {cell(ours, 'masterCores', '.3f'):>8} | "
                f"{cell(base, 'masterCores', '.3f'):>12} | {ratio:>6} | "
                f"{fps_cell(ours):>14} | {fps_cell(base):>18} | {latency:>11} | {others:>11}"
            )
        print(
            f"SLOW: a viewer decoded under {KEEPS_UP:.0%} of {fps:g} fps (the master could not "
            "keep up, or the machine was saturated).\nlatency ms: median capture-to-decode "
            "latency (ours / baseline). other load: cores used by processes outside the "
            "benchmark during the window (ours / baseline)."
        )
        for impl, fit in report.get("perViewerFit", {}).items():
            print(
                f"{impl}: {fit['fixedCores']:.3f} + {fit['perViewerCores']:.4f} x viewers cores "
                f"(least squares over {', '.join(map(str, fit['viewerCounts']))} viewers, "
                "windows where every viewer kept up)"
            )
        rss = []
        for count in settings.viewers:
            cells = [
                _fmt(r["masterRssMiB"], ".0f") if r is not None and "error" not in r else "-"
                for r in (_row(runs, "ours", count), _row(runs, "baseline", count))
            ]
            rss.append(f"{count}: {' / '.join(cells)}")
        print(f"master RSS, MiB (ours / baseline), by viewers: {', '.join(rss)}")
        busy = [r["otherProcessesCores"] for r in runs if r.get("otherProcessesCores") is not None]
        if busy and max(busy) > BUSY_WARNING:
            print(
                f"WARNING: other processes used up to {max(busy):.2f} cores during the windows; "
                "rerun on a quiet machine for stable numbers."
            )
        for r in runs:
            if "error" in r:
                print(f"  {r['impl']} with {r['viewers']} viewers failed: {r['error']}")
    cost = report.get("encoderCost")
    if cost:
        print("\nEncoder alone, CPU per frame (no WebRTC; explains part of the ratio)")
        for name, value in cost.items():
            if isinstance(value, dict):
                print(
                    f"  {name:<11} {value['cpuMsPerFrame']:6.2f} ms/frame = "
                    f"{value['coresAtFps']:.3f} cores at {fps:g} fps  ({value['settings']})"
                )
    ttff = report.get("ttff", {})
    if ttff:
        print("\nTime to first frame, Viewer.start() -> first decoded frame (ms)")
        print(
            f"{'case':<24} | {'ours median':>11} | {'baseline median':>15} | {'ratio':>6} | "
            f"{'ours p75':>8} | ours runs"
        )
        for kind, label in (("first", "first viewer"), ("joining", "joining a watched stream")):
            ours, base = ttff.get("ours"), ttff.get("baseline")

            def med(r: dict[str, Any] | None, kind: str = kind) -> float | None:
                return r[f"{kind}Summary"]["median"] if r and "error" not in r else None

            def p75(r: dict[str, Any] | None, kind: str = kind) -> float | None:
                return r[f"{kind}Summary"]["p75"] if r and "error" not in r else None

            runs_text = (
                " ".join(f"{x['ttffMs']:.0f}" for x in ours[kind])
                if ours and "error" not in ours
                else ""
            )
            print(
                f"{label:<24} | {_fmt(med(ours), '.0f'):>11} | {_fmt(med(base), '.0f'):>15} | "
                f"{_ratio(med(ours), med(base)):>6} | {_fmt(p75(ours), '.0f'):>8} | {runs_text}"
            )
        for impl, r in ttff.items():
            if "error" in r:
                print(f"  {impl} time to first frame failed: {r['error']}")
    print("\nTargets")
    for verdict in report["verdicts"].values():
        if "target" not in verdict:
            print(f"  {verdict['verdict']}")
            continue
        if "ratio" in verdict:
            detail = (
                f"{verdict['tenViewerCores']:.3f} vs {FLAT_LIMIT} x {verdict['oneViewerCores']:.3f}"
                f" = {verdict['limitCores']:.3f} cores (ratio {verdict['ratio']:.2f})"
            )
            if not verdict["allViewersKeptUp"]:
                detail += ", but some viewer did not get the full frame rate"
        else:
            detail = f"median {_fmt(verdict['medianMs'], '.0f')} ms"
        print(f"  {verdict['verdict']:<4}  {verdict['target']}: {detail}")


# -- main -------------------------------------------------------------------------------------


async def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    """Run every requested part; failures of one part are recorded, not raised."""
    from kvs_peer.emulator import LocalKvs

    started = time.monotonic()
    report: dict[str, Any] = {"environment": environment(), "settings": settings_json(settings)}
    rng = random.Random(settings.seed)
    async with LocalKvs() as kvs:
        if "cpu" in settings.parts:
            report["cpu"] = []
            for count in settings.viewers:
                for impl in settings.impls:
                    print(f"cpu: {impl}, {count} viewer(s) ...", flush=True)
                    try:
                        result = await cpu_run(kvs, settings, impl, count, log_dir)
                    except BenchmarkError as exc:
                        result = {"impl": impl, "viewers": count, "error": str(exc)}
                    report["cpu"].append(result)
        if "ttff" in settings.parts:
            report["ttff"] = {}
            for impl in settings.impls:
                print(f"ttff: {impl} ...", flush=True)
                try:
                    report["ttff"][impl] = await ttff_runs(kvs, settings, impl, rng, log_dir)
                except BenchmarkError as exc:
                    report["ttff"][impl] = {"error": str(exc)}
    if "encoder" in settings.parts:
        print("encoder cost ...", flush=True)
        try:
            report["encoderCost"] = await encoder_cost(settings, log_dir)
        except BenchmarkError as exc:
            report["encoderCost"] = {"error": str(exc)}
    report["perViewerFit"] = per_viewer_fit(report, settings)
    report["verdicts"] = verdicts(report, settings)
    report["environment"]["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    report["totalSeconds"] = round(time.monotonic() - started, 1)
    report["logs"] = str(log_dir)
    return report


def settings_json(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON-friendly values for the report."""
    return {
        "viewers": list(settings.viewers),
        "seconds": settings.seconds,
        "windows": settings.windows,
        "settle": settings.settle,
        "ttffRuns": settings.ttff_runs,
        "impls": list(settings.impls),
        "baselineCodec": settings.codec,
        "video": f"{settings.width}x{settings.height}@{settings.fps:g}",
        "loopbackCandidates": settings.loopback,
        "audio": settings.audio,
        "seed": settings.seed,
        "parts": sorted(settings.parts),
        "profile": str(settings.profile) if settings.profile else None,
    }


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4,10, got {text!r}") from None
    if not values or any(not 1 <= v <= 10 for v in values):
        raise argparse.ArgumentTypeError(
            f"viewer counts must be 1..10 (KVS allows 10 viewers per channel), got {text!r}"
        )
    return values


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"choose from {','.join(allowed)} (comma separated), got {text!r}"
            )
        return values

    return parse


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.master_cpu``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.master_cpu",
        description="Master CPU per viewer count and time to first frame, kvs-peer vs aiortc.",
    )
    p.add_argument("--viewers", type=_int_list, default=(1, 2, 4, 10), help="default 1,2,4,10")
    p.add_argument("--seconds", type=_positive(float), default=10.0, help="CPU window (10)")
    p.add_argument(
        "--windows",
        type=_positive(int),
        default=3,
        help="CPU windows per viewer count; the median one is reported (3)",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds after all first frames before the window"
    )
    p.add_argument("--ttff-runs", type=_positive(int), default=7, help="runs per TTFF case (7)")
    p.add_argument("--impls", type=_choices(IMPLS), default=IMPLS, help="ours,baseline")
    p.add_argument(
        "--parts",
        type=_choices(("cpu", "ttff", "encoder")),
        default=("cpu", "ttff", "encoder"),
        help="cpu,ttff,encoder",
    )
    p.add_argument("--baseline-codec", choices=["h264", "vp8"], default="h264")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=_positive(float), default=30.0)
    p.add_argument(
        "--loopback-candidates",
        action="store_true",
        help="also gather 127.0.0.1 candidates (hosts whose only interface is lo)",
    )
    p.add_argument(
        "--audio",
        action="store_true",
        help="both masters also send a tone (Opus) and every viewer receives it",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the pauses between TTFF runs")
    add_output_options(p, "master_cpu", "worker logs")
    p.add_argument(
        "--profile",
        type=Path,
        help="write a cProfile of each master's event loop during its CPU window to this folder "
        "(profiling inflates the CPU numbers: use it to find costs, not to report them)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the JSON report."""
    args = parser().parse_args(argv)
    if args.settle < 0:
        parser().error("--settle must be 0 or more")
    if args.width < 64 or args.height < 60 or args.width % 2 or args.height % 2:
        parser().error("--width/--height must be even and at least 64x60")
    settings = Settings(
        viewers=args.viewers,
        seconds=args.seconds,
        settle=args.settle,
        windows=args.windows,
        ttff_runs=args.ttff_runs,
        impls=args.impls,
        codec=args.baseline_codec,
        width=args.width,
        height=args.height,
        fps=args.fps,
        loopback=args.loopback_candidates,
        audio=args.audio,
        seed=args.seed,
        parts=frozenset(args.parts),
        profile=args.profile.resolve() if args.profile else None,
    )
    if settings.profile is not None:
        settings.profile.mkdir(parents=True, exist_ok=True)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="kvs-peer-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return finish(
        run(settings, log_dir),
        args.json,
        lambda report: print_report(report, settings),
        f"worker logs: {log_dir}",
    )


if __name__ == "__main__":
    sys.exit(main())
