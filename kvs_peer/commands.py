"""Subcommands of the ``kvs-peer`` CLI: argument setup and a coroutine each.

``COMMANDS`` maps a name to ``(help, configure(parser), handler(args) -> exit code)``.
Heavy modules (aiortc, PyAV) are imported inside handlers so ``kvs-peer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .cli import EXIT_NO_VIDEO, EXIT_OK, add_connection_options
from .media.presets import X264_PRESETS
from .metrics.options import add_metrics_options, serve_metrics
from .protocol import Role
from .record import cli as record_cli
from .signer import cli as signer_cli

if TYPE_CHECKING:
    from .access import ChannelAccess

logger = logging.getLogger(__name__)

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
    from .emulator.config import DEFAULT_TURN_SECRET
    from .emulator.turn import DEFAULT_TURN_PORT

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
    p.add_argument(
        "--storage-dir",
        help="folder for what storage sessions (WebRTC ingestion) record, as "
        "DIR/<stream name>/<start time>.mkv (default: a new temporary folder, printed at start)",
    )
    ice = p.add_argument_group("ICE servers (what GetIceServerConfig returns; none by default)")
    ice.add_argument(
        "--turn",
        action="store_true",
        help="run a TURN server (coturn's turnserver: apt-get install coturn) on --host while "
        "the emulator runs, and return it with minted credentials as real KVS does",
    )
    ice.add_argument(
        "--turn-port",
        type=int,
        default=DEFAULT_TURN_PORT,
        help=f"its UDP and TCP port (default {DEFAULT_TURN_PORT}; 0 picks a free one)",
    )
    ice.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URI",
        help="also return this TURN server run elsewhere (repeatable), e.g. "
        "turn:host:3478?transport=udp to mint credentials with --turn-secret (coturn "
        "--use-auth-secret), or turn:USER:PASSWORD@host:3478?transport=tcp",
    )
    ice.add_argument(
        "--turn-secret",
        default=DEFAULT_TURN_SECRET,
        help="TURN REST secret for minted credentials (coturn --static-auth-secret; "
        "default: the published local one)",
    )
    add_metrics_options(p)


async def _local(args: argparse.Namespace) -> int:

    from .emulator import EmulatorConfig, LocalKvs, ice_servers_from_uris

    config = EmulatorConfig(
        region=args.region,
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        max_viewers=args.max_viewers,
        ice_servers=ice_servers_from_uris(args.ice_server),
        turn_secret=args.turn_secret,
        turn=args.turn,
        turn_port=args.turn_port,
        storage_dir=args.storage_dir,
    )
    async with (
        serve_metrics(args, role="local") as metrics,
        LocalKvs(config, host=args.host, port=args.port, tls=args.tls) as kvs,
    ):
        from .metrics.sources import EmulatorSource

        metrics.add(EmulatorSource(kvs))
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
        if kvs.turn is not None:
            lines.append(
                f"TURN server (coturn, pid {kvs.turn.pid}): {', '.join(kvs.turn.uris)} "
                f"(ready in {kvs.turn.startup_seconds * 1000:.0f} ms)"
            )
        for server in config.ice_servers:
            lines.append(f"ICE server: {', '.join(server.uris)}")
        lines.append(f"Storage sessions record to {kvs.storage.storage_dir}")
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
    async with ChannelResolver(
        region=args.region,
        endpoint_url=args.endpoint_url,
        # A restarted agent goes straight to the WebSocket (kvs_peer.channelcache).
        disk_cache=getattr(args, "channel_cache", True),
    ) as resolver:
        await asyncio.to_thread(_check_credentials, args.region)
        yield AwsAccess(
            resolver, args.channel, role, client_id=client_id, create=args.create_channel
        )


def _check_credentials(region: str | None) -> None:
    """Read the AWS credentials once before connecting, so a broken setup (an incomplete
    ``~/.aws/credentials``) stops the command at once: connect attempts would retry it as if
    it were a network failure. No credentials at all is left to the resolver's own error."""
    import boto3

    boto3.Session(region_name=region).get_credentials()


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
    p.add_argument(
        "--relay-only",
        action="store_true",
        help="use TURN relay candidates only (ICE transport policy 'relay'), to prove a stream "
        "works through TURN alone, as behind symmetric NATs; needs a TURN server in the "
        "channel's ICE configuration (kvs-peer local --turn)",
    )


def _configure_master(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    p.add_argument(
        "--source",
        default="testsrc",
        help="testsrc, a media file, a camera index (0) or device (/dev/video0), a URL "
        "such as rtsp://..., or - for an H.264 Annex-B stream on stdin (default testsrc)",
    )
    p.add_argument(
        "--source-format",
        choices=["h264"],
        help="read --source (a FIFO or file) as a raw H.264 Annex-B stream",
    )
    p.add_argument(
        "--video-mode",
        default="auto",
        choices=["auto", "passthrough", "transcode"],
        help="H.264 sources: auto sends the stream as it is to viewers that take its profile "
        "and encodes for the others; passthrough refuses the others; transcode encodes for "
        "all (default auto)",
    )
    p.add_argument(
        "--encoder",
        default="libx264",
        help="FFmpeg H.264 encoder when encoding: libx264 (default), h264_v4l2m2m, "
        "h264_vaapi, h264_qsv, h264_nvenc (hardware ones untested)",
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
    p.add_argument(
        "--storage",
        action="store_true",
        help="WebRTC ingestion: join the storage session of the KVS stream linked to the "
        "channel (UpdateMediaStorageConfiguration) and stream into it; needs AWS credentials",
    )
    _add_peer_options(p)
    add_metrics_options(p)


async def _master(args: argparse.Namespace) -> int:
    from .master import Master
    from .media import open_audio_source, open_master_video
    from .media.encoder import check_h264_encoder
    from .media.sources import describe_url
    from .protocol import Role

    check_h264_encoder(args.encoder)
    args.starting = True  # a signal cancels the start (see cli._run_until_signal)
    # Opening may block (an RTSP camera can take seconds): keep it off the event loop.
    video = await asyncio.to_thread(
        open_master_video,
        args.source,
        video_mode=args.video_mode,
        source_format=args.source_format,
        width=args.width,
        height=args.height,
        fps=args.fps,
        loop=args.loop,
        reopen=args.reopen,
    )
    audio = await asyncio.to_thread(open_audio_source, args.audio, loop=args.loop)
    started = time.monotonic()
    async with (
        serve_metrics(args, role="master") as metrics,  # first: a port in use fails at once
        open_access(args, Role.MASTER) as access,
        Master(
            access,
            video=video,
            audio=audio,
            max_viewers=args.max_viewers,
            storage=args.storage,
            bitrate=args.bitrate,
            gop=args.gop,
            preset=args.preset,
            video_mode=args.video_mode,
            video_encoder=args.encoder,
            loopback_candidates=args.loopback_candidates,
            relay_only=args.relay_only,
        ) as master,
        StatusLine(lambda meter: _master_status(master, meter), enabled=not args.json),
    ):
        from .metrics.sources import MasterSource

        metrics.add(MasterSource(master, channel=args.channel))
        metrics.watch_access(access)
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
                    "storage": await _storage_report(master),
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
    encoder = master.passthrough or master.encoder
    if encoder is None:
        video = "no video"
    elif getattr(encoder.source, "waiting", False):
        video = "waiting for source"
    elif getattr(encoder.source, "reopening", False):
        video = "source reopening"
    else:
        video = f"{meter.rate(encoder.frames_encoded, 'frames'):.0f} fps"
    line = (
        f"MASTER | signaling {'up' if master.signaling.connected else 'down'} | "
        f"viewers {len(connected)}/{len(viewers)} | {video} | "
        f"{rate * 8 / 1e6:.2f} Mbit/s out | RTT max {rtt}"
    )
    storage = await _storage_report(master)
    if storage is not None:
        state = (
            "storage connected"
            if storage["connected"]
            else ("storage joined" if storage["joined"] else "storage joining")
        )
        line += (
            f" | {state} | {storage['bytesSent'] / 1e6:.1f} MB stored | "
            f"re-joins {storage['rejoins']}"
        )
    return line


async def _storage_report(master: Any) -> dict[str, Any] | None:
    """The storage-session part of ``master --json`` and the status line (None without
    ``--storage``)."""
    link = master.storage
    if link is None:
        return None
    stats = link.stats
    return {
        "streamArn": stats.stream_arn,
        "joined": stats.joined,
        "connected": stats.connected,
        "bytesSent": await link.bytes_sent(),
        "joins": stats.joins,
        "rejoins": stats.rejoins,
        "offers": stats.offers,
        "offerTimeouts": stats.offer_timeouts,
        "sessionsConnected": stats.sessions_connected,
        "lastError": stats.last_error,
    }


def _configure_viewer(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    p.add_argument("--client-id", help="stable viewer id (default: a generated one)")
    p.add_argument("--record", help="record to this file (.mkv survives crashes; .mp4 does not)")
    p.add_argument("--segment", type=float, help="start a new recording file every S seconds")
    p.add_argument("--snapshot", help="save the last frame as PNG here at the end")
    p.add_argument("--audio", action="store_true", help="also receive audio")
    _add_peer_options(p)
    add_metrics_options(p)


async def _viewer(args: argparse.Namespace) -> int:
    from .media import Recorder, save_snapshot
    from .protocol import Role
    from .viewer import Viewer, new_client_id

    args.starting = True  # a signal cancels the start (see cli._run_until_signal)
    client_id = args.client_id or new_client_id()
    if args.snapshot:
        _check_snapshot_path(args.snapshot)
    recorder = (
        Recorder(args.record, segment_seconds=args.segment, audio=args.audio)
        if args.record
        else None
    )
    last: list[Any] = [None]
    async with contextlib.AsyncExitStack() as outputs:
        # First in, last out: a port in use fails before anything starts, and the final
        # stats line comes after the viewer and its recording closed.
        metrics = await outputs.enter_async_context(serve_metrics(args, role="viewer"))
        if recorder is not None:
            # Starting checks the path: a typo fails here, before anything connects.
            await outputs.enter_async_context(recorder)
        async with (
            open_access(args, Role.VIEWER, client_id) as access,
            Viewer(
                access,
                audio=args.audio,
                recorder=recorder,
                on_frame=lambda frame: last.__setitem__(0, frame),
                loopback_candidates=args.loopback_candidates,
                relay_only=args.relay_only,
            ) as viewer,
            StatusLine(lambda meter: _viewer_status(viewer, meter), enabled=not args.json),
        ):
            from .metrics.sources import ViewerSource

            metrics.add(ViewerSource(viewer, channel=args.channel))
            metrics.watch_access(access)
            _stderr(f"viewing channel {args.channel!r} as {client_id} (Ctrl+C stops)")
            await _wait(viewer.wait_closed(), args)
            ended = time.monotonic()
    if args.snapshot and last[0] is not None:
        save_snapshot(last[0], args.snapshot)
    stats = viewer.stats
    problem = stats.video_problem(ended)
    if args.json:
        print(json.dumps(_viewer_report(args, viewer, ended, problem, recorder, last[0])))
    if problem is None:
        return EXIT_OK
    if args.duration is not None and not args.stop.is_set():
        _stderr(f"kvs-peer viewer: error: {problem}")
        return EXIT_NO_VIDEO
    _stderr(f"kvs-peer viewer: {problem}")  # stopped by Ctrl+C: the user knows, still say it
    return EXIT_OK


def _check_snapshot_path(path: str) -> None:
    from .errors import InvalidArgument
    from .media.recorder import check_output_path

    if not path.lower().endswith(".png"):
        raise InvalidArgument(f"--snapshot writes PNG: {path!r} should end in .png")
    check_output_path(path, what="snapshot")


def _viewer_report(
    args: argparse.Namespace,
    viewer: Any,
    ended: float,
    problem: str | None,
    recorder: Any,
    snapshot: Any,
) -> dict[str, Any]:
    """``viewer --json``: rates over the whole run, and when video stopped if it did."""
    stats = viewer.stats

    def since_start(moment: float | None) -> float | None:
        return round(moment - stats.started_at, 3) if moment is not None else None

    stopped = problem is not None and stats.last_frame_at is not None
    return {
        "ok": problem is None,
        "problem": problem,
        "role": "VIEWER",
        "channel": args.channel,
        "clientId": viewer.client_id,
        "timeToFirstFrame": since_start(stats.first_frame_at),
        "framesReceived": stats.frames_received,
        "audioFramesReceived": stats.audio_frames_received,
        "fps": round(stats.fps(ended), 2),
        "width": stats.width,
        "height": stats.height,
        "duration": round(ended - stats.started_at, 3),
        "lastFrameAt": since_start(stats.last_frame_at),
        "videoStoppedAt": since_start(stats.last_frame_at) if stopped else None,
        "videoGaps": [{"at": round(at, 3), "seconds": round(s, 3)} for at, s in stats.video_gaps],
        "offersSent": stats.offers_sent,
        "answersReceived": stats.answers_received,
        "phases": _viewer_phases(stats),
        "recording": [str(f) for f in recorder.files] if recorder else [],
        "snapshot": args.snapshot if snapshot is not None else None,
    }


def _viewer_phases(stats: Any) -> dict[str, float | None]:
    """``viewer --json``: milliseconds from start to each step of the first connection.

    ``signalingOpen``: control plane (or disk cache), signed URL and WebSocket;
    ``offerSent``: peer connection and host candidates; ``answer``: the master's answer
    arrived; ``connected``: ICE and DTLS up on both ends; ``firstFrame``: first decoded frame.
    """

    def ms(moment: float | None) -> float | None:
        return round((moment - stats.started_at) * 1000, 1) if moment is not None else None

    return {
        "signalingOpen": ms(stats.signaling_connected_at),
        "offerSent": ms(stats.first_offer_at),
        "answer": ms(stats.first_answer_at),
        "connected": ms(stats.connected_at),
        "firstFrame": ms(stats.first_frame_at),
    }


async def _viewer_status(viewer: Any, meter: _Meter) -> str:
    from .session import link_stats

    stats = viewer.stats
    pc = viewer.pc
    state = viewer.connection_state if pc is not None else "new"
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
    args.starting = False  # started: from now on a signal stops the command gracefully
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


STATUS_LOG_INTERVAL = 30.0
"""Seconds between status lines logged (at INFO, so with -v) when stderr is no terminal."""


class StatusLine:
    """Rewrites one status line on stderr every second while a TTY is attached; without
    one (a service, a pipe), logs it every :data:`STATUS_LOG_INTERVAL` seconds instead."""

    def __init__(self, render: Callable[[_Meter], Awaitable[str]], *, enabled: bool = True) -> None:
        self._render = render
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
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
            if self._tty:
                sys.stderr.write("\n")

    async def _loop(self) -> None:
        meter = _Meter()
        while True:
            await asyncio.sleep(1 if self._tty else STATUS_LOG_INTERVAL)
            try:
                line = await self._render(meter)
            except Exception as exc:  # a status line must never take the command down
                line = f"(status unavailable: {exc})"
            if not self._tty:
                logger.info("status: %s", line)
                continue
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
    "record": (
        "record many channels into segments and upload them to S3 (a service; see docs/deploy.md)",
        record_cli.configure,
        record_cli.run,
    ),
}


def _env_token() -> str | None:
    return os.environ.get("KVS_PEER_SIGNER_TOKEN")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
