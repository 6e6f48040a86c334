"""The signer's aiohttp application: factory, routes, lifecycle, and a server context.

::

    resolver = ChannelResolver(region="eu-west-1")
    app = create_app(load_config("signer.toml"), resolver)
    async with serve(app, host="127.0.0.1", port=8080) as url:
        ...  # GET {url}/kinesis-video-url?channel=cam-1&role=VIEWER
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from ..channel import ChannelResolver
from ..errors import InvalidArgument
from ..netfail import bind_failure
from .auth import Authorizer
from .cache import ChannelCache
from .config import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, SignerConfig
from .connections import ConnectionGuard, GuardedSite, RedactingHttpLogger
from .keys import (
    authorizer_key,
    cache_key,
    clock_key,
    config_key,
    resolver_key,
    sign_executor_key,
)
from .middleware import create_cors_middleware, error_middleware
from .views import healthz, kinesis_video_url

__all__ = ["URL_PATH", "create_app", "serve"]

logger = logging.getLogger(__name__)

URL_PATH = "/kinesis-video-url"


async def _resolver_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    logger.info(
        "signer ready: %d token(s) (%d may create channels), %d anonymous rule(s), region %s, "
        "request timeout %g s",
        len(config.tokens),
        sum(t.create_channels for t in config.tokens),
        len(config.anonymous),
        app[resolver_key].region,
        config.request_timeout,
    )
    yield
    # The app owns the resolver's worker threads from here on (close() is idempotent).
    await app[cache_key].close()
    app[sign_executor_key].shutdown(wait=False, cancel_futures=True)
    await app[resolver_key].close()


# Web assets only: a static folder next to a config file must never serve the config
# (TOML), notes, archives or dotfiles.
STATIC_SUFFIXES = frozenset(
    {".html", ".js", ".mjs", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico"}
)


def _static_handler(static_dir: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    root = static_dir.resolve()

    async def static_file(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"] or "index.html"
        parts = Path(relative).parts
        # resolve() follows symlinks, so a link pointing outside the folder is refused too.
        target = (root / relative).resolve()
        if (
            any(part.startswith(".") for part in parts)
            or target.suffix.lower() not in STATIC_SUFFIXES
            or not target.is_relative_to(root)
            or not target.is_file()
        ):
            raise web.HTTPNotFound()
        return web.FileResponse(target)

    return static_file


def _setup_routes(app: web.Application, static_dir: Path | None) -> None:
    app.router.add_get(URL_PATH, kinesis_video_url)
    app.router.add_get("/healthz", healthz)
    if static_dir is None:
        return
    if not static_dir.is_dir():
        raise InvalidArgument(
            f"static directory {str(static_dir)!r} does not exist: pass --static with a folder "
            "such as examples/browser"
        )
    app.router.add_get("/{path:.*}", _static_handler(static_dir))


def create_app(
    config: SignerConfig,
    resolver: ChannelResolver,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the signer application.

    Args:
        config: tokens, anonymous rules, CORS origins and signing options.
        resolver: the shared, caching control-plane resolver; the application closes it on
            cleanup.
        clock: monotonic clock for rate limits.

    Raises:
        InvalidArgument: ``config.static_dir`` is set but is not a directory.
    """
    app = web.Application(
        middlewares=[create_cors_middleware(config.cors_origins), error_middleware]
    )
    app[config_key] = config
    app[resolver_key] = resolver
    app[cache_key] = ChannelCache(resolver)
    # Presigning is CPU work on credentials already in memory; its own threads keep it from
    # waiting behind boto3 calls to a hung control plane in the resolver's executor.
    app[sign_executor_key] = ThreadPoolExecutor(2, thread_name_prefix="kvs-peer-signer-sign")
    app[authorizer_key] = Authorizer.from_config(config)
    app[clock_key] = clock
    app.cleanup_ctx.append(_resolver_ctx)
    _setup_routes(app, config.static_dir)
    return app


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 8080
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0 picks a free port); yields the base URL.

    A signer app's config sets ``header_timeout`` and ``max_connections_per_address``
    (trusted proxies are exempt from the latter); other apps get the defaults.

    Raises:
        InvalidArgument: the address cannot be bound.
    """
    config = app.get(config_key)
    header_timeout = config.header_timeout if config else DEFAULT_HEADER_TIMEOUT
    guard = ConnectionGuard(
        config.max_connections_per_address if config else DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        exempt=config.trusted_proxies if config else (),
    )
    runner = web.AppRunner(
        app,
        # No aiohttp access log: it would duplicate the views' log lines, which say who got
        # what.
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        # aiohttp arms this timer when a connection opens and after each answer, and closes
        # the connection if no complete request head arrived by then: a header read timeout.
        keepalive_timeout=header_timeout,
        # Malformed requests are logged without the bytes that broke them (a token).
        logger=RedactingHttpLogger(logging.getLogger(f"{__name__}.http")),
    )
    await runner.setup()
    try:
        site = GuardedSite(runner, host, port, guard=guard)
        try:
            await site.start()
        except OSError as exc:
            raise InvalidArgument(bind_failure(exc, host, port)) from None
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()
