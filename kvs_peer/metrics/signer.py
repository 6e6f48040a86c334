"""Signer service metrics: API requests by HTTP status, and their latency.

::

    app = create_app(config, resolver)
    watch_signer(app, metrics)   # before the app starts serving
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from .figures import LATENCY_BOUNDS, Figure, figure
from .hub import Metrics
from .sources import ControlPlaneSource
from .tally import Buckets

__all__ = ["SignerSource", "watch_signer"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SignerSource:
    """Counts the signer's API requests (``GET /kinesis-video-url``, CORS preflights
    included) by final HTTP status, with a latency histogram; other paths (``/healthz``,
    static files) are not counted.

    Args:
        path: the API path.
        role: the ``role`` label.
        clock: monotonic clock for latencies.
    """

    def __init__(
        self, path: str, *, role: str = "signer", clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.path = path
        self.labels = {"role": role}
        self._clock = clock
        self.requests: Counter[int] = Counter()
        self.latency = Buckets(LATENCY_BOUNDS)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware; put it first so it sees the status the client gets."""
        if request.path != self.path:
            return await handler(request)
        started = self._clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.requests[status] += 1
            self.latency.observe(self._clock() - started)

    async def sample(self, now: float, wall: float) -> list[Figure]:
        base = self.labels
        figures = [
            figure("kvs_peer_signer_requests_total", count, base, status=str(status))
            for status, count in sorted(self.requests.items())
        ]
        figures.append(figure("kvs_peer_signer_request_seconds", self.latency.value(), base))
        return figures

    def problem(self, now: float, wall: float, grace: float) -> str | None:
        return None  # serving is all the signer's health needs


def watch_signer(app: web.Application, metrics: Metrics) -> SignerSource:
    """Count ``app``'s requests and control-plane calls into ``metrics``.

    Call it before the app starts serving (aiohttp freezes its middlewares then).
    """
    from ..signer.app import URL_PATH
    from ..signer.keys import resolver_key

    source = SignerSource(URL_PATH, role=metrics.role)
    app.middlewares.insert(0, source.middleware)
    metrics.add(source)
    metrics.add(ControlPlaneSource(app[resolver_key], role=metrics.role))
    return source
