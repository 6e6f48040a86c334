"""How an agent gets into a channel: signed URLs and ICE servers, from AWS or a signer.

A :class:`ChannelAccess` is the URL provider of :class:`~kvs_peer.signaling.SignalingClient`
plus the ICE servers peer connections need. Two implementations:

- :class:`AwsAccess`: the agent holds AWS credentials and resolves the channel itself
  (through a cached :class:`~kvs_peer.channel.ChannelResolver`).
- :class:`SignerAccess`: the agent holds no AWS credentials; every (re)connect asks a
  kvs-peer signer service for a fresh signed URL and ICE configuration.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .channel import ChannelResolver, IceServer, ResolvedChannel
from .errors import InvalidArgument, SignerError
from .netfail import connect_failure
from .protocol import Role
from .reconnect import Refresh
from .signing import redact_url, validate_channel_name, validate_client_id

__all__ = ["AwsAccess", "ChannelAccess", "IceConfig", "SignerAccess"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IceConfig:
    """ICE servers and when their credentials expire (``time.time()``)."""

    servers: tuple[IceServer, ...]
    expires_at: float
    transport_policy: str = "all"


class ChannelAccess(Protocol):
    """Source of signed URLs and ICE servers for one channel, role and client id."""

    channel: str
    role: Role
    client_id: str | None

    async def __call__(self) -> str:
        """A freshly signed WSS URL."""
        ...

    def invalidate(self, refresh: Refresh) -> None:
        """Forget cached endpoints/ICE so the next call fetches them again."""
        ...

    def for_viewer(self, client_id: str) -> ChannelAccess:
        """Access to the same channel as VIEWER ``client_id`` (a master's takeover probe)."""
        ...

    async def ice_config(self) -> IceConfig:
        """Current ICE servers (refreshed once their credentials expire)."""
        ...


class AwsAccess:
    """Channel access with local AWS credentials.

    Args:
        resolver: a shared :class:`ChannelResolver`.
        channel: channel name.
        role: MASTER or VIEWER.
        client_id: the viewer's id (None for a master).
        create: create the channel if it does not exist.
    """

    def __init__(
        self,
        resolver: ChannelResolver,
        channel: str,
        role: Role | str,
        *,
        client_id: str | None = None,
        create: bool = False,
    ) -> None:
        self.resolver = resolver
        self.channel = validate_channel_name(channel)
        self.role = Role.parse(role)
        self.client_id = validate_client_id(client_id) if client_id is not None else None
        self.create = create
        self.resolved: ResolvedChannel | None = None
        self._prefetch: asyncio.Task[ResolvedChannel] | None = None

    async def resolve(self) -> ResolvedChannel:
        """Resolve (from cache when fresh) and remember the channel."""
        self.resolved = await self.resolver.resolve(
            self.channel, self.role, client_id=self.client_id, create=self.create
        )
        return self.resolved

    async def __call__(self) -> str:
        # ARN and endpoints are all a signed URL needs; the ICE servers (one more control-plane
        # call) are fetched meanwhile, while the WebSocket opens, and wait for ice_config().
        location = await self.resolver.locate(self.channel, self.role, create=self.create)
        if self._prefetch is None or self._prefetch.done():
            self._prefetch = asyncio.ensure_future(self.resolve())
            # Failures surface from ice_config(), which asks again; not from this task.
            self._prefetch.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await self.resolver.presign(location, client_id=self.client_id)

    def invalidate(self, refresh: Refresh) -> None:
        if refresh is Refresh.CREDENTIALS:
            self.resolver.refresh_credentials()
        if refresh is not Refresh.URL:
            # A 404 must re-describe the channel: re-created, it has a new ARN.
            self.resolver.invalidate(self.channel, ice_only=refresh is Refresh.ICE)

    def for_viewer(self, client_id: str) -> AwsAccess:
        return AwsAccess(self.resolver, self.channel, Role.VIEWER, client_id=client_id)

    async def ice_config(self) -> IceConfig:
        resolved = await self.resolve()
        return IceConfig(resolved.ice_servers, resolved.ice_expires_at)


class SignerAccess:
    """Channel access through a kvs-peer signer service: no AWS credentials needed.

    Every call fetches ``GET {signer_url}/kinesis-video-url?channel=..&role=..&clientId=..``
    with ``Authorization: Bearer <token>``; the response carries the signed URL and the ICE
    configuration, which is kept until the next call.

    Args:
        signer_url: base URL of the signer service, e.g. ``https://signer.example.com``.
        channel: channel name.
        role: MASTER or VIEWER.
        client_id: the viewer's id.
        token: bearer token (None for anonymous viewer access, if the signer allows it).
        timeout: seconds per request.
        ssl: TLS context (e.g. trusting a private CA); None uses the system trust store.
    """

    def __init__(
        self,
        signer_url: str,
        channel: str,
        role: Role | str,
        *,
        client_id: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if not signer_url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"signer URL {redact_url(signer_url)!r} must start with http:// or https://"
            )
        self.signer_url = signer_url.rstrip("/")
        # Requests use signer_url as given (it may carry user:password); messages and logs
        # show this redacted copy.
        self._shown_url = redact_url(self.signer_url)
        self.channel = validate_channel_name(channel)
        self.role = Role.parse(role)
        self.client_id = validate_client_id(client_id) if client_id is not None else None
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl
        self._ice: IceConfig | None = None
        self._lock = asyncio.Lock()
        self.last_response: dict[str, Any] | None = None

    async def _fetch(self) -> dict[str, Any]:
        params = {"channel": self.channel, "role": self.role.value}
        if self.client_id is not None:
            params["clientId"] = self.client_id
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        url = f"{self.signer_url}/kinesis-video-url"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(
                    url, params=params, headers=headers, ssl=self._ssl if self._ssl else True
                ) as response,
            ):
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status != 200 or not isinstance(body, dict):
                    message = (body or {}).get("message") if isinstance(body, dict) else None
                    code = (body or {}).get("error") if isinstance(body, dict) else None
                    raise SignerError(
                        response.status,
                        f"signer refused {self.role} access to {self.channel!r} with HTTP "
                        f"{response.status}: {message or 'no details'}",
                        code=code,
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = connect_failure(exc).replace(self.signer_url, self._shown_url)
            raise SignerError(
                0,
                f"could not reach the signer at {self._shown_url}: {reason}; check the URL "
                "and that the signer runs",
            ) from exc

    async def __call__(self) -> str:
        async with self._lock:
            body = await self._fetch()
        url = body.get("url")
        if not isinstance(url, str):
            raise SignerError(
                200,
                f"the signer at {self._shown_url} answered without a signed 'url': check that "
                "the URL points at a kvs-peer signer (`kvs-peer signer`), not another service",
            )
        configuration = body.get("configuration") or {}
        parsed = (IceServer.from_json(e) for e in configuration.get("iceServers", []))
        servers = [server for server in parsed if server is not None]
        expires = body.get("iceExpiresAt") or body.get("expiresAt")
        self._ice = IceConfig(
            tuple(servers),
            _epoch(expires) if expires else time.time() + 240,
            configuration.get("iceTransportPolicy", "all"),
        )
        self.last_response = {k: v for k, v in body.items() if k != "url"}
        logger.debug("signer handed out %s", redact_url(url))
        return url

    def invalidate(self, refresh: Refresh) -> None:
        # The signer resolves channels itself; the next call always fetches fresh data.
        self._ice = None

    def for_viewer(self, client_id: str) -> SignerAccess:
        return SignerAccess(
            self.signer_url,
            self.channel,
            Role.VIEWER,
            client_id=client_id,
            token=self._token,
            timeout=self._timeout.total or 10.0,
            ssl=self._ssl,
        )

    async def ice_config(self) -> IceConfig:
        if self._ice is None or self._ice.expires_at <= time.time():
            await self()
        assert self._ice is not None
        return self._ice


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + 240
