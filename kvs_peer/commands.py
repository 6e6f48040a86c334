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
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._tasks import cancel_and_wait
from .cli import (
    EXIT_ERROR,
    EXIT_NO_VIDEO,
    EXIT_OK,
    add_connection_options,
    bitrate,
    positive_seconds,
    usage_error,
)
from .media.presets import X264_PRESETS
from .metrics.options import add_metrics_options, serve_metrics
from .protocol import Role
from .record import cli as record_cli
from .rules import MAX_VIEWERS, PRESIGN_EXPIRES
from .signer import cli as signer_cli

if TYPE_CHECKING:
    from .access import ChannelAccess
    from .master import Master
    from .masterconfig import CameraConfig, ConnectionConfig, MasterConfig
    from .media.recorder import Recorder
    from .metrics.hub import Metrics
    from .peer import SignalingPeer
    from .viewer import Viewer, ViewerStats

logger = logging.getLogger(__name__)

Configure = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# -- url -------------------------------------------------------------------------------------


def _configure_url(p: argparse.ArgumentParser) -> None:
    add_connection_options(p, signer=False)
    p.add_argument(
        "--role",
        type=str.upper,
        choices=["MASTER", "VIEWER"],
        default="VIEWER",
        help="MASTER or VIEWER (default VIEWER)",
    )
    p.add_argument(
        "--client-id",
        metavar="ID",
        help="viewer client id (VIEWER only; default: a generated one, printed on stderr)",
    )
    p.add_argument(
        "--expires",
        type=int,
        default=PRESIGN_EXPIRES,
        help=f"validity in seconds (default {PRESIGN_EXPIRES}, as the JS SDK)",
    )
    p.add_argument("--json", action="store_true", help="print JSON with the ICE servers too")


async def _url(args: argparse.Namespace) -> int:
    from .channel import ChannelResolver
    from .errors import InvalidArgument
    from .protocol import Role
    from .rules import new_client_id

    role = Role.parse(args.role)
    if role is Role.MASTER and args.client_id:
        return usage_error(args, InvalidArgument("a MASTER has no client id: drop --client-id"))
    if role is Role.VIEWER and not args.client_id:
        # The URL is signed for one client id: whoever uses it must connect with that id.
        args.client_id = new_client_id()
        _stderr(f"kvs-peer url: signed for the generated client id {args.client_id}")
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
    p.add_argument(
        "--access-key-id",
        default=DEFAULT_ACCESS_KEY_ID,
        help="accepted access key id (default: the published local one)",
    )
    p.add_argument(
        "--secret-access-key",
        default=DEFAULT_SECRET_ACCESS_KEY,
        help="its secret access key (default: the published local one)",
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
    p.add_argument(
        "--max-viewers",
        type=int,
        default=MAX_VIEWERS,
        help=f"viewers per channel (default {MAX_VIEWERS})",
    )
    p.add_argument(
        "--storage-dir",
        metavar="DIR",
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
    p.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="once the emulator is ready, write the `export NAME=value` lines that point "
        "clients at it to FILE (replaced atomically, removed on exit), for `. FILE` in a shell",
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
    env_file: Path | None = args.env_file
    if env_file is not None:
        _claim_env_file(env_file)
    async with (
        serve_metrics(args, role="local") as metrics,
        LocalKvs(config, host=args.host, port=args.port, tls=args.tls) as kvs,
    ):
        from .metrics.sources import EmulatorSource

        metrics.add(EmulatorSource(kvs))
        for name in args.channel:
            kvs.create_channel(name)
        exports = [
            f"export {name}={shlex.quote(value)}" for name, value in kvs.environment().items()
        ]
        lines = [
            f"kvs-peer local emulator listening on {kvs.endpoint_url}",
            "Point kvs-peer, boto3 or the AWS CLI at it with:",
            *(f"  {line}" for line in exports),
        ]
        channel = args.channel[0] if args.channel else "NAME"
        lines.append(f"Watch a channel in a browser: {kvs.endpoint_url}/?channel={channel}")
        if kvs.certificate is not None:
            lines.append(f"TLS CA certificate (trust it in clients): {kvs.ca_cert_path}")
        if kvs.turn is not None:
            lines.append(
                f"TURN server (coturn, pid {kvs.turn.pid}): {', '.join(kvs.turn.uris)} "
                f"(ready in {(kvs.turn.startup_seconds or 0.0) * 1000:.0f} ms)"
            )
        for server in config.ice_servers:
            uris = server.get("Uris", ()) if isinstance(server, Mapping) else server.urls
            lines.append(f"ICE server: {', '.join(uris)}")
        lines.append(f"Storage sessions record to {kvs.storage.storage_dir}")
        if env_file is not None:
            lines.append(f"Environment written to {env_file} (`. {env_file}` in a shell)")
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)
        try:
            if env_file is not None:
                _write_atomically(env_file, "".join(f"{line}\n" for line in exports))
            await args.stop.wait()
        finally:
            if env_file is not None:
                _remove_file(env_file)
    return 0


def _claim_env_file(path: Path) -> None:
    """Check that ``--env-file`` can be written, and remove a file a killed run left: it
    would hand a shell waiting for the file a dead endpoint."""
    from .media.recorder import check_output_path

    check_output_path(path, what="environment file")
    _remove_file(path)


def _remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: a shell polling for the file
    never reads half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# -- master / viewer ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_access(
    args: argparse.Namespace, role: Role, client_id: str | None = None
) -> AsyncIterator[ChannelAccess]:
    """Channel access from the shared connection options (AWS credentials or a signer)."""
    from .masterconfig import connection_from_args

    async with channel_accesses(connection_from_args(args), role) as access_for:
        yield access_for(args.channel, client_id)


@contextlib.asynccontextmanager
async def channel_accesses(
    connection: ConnectionConfig, role: Role
) -> AsyncIterator[Callable[[str, str | None], ChannelAccess]]:
    """Makes ``access_for(channel, client_id)`` for any number of channels with one set of
    connection options: the cameras of one master share a resolver (one boto3 client)."""
    from .access import AwsAccess, SignerAccess
    from .channel import ChannelResolver

    if connection.signer:
        signer, token = connection.signer, connection.token or _env_token()

        def signed(channel: str, client_id: str | None) -> ChannelAccess:
            return SignerAccess(signer, channel, role, client_id=client_id, token=token)

        yield signed
        return
    async with ChannelResolver(
        region=connection.region,
        endpoint_url=connection.endpoint_url,
        # A restarted agent goes straight to the WebSocket (kvs_peer.channelcache).
        disk_cache=connection.channel_cache,
    ) as resolver:
        await asyncio.to_thread(_check_credentials, connection.region)

        def resolved(channel: str, client_id: str | None) -> ChannelAccess:
            return AwsAccess(
                resolver, channel, role, client_id=client_id, create=connection.create_channel
            )

        yield resolved


def _check_credentials(region: str | None) -> None:
    """Read the AWS credentials once before connecting, so a broken setup (an incomplete
    ``~/.aws/credentials``) stops the command at once: connect attempts would retry it as if
    it were a network failure. No credentials at all is left to the resolver's own error."""
    import boto3

    boto3.Session(region_name=region).get_credentials()


def _add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="S",
        help="stop this many seconds after the start, connecting included (default: run until "
        "Ctrl+C)",
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
    from .masterconfig import (
        CAMERA_DEFAULTS,
        CONFIG_EXAMPLE,
        CONNECTION_OPTIONS,
        METRICS_OPTIONS,
        SOURCE_FORMATS,
        VIDEO_MODES,
        GivenAction,
    )
    from .tomlconfig import add_config_example_option

    # Not required: --config names the cameras' channels.
    add_connection_options(
        p,
        channel_required=False,
        channel_help=(
            "signaling channel name (exact match); with --config: run only the camera of "
            "this channel"
        ),
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML file with these options for one or several cameras ([[camera]] tables, "
        "each with its channel; --config-example prints one); flags override it: shared ones "
        "for every camera, camera ones only when it runs one camera",
    )
    add_config_example_option(p, CONFIG_EXAMPLE)
    d = CAMERA_DEFAULTS
    # GivenAction notes which camera options the command line gave: only those override
    # the config file (a default cannot tell `--preset veryfast` from no --preset).
    cam = p.add_argument_group("camera (each [[camera]] of a --config file)")
    cam.add_argument(
        "--source",
        action=GivenAction,
        default=d.source,
        help="testsrc, a media file, a camera index (0) or device (/dev/video0), a URL "
        "such as rtsp://..., or - for an H.264 Annex-B stream on stdin (default testsrc)",
    )
    cam.add_argument(
        "--source-format",
        action=GivenAction,
        choices=SOURCE_FORMATS,
        help="read --source (a FIFO or file) as a raw H.264 Annex-B stream",
    )
    cam.add_argument(
        "--video-mode",
        action=GivenAction,
        default=d.video_mode,
        choices=VIDEO_MODES,
        help="H.264 sources: auto sends the stream as it is to viewers that take its profile "
        "and encodes for the others; passthrough refuses the others; transcode encodes for "
        "all (default auto)",
    )
    cam.add_argument(
        "--encoder",
        action=GivenAction,
        default=d.encoder,
        help="FFmpeg H.264 encoder when encoding: libx264 (default), h264_v4l2m2m, "
        "h264_vaapi, h264_qsv, h264_nvenc (hardware ones untested)",
    )
    cam.add_argument(
        "--audio",
        action=GivenAction,
        default=d.audio,
        help=f"tone, a media file, a URL, or none (default {d.audio})",
    )
    cam.add_argument(
        "--width", action=GivenAction, type=int, help="video width (test pattern, cameras)"
    )
    cam.add_argument("--height", action=GivenAction, type=int, help="video height")
    cam.add_argument("--fps", action=GivenAction, type=float, help="frames per second")
    cam.add_argument(
        "--loop", action=GivenAction, nargs=0, const=True, default=d.loop, help="loop a media file"
    )
    cam.add_argument(
        "--no-reopen",
        dest="reopen",
        action=GivenAction,
        nargs=0,
        const=False,
        default=d.reopen,
        help="stop streaming when a camera or stream URL ends, instead of opening it again",
    )
    cam.add_argument(
        "--bitrate",
        action=GivenAction,
        type=bitrate,
        default=d.bitrate,
        help="video bit/s: 800000, 800k or 1.5M (default 1M)",
    )
    cam.add_argument(
        "--gop",
        action=GivenAction,
        type=int,
        default=d.gop,
        help="keyframe interval in frames (default 60)",
    )
    cam.add_argument(
        "--preset",
        action=GivenAction,
        default=d.preset,
        choices=X264_PRESETS,
        metavar="PRESET",
        help="x264 speed preset: ultrafast uses the least CPU (small boards such as a "
        "Raspberry Pi), slower ones give a better picture per bit (default veryfast)",
    )
    cam.add_argument(
        "--max-viewers",
        action=GivenAction,
        type=int,
        default=d.max_viewers,
        help=f"viewers at once (default {d.max_viewers})",
    )
    cam.add_argument(
        "--storage",
        action=GivenAction,
        nargs=0,
        const=True,
        default=d.storage,
        help="WebRTC ingestion: join the storage session of the KVS stream linked to the "
        "channel (UpdateMediaStorageConfiguration) and stream into it; needs AWS credentials",
    )
    _add_peer_options(p)
    add_metrics_options(p)
    # The shared options are added by other modules: one the command line gave is told by
    # a value other than its default.
    shared = CONNECTION_OPTIONS | set(METRICS_OPTIONS)
    p.set_defaults(shared_defaults={dest: p.get_default(dest) for dest in shared})


async def _master(args: argparse.Namespace) -> int:
    """One camera from the flags, or the cameras of ``--config``: each its own
    :class:`~kvs_peer.master.Master` on its own channel, in this process.

    Several cameras: one that fails is logged with its channel and marks ``/healthz``
    unhealthy while the others go on; the command fails (exit code 1) only when all did.
    ``--json`` prints one object per camera, a line each, in the config's order.
    """
    from .errors import InvalidArgument
    from .masterconfig import (
        apply_command_line,
        config_from_command_line,
        given_options,
        load_master_config,
    )
    from .media.encoder import check_h264_encoder

    try:
        if args.config is not None:
            given = given_options(args, args.shared_defaults)
            config = apply_command_line(load_master_config(args.config), args, given)
        elif not args.channel:
            raise InvalidArgument(
                "--channel is required (or --config FILE with the cameras and their channels)"
            )
        else:
            config = config_from_command_line(args)
    except InvalidArgument as exc:
        return usage_error(args, exc)
    args.metrics_port, args.metrics_host = config.metrics.port, config.metrics.host
    args.stats_interval = config.metrics.stats_interval
    for encoder in sorted({camera.encoder for camera in config.cameras}):
        check_h264_encoder(encoder)
    _start_clock(args)
    args.starting = True  # a signal cancels the start (see cli._run_until_signal)
    async with (
        serve_metrics(args, role="master") as metrics,  # first: a port in use fails at once
        channel_accesses(config.connection, Role.MASTER) as access_for,
    ):
        if len(config.cameras) == 1:
            # One camera: its failure is the command's (one error line, exit code 1).
            report = await _run_camera(config.cameras[0], config, args, metrics, access_for)
            if args.json:
                print(json.dumps(report), flush=True)
            if not report["ok"]:
                _stderr(f"kvs-peer master: error: {report['problem']}")
                return EXIT_ERROR
            if report["problem"] is not None:
                _stderr(f"kvs-peer master: {report['problem']}")
            return EXIT_OK
        reports = await asyncio.gather(
            *(_run_camera_apart(c, config, args, metrics, access_for) for c in config.cameras)
        )
    if args.json:
        print("\n".join(json.dumps(report) for report in reports), flush=True)
    if all(not report["ok"] for report in reports):
        problems = "; ".join(f"{r['channel']}: {r.get('message') or r['problem']}" for r in reports)
        _stderr(f"kvs-peer master: error: every camera failed ({problems})")
        return EXIT_ERROR
    return EXIT_OK


AccessFor = Callable[[str, "str | None"], "ChannelAccess"]


async def _run_camera_apart(
    camera: CameraConfig,
    config: MasterConfig,
    args: argparse.Namespace,
    metrics: Metrics,
    access_for: AccessFor,
) -> dict[str, Any]:
    """:func:`_run_camera` for one of several cameras: a failure is logged and reported, and
    does not stop the others."""
    from .cli import explain
    from .metrics.sources import StoppedSource

    try:
        report = await _run_camera(camera, config, args, metrics, access_for)
    except Exception as exc:
        message = explain(exc) or f"unexpected {type(exc).__name__}: {exc}"
        logger.error("camera %r stopped: %s", camera.channel, message, exc_info=args.verbose > 1)
        metrics.add(StoppedSource(f"camera {camera.channel!r} stopped: {message}"))
        error = type(exc).__name__
        return {"ok": False, "role": "MASTER", "channel": camera.channel, "error": error,
                "message": message}  # fmt: skip
    if not report["ok"]:
        logger.error("camera %r stopped: %s", camera.channel, report["problem"])
        metrics.add(StoppedSource(f"camera {camera.channel!r} stopped: {report['problem']}"))
    return report


async def _run_camera(
    camera: CameraConfig,
    config: MasterConfig,
    args: argparse.Namespace,
    metrics: Metrics,
    access_for: AccessFor,
) -> dict[str, Any]:
    """Stream ``camera`` until its source ends, ``--duration`` or a stop signal; returns
    its ``--json`` report. Raises what made it fail."""
    from .master import Master
    from .media import open_audio_source, open_master_video
    from .media.sources import describe_url
    from .metrics.sources import MasterSource

    alone = len(config.cameras) == 1
    who = "" if alone else f"camera {camera.channel!r}: "
    # Opening may block (an RTSP camera can take seconds): keep it off the event loop.
    video = await asyncio.to_thread(
        open_master_video,
        camera.source,
        video_mode=camera.video_mode,
        source_format=camera.source_format,
        width=camera.width,
        height=camera.height,
        fps=camera.fps,
        loop=camera.loop,
        reopen=camera.reopen,
    )
    try:
        audio = await asyncio.to_thread(open_audio_source, camera.audio, loop=camera.loop)
    except BaseException:
        video.stop()  # another camera may go on: do not leave this one's capture running
        raise
    access = access_for(camera.channel, None)
    master = Master(
        access,
        video=video,
        audio=audio,
        max_viewers=camera.max_viewers,
        storage=camera.storage,
        bitrate=camera.bitrate,
        gop=camera.gop,
        preset=camera.preset,
        video_mode=camera.video_mode,
        video_encoder=camera.encoder,
        loopback_candidates=config.connection.loopback_candidates,
        relay_only=config.connection.relay_only,
    )
    started: float = args.started_at  # what --duration counts from
    try:
        not_connected = await _start_peer(master, args, f"master: {who}" if who else "master")
        if not_connected is None:
            # One live line per terminal: several cameras are watched through --stats-interval.
            async with StatusLine(
                lambda meter: _master_status(master, meter), enabled=alone and not args.json
            ):
                metrics.add(MasterSource(master, channel=camera.channel))
                metrics.watch_access(access)
                source = getattr(video, "description", None) or describe_url(camera.source)
                _stderr(
                    f"streaming {source} on channel {camera.channel!r} as MASTER (Ctrl+C stops)"
                )
                await _wait(master.wait_closed(), args)
                if master.end_reason is not None:
                    if getattr(video, "live", False):
                        hint = " (without --no-reopen it is opened again)"
                    elif master.end_reason.endswith("ended"):
                        hint = " (--loop repeats a file)"
                    else:
                        hint = ""
                    _stderr(f"{who}{master.end_reason}; stopping{hint}")
    finally:
        await master.close()
    stats = master.stats
    return {
        # Stopped (Ctrl+C) while connecting is what was asked; never connected within
        # --duration needs a person, as a run that gave up does.
        "ok": not_connected is None or args.stop.is_set(),
        "problem": not_connected,
        "role": "MASTER",
        "channel": camera.channel,
        "duration": round(time.monotonic() - started, 3),
        "signalingConnected": not_connected is None,
        "offers": stats.offers,
        "sessionsStarted": stats.sessions_started,
        "sessionsConnected": stats.sessions_connected,
        "sessionsFailed": stats.sessions_failed,
        "signalingReconnects": master.signaling.stats.reconnects,
        "storage": await _storage_report(master),
        "endReason": master.end_reason,
    }


async def _master_status(master: Master, meter: _Meter) -> str:
    from .peerconnection import link_stats

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


async def _storage_report(master: Master) -> dict[str, Any] | None:
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
    p.add_argument("--client-id", metavar="ID", help="stable viewer id (default: a generated one)")
    p.add_argument(
        "--record",
        metavar="FILE",
        help="record to this file: .mkv (survives a crash), .mp4, .mov or .ts (default: no "
        "recording)",
    )
    p.add_argument(
        "--segment",
        metavar="S",
        type=positive_seconds,
        help="start a new recording file every S seconds (default: one file)",
    )
    p.add_argument(
        "--record-mode",
        choices=["auto", "passthrough", "transcode"],
        default="auto",
        help="auto (default): store received H.264/Opus as they are (no decoding), decode "
        "and re-encode other codecs; transcode: always decode and re-encode",
    )
    p.add_argument("--snapshot", metavar="FILE", help="save the last frame as PNG here at the end")
    p.add_argument("--audio", action="store_true", help="also receive audio")
    _add_peer_options(p)
    add_metrics_options(p)


async def _viewer(args: argparse.Namespace) -> int:
    from .media import save_snapshot
    from .protocol import Role
    from .viewer import Viewer, new_client_id

    _start_clock(args)
    args.starting = True  # a signal cancels the start (see cli._run_until_signal)
    client_id = args.client_id or new_client_id()
    if args.snapshot:
        _check_snapshot_path(args.snapshot)
    recorder = _cli_recorder(args) if args.record else None
    last: list[Any] = [None]
    not_connected: str | None = None
    async with contextlib.AsyncExitStack() as outputs:
        # First in, last out: a port in use fails before anything starts, and the final
        # stats line comes after the viewer and its recording closed.
        metrics = await outputs.enter_async_context(serve_metrics(args, role="viewer"))
        if recorder is not None:
            # Starting checks the path: a typo fails here, before anything connects.
            await outputs.enter_async_context(recorder)
        access = await outputs.enter_async_context(open_access(args, Role.VIEWER, client_id))
        viewer = Viewer(
            access,
            audio=args.audio,
            recorder=recorder,
            # Only a snapshot needs decoded frames: a recording stores them as received.
            on_frame=(lambda frame: last.__setitem__(0, frame)) if args.snapshot else None,
            loopback_candidates=args.loopback_candidates,
            relay_only=args.relay_only,
        )
        outputs.push_async_callback(viewer.close)
        not_connected = await _start_peer(viewer, args, "viewer")
        if not_connected is None:
            async with StatusLine(
                lambda meter: _viewer_status(viewer, meter), enabled=not args.json
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
    problem = f"no video: {not_connected}" if not_connected else stats.video_problem(ended)
    report = _viewer_report(
        args, viewer, ended, problem, recorder, last[0], signaling_connected=not not_connected
    )
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _stderr(_viewer_summary(report))
    if problem is None:
        return EXIT_OK
    if args.duration is not None and not args.stop.is_set():
        _stderr(f"kvs-peer viewer: error: {problem}")
        return EXIT_NO_VIDEO
    _stderr(f"kvs-peer viewer: {problem}")  # stopped by Ctrl+C: the user knows, still say it
    return EXIT_OK


def _cli_recorder(args: argparse.Namespace) -> Recorder:
    """The ``--record`` recorder, its errors said in command-line terms."""
    from .errors import InvalidArgument
    from .media import Recorder
    from .media.recorder import RECORDING_FORMATS

    suffix = Path(args.record).suffix.lower()
    if suffix and suffix not in RECORDING_FORMATS:
        # The library's own message names its Python argument (container=), which no flag sets.
        raise InvalidArgument(
            f"--record cannot write {suffix!r} files: end the file name in "
            f"{', '.join(RECORDING_FORMATS)} (.mkv recommended: it survives a crash)"
        )
    return Recorder(
        args.record, segment_seconds=args.segment, audio=args.audio, mode=args.record_mode
    )


MIN_FPS_SPAN = 1.0
"""Seconds of received video below which a frame rate says more about timing than video."""


def _viewer_summary(report: dict[str, Any]) -> str:
    """The one line ``viewer`` ends with when not in ``--json`` mode."""
    first = report["timeToFirstFrame"]
    parts = [f"{report['duration']:.1f} s", f"{report['framesReceived']} frames"]
    if first is not None and report["duration"] - first >= MIN_FPS_SPAN:
        parts.append(f"{report['fps']:.1f} fps")
    parts.append(f"first frame after {first * 1000:.0f} ms" if first is not None else "no video")
    if report["recording"]:
        parts.append(f"recorded to {', '.join(report['recording'])}")
    if report["snapshot"]:
        parts.append(f"snapshot {report['snapshot']}")
    return "viewer: " + ", ".join(parts)


def _check_snapshot_path(path: str) -> None:
    from .errors import InvalidArgument
    from .media.recorder import check_output_path

    if not path.lower().endswith(".png"):
        raise InvalidArgument(f"--snapshot writes PNG: {path!r} should end in .png")
    check_output_path(path, what="snapshot")


def _viewer_report(
    args: argparse.Namespace,
    viewer: Viewer,
    ended: float,
    problem: str | None,
    recorder: Recorder | None,
    snapshot: Any,
    *,
    signaling_connected: bool,
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
        "signalingConnected": signaling_connected,  # as master --json says it
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


def _viewer_phases(stats: ViewerStats) -> dict[str, float | None]:
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


async def _viewer_status(viewer: Viewer, meter: _Meter) -> str:
    from .peerconnection import link_stats

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


def _start_clock(args: argparse.Namespace) -> None:
    """``--duration`` counts from here, connecting included: a channel nobody answers on
    must not hold ``--duration 3`` up for ever."""
    duration: float | None = args.duration
    args.started_at = time.monotonic()
    args.deadline = None if duration is None else args.started_at + duration


def _remaining(args: argparse.Namespace) -> float | None:
    """Seconds left of ``--duration`` (None: no --duration); after :func:`_start_clock`."""
    deadline: float | None = args.deadline
    return None if deadline is None else max(0.0, deadline - time.monotonic())


STILL_CONNECTING_AFTER = 2.0
"""Seconds of failed connect attempts before a command says what fails: a rejection that
needs a person ends the start sooner, with its own ``error:`` line."""


class _OnlyCritical(logging.Filter):
    """Keeps a logger's failed-attempt warnings out of the default output while a command
    says them itself (once); ``-v`` shows every attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


async def _start_peer(peer: SignalingPeer, args: argparse.Namespace, label: str) -> str | None:
    """Start ``peer`` (connect to signaling) unless ``--duration`` ends or a stop signal
    comes first.

    Returns:
        None once started, else why it did not start; the caller closes ``peer`` either way.

    Raises:
        KvsPeerError: what ``peer.start()`` raises (a rejection that needs a person).
    """
    # A signal now ends the start here, gracefully, rather than cancelling the command.
    args.starting = False
    quiet = _OnlyCritical() if args.verbose == 0 else None
    signaling_log = logging.getLogger("kvs_peer.signaling")
    if quiet is not None:
        signaling_log.addFilter(quiet)
    start = asyncio.ensure_future(peer.start())
    stop = asyncio.ensure_future(args.stop.wait())
    said: str | None = None
    try:
        while not start.done() and not stop.done():
            remaining = _remaining(args)
            if remaining == 0:
                break
            step = 0.25 if remaining is None else min(0.25, remaining)
            await asyncio.wait({start, stop}, timeout=step, return_when="FIRST_COMPLETED")
            remaining = _remaining(args)
            # Close to the end of --duration the final line says it: once is enough.
            if quiet is not None and not start.done() and (remaining is None or remaining > 5):
                said = _say_still_connecting(peer, label, said)
    finally:
        stop.cancel()
        if not start.done():
            await cancel_and_wait(start)
        if quiet is not None:
            signaling_log.removeFilter(quiet)
    if start.done() and not start.cancelled():
        start.result()
        return None
    last = peer.signaling.stats.last_error
    cause = f" (last attempt: {last})" if last else ""
    if args.stop.is_set():
        return f"stopped while connecting to signaling{cause}"
    # Counted as --duration counts: from the command's start.
    return f"signaling did not connect within {time.monotonic() - args.started_at:.0f} s{cause}"


def _say_still_connecting(peer: SignalingPeer, label: str, said: str | None) -> str | None:
    """Tell, once per distinct error, why connecting keeps failing; returns what was said."""
    stats = peer.signaling.stats
    since, last = stats.retrying_since, stats.last_error
    if since is None or last is None or last == said:
        return said
    if time.time() - since < STILL_CONNECTING_AFTER:
        return said
    _stderr(
        f"kvs-peer {label}: cannot connect to signaling yet: {last}; trying again "
        "(-v shows each attempt; --duration or Ctrl+C stops)"
    )
    return last


async def _wait(aw: Awaitable[Any], args: argparse.Namespace) -> None:
    """Wait for ``aw``, the end of ``--duration`` or a stop signal (``args.stop``), whichever
    is first.

    ``aw`` finishing with an error (e.g. signaling gave up) raises that error.
    """
    args.starting = False  # started: from now on a signal stops the command gracefully
    work = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(args.stop.wait())
    try:
        await asyncio.wait({work, stop}, timeout=_remaining(args), return_when="FIRST_COMPLETED")
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
            await cancel_and_wait(self._task)
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
    p.add_argument(
        "--duration",
        type=positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds to stream (default 5)",
    )
    p.add_argument(
        "--output",
        default="kvs-peer-demo",
        help="folder for the recording and snapshot (default kvs-peer-demo)",
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
    # A rate over a fraction of a second says more about timing than about the video.
    rate = f"{r['fps']} fps, " if r["duration"] >= MIN_FPS_SPAN else ""
    ttff = f"{r['timeToFirstFrame'] * 1000:.0f} ms"
    lines = [
        "kvs-peer demo: local KVS emulator + master (test pattern) + recording viewer",
        f"  signaling emulator     {r['endpointUrl']} (channel {r['channel']!r})",
        f"  time to first frame    {ttff}",
        f"  frames received        {r['framesReceived']} in {r['duration']} s ({rate}"
        f"{r['width']}x{r['height']})",
        f"  frame counters         {v['firstCounter']} -> {v['lastCounter']} "
        f"({v['countersBackwards']} backwards, {v['countersSkipped']} skipped)",
        f"  latency (capture->decoded)  median {v['latencyMedianMs']} ms, "
        f"p95 {v['latencyP95Ms']} ms",
        f"  recording              {', '.join(r['recording'])} ({r['framesDecoded']} frames "
        "decoded back)",
        f"  snapshot               {r['snapshot']}",
        f"  result                 {'OK' if r['ok'] else 'FAILED: ' + r['problem']}",
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
        "record many channels into segments and upload them to S3 (a service; --config-example "
        "prints its config)",
        record_cli.configure,
        record_cli.run,
    ),
}


def _env_token() -> str | None:
    return os.environ.get("KVS_PEER_SIGNER_TOKEN")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
