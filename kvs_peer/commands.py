"""Subcommands of the ``kvs-peer`` CLI: argument setup and a coroutine each.

``COMMANDS`` maps a name to ``(help, configure(parser), handler(args) -> exit code)``.
Heavy modules (aiortc, PyAV) are imported inside handlers so ``kvs-peer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .cli import add_connection_options
from .media.presets import X264_PRESETS
from .protocol import Role
from .signer import cli as signer_cli

if TYPE_CHECKING:
    from .access import ChannelAccess

Configure = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# -- url -------------------------------------------------------------------------------------


def _configure_url(p: argparse.ArgumentParser) -> None:
    add_connection_options(p, signer=False)
    p.add_argument("--role", default="VIEWER", help="MASTER or VIEWER (default VIEWER)")
    p.add_argument("--client-id", help="viewer client id (required for VIEWER)")
    p.add_argument(
        "--expires", type=int, default=299, help="validity in seconds (default 299, as the JS SDK)"
    )
    p.add_argument("--json", action="store_true", help="print JSON with the ICE servers too")


async def _url(args: argparse.Namespace) -> int:
    from .channel import ChannelResolver
    from .errors import InvalidArgument
    from .protocol import Role

    role = Role.parse(args.role)
    if role is Role.VIEWER and not args.client_id:
        raise InvalidArgument("--client-id is required with --role VIEWER")
    if role is Role.MASTER and args.client_id:
        raise InvalidArgument("a MASTER has no client id: drop --client-id")
    async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as resolver:
        resolved = await resolver.resolve(
            args.channel, role, client_id=args.client_id, create=args.create_channel
        )
        url = await resolver.presign(resolved, client_id=args.client_id, expires=args.expires)
    if args.json:
        print(
            json.dumps(
                {
                    "url": url,
                    "role": role.value,
                    "channelARN": resolved.arn,
                    "clientId": args.client_id,
                    "region": resolved.region,
                    "iceServers": [s.to_json() for s in resolved.ice_servers],
                },
                indent=2,
            )
        )
    else:
        print(url)
    return 0


# -- local -----------------------------------------------------------------------------------


def _configure_local(p: argparse.ArgumentParser) -> None:
    from .emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_REGION, DEFAULT_SECRET_ACCESS_KEY

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4577, help="port (default 4577; 0 picks one)")
    p.add_argument("--region", default=DEFAULT_REGION, help=f"region (default {DEFAULT_REGION})")
    p.add_argument("--access-key-id", default=DEFAULT_ACCESS_KEY_ID, help="accepted access key id")
    p.add_argument(
        "--secret-access-key", default=DEFAULT_SECRET_ACCESS_KEY, help="its secret access key"
    )
    p.add_argument(
        "--tls", action="store_true", help="serve https:// and wss:// with a self-signed cert"
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        help="create this channel at start (repeatable)",
    )
    p.add_argument("--max-viewers", type=int, default=10, help="viewers per channel (default 10)")


async def _local(args: argparse.Namespace) -> int:

    from .emulator import EmulatorConfig, LocalKvs

    config = EmulatorConfig(
        region=args.region,
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        max_viewers=args.max_viewers,
    )
    async with LocalKvs(config, host=args.host, port=args.port, tls=args.tls) as kvs:
        for name in args.channel:
            kvs.create_channel(name)
        lines = [
            f"kvs-peer local emulator listening on {kvs.endpoint_url}",
            "Point kvs-peer, boto3 or the AWS CLI at it with:",
            f"  export AWS_ACCESS_KEY_ID={config.access_key_id}",
            f"  export AWS_SECRET_ACCESS_KEY={config.secret_access_key}",
            f"  export AWS_REGION={config.region}",
            f"  export KVS_PEER_ENDPOINT_URL={kvs.endpoint_url}",
        ]
        if kvs.certificate is not None:
            lines.append(f"TLS CA certificate (trust it in clients): {kvs.ca_cert_path}")
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)
        await args.stop.wait()
    return 0


# -- master / viewer ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_access(
    args: argparse.Namespace, role: Role, client_id: str | None = None
) -> AsyncIterator[ChannelAccess]:
    """Channel access from the shared connection options (AWS credentials or a signer)."""
    from .access import AwsAccess, SignerAccess
    from .channel import ChannelResolver

    if getattr(args, "signer", None):
        yield SignerAccess(
            args.signer,
            args.channel,
            role,
            client_id=client_id,
            token=args.token or _env_token(),
        )
        return
    async with ChannelResolver(region=args.region, endpoint_url=args.endpoint_url) as resolver:
        yield AwsAccess(
            resolver, args.channel, role, client_id=client_id, create=args.create_channel
        )


def _add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until Ctrl+C)"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable stats at the end")
    p.add_argument(
        "--loopback-candidates",
        action="store_true",
        help="also offer 127.0.0.1 ICE candidates (hosts whose only interface is loopback)",
    )


def _configure_master(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    p.add_argument(
        "--source",
        default="testsrc",
        help="testsrc, a media file, a camera index (0) or device (/dev/video0), or a URL "
        "such as rtsp://... (default testsrc)",
    )
    p.add_argument("--audio", default="none", help="tone, a media file, a URL, or none")
    p.add_argument("--width", type=int, help="video width (test pattern, cameras)")
    p.add_argument("--height", type=int, help="video height")
    p.add_argument("--fps", type=float, help="frames per second")
    p.add_argument("--loop", action="store_true", help="loop a media file")
    p.add_argument(
        "--no-reopen",
        dest="reopen",
        action="store_false",
        help="stop streaming when a camera or stream URL ends, instead of opening it again",
    )
    p.add_argument("--bitrate", type=int, default=1_000_000, help="video bit/s (default 1M)")
    p.add_argument("--gop", type=int, default=60, help="keyframe interval in frames (default 60)")
    p.add_argument(
        "--preset",
        default="veryfast",
        choices=X264_PRESETS,
        metavar="PRESET",
        help="x264 speed preset: ultrafast uses the least CPU (small boards such as a "
        "Raspberry Pi), slower ones give a better picture per bit (default veryfast)",
    )
    p.add_argument("--max-viewers", type=int, default=10, help="viewers at once (default 10)")
    _add_peer_options(p)


async def _master(args: argparse.Namespace) -> int:
    from .master import Master
    from .media import open_audio_source, open_video_source
    from .media.sources import describe_url
    from .protocol import Role

    # Opening may block (an RTSP camera can take seconds): keep it off the event loop.
    video = await asyncio.to_thread(
        open_video_source,
        args.source,
        width=args.width,
        height=args.height,
        fps=args.fps,
        loop=args.loop,
        reopen=args.reopen,
    )
    audio = await asyncio.to_thread(open_audio_source, args.audio, loop=args.loop)
    started = time.monotonic()
    async with (
        open_access(args, Role.MASTER) as access,
        Master(
            access,
            video=video,
            audio=audio,
            max_viewers=args.max_viewers,
            bitrate=args.bitrate,
            gop=args.gop,
            preset=args.preset,
            loopback_candidates=args.loopback_candidates,
        ) as master,
        StatusLine(lambda meter: _master_status(master, meter), enabled=not args.json),
    ):
        source = getattr(video, "description", None) or describe_url(args.source)
        _stderr(f"streaming {source} on channel {args.channel!r} as MASTER (Ctrl+C stops)")
        await _wait(master.wait_closed(), args)
        if master.end_reason is not None:
            if getattr(video, "live", False):
                hint = " (without --no-reopen it is opened again)"
            elif master.end_reason.endswith("ended"):
                hint = " (--loop repeats a file)"
            else:
                hint = ""
            _stderr(f"{master.end_reason}; stopping{hint}")
    if args.json:
        stats = master.stats
        print(
            json.dumps(
                {
                    "ok": True,
                    "role": "MASTER",
                    "channel": args.channel,
                    "duration": round(time.monotonic() - started, 3),
                    "offers": stats.offers,
                    "sessionsStarted": stats.sessions_started,
                    "sessionsConnected": stats.sessions_connected,
                    "sessionsFailed": stats.sessions_failed,
                    "signalingReconnects": master.signaling.stats.reconnects,
                    "endReason": master.end_reason,
                }
            )
        )
    return 0


async def _master_status(master: Any, meter: _Meter) -> str:
    from .session import link_stats

    viewers = master.viewers
    connected = [s for s in viewers.values() if s.connected_at is not None]
    links = [await link_stats(s.pc) for s in connected]
    rtts = [link.round_trip_time for link in links if link.round_trip_time is not None]
    rate = meter.rate(sum(link.bytes_sent for link in links))
    rtt = f"{max(rtts) * 1000:.0f} ms" if rtts else "-"
    encoder = master.encoder
    if encoder is None:
        video = "no video"
    elif getattr(encoder.source, "reopening", False):
        video = "source reopening"
    else:
        video = f"{meter.rate(encoder.frames_encoded, 'frames'):.0f} fps"
    return (
        f"MASTER | signaling {'up' if master.signaling.connected else 'down'} | "
        f"viewers {len(connected)}/{len(viewers)} | {video} | "
        f"{rate * 8 / 1e6:.2f} Mbit/s out | RTT max {rtt}"
    )


def _configure_viewer(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    p.add_argument("--client-id", help="stable viewer id (default: a generated one)")
    p.add_argument("--record", help="record to this file (.mkv survives crashes; .mp4 does not)")
    p.add_argument("--segment", type=float, help="start a new recording file every S seconds")
    p.add_argument("--snapshot", help="save the last frame as PNG here at the end")
    p.add_argument("--audio", action="store_true", help="also receive audio")
    _add_peer_options(p)


async def _viewer(args: argparse.Namespace) -> int:
    from .media import Recorder, save_snapshot
    from .protocol import Role
    from .viewer import Viewer, new_client_id

    client_id = args.client_id or new_client_id()
    recorder = (
        Recorder(args.record, segment_seconds=args.segment, audio=args.audio)
        if args.record
        else None
    )
    last: list[Any] = [None]
    async with (
        open_access(args, Role.VIEWER, client_id) as access,
        Viewer(
            access,
            audio=args.audio,
            recorder=recorder,
            on_frame=lambda frame: last.__setitem__(0, frame),
            loopback_candidates=args.loopback_candidates,
        ) as viewer,
        StatusLine(lambda meter: _viewer_status(viewer, meter), enabled=not args.json),
    ):
        _stderr(f"viewing channel {args.channel!r} as {client_id} (Ctrl+C stops)")
        await _wait(viewer.wait_closed(), args)
    if args.snapshot and last[0] is not None:
        save_snapshot(last[0], args.snapshot)
    stats = viewer.stats
    if args.json:
        ttff = stats.time_to_first_frame
        print(
            json.dumps(
                {
                    "ok": stats.frames_received > 0,
                    "role": "VIEWER",
                    "channel": args.channel,
                    "clientId": client_id,
                    "timeToFirstFrame": round(ttff, 3) if ttff is not None else None,
                    "framesReceived": stats.frames_received,
                    "audioFramesReceived": stats.audio_frames_received,
                    "fps": round(stats.fps(), 2),
                    "width": stats.width,
                    "height": stats.height,
                    "duration": round(time.monotonic() - stats.started_at, 3),
                    "recording": [str(f) for f in recorder.files] if recorder else [],
                    "snapshot": args.snapshot if last[0] is not None else None,
                }
            )
        )
    return 0 if stats.frames_received > 0 or not args.duration else 2


async def _viewer_status(viewer: Any, meter: _Meter) -> str:
    from .session import link_stats

    stats = viewer.stats
    pc = viewer.pc
    state = pc.connectionState if pc is not None else "new"
    received = (await link_stats(pc)).bytes_received if pc is not None else 0
    size = f"{stats.width}x{stats.height}" if stats.width else "-"
    return (
        f"VIEWER | {state} | frames {stats.frames_received} | "
        f"{stats.fps(time.monotonic()):.1f} fps | {size} | "
        f"{meter.rate(received) * 8 / 1e6:.2f} Mbit/s in"
    )


async def _wait(aw: Awaitable[Any], args: argparse.Namespace) -> None:
    """Wait for ``aw``, ``--duration`` or a stop signal (``args.stop``), whichever is first.

    ``aw`` finishing with an error (e.g. signaling gave up) raises that error.
    """
    work = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(args.stop.wait())
    try:
        await asyncio.wait({work, stop}, timeout=args.duration, return_when="FIRST_COMPLETED")
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        work.result()


class _Meter:
    """Turns growing counters (bytes, frames) into rates between successive calls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def rate(self, total: int, counter: str = "bytes") -> float:
        now = time.monotonic()
        last = self._last.get(counter)
        self._last[counter] = (now, total)
        if last is None or now <= last[0] or total < last[1]:
            return 0.0
        return (total - last[1]) / (now - last[0])


class StatusLine:
    """Rewrites one status line on stderr every second while a TTY is attached."""

    def __init__(self, render: Callable[[_Meter], Awaitable[str]], *, enabled: bool = True) -> None:
        self._render = render
        self._enabled = enabled and sys.stderr.isatty()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusLine:
        if self._enabled:
            self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            sys.stderr.write("\n")

    async def _loop(self) -> None:
        meter = _Meter()
        while True:
            await asyncio.sleep(1)
            try:
                line = await self._render(meter)
            except Exception as exc:  # a status line must never take the command down
                line = f"(status unavailable: {exc})"
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()


# -- demo --------------------------------------------------------------------------------------


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=5.0, help="seconds to stream (default 5)")
    p.add_argument(
        "--output", default="kvs-peer-demo", help="folder for the recording and snapshot"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = await run_demo(duration=args.duration, output=args.output)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_demo_text(result))
    return 0 if result["ok"] else 1


def _demo_text(r: dict[str, Any]) -> str:
    v = r["video"]
    rec = r["recording"]
    lines = [
        "kvs-peer demo: local KVS emulator + master (test pattern) + recording viewer",
        f"  signaling emulator     {r['endpointUrl']} (channel {r['channel']!r})",
        f"  time to first frame    {r['timeToFirstFrameMs']} ms",
        f"  frames received        {v['frames']} in {r['duration']} s ({r['fps']} fps, "
        f"{v['width']}x{v['height']})",
        f"  frame counters         {v['firstCounter']} -> {v['lastCounter']} "
        f"({v['countersBackwards']} backwards, {v['countersSkipped']} skipped)",
        f"  latency (capture->decoded)  median {v['latencyMedianMs']} ms, "
        f"p95 {v['latencyP95Ms']} ms",
        f"  recording              {rec['path']} ({rec['framesDecoded']} frames decode)",
        f"  snapshot               {r['snapshot']}",
        f"  result                 {'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['problems'])}",
    ]
    return "\n".join(lines)


COMMANDS: dict[str, tuple[str, Configure, Handler]] = {
    "demo": (
        "stream a test pattern through a local emulator and record it",
        _configure_demo,
        _demo,
    ),
    "master": (
        "stream a camera, file or test pattern to a channel as MASTER",
        _configure_master,
        _master,
    ),
    "viewer": ("join a channel as VIEWER: record, snapshot, stats", _configure_viewer, _viewer),
    "local": ("run a local KVS emulator (no AWS account needed)", _configure_local, _local),
    "url": ("print a presigned signaling URL for a channel", _configure_url, _url),
    "signer": (
        "run the signer service: signed URLs for devices and browsers without AWS credentials",
        signer_cli.configure,
        signer_cli.run,
    ),
}


def _env_token() -> str | None:
    return os.environ.get("KVS_PEER_SIGNER_TOKEN")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
