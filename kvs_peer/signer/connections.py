"""What happens on a socket before the application sees a request: connection limits per
client address, and logs of malformed requests without their content.

aiohttp's server has no header read timeout of its own, but its keep-alive timer is armed
when a connection opens and again after every answer, and it closes the connection if no
complete request head has arrived by then. :func:`~kvs_peer.signer.app.serve` sets it to
``header_timeout``, so a half-sent request (slowloris) holds a connection for at most that
long. What one address could still do is open connections faster than they time out;
:class:`GuardedSite` caps how many it holds at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .config import IpNetwork

__all__ = ["ConnectionGuard", "GuardedSite", "RedactingHttpLogger"]

logger = logging.getLogger(__name__)


class ConnectionGuard:
    """Count open connections per client address and refuse those over the limit.

    Args:
        max_per_address: connections one address may hold at once.
        exempt: networks with no limit (trusted proxies carry many clients' connections).
    """

    def __init__(self, max_per_address: int, exempt: Sequence[IpNetwork] = ()) -> None:
        self.max_per_address = max_per_address
        self._exempt = tuple(exempt)
        self._open: dict[str, int] = {}
        self._warned: set[str] = set()
        self.refused = 0
        """Connections refused so far (for tests and metrics)."""

    def _is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._exempt)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False means close it."""
        if self._is_exempt(address):
            return True
        count = self._open.get(address, 0)
        if count >= self.max_per_address:
            self.refused += 1
            # Once until the address drops below the limit: a flood must not flood the log.
            if address not in self._warned:
                self._warned.add(address)
                logger.warning(
                    "refusing new connections from %s: it holds %d already "
                    "(max_connections_per_address)",
                    address,
                    count,
                )
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """Forget one connection of ``address`` (which was admitted)."""
        count = self._open.get(address, 0) - 1
        self._warned.discard(address)
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        """Connections ``address`` holds now (exempt addresses are not counted)."""
        return self._open.get(address, 0)


class _GuardedProtocol(asyncio.Protocol):
    """Admit a connection through the guard, then hand every event to aiohttp's protocol."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._guard = guard
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._guard.admit(address):
            # aiohttp never sees it: no handler, no timers, no log line per connection.
            self._inner = None
            if isinstance(transport, asyncio.Transport):  # always, for a TCP server
                transport.abort()
            else:
                transport.close()
            return
        self._address = address
        assert self._inner is not None
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._guard.release(self._address)
            self._address = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass a :class:`ConnectionGuard` before aiohttp's handler.

    Same as ``web.TCPSite`` otherwise (``runner.addresses`` and ``runner.cleanup()`` work).
    """

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._factory = runner.server

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        factory = self._factory
        assert factory is not None
        guard = self._guard
        loop = asyncio.get_running_loop()
        # BaseSite keeps the asyncio server in _server: stop() and runner.addresses read it,
        # as for aiohttp's own sites.
        self._server = await loop.create_server(
            lambda: _GuardedProtocol(factory(), guard), self._host, self._port
        )


class RedactingHttpLogger(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, minus request content.

    aiohttp logs a malformed request at ERROR with the parser's message, which quotes the
    offending bytes: for an oversized ``Authorization`` header, the first 100 bytes of the
    token. A malformed request is the client's problem, so it is logged at INFO as its error
    class and status only. Other exceptions keep their traceback.
    """

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(target, {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            remote = args[0] if args else "?"
            self.logger.info(
                "refused a malformed HTTP request from %s: %s (HTTP %s)",
                remote,
                type(exc).__name__,
                exc.code,
            )
            return
        super().log(level, msg, *args, **kwargs)
