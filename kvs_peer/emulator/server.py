"""The local KVS emulator's asyncio shell: one aiohttp server on loopback.

One port serves the control-plane REST operations, ``/v1/get-ice-server-config`` and the
signaling WebSocket endpoints (``/signaling/master``, ``/signaling/viewer``). Every decision is
made by the pure parts (:mod:`.controlplane`, :mod:`.routing`, :mod:`kvs_peer.signing`); this
module owns sockets, tasks and clocks and carries out what they decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import boto3
from aiohttp import hdrs, web
from aiortc import RTCIceServer
from botocore.credentials import Credentials

from ..channel import ChannelResolver
from ..errors import ChannelNotFound, InvalidArgument, InvalidState, SignatureError
from ..protocol import MessageType, encode_event
from ..signing import (
    CHANNEL_ARN_PARAM,
    CLIENT_ID_PARAM,
    normalize_endpoint,
    validate_channel_arn,
    validate_client_id,
    verify_presigned_url,
    verify_signed_request,
)
from .config import EmulatorConfig
from .connection import SignalingSocket
from .controlplane import OPERATIONS, ApiResult, ControlPlane, Endpoints, IceServer
from .routing import Action, Close, Deliver, Presence, Rejected, Role, Router
from .storage_service import StorageService
from .tls import CertificateBundle, generate_certificate
from .turn import TurnServer
from .webpage import WebPage

__all__ = ["MASTER_PATH", "VIEWER_PATH", "LocalKvs"]

logger = logging.getLogger(__name__)

MASTER_PATH = "/signaling/master"
VIEWER_PATH = "/signaling/viewer"
_CLOSE_TIMEOUT = 2.0  # how long a close waits for the client's close frame
# The KVS C SDK's libwebsockets client asks for the WebSocket subprotocol "wss" (its protocol
# table's name, LwsApiCalls.c). libwebsockets accepts either an echo of it or no answer at all,
# and whether KVS itself echoes it is not documented (unsure: no capture of a real handshake).
# Echoing it is what RFC 6455 describes for a known subprotocol, and keeps aiohttp from warning
# about unknown ones on every C SDK connect; clients that ask for none get none.
_SUBPROTOCOLS = ("wss",)


class LocalKvs:
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
        self.clock_offset = 0.0
        """Seconds added to the wall clock for signature checks and ``Date`` headers."""
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
        self._control = ControlPlane(
            region=self.config.region,
            account_id=self.config.account_id,
            ice_servers=[IceServer.from_value(s) for s in self.config.ice_servers],
            turn_secret=self.config.turn_secret,
        )
        self._router = Router(self.config.router_config(), message_ttl=self._control.message_ttl)
        self._storage = StorageService(
            self,
            self._control,
            send_to_master=self._send_to_master,
            ice_servers=self._storage_ice_servers,
            storage_dir=Path(self.config.storage_dir) if self.config.storage_dir else None,
            max_duration=self.config.storage_session_duration,
        )
        self._router.storage_sink = self._storage.receive
        self._secrets = {self.config.access_key_id: self.config.secret_access_key}
        self._sockets: dict[int, SignalingSocket] = {}
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._tmpdir: Path | None = None
        self._base = ""
        self.app = web.Application(client_max_size=1024 * 1024)
        """The aiohttp application; extra routes may be added before :meth:`start`."""
        for path in OPERATIONS:
            self.app.router.add_post(path, self._handle_api)
        self.app.router.add_get(MASTER_PATH, self._handle_master)
        self.app.router.add_get(VIEWER_PATH, self._handle_viewer)
        WebPage(self, self._control).add_routes(self.app)  # GET / and /_kvs/...
        self._storage.add_routes(self.app)  # POST /joinStorageSession[AsViewer]
        self.app.on_response_prepare.append(self._stamp_headers)

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
            raise InvalidArgument(
                f"cannot listen on {self.host}:{self._port}: {exc.strerror}; pick another port "
                "or 0 for any free one"
            ) from None
        self._port = sock.getsockname()[1]
        host = f"[{self._advertised}]" if ":" in self._advertised else self._advertised
        http, ws = ("https", "wss") if self._tls else ("http", "ws")
        # No default port (443 with TLS, 80 without): real KVS endpoints carry none and the
        # C SDK cannot parse one (kvs-signaling.md 1.3, issue 9).
        self._base = normalize_endpoint(f"{http}://{host}:{self._port}")
        self._control.endpoints = Endpoints(
            master_wss=normalize_endpoint(f"{ws}://{host}:{self._port}{MASTER_PATH}"),
            viewer_wss=normalize_endpoint(f"{ws}://{host}:{self._port}{VIEWER_PATH}"),
            https=self._base,
        )
        self._wake, self._changed, self._stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()
        runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        self._runner = runner
        self._ticker = asyncio.create_task(self._tick_loop(), name="kvs-emulator-ticker")
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
        for sock in list(self._sockets.values()):
            sock.send(Close(sock.conn_id, 1001, "Going away"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT + 1):
                while self._sockets:
                    await self._wait_change()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
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
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)

    @property
    def storage(self) -> StorageService:
        """WebRTC ingestion: storage sessions, recordings and their knobs
        (``drop_next_offers``, ``end_session``, ``max_duration``...)."""
        return self._storage

    def _send_to_master(self, channel_arn: str, text: str) -> bool:
        return bool(self._targets_sent(self._router.inject(channel_arn, text, master=True)))

    def _storage_ice_servers(self, channel_arn: str) -> list[RTCIceServer]:
        # Only the emulator's own TURN server: a configured one may be unreachable from here,
        # and every unreachable server costs aioice 5 s of gathering.
        if self._turn is None:
            return []
        entry = self._control.ice_server_list(channel_arn, now=self.now().timestamp())[0]
        return [RTCIceServer(entry["Uris"], entry["Username"], entry["Password"])]

    # -- test hooks ----------------------------------------------------------------------------

    def create_channel(self, name: str, *, message_ttl: int = 60, exist_ok: bool = False) -> str:
        """Create a signaling channel directly and return its ARN.

        Raises:
            InvalidArgument: bad name or TTL (5 to 120 s).
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
        found = self._control.find(channel)
        if found is None:
            raise ChannelNotFound(channel)
        return found.arn

    def _targets_sent(self, actions: list[Action]) -> list[SignalingSocket]:
        self._execute(actions)
        return [self._sockets[a.conn_id] for a in actions if a.conn_id in self._sockets]

    async def _flush(self, sockets: list[SignalingSocket]) -> int:
        # Wait until the frames are written so a test can assert on them right away.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*(s.flush() for s in sockets))
        return len(sockets)

    async def send_go_away(
        self, channel: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send GO_AWAY to the viewer ``client_id`` and/or the master, or to every connection
        of ``channel`` when neither is given; they are closed after ``go_away_grace``.

        Returns:
            How many connections were notified.
        """
        actions = self._router.go_away(
            self.channel_arn(channel), client_id=client_id, master=master, now=time.monotonic()
        )
        self._poke()
        return await self._flush(self._targets_sent(actions))

    async def send_reconnect_ice_server(
        self, channel: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send RECONNECT_ICE_SERVER (targets as :meth:`send_go_away`); returns the count."""
        text = encode_event(MessageType.RECONNECT_ICE_SERVER)
        return await self.send_raw(channel, text, client_id=client_id, master=master)

    async def send_raw(
        self, channel: str, text: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send ``text`` verbatim as a text frame (junk, empty frames...); returns the count."""
        actions = self._router.inject(
            self.channel_arn(channel), text, client_id=client_id, master=master
        )
        return await self._flush(self._targets_sent(actions))

    def fail_next_connects(self, channel: str, status: int, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket connects to ``channel`` with HTTP ``status``."""
        if not 400 <= status <= 599 or count < 1:
            raise InvalidArgument("status must be an HTTP error (400-599) and count at least 1")
        self._router.fail_next_connects(self.channel_arn(channel), status, count)

    def fail_next_api_calls(
        self,
        operation: str,
        *,
        error_type: str = "ClientLimitExceededException",
        status: int = 400,
        count: int = 1,
    ) -> None:
        """Make the next ``count`` REST calls of ``operation`` (``DescribeSignalingChannel``...)
        fail with ``error_type``; boto3 raises the matching exception class."""
        if not 400 <= status <= 599 or count < 1:
            raise InvalidArgument("status must be an HTTP error (400-599) and count at least 1")
        self._control.fail_next_calls(operation, status=status, error_type=error_type, count=count)

    def channel_names(self) -> list[str]:
        """Names of every channel, in creation order."""
        return [channel.name for channel in self._control.channels()]

    def connected(self, channel: str) -> Presence:
        """Whether a master is connected to ``channel`` and which viewers are."""
        return self._router.presence(self.channel_arn(channel))

    async def wait_presence(self, channel: str, predicate: Callable[[Presence], bool]) -> Presence:
        """Wait until ``predicate(self.connected(channel))`` is true and return that presence.

        Wrap it in ``asyncio.timeout()``: it waits for ever otherwise.
        """
        while True:
            presence = self.connected(channel)
            if predicate(presence):
                return presence
            await self._wait_change()

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

    # -- internals -----------------------------------------------------------------------------

    async def _wait_change(self) -> None:
        assert self._changed is not None
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _execute(self, actions: list[Action] | tuple[Action, ...]) -> None:
        for action in actions:
            sock = self._sockets.get(action.conn_id)
            if sock is None:
                continue
            sock.send(action.text if isinstance(action, Deliver) else action)

    async def _tick_loop(self) -> None:
        assert self._wake is not None
        while True:
            deadline = self._router.next_deadline()
            delay = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.005, delay)):
                    await self._wake.wait()
            self._execute(self._router.tick(now=time.monotonic()))

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        # The emulator's notion of "now" (with clock_offset), so clients can learn their skew
        # from it as the C SDK does (kvs-signaling.md 7.1).
        response.headers[hdrs.DATE] = format_datetime(self.now(), usegmt=True)
        response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))

    @staticmethod
    def _api_response(result: ApiResult) -> web.Response:
        headers = {}
        if result.error_type is not None:
            headers["x-amzn-ErrorType"] = result.error_type
        return web.json_response(result.body, status=result.status, headers=headers)

    async def _handle_api(self, request: web.Request) -> web.Response:
        body = await request.read()
        scheme = "https" if self._tls else "http"
        url = f"{scheme}://{request.headers.get(hdrs.HOST, '')}{request.raw_path}"
        try:
            verify_signed_request(
                request.method,
                url,
                request.headers,
                body,
                secrets=self._secrets,
                region=self.config.region,
                now=self.now(),
                max_skew=self.config.max_skew,
            )
        except SignatureError as exc:
            # Both codes are modelled by botocore, so boto3 raises a named exception class.
            code = (
                "NotAuthorizedException"
                if request.path.startswith("/v1/")
                else "AccessDeniedException"
            )
            logger.info("refused %s: %s (%s)", request.path, exc.reason, exc)
            return self._api_response(ApiResult(403, {"Message": str(exc)}, code))
        result = self._control.handle(request.path, body, now=self.now().timestamp())
        logger.debug("%s -> %d %s", request.path, result.status, result.error_type or "")
        if result.error_type is None and request.path == "/deleteSignalingChannel":
            arn = json.loads(body)["ChannelARN"]
            self._execute(self._router.drop_channel(arn))
            self._notify()
        return self._api_response(result)

    async def _handle_master(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_ws(request, Role.MASTER)

    async def _handle_viewer(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_ws(request, Role.VIEWER)

    def _refuse(self, status: int, error_type: str, message: str) -> web.Response:
        return self._api_response(ApiResult(status, {"Message": message}, error_type))

    def _check_params(self, request: web.Request, role: Role) -> tuple[str, str | None]:
        query = request.rel_url.query
        arn = query.get(CHANNEL_ARN_PARAM)
        client_id = query.get(CLIENT_ID_PARAM)
        if arn is None:
            raise InvalidArgument(f"{CHANNEL_ARN_PARAM} is required")
        validate_channel_arn(arn)
        if role is Role.MASTER and client_id is not None:
            raise InvalidArgument(
                f"ConnectAsMaster takes no {CLIENT_ID_PARAM}: a viewer must use the VIEWER endpoint"
            )
        if role is Role.VIEWER:
            if client_id is None:
                raise InvalidArgument(
                    f"ConnectAsViewer requires {CLIENT_ID_PARAM}: "
                    "a master must use the MASTER endpoint"
                )
            validate_client_id(client_id)
        return arn, client_id

    async def _handle_ws(self, request: web.Request, role: Role) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            autoping=False,  # pings must reach the router: they reset the idle timer
            compress=False,
            max_msg_size=self.config.max_frame_bytes,
            timeout=_CLOSE_TIMEOUT,
            protocols=_SUBPROTOCOLS,
        )
        if not ws.can_prepare(request).ok:
            return self._refuse(400, "InvalidArgumentException", "expected a WebSocket upgrade")
        try:
            arn, client_id = self._check_params(request, role)
        except InvalidArgument as exc:
            return self._refuse(400, "InvalidArgumentException", str(exc))
        host = request.headers.get(hdrs.HOST, "")
        scheme = "wss" if self._tls else "ws"
        try:
            verified = verify_presigned_url(
                f"{scheme}://{host}{request.raw_path}",
                secrets=self._secrets,
                region=self.config.region,
                headers=request.headers,
                now=self.now(),
                max_skew=self.config.max_skew,
            )
        except SignatureError as exc:
            logger.info("refused %s connect: %s (%s)", role.lower(), exc.reason, exc)
            return self._refuse(403, "AccessDeniedException", str(exc))
        result = self._router.connect(arn, client_id, now=time.monotonic())
        if isinstance(result, Rejected):
            logger.info("refused %s connect: %d %s", role.lower(), result.status, result.message)
            return self._refuse(result.status, result.error_type, result.message)
        label = "master" if role is Role.MASTER else f"viewer {client_id}"
        sock = SignalingSocket(result.conn_id, label, ws, close_timeout=_CLOSE_TIMEOUT)
        self._sockets[sock.conn_id] = sock
        self._execute(result.actions)
        self._poke()
        self._notify()
        logger.info(
            "%s connected to %s (conn %d, signed at %s)",
            label,
            arn.split("/")[-2],
            sock.conn_id,
            f"{verified.signed_at:%Y%m%dT%H%M%SZ}",
        )

        def on_frame(data: str | bytes) -> None:
            self._execute(self._router.receive(sock.conn_id, data, now=time.monotonic()))
            self._poke()

        def on_activity() -> None:
            self._router.activity(sock.conn_id, now=time.monotonic())
            self._poke()

        try:
            await sock.serve(request, on_frame=on_frame, on_activity=on_activity)
        finally:
            self._sockets.pop(sock.conn_id, None)
            self._execute(self._router.disconnect(sock.conn_id, now=time.monotonic()))
            self._notify()
            logger.info(
                "%s disconnected (conn %d, close code %s)", label, sock.conn_id, ws.close_code
            )
        return ws
