"""HTTP handlers: parse the request, ask :mod:`.auth` and the channel cache, render JSON.

Control-plane errors are translated to HTTP here, once; AWS's own messages stay in the
service's log and never reach the caller. Every request has a deadline
(``request_timeout``): past it the answer is a 503 with ``Retry-After``, whatever AWS does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import hdrs, web
from botocore.auth import SIGV4_TIMESTAMP
from multidict import MultiMapping

from ..channel import ResolvedChannel
from ..errors import AccessDenied, ChannelError, ChannelNotFound, InvalidArgument, Throttled
from ..protocol import Role
from ..rules import new_client_id, validate_channel_name, validate_client_id
from .auth import Principal, Refusal
from .clock import clock_skew
from .forwarded import client_address
from .keys import (
    authorizer_key,
    cache_key,
    clock_key,
    config_key,
    resolver_key,
    sign_executor_key,
)
from .responses import NO_STORE, error_response

__all__ = [
    "UrlQuery",
    "healthz",
    "kinesis_video_url",
    "parse_url_query",
    "refusal_from_channel_error",
    "timeout_refusal",
    "url_response",
]

logger = logging.getLogger(__name__)

THROTTLED_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class UrlQuery:
    """The validated parameters of ``GET /kinesis-video-url``."""

    channel: str
    role: Role
    client_id: str | None


def _bad(error: str, message: str) -> Refusal:
    return Refusal(400, error, message)


def parse_url_query(query: MultiMapping[str]) -> UrlQuery | Refusal:
    """Validate ``channel``, ``role`` and ``clientId``; a 400 :class:`Refusal` says what to fix."""
    for name in ("channel", "role", "clientId"):
        if len(query.getall(name, [])) > 1:
            return _bad("duplicate_parameter", f"give {name} only once")
    channel = query.get("channel")
    if not channel:
        return _bad(
            "missing_channel",
            "add the channel name: /kinesis-video-url?channel=NAME&role=VIEWER",
        )
    try:
        validate_channel_name(channel)
    except InvalidArgument as exc:
        return _bad("invalid_channel", str(exc))
    role_text = query.get("role")
    if not role_text:
        return _bad("missing_role", "add role=MASTER or role=VIEWER")
    try:
        role = Role.parse(role_text)
    except InvalidArgument as exc:
        return _bad("invalid_role", str(exc))
    client_id = query.get("clientId")
    if client_id is not None:
        if role is Role.MASTER:
            return _bad("invalid_client_id", "a MASTER connects without a client id: drop clientId")
        try:
            validate_client_id(client_id)
        except InvalidArgument as exc:
            return _bad("invalid_client_id", f"{exc}; or leave clientId out to get a generated one")
    return UrlQuery(channel, role, client_id)


def _skew_text(skew: float) -> str:
    if abs(skew) < 1:
        # AWS blamed the time but sent no Date header.
        return "the signer's clock is off by more than 5 minutes"
    side = "behind" if skew > 0 else "ahead of"
    return f"the signer's clock is off by {abs(skew):.0f} s ({side} AWS)"


def refusal_from_channel_error(
    exc: ChannelError,
    channel: str,
    region: str,
    *,
    may_create: bool = False,
    now: float | None = None,
) -> Refusal:
    """The HTTP answer for a control-plane failure, without AWS's internal details.

    Args:
        exc: the failure.
        channel: the channel asked for.
        region: the signer's region.
        may_create: whether the caller's token may create channels (said in the 404).
        now: ``time.time()`` when the failure arrived, to measure a clock skew.
    """
    if isinstance(exc, ChannelNotFound):
        hint = "" if may_create else "; the signer creates channels only for tokens allowed to"
        return Refusal(
            404,
            "channel_not_found",
            f"signaling channel {channel!r} does not exist in {region}: check the name "
            f"(exact match, case-sensitive){hint}",
        )
    skew = clock_skew(exc, time.time() if now is None else now)
    if skew is not None:
        return Refusal(
            502,
            "signer_clock_skew",
            f"{_skew_text(skew)}: the operator must sync it (NTP); AWS refuses its requests "
            "until then",
        )
    if isinstance(exc, AccessDenied):
        return Refusal(
            502,
            "aws_access_denied",
            "AWS refused the signer's own credentials for this channel: the operator should "
            "check that the signer's IAM policy allows kinesisvideo:DescribeSignalingChannel, "
            "GetSignalingChannelEndpoint, GetIceServerConfig and ConnectAsMaster / "
            "ConnectAsViewer on this channel, and that its credentials are valid",
        )
    if isinstance(exc, Throttled):
        return Refusal(
            503,
            "aws_throttled",
            f"AWS is throttling the signer: retry after {THROTTLED_RETRY_AFTER} s",
            retry_after=THROTTLED_RETRY_AFTER,
        )
    if exc.code is None:
        # Raised for network failures (no AWS error code): likely transient.
        return Refusal(
            503,
            "aws_unavailable",
            "the signer could not reach Kinesis Video Streams: retry in a few seconds",
            retry_after=THROTTLED_RETRY_AFTER,
        )
    return Refusal(
        502,
        "aws_error",
        "Kinesis Video Streams failed the signer's request: retry later, and tell the operator "
        "if it persists",
    )


def timeout_refusal(timeout: float) -> Refusal:
    """The 503 for a request that ran past its deadline (AWS slow or hung)."""
    retry = max(THROTTLED_RETRY_AFTER, math.ceil(timeout))
    return Refusal(
        503,
        "aws_timeout",
        f"Kinesis Video Streams did not answer the signer within {timeout:g} s: retry after "
        f"{retry} s",
        retry_after=retry,
    )


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _url_expiry(url: str) -> dt.datetime:
    # The URL's own X-Amz-Date + X-Amz-Expires: the instant AWS stops accepting it.
    params = dict(parse_qsl(urlsplit(url).query))
    signed_at = dt.datetime.strptime(params["X-Amz-Date"], SIGV4_TIMESTAMP).replace(tzinfo=dt.UTC)
    return signed_at + dt.timedelta(seconds=int(params["X-Amz-Expires"]))


def url_response(resolved: ResolvedChannel, url: str, client_id: str | None) -> dict[str, Any]:
    """The JSON body of a granted request (the contract :class:`~kvs_peer.access.SignerAccess`
    reads): the URL, who it is for, when it and the TURN credentials expire, and an
    ``RTCConfiguration`` for ``new RTCPeerConnection(configuration)``."""
    return {
        "url": url,
        "role": resolved.role.value,
        "channelARN": resolved.arn,
        "clientId": client_id,
        "region": resolved.region,
        "expiresAt": _iso(_url_expiry(url)),
        "iceExpiresAt": _iso(dt.datetime.fromtimestamp(resolved.ice_expires_at, dt.UTC)),
        "configuration": {
            "iceServers": [server.to_json() for server in resolved.ice_servers],
            "iceTransportPolicy": "all",
        },
    }


def _log_refusal(
    refusal: Refusal, query: UrlQuery | None, address: str, who: str = "-"
) -> web.Response:
    role, client_id, channel = (
        (query.role.value, query.client_id or "-", query.channel) if query else ("-", "-", "-")
    )
    # Refusal messages name the token (never its value) and the channel: safe to log.
    logger.info(
        "refused %s %s on %r for %s from %s: %d %s (%s)",
        role,
        client_id,
        channel,
        who,
        address,
        refusal.status,
        refusal.error,
        refusal.message,
    )
    return error_response(refusal)


async def kinesis_video_url(request: web.Request) -> web.Response:
    """``GET /kinesis-video-url?channel=NAME&role=MASTER|VIEWER[&clientId=ID]``."""
    app = request.app
    config = app[config_key]
    address = client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), config.trusted_proxies
    )
    query = parse_url_query(request.query)
    if isinstance(query, Refusal):
        return _log_refusal(query, None, address)
    authorization = request.headers.getall(hdrs.AUTHORIZATION, [])
    decision = app[authorizer_key].check(
        # Several Authorization headers are malformed: joined, they fail the Bearer syntax.
        ", ".join(authorization) if authorization else None,
        query.channel,
        query.role,
        address=address,
        now=app[clock_key](),
    )
    if isinstance(decision, Refusal):
        return _log_refusal(decision, query, address)
    principal: Principal = decision
    client_id = query.client_id
    if query.role is Role.VIEWER and client_id is None:
        client_id = new_client_id("viewer")
    resolver = app[resolver_key]
    # On threads no boto3 call occupies: CPU only, as credentials are in memory (role
    # credentials close to expiry are refreshed here; the deadline bounds that).
    sign = functools.partial(resolver.sign, client_id=client_id, expires=config.url_expires)
    try:
        async with asyncio.timeout(config.request_timeout):
            resolved = await app[cache_key].get(
                query.channel, query.role, client_id=client_id, create=principal.may_create
            )
            url = await asyncio.get_running_loop().run_in_executor(
                app[sign_executor_key], sign, resolved
            )
    except TimeoutError:
        refusal = timeout_refusal(config.request_timeout)
        logger.warning(
            "channel %r not resolved within %g s (AWS slow or unreachable)",
            query.channel,
            config.request_timeout,
        )
        return _log_refusal(refusal, query, address, repr(principal.name))
    except ChannelError as exc:
        refusal = refusal_from_channel_error(
            exc, query.channel, resolver.region, may_create=principal.may_create
        )
        if refusal.error == "signer_clock_skew":
            logger.warning("%s; AWS refused channel %r: %s", refusal.message, query.channel, exc)
        elif refusal.status >= 500:
            logger.warning("control plane failed for channel %r: %s", query.channel, exc)
        return _log_refusal(refusal, query, address, repr(principal.name))
    logger.info(
        "granted %s %s on %r to %r from %s",
        query.role.value,
        client_id or "-",
        query.channel,
        principal.name,
        address,
    )
    return web.json_response(url_response(resolved, url, client_id), headers=NO_STORE)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: answers without calling AWS, so a slow control plane never fails it."""
    return web.json_response({"status": "ok"}, headers=NO_STORE)
