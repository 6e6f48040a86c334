"""Middlewares: JSON for every error, and CORS for an allow-list of browser origins."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

from aiohttp import hdrs, web

from .auth import Refusal
from .responses import error_response

__all__ = ["create_cors_middleware", "error_middleware"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ALLOWED_METHODS = frozenset({"GET", "HEAD"})
_ALLOWED_HEADERS = frozenset({"authorization"})
PREFLIGHT_MAX_AGE = 600

_HTTP_CODES = {
    404: ("not_found", "no such path: use GET /kinesis-video-url?channel=NAME&role=VIEWER"),
    405: ("method_not_allowed", "use GET"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors and unexpected exceptions into ``{"error", "message"}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        return error_response(Refusal(exc.status, code, message))
    except Exception:
        logger.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(
            Refusal(500, "internal_error", "the signer failed unexpectedly: retry later")
        )


def create_cors_middleware(
    origins: Collection[str],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for exactly ``origins`` (``scheme://host[:port]``); never ``*``.

    Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) from a listed origin asking
    for GET with at most an ``Authorization`` header get 204; others get a JSON 403. Simple
    requests are served either way, but only listed origins get ``Access-Control-Allow-Origin``,
    so other pages cannot read the answer. Bearer tokens travel in a header, not cookies, so
    ``Access-Control-Allow-Credentials`` is never needed.
    """
    allowed = frozenset(origins)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            request.method == hdrs.METH_OPTIONS
            and origin is not None
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        ):
            return _preflight(request, origin, allowed)
        response = await handler(request)
        if allowed:
            response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        if origin is not None and origin in allowed:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            # Lets a page read Retry-After and schedule its retry after a 429 or 503.
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "Retry-After"
        return response

    return cors_middleware


def _preflight(request: web.Request, origin: str, allowed: frozenset[str]) -> web.Response:
    if origin not in allowed:
        refusal = Refusal(
            403,
            "cors_origin_not_allowed",
            f"origin {origin!r} may not call this signer: the operator must add it to "
            "cors_origins, or serve the page from the signer itself (--static)",
        )
        logger.info("refused CORS preflight from %r", origin)
        return error_response(refusal)
    method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD].upper()
    asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    headers = {h.strip().lower() for h in asked.split(",") if h.strip()}
    if method not in _ALLOWED_METHODS or not headers <= _ALLOWED_HEADERS:
        refusal = Refusal(
            403,
            "cors_request_not_allowed",
            "only GET with an Authorization header may be sent cross-origin",
        )
        response = error_response(refusal)
    else:
        response = web.Response(status=204)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "GET"
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = "Authorization"
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(PREFLIGHT_MAX_AGE)
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.VARY] = "Origin"
    return response
