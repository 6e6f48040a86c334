"""The local KVS emulator: :class:`LocalKvs`, one aiohttp server on loopback.

One port serves the control-plane REST operations, ``/v1/get-ice-server-config``, the
signaling WebSocket endpoints (``/signaling/master``, ``/signaling/viewer``), the storage API
and the emulator page. Every decision is made by the pure parts (:mod:`.controlplane`,
:mod:`.routing`, :mod:`kvs_peer.signing`); the handlers are split by concern (:mod:`.api`,
:mod:`.signaling_ws`, :mod:`.storage_service`, :mod:`.webpage`, :mod:`.faults`) around one
:class:`~.state.EmulatorState`, and :mod:`.app` wires them. This module owns the lifecycle:
the listening socket, TLS files, the ticker task and coturn.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import boto3
from aiohttp import web
from aiortc import RTCIceServer
from botocore.credentials import Credentials

from .._tasks import cancel_and_wait
from ..channel import ChannelResolver
from ..endpoints import ENDPOINT_URL_ENV
from ..errors import InvalidArgument, InvalidState
from ..netfail import bind_failure
from ..rules import GOING_AWAY, MESSAGE_TTL
from ..signing import normalize_endpoint
from .app import create_app
from .config import EmulatorConfig
from .controlplane import ControlPlane, Endpoints, IceServer
from .faults import FaultHooks
from .routing import Close, Presence, Router
from .signaling_ws import CLOSE_TIMEOUT, MASTER_PATH, VIEWER_PATH, SignalingWs
from .state import EmulatorState
from .storage_service import StorageService
from .tls import CertificateBundle, generate_certificate
from .turn import TurnServer
from .webpage import WebPage

__all__ = ["MASTER_PATH", "VIEWER_PATH", "LocalKvs"]

logger = logging.getLogger(__name__)


class LocalKvs(FaultHooks):
    """A local Kinesis Video Streams signaling service for tests and demos.

    Unmodified boto3 (``kinesisvideo`` and ``kinesis-video-signaling``), the kvs-peer client
    and the official SDKs talk to it as to the real service, with the configured credentials.

    Args:
        config: credentials, limits and policies; defaults to :class:`EmulatorConfig`.
        host: address to bind (loopback by default).
        port: TCP port; 0 picks a free one (see :attr:`endpoint_url` after :meth:`start`). Pass
            a fixed port when clients cache endpoints across restarts.
        tls: serve ``https``/``wss`` with a generated certificate (``True``) or a given
            :class:`CertificateBundle` (reuse one so a browser keeps trusting it).
        advertised_host: host written into endpoint URLs; defaults to ``host`` (``127.0.0.1``
            when binding a wildcard address).

    Example::

        async with LocalKvs() as kvs:
            arn = kvs.create_channel("demo")
            client = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool | CertificateBundle = False,
        advertised_host: str | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self._port = port
        self._advertised = advertised_host or (
            host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        )
        self._certificate: CertificateBundle | None = (
            tls if isinstance(tls, CertificateBundle) else None
        )
        self._tls = bool(tls)
        # Built here so a missing turnserver fails before anything listens.
        self._turn = (
            TurnServer(
                self.config.turn_secret,
                host=host,
                port=self.config.turn_port,
                advertised_host=self._advertised,
            )
            if self.config.turn
            else None
        )
        control = ControlPlane(
            region=self.config.region,
            account_id=self.config.account_id,
            ice_servers=[IceServer.from_value(s) for s in self.config.ice_servers],
            turn_secret=self.config.turn_secret,
        )
        self._state = EmulatorState(
            self.config,
            control,
            Router(self.config.router_config(), message_ttl=control.message_ttl),
            tls=self._tls,
        )
        self._control = control
        self._storage = StorageService(
            self._state,
            ice_servers=self._storage_ice_servers,
            storage_dir=Path(self.config.storage_dir) if self.config.storage_dir else None,
            max_duration=self.config.storage_session_duration,
        )
        self._state.router.storage_sink = self._storage.receive
        self._state.router.storage_viewer_sink = self._storage.receive_from_viewer
        self._signaling = SignalingWs(self._state)
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._tmpdir: Path | None = None
        self._base = ""
        self.app = create_app(
            self._state,
            signaling=self._signaling,
            storage=self._storage,
            page=WebPage(self, control),
        )
        """The aiohttp application; extra routes may be added before :meth:`start`."""

    @property
    def clock_offset(self) -> float:
        """Seconds added to the wall clock for signature checks and ``Date`` headers."""
        return self._state.clock_offset

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        self._state.clock_offset = seconds

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port and start serving. Idempotent."""
        if self._runner is not None:
            return
        ssl_context = None
        if self._tls:
            if self._certificate is None:
                self._certificate = await asyncio.to_thread(generate_certificate)
            self._tmpdir = Path(tempfile.mkdtemp(prefix="kvs-peer-emulator-"))
            self._certificate.write(self._tmpdir)
            ssl_context = self._certificate.server_context()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            self._remove_tls_files()
            raise InvalidArgument(bind_failure(exc, self.host, self._port)) from None
        self._port = sock.getsockname()[1]
        host = f"[{self._advertised}]" if ":" in self._advertised else self._advertised
        http, ws = ("https", "wss") if self._tls else ("http", "ws")
        # No default port (443 with TLS, 80 without): real KVS endpoints carry none and the
        # C SDK cannot parse one (docs/protocol.md#the-signed-wss-url).
        self._base = normalize_endpoint(f"{http}://{host}:{self._port}")
        if self.config.channel_cache is not None:
            # This run's channels have new ARNs: a client would try a previous run's first.
            gone = await asyncio.to_thread(self.config.channel_cache.forget_endpoint, self._base)
            if gone:
                logger.debug("dropped %d channel cache entries of %s", gone, self._base)
        self._control.endpoints = Endpoints(
            master_wss=normalize_endpoint(f"{ws}://{host}:{self._port}{MASTER_PATH}"),
            viewer_wss=normalize_endpoint(f"{ws}://{host}:{self._port}{VIEWER_PATH}"),
            https=self._base,
        )
        self._state.start()
        self._stopped = asyncio.Event()
        runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        self._runner = runner
        self._ticker = asyncio.create_task(self._signaling.tick_loop(), name="kvs-emulator-ticker")
        if self._turn is not None:
            try:
                await self._turn.start()  # ready once it answers: clients may use it at once
            except BaseException:
                await self.close()
                raise
            configured = [IceServer.from_value(s) for s in self.config.ice_servers]
            self._control.ice_servers = (self._turn.ice_server(), *configured)
        logger.info("local KVS emulator serving on %s (region %s)", self._base, self.config.region)

    async def close(self) -> None:
        """Close every signaling connection (1001), stop serving, delete TLS files. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self._storage.close()
        sockets = self._state.sockets
        for sock in list(sockets.values()):
            sock.send(Close(sock.conn_id, GOING_AWAY, "Going away"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                while sockets:
                    await self._state.wait_change()
        await cancel_and_wait(self._ticker)
        await runner.cleanup()
        if self._turn is not None:
            await self._turn.close()
        self._remove_tls_files()
        assert self._stopped is not None
        self._stopped.set()
        logger.info("local KVS emulator on %s stopped", self._base)

    def _remove_tls_files(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def serve_forever(self) -> None:
        """Start if needed and serve until :meth:`close` is called or the task is cancelled."""
        await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await asyncio.shield(self.close())

    async def __aenter__(self) -> LocalKvs:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what clients need ---------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._base:
            raise InvalidState(
                "the emulator is not started: use 'async with LocalKvs()' or start()"
            )

    @property
    def endpoint_url(self) -> str:
        """Control-plane endpoint, e.g. ``http://127.0.0.1:PORT`` (``https`` with TLS).

        A default port is left out (``https://127.0.0.1`` on 443), as in real KVS endpoints.
        """
        self._require_started()
        return self._base

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        self._require_started()
        return self._port

    @property
    def region(self) -> str:
        """The emulated region."""
        return self.config.region

    @property
    def credentials(self) -> Credentials:
        """Credentials the emulator accepts."""
        return Credentials(self.config.access_key_id, self.config.secret_access_key)

    def boto3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("kinesisvideo", **kvs.boto3_kwargs())``."""
        kwargs: dict[str, Any] = {
            "region_name": self.config.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.config.access_key_id,
            "aws_secret_access_key": self.config.secret_access_key,
        }
        if self._tls:
            kwargs["verify"] = str(self.ca_cert_path)
        return kwargs

    def environment(self) -> dict[str, str]:
        """The variables that point kvs-peer, boto3 and the AWS CLI at this emulator.

        What ``kvs-peer local`` prints and writes to ``--env-file``; a child process given
        them (on top of an environment without other ``AWS_`` settings) talks to the emulator.
        """
        self._require_started()
        env = {
            "AWS_ACCESS_KEY_ID": self.config.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.config.secret_access_key,
            "AWS_REGION": self.config.region,
            # The one boto3 reads; the AWS CLI reads both.
            "AWS_DEFAULT_REGION": self.config.region,
            ENDPOINT_URL_ENV: self.endpoint_url,
            # boto3 (>= 1.28) and the AWS CLI read it for the kinesisvideo client alone.
            "AWS_ENDPOINT_URL_KINESIS_VIDEO": self.endpoint_url,
        }
        if self._tls:
            env["AWS_CA_BUNDLE"] = str(self.ca_cert_path)
        return env

    def resolver(self, **kwargs: Any) -> ChannelResolver:
        """A :class:`~kvs_peer.channel.ChannelResolver` for this emulator.

        It uses the emulator's credentials explicitly (nothing from the environment) and
        trusts its certificate when serving TLS. Close it (``async with``) when done.
        """
        session = boto3.Session(
            aws_access_key_id=self.config.access_key_id,
            aws_secret_access_key=self.config.secret_access_key,
            region_name=self.config.region,
        )
        if self._tls:
            kwargs.setdefault("verify", str(self.ca_cert_path))
        return ChannelResolver(
            region=self.config.region, endpoint_url=self.endpoint_url, session=session, **kwargs
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context trusting this emulator (None when serving plain HTTP)."""
        if not self._tls:
            return None
        return ssl.create_default_context(cafile=str(self.ca_cert_path))

    @property
    def certificate(self) -> CertificateBundle | None:
        """The TLS material (PEM) when serving TLS, else None."""
        return self._certificate if self._tls else None

    @property
    def turn(self) -> TurnServer | None:
        """The TURN server of ``EmulatorConfig(turn=True)`` (running from start to close)."""
        return self._turn

    def _tls_path(self, name: str) -> Path:
        self._require_started()
        if self._tmpdir is None:
            raise InvalidState("the emulator was started without tls=True: there is no certificate")
        return self._tmpdir / name

    @property
    def ca_cert_path(self) -> Path:
        """PEM file of the CA to trust (``cafile=``, boto3 ``verify=``)."""
        return self._tls_path("ca.pem")

    @property
    def tls_cert_path(self) -> Path:
        """PEM file of the server certificate."""
        return self._tls_path("cert.pem")

    @property
    def tls_key_path(self) -> Path:
        """PEM file of the server key."""
        return self._tls_path("key.pem")

    def now(self) -> dt.datetime:
        """The emulator's wall clock (real time plus :attr:`clock_offset`)."""
        return self._state.now()

    @property
    def storage(self) -> StorageService:
        """WebRTC ingestion: storage sessions, recordings and their knobs
        (``drop_next_offers``, ``end_session``, ``max_duration``...)."""
        return self._storage

    def _storage_ice_servers(self, channel_arn: str) -> list[RTCIceServer]:
        # Only the emulator's own TURN server: a configured one may be unreachable from here,
        # and every unreachable server costs aioice 5 s of gathering.
        if self._turn is None:
            return []
        entry = self._control.ice_server_list(channel_arn, now=self.now().timestamp())[0]
        return [RTCIceServer(entry["Uris"], entry["Username"], entry["Password"])]

    # -- test hooks ----------------------------------------------------------------------------

    def create_channel(
        self, name: str, *, message_ttl: int = MESSAGE_TTL, exist_ok: bool = False
    ) -> str:
        """Create a signaling channel directly and return its ARN.

        Raises:
            InvalidArgument: bad name or TTL (``rules.MESSAGE_TTL_RANGE``).
            ChannelError: the name exists and ``exist_ok`` is false.
        """
        existing = self._control.find(name)
        if existing is not None and exist_ok:
            return existing.arn
        return self._control.create_channel(
            name, message_ttl=message_ttl, now=self.now().timestamp()
        ).arn

    def channel_arn(self, channel: str) -> str:
        """The ARN of a channel given by name or ARN.

        Raises:
            ChannelNotFound: no such channel.
        """
        return self._state.channel_arn(channel)

    def channel_names(self) -> list[str]:
        """Names of every channel, in creation order."""
        return [channel.name for channel in self._control.channels()]

    def connected(self, channel: str) -> Presence:
        """Whether a master is connected to ``channel`` and which viewers are."""
        return self._state.router.presence(self.channel_arn(channel))

    async def wait_presence(self, channel: str, predicate: Callable[[Presence], bool]) -> Presence:
        """Wait until ``predicate(self.connected(channel))`` is true and return that presence.

        Wrap it in ``asyncio.timeout()``: it waits for ever otherwise.
        """
        while True:
            presence = self.connected(channel)
            if predicate(presence):
                return presence
            await self._state.wait_change()

    async def wait_connected(
        self,
        channel: str,
        *,
        master: bool = False,
        viewers: Iterable[str] = (),
    ) -> Presence:
        """Wait until the master (if ``master``) and every viewer in ``viewers`` are connected.

        Wrap it in ``asyncio.timeout()``: it waits for ever otherwise.
        """
        wanted = set(viewers)
        return await self.wait_presence(
            channel, lambda p: (p.master or not master) and wanted <= set(p.viewers)
        )
