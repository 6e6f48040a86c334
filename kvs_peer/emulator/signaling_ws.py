"""The emulator's signaling WebSockets (``/signaling/master``, ``/signaling/viewer``).

A connect is checked (parameters, presigned URL, then the router's admission) and served by a
:class:`~.connection.SignalingSocket`; every frame, ping and close goes through the pure
:class:`~.routing.Router`, whose actions :class:`~.state.EmulatorState` carries out. The
ticker runs the router's timers (idle closes, GO_AWAY grace, queued-message expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import hdrs, web

from ..errors import InvalidArgument, SignatureError
from ..signing import (
    CHANNEL_ARN_PARAM,
    CLIENT_ID_PARAM,
    validate_channel_arn,
    validate_client_id,
    verify_presigned_url,
)
from .api import api_response
from .connection import SignalingSocket
from .controlplane import ApiResult
from .routing import Rejected, Role
from .state import EmulatorState

__all__ = ["CLOSE_TIMEOUT", "MASTER_PATH", "VIEWER_PATH", "SignalingWs"]

logger = logging.getLogger(__name__)

MASTER_PATH = "/signaling/master"
VIEWER_PATH = "/signaling/viewer"
CLOSE_TIMEOUT = 2.0
"""Seconds a close waits for the client's close frame."""
# The KVS C SDK's libwebsockets client asks for the WebSocket subprotocol "wss" (its protocol
# table's name, LwsApiCalls.c). libwebsockets accepts either an echo of it or no answer at all,
# and whether KVS itself echoes it is not documented (unsure: no capture of a real handshake).
# Echoing it is what RFC 6455 describes for a known subprotocol, and keeps aiohttp from warning
# about unknown ones on every C SDK connect; clients that ask for none get none.
_SUBPROTOCOLS = ("wss",)
_TICK_MAX = 1.0
"""Seconds the ticker sleeps at most without a router deadline."""


def _refuse(status: int, error_type: str, message: str) -> web.Response:
    return api_response(ApiResult(status, {"Message": message}, error_type))


def _check_params(request: web.Request, role: Role) -> tuple[str, str | None]:
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
                f"ConnectAsViewer requires {CLIENT_ID_PARAM}: a master must use the MASTER endpoint"
            )
        validate_client_id(client_id)
    return arn, client_id


class SignalingWs:
    """Handlers of the signaling WebSocket routes, and the router's ticker.

    Args:
        state: the emulator's shared state.
    """

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        """Add the two WebSocket routes (before start)."""
        app.router.add_get(MASTER_PATH, self.handle_master)
        app.router.add_get(VIEWER_PATH, self.handle_viewer)

    async def handle_master(self, request: web.Request) -> web.StreamResponse:
        """ConnectAsMaster."""
        return await self._handle(request, Role.MASTER)

    async def handle_viewer(self, request: web.Request) -> web.StreamResponse:
        """ConnectAsViewer."""
        return await self._handle(request, Role.VIEWER)

    async def tick_loop(self) -> None:
        """Run the router's timers until cancelled (needs :meth:`EmulatorState.start`)."""
        state = self._state
        assert state.wake is not None
        while True:
            deadline = state.router.next_deadline()
            delay = _TICK_MAX if deadline is None else min(_TICK_MAX, deadline - time.monotonic())
            state.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.005, delay)):
                    await state.wake.wait()
            state.execute(state.router.tick(now=time.monotonic()))

    async def _handle(self, request: web.Request, role: Role) -> web.StreamResponse:
        state = self._state
        ws = web.WebSocketResponse(
            autoping=False,  # pings must reach the router: they reset the idle timer
            compress=False,
            max_msg_size=state.config.max_frame_bytes,
            timeout=CLOSE_TIMEOUT,
            protocols=_SUBPROTOCOLS,
        )
        if not ws.can_prepare(request).ok:
            return _refuse(400, "InvalidArgumentException", "expected a WebSocket upgrade")
        try:
            arn, client_id = _check_params(request, role)
        except InvalidArgument as exc:
            return _refuse(400, "InvalidArgumentException", str(exc))
        host = request.headers.get(hdrs.HOST, "")
        scheme = "wss" if state.tls else "ws"
        try:
            verified = verify_presigned_url(
                f"{scheme}://{host}{request.raw_path}",
                secrets=state.secrets,
                region=state.config.region,
                headers=request.headers,
                now=state.now(),
                max_skew=state.config.max_skew,
            )
        except SignatureError as exc:
            logger.info("refused %s connect: %s (%s)", role.lower(), exc.reason, exc)
            return _refuse(403, "AccessDeniedException", str(exc))
        result = state.router.connect(arn, client_id, now=time.monotonic())
        if isinstance(result, Rejected):
            logger.info("refused %s connect: %d %s", role.lower(), result.status, result.message)
            return _refuse(result.status, result.error_type, result.message)
        label = "master" if role is Role.MASTER else f"viewer {client_id}"
        sock = SignalingSocket(result.conn_id, label, ws, close_timeout=CLOSE_TIMEOUT)
        state.sockets[sock.conn_id] = sock
        state.execute(result.actions)
        state.poke()
        state.notify()
        logger.info(
            "%s connected to %s (conn %d, signed at %s)",
            label,
            arn.split("/")[-2],
            sock.conn_id,
            f"{verified.signed_at:%Y%m%dT%H%M%SZ}",
        )

        def on_frame(data: str | bytes) -> None:
            state.execute(state.router.receive(sock.conn_id, data, now=time.monotonic()))
            state.poke()

        def on_activity() -> None:
            state.router.activity(sock.conn_id, now=time.monotonic())
            state.poke()

        try:
            await sock.serve(request, on_frame=on_frame, on_activity=on_activity)
        finally:
            state.sockets.pop(sock.conn_id, None)
            state.execute(state.router.disconnect(sock.conn_id, now=time.monotonic()))
            state.notify()
            logger.info(
                "%s disconnected (conn %d, close code %s)", label, sock.conn_id, ws.close_code
            )
        return ws
