"""Viewer churn against one master: does the master give back what churn takes?

::

    .venv/bin/python -m benchmarks.churn --seconds 60 --rate 5 --json churn.json

Two processes, so the master is measured alone:

* this one runs the local KVS emulator (signaling only) and the churning viewers: ``--clients``
  signaling connections (5) that together send ``--rate`` SDP offers per second (5, what KVS
  allows one connection). Each offer comes from a fresh aiortc peer connection and is, in turn:
  a viewer that connects and leaves at its next turn (``watch``); an offer whose peer
  connection is closed at once, so it never connects (``abandon``); and a new offer from the
  same client id while its previous session is connected (``reoffer``, which replaces it).
  Every ``--rotate`` offers a client reconnects under a new client id (a viewer leaving and
  a new one arriving), which keeps connects under KVS's 3 per second;
* a **master** process: kvs-peer's ``Master`` streaming a test pattern, which answers
  ``probe`` commands with its RSS, live Python objects (after ``gc.collect()``), threads, open
  fds, asyncio tasks, sessions, encoder subscribers and ``RTCPeerConnection`` objects alive.

The baseline probe comes after a warm-up (one viewer that watched and left, one abandoned
offer) once the master has no session; the final one once every session is gone after the
churn (at most ``--drain`` seconds) and ``--settle`` seconds more. A measurement, not a test:
the exit code is 0 whether the targets pass or not (2 for bad arguments, 1 if the harness broke).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure import JsonLines, Worker, add_output_options, finish

__all__ = ["main"]

RSS_TOLERANCE = 0.10
"""Master RSS after the churn may exceed its baseline by this share."""
OBJECTS_PER_OFFER = 5.0
"""Live Python objects the master may keep per offer it handled (a leak keeps thousands)."""
KINDS = ("watch", "abandon", "watch", "reoffer")


# -- master worker -----------------------------------------------------------------------------


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _malloc_trim() -> float | None:
    """RSS after glibc's ``malloc_trim(0)``: memory freed but not yet given back to the system
    still counts in RSS; this tells it apart from memory still in use. None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_mib()


def _probe(master: Any, trim: bool = False) -> dict[str, Any]:
    from aiortc import RTCPeerConnection

    gc.collect()
    objects = gc.get_objects()
    encoder = master.encoder
    rss = _rss_mib()
    return {
        "t": time.monotonic(),
        "rssMiB": rss,
        "rssTrimmedMiB": _malloc_trim() if trim else None,
        "objects": len(objects),
        "peerConnections": sum(1 for o in objects if isinstance(o, RTCPeerConnection)),
        "threads": threading.active_count(),
        "nativeThreads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "sessions": len(master.viewers),
        "connected": sum(1 for s in master.viewers.values() if s.connected_at is not None),
        "subscribers": encoder.subscribers if encoder is not None else 0,
        # Counters only: the setup-time history is a deque (and not a figure of churn).
        "stats": {k: v for k, v in vars(master.stats).items() if k != "recent_setup_seconds"},
    }


async def _master_worker(args: argparse.Namespace) -> None:
    import boto3

    from kvs_peer.access import AwsAccess
    from kvs_peer.channel import ChannelResolver
    from kvs_peer.emulator import (
        DEFAULT_ACCESS_KEY_ID,
        DEFAULT_REGION,
        DEFAULT_SECRET_ACCESS_KEY,
    )
    from kvs_peer.master import Master
    from kvs_peer.media import TestPatternTrack
    from kvs_peer.protocol import Role

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    io = JsonLines()
    await io.open()
    # The emulator's credentials, never the environment's: nothing here may reach AWS.
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name=DEFAULT_REGION,
    )
    resolver = ChannelResolver(region=DEFAULT_REGION, endpoint_url=args.endpoint, session=session)
    async with (
        resolver,
        Master(
            AwsAccess(resolver, args.channel, Role.MASTER),
            video=TestPatternTrack(args.width, args.height, args.fps),
            connect_timeout=args.connect_timeout,
            loopback_candidates=args.loopback,
        ) as master,
    ):
        io.send(event="ready", pid=os.getpid())
        async for command in io.commands():
            match command.get("cmd"):
                case "probe":
                    io.send(**_probe(master, trim=bool(command.get("trim"))))
                case "quit":
                    break
                case other:
                    io.send(error=f"unknown command {other!r}")


# -- driver side ----------------------------------------------------------------------------------


async def _probe_master(master: Worker, *, trim: bool = False) -> dict[str, Any]:
    return await master.call({"cmd": "probe", "trim": trim})


@dataclass
class ChurnCounts:
    """What the churning viewers did."""

    offers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    answers: int = 0
    connected: int = 0
    client_ids: int = 0
    errors: int = 0


class ChurnClient:
    """One viewer signaling connection that keeps offering from fresh peer connections."""

    def __init__(
        self, resolver: Any, channel: str, index: int, counts: ChurnCounts, loopback: bool
    ) -> None:
        self._resolver = resolver
        self._channel = channel
        self._index = index
        self._counts = counts
        self._loopback = loopback
        self._signaling: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pc: Any = None
        self._old: list[Any] = []

    async def connect(self) -> None:
        from kvs_peer.access import AwsAccess
        from kvs_peer.protocol import Role
        from kvs_peer.signaling import SignalingClient

        await self.disconnect()
        client_id = f"churn-{self._index}-{uuid.uuid4().hex[:8]}"
        access = AwsAccess(self._resolver, self._channel, Role.VIEWER, client_id=client_id)
        self._signaling = SignalingClient(access, role=Role.VIEWER, client_id=client_id)
        await self._signaling.connect()
        self._counts.client_ids += 1
        self._reader = asyncio.create_task(self._read(self._signaling))

    async def _read(self, signaling: Any) -> None:
        from aiortc import RTCSessionDescription

        from kvs_peer.protocol import SdpAnswer

        async for event in signaling:
            pc = self._pc
            if isinstance(event, SdpAnswer) and pc is not None:
                if pc.signalingState == "have-local-offer":
                    self._counts.answers += 1
                    with contextlib.suppress(Exception):
                        await pc.setRemoteDescription(RTCSessionDescription(event.sdp, "answer"))

    async def offer(self, kind: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from kvs_peer.peerconnection import enable_loopback_candidates

        previous, self._pc = self._pc, None
        if previous is not None and kind != "reoffer":
            await previous.close()
        elif previous is not None:
            self._old.append(previous)  # closed once the master replaced its session
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self._counts.connected += 1

        if self._loopback:
            enable_loopback_candidates(pc)
        await pc.setLocalDescription(await pc.createOffer())
        self._pc = pc
        await self._signaling.send_offer(pc.localDescription.sdp)
        self._counts.offers[kind] += 1
        if kind == "abandon":
            self._pc = None
            await pc.close()
        old, self._old = self._old, []
        for stale in old:
            await stale.close()

    async def disconnect(self) -> None:
        pcs = [pc for pc in (self._pc, *self._old) if pc is not None]
        self._pc, self._old = None, []
        for pc in pcs:
            await pc.close()
        if self._signaling is not None:
            await self._signaling.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self._signaling = self._reader = None


async def churn(
    resolver: Any,
    channel: str,
    *,
    clients: int,
    rate: float,
    seconds: float,
    rotate: int,
    loopback: bool,
    on_tick: Any = None,
) -> ChurnCounts:
    """Send ``rate`` offers per second for ``seconds`` from ``clients`` viewer connections."""
    counts = ChurnCounts()
    pool = [ChurnClient(resolver, channel, i, counts, loopback) for i in range(clients)]
    for client in pool:
        await client.connect()
    kinds = itertools.cycle(KINDS)
    started = time.monotonic()
    try:
        for n in itertools.count():
            due = started + n / rate
            if due - started >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            client = pool[n % clients]
            try:
                if rotate and n >= clients and (n // clients) % rotate == 0:
                    await client.connect()  # a viewer leaves, a new one arrives
                await client.offer(next(kinds))
            except Exception as exc:  # one failed offer must not end the measurement
                counts.errors += 1
                print(f"offer {n} failed: {exc}", file=sys.stderr)
            if on_tick is not None:
                await on_tick(n)
    finally:
        for client in pool:
            await client.disconnect()
    return counts


def _verdicts(before: dict[str, Any], after: dict[str, Any], offers: int) -> dict[str, Any]:
    rss_growth = (after["rssMiB"] - before["rssMiB"]) / before["rssMiB"]
    objects = after["objects"] - before["objects"]
    return {
        "rssGrowth": round(rss_growth, 4),
        "rssOk": rss_growth <= RSS_TOLERANCE,
        "objectsGrowth": objects,
        "objectsPerOffer": round(objects / max(offers, 1), 2),
        "objectsOk": objects <= OBJECTS_PER_OFFER * max(offers, 1),
        "threadsOk": after["nativeThreads"] <= before["nativeThreads"],
        "fdsOk": after["fds"] <= before["fds"],
        "tasksOk": after["tasks"] <= before["tasks"],
        "peerConnectionsOk": after["peerConnections"] == 0,
        "sessionsOk": after["sessions"] == 0 and after["subscribers"] == 0,
    }


async def _drain(master: Worker, timeout: float) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    while True:
        probe = await _probe_master(master)
        if probe["sessions"] == 0 or time.monotonic() - started > timeout:
            return probe, time.monotonic() - started
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Warm up, probe, churn, drain, probe; return the report."""
    from kvs_peer.emulator import LocalKvs

    async with LocalKvs() as kvs:
        channel = f"churn-{uuid.uuid4().hex[:8]}"
        kvs.create_channel(channel)
        worker_args = [
            "--endpoint",
            kvs.endpoint_url,
            "--channel",
            channel,
            "--width",
            str(args.width),
            "--height",
            str(args.height),
            "--fps",
            str(args.fps),
            "--connect-timeout",
            str(args.connect_timeout),
        ]
        if args.loopback_candidates:
            worker_args.append("--loopback-candidates")
        master = await Worker.start(
            "master", ["benchmarks.churn", "--master-worker", *worker_args], log_dir / "master.log"
        )
        try:
            async with kvs.resolver() as resolver:

                async def churn_for(
                    seconds: float,
                    *,
                    clients: int = args.clients,
                    rate: float = args.rate,
                    rotate: int = args.rotate,
                    on_tick: Any = None,
                ) -> ChurnCounts:
                    return await churn(
                        resolver,
                        channel,
                        clients=clients,
                        rate=rate,
                        seconds=seconds,
                        rotate=rotate,
                        loopback=args.loopback_candidates,
                        on_tick=on_tick,
                    )

                async def settle() -> None:
                    await _drain(master, args.drain)
                    await asyncio.sleep(args.settle)

                # Warm-up: what a first viewer brings (imports, encoder, thread pools) is not
                # churn. One round of each kind, then an idle master: the cold baseline.
                await churn_for(len(KINDS) + 1, clients=1, rate=1.0, rotate=0)
                await settle()
                cold = await _probe_master(master, trim=True)
                # Then the same churn for --warmup seconds: the heap reaches the size that as
                # many concurrent sessions need, which the C allocator keeps afterwards (freed,
                # reused, but not given back: see rssTrimmedMiB). A leak grows past it.
                if args.warmup > 0:
                    await churn_for(args.warmup)
                    await settle()
                before = await _probe_master(master, trim=False)
                samples: list[dict[str, Any]] = []

                async def sample(n: int) -> None:
                    if n % max(1, round(args.rate * 5)) == 0:
                        probe = await _probe_master(master)
                        samples.append({k: probe[k] for k in ("t", "rssMiB", "sessions")})

                counts = await churn_for(args.seconds, on_tick=sample)
                ended = time.monotonic()
                drained, drain_seconds = await _drain(master, args.drain)
                await asyncio.sleep(args.settle)
                after = await _probe_master(master, trim=True)
        finally:
            await master.stop()
    offers = sum(counts.offers.values())
    for s in samples:
        s["t"] = round(s["t"] - before["t"], 1)
    return {
        "settings": {
            k: getattr(args, k)
            for k in (
                "seconds",
                "rate",
                "clients",
                "rotate",
                "width",
                "height",
                "fps",
                "connect_timeout",
                "warmup",
                "drain",
                "settle",
            )
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "churn": {
            "offers": offers,
            "byKind": counts.offers,
            "answers": counts.answers,
            "viewerConnections": counts.connected,
            "clientIds": counts.client_ids,
            "errors": counts.errors,
            "achievedRate": round(offers / args.seconds, 2),
        },
        "cold": cold,
        "coldRssGrowth": round((after["rssMiB"] - cold["rssMiB"]) / cold["rssMiB"], 4),
        "before": before,
        "during": samples,
        "drainSeconds": round(drain_seconds, 2),
        "drainedAfterChurn": drained["sessions"] == 0,
        "peakSessions": max((s["sessions"] for s in samples), default=0),
        "after": after,
        "churnEndedToAfter": round(after["t"] - ended, 1),
        "verdicts": _verdicts(before, after, offers),
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def print_report(report: dict[str, Any]) -> None:
    """The figures, one line each, then PASS/FAIL per target."""
    before, after, v, c = report["before"], report["after"], report["verdicts"], report["churn"]
    print(
        f"churn: {c['offers']} offers in {report['settings']['seconds']:g} s "
        f"({c['achievedRate']}/s; {c['byKind']}), {c['viewerConnections']} viewer connections, "
        f"{c['clientIds']} client ids, {c['errors']} errors"
    )
    print(f"sessions drained {report['drainSeconds']} s after the churn")
    cold = report["cold"]
    print(
        f"cold baseline (idle after one viewer): {cold['rssMiB']} MiB, "
        f"{cold['rssTrimmedMiB']} MiB after malloc_trim; "
        f"after the churn: {report['coldRssGrowth'] * 100:+.1f}% of it"
    )
    print(f"{'':14} {'before':>10} {'after':>10}")
    for key in (
        "rssMiB",
        "rssTrimmedMiB",
        "objects",
        "peerConnections",
        "threads",
        "nativeThreads",
        "fds",
        "tasks",
        "sessions",
        "subscribers",
    ):
        print(f"{key:14} {_cell(before[key]):>10} {_cell(after[key]):>10}")
    peak = max((s["rssMiB"] for s in report["during"]), default=after["rssMiB"])
    print(f"peak RSS sampled during the churn: {peak} MiB")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"{verdict(v['rssOk'])} RSS growth {v['rssGrowth'] * 100:+.1f}% (limit +10%)")
    print(
        f"{verdict(v['objectsOk'])} objects {v['objectsGrowth']:+d} "
        f"({v['objectsPerOffer']} per offer, limit {OBJECTS_PER_OFFER:g})"
    )
    for key, label in (
        ("threadsOk", "threads back to baseline"),
        ("fdsOk", "fds back to baseline"),
        ("tasksOk", "asyncio tasks back to baseline"),
        ("peerConnectionsOk", "no RTCPeerConnection left"),
        ("sessionsOk", "no session or encoder subscriber left"),
    ):
        print(f"{verdict(v[key])} {label}")


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.churn``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.churn",
        description="Churn viewers against one master and check it gives back what it took.",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="churn duration (60)")
    p.add_argument("--rate", type=float, default=5.0, help="offers per second, all clients (5)")
    p.add_argument("--clients", type=int, default=5, help="viewer connections (5)")
    p.add_argument(
        "--rotate",
        type=int,
        default=5,
        help="a client takes a new client id every this many of its offers (5; 0 never)",
    )
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument(
        "--connect-timeout", type=float, default=30.0, help="the master's connect_timeout (30)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds of the same churn before the baseline probe (10; 0 for none)",
    )
    p.add_argument("--drain", type=float, default=60.0, help="longest wait for sessions to go (60)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before each probe (2)")
    p.add_argument("--loopback-candidates", action="store_true")
    add_output_options(p, "churn", "master log")
    # Worker mode (started by the driver; not for use by hand).
    p.add_argument("--master-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--channel", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and write the JSON report."""
    p = parser()
    args = p.parse_args(argv)
    args.loopback = args.loopback_candidates
    if args.master_worker:
        asyncio.run(_master_worker(args))
        return 0
    if args.seconds <= 0 or args.rate <= 0 or args.clients < 1 or args.rotate < 0:
        p.error("--seconds and --rate must be > 0, --clients >= 1, --rotate >= 0")
    if args.rate / args.clients > 5:
        p.error("KVS allows 5 offers per second per connection: add --clients")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="kvs-peer-churn-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return finish(
        run(args, log_dir), args.json, print_report, f"master log: {log_dir / 'master.log'}"
    )


if __name__ == "__main__":
    sys.exit(main())
