"""``/metrics`` and ``/healthz`` over HTTP for one :class:`~kvs_peer.metrics.hub.Metrics`.

::

    async with MetricsServer(metrics, host="127.0.0.1", port=9100) as server:
        print(server.url)  # http://127.0.0.1:9100
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from ..errors import InvalidArgument
from .hub import Metrics

__all__ = ["MetricsServer"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus version reads. kvs-peer's names and labels
are plain ASCII, so prometheus_client's newer 1.0.0 output is byte for byte the same."""


class MetricsServer:
    """Serve ``GET /metrics`` (Prometheus text format) and ``GET /healthz``.

    ``/metrics`` samples every source at each scrape. ``/healthz`` answers 200 with
    ``{"status": "ok"}`` (or ``"starting"`` before the command watches anything) and 503 with
    ``{"status": "unhealthy", "problems": [...]}`` otherwise. Per role:

    - ``master``, ``viewer`` (and a recorder's viewers): signaling is connected, still making
      its first connection, or has been reconnecting for less than
      :data:`~kvs_peer.metrics.hub.HEALTH_GRACE` seconds. Peer connections and video are
      not part of it: a restart would not bring a missing master or viewer back (see
      ``kvs_peer_video_flowing`` and ``kvs_peer_viewers_connected`` for those).
    - ``signer``, ``local``: the process runs its event loop and answers.

    Args:
        metrics: what to serve.
        host: address to bind (default loopback: metrics say what a device does).
        port: port to bind; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            InvalidArgument: the address cannot be bound (in use, not local, unknown host).
        """
        if not 0 <= self._port <= 65535:
            raise InvalidArgument(
                f"metrics port {self._port} is out of range: use 1-65535, or 0 for a free one"
            )
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio rewords bind errors ("error while attempting to bind..."): say it plainly.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise InvalidArgument(
                f"cannot serve metrics on {self.host}:{self._port}: {reason}; pick another "
                "--metrics-port (0 picks a free one) or --metrics-host"
            ) from None
        self._runner = runner
        self._port = runner.addresses[0][1]
        logger.info("metrics on %s/metrics", self.url)

    async def close(self) -> None:
        """Stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.metrics.refresh()
        # Set as a header: aiohttp's content_type= refuses a value with a charset in it.
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self.metrics.health()
        return web.json_response(
            health.to_json(),
            status=200 if health.healthy else 503,
            headers={"Cache-Control": "no-store"},
        )
