"""Control plane: resolve a signaling channel into everything a peer needs, with caching.

One :class:`ChannelResolver` per process (or per signer service). It runs boto3 in worker
threads (boto3 blocks), caches endpoints for a long time and ICE servers until their ``Ttl``
minus a margin, and makes concurrent callers share one in-flight request, so a burst of
viewers or signer requests costs one control-plane round trip per channel
(docs/protocol.md#control-plane, #ice-configuration).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from .channelcache import ChannelCache
from .endpoints import EndpointMode, control_plane_url
from .endpoints import stun_url as partition_stun_url
from .errors import AccessDenied, ChannelError, ChannelNotFound, InvalidArgument, Throttled
from .netfail import connect_failure
from .protocol import IceServer, Role
from .rules import ICE_SERVER_TTL, ICE_TTL_MARGIN, MESSAGE_TTL, MESSAGE_TTL_RANGE
from .signing import (
    DEFAULT_EXPIRES,
    master_url,
    validate_channel_name,
    validate_client_id,
    viewer_url,
)

if TYPE_CHECKING:
    from mypy_boto3_kinesisvideo import KinesisVideoClient
    from mypy_boto3_kinesisvideo.type_defs import (
        ChannelInfoTypeDef,
        MediaStorageConfigurationTypeDef,
        ResourceEndpointListItemTypeDef,
    )

__all__ = [
    "ChannelLocation",
    "ChannelResolver",
    "IceServer",
    "ResolvedChannel",
    "ice_servers_from_boto",
    "regional_stun_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Mapping[str, Any])

DEFAULT_ENDPOINT_TTL = 3600.0  # the C SDK caches for 10 h; an hour keeps a deleted channel visible

_AUTH_CODES = {
    "AccessDeniedException",
    "NotAuthorizedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "MissingAuthenticationTokenException",
    "403",
    "401",
}
_THROTTLE_CODES = {
    "ClientLimitExceededException",
    "ThrottlingException",
    "TooManyRequestsException",
    "LimitExceededException",
    "AccountChannelLimitExceededException",
}


def regional_stun_url(region: str, mode: EndpointMode | None = None) -> str:
    """The KVS STUN server of a region in its partition; GetIceServerConfig does not return it.

    See :func:`kvs_peer.endpoints.stun_url`.
    """
    return partition_stun_url(region, mode or EndpointMode())


def ice_servers_from_boto(ice_server_list: Sequence[Mapping[str, Any]]) -> tuple[IceServer, ...]:
    """Convert GetIceServerConfig's ``IceServerList`` into :class:`IceServer` values."""
    servers = []
    for entry in ice_server_list:
        uris = tuple(u for u in entry.get("Uris", ()) if isinstance(u, str))
        if uris:
            ttl = entry.get("Ttl")
            ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None
            servers.append(IceServer(uris, entry.get("Username"), entry.get("Password"), ttl))
    return tuple(servers)


@dataclass(frozen=True, slots=True)
class ChannelLocation:
    """Where a channel is, for one role: enough to sign a URL and connect. Immutable."""

    name: str
    arn: str
    region: str
    role: Role
    wss_endpoint: str
    https_endpoint: str
    message_ttl: int | None = None


@dataclass(frozen=True, slots=True)
class ResolvedChannel:
    """Everything a peer needs to join a channel in one role. Immutable."""

    name: str
    arn: str
    region: str
    role: Role
    wss_endpoint: str
    https_endpoint: str
    ice_servers: tuple[IceServer, ...]
    """STUN (when known) first, then the channel's TURN servers."""
    ice_expires_at: float
    """``time.time()`` after which the TURN credentials must be refreshed."""
    message_ttl: int | None = None


@dataclass
class _Entry:
    value: Any  # endpoints or ICE servers, by the key's kind
    expires_at: float  # time.monotonic()


@dataclass
class _Cache:
    """TTL cache whose concurrent misses for one key share a single loader task."""

    clock: Callable[[], float]
    _values: dict[Any, _Entry] = field(default_factory=dict)
    _inflight: dict[Any, asyncio.Future[Any]] = field(default_factory=dict)

    async def get(self, key: Any, load: Callable[[], Awaitable[tuple[T, float]]]) -> T:
        entry = self._values.get(key)
        if entry is not None and entry.expires_at > self.clock():
            return cast(T, entry.value)  # a key is always loaded by the same kind of loader
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key, load))
            self._inflight[key] = pending
        # shield: one caller being cancelled must not cancel the load for the others.
        return await asyncio.shield(pending)

    async def _load(self, key: Any, load: Callable[[], Awaitable[tuple[T, float]]]) -> T:
        try:
            value, ttl = await load()
            self._values[key] = _Entry(value, self.clock() + ttl)
            return value
        finally:
            self._inflight.pop(key, None)

    def items(self) -> list[tuple[Any, _Entry]]:
        return list(self._values.items())

    def invalidate(self, match: Callable[[Any], bool]) -> None:
        for key in [k for k in self._values if match(k)]:
            del self._values[key]


class ChannelResolver:
    """Resolve signaling channels through boto3 with caching.

    Works against real AWS (default credential chain, region from config or environment)
    and against any ``endpoint_url`` such as the local emulator.

    Args:
        region: AWS region; defaults to the boto3 session's region.
        endpoint_url: control-plane endpoint override (e.g. ``http://127.0.0.1:4566``).
        session: a boto3 ``Session`` to take credentials and region from.
        stun_url: STUN server to put first in the ICE list. ``"auto"`` uses the KVS regional
            STUN server against AWS and none with ``endpoint_url`` (a local emulator must not
            make aiortc wait 5 s on an unreachable server); None disables it.
        endpoint_ttl: seconds to cache channel ARNs and endpoints.
        timeout: connect/read timeout of each control-plane call, seconds.
        max_workers: threads for blocking boto3 calls.
        verify: TLS verification for boto3 (a CA bundle path, or False); None = default.
        disk_cache: keep channel ARNs and endpoints on disk across restarts
            (:mod:`kvs_peer.channelcache`): True for the default directory
            (``$KVS_PEER_CACHE_DIR``, ``$XDG_CACHE_HOME/kvs-peer`` or ``~/.cache/kvs-peer``), a
            directory, or a :class:`~kvs_peer.channelcache.ChannelCache`. Off by default, as
            in the C SDK; the CLI turns it on.

    Use it as ``async with ChannelResolver(...) as resolver:`` or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        session: boto3.Session | None = None,
        stun_url: str | None = "auto",
        endpoint_ttl: float = DEFAULT_ENDPOINT_TTL,
        timeout: float = 10.0,
        max_workers: int = 4,
        verify: str | bool | None = None,
        disk_cache: bool | str | os.PathLike[str] | ChannelCache = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        # AWS_REGION is what most AWS SDKs read; botocore only reads AWS_DEFAULT_REGION.
        region = region or os.environ.get("AWS_REGION") or None
        self._own_session = session is None
        self._session = session or boto3.Session(region_name=region)
        self.region = region or self._session.region_name
        if not self.region:
            raise InvalidArgument(
                "no AWS region configured: pass --region, set AWS_REGION or AWS_DEFAULT_REGION, "
                "or set a region in ~/.aws/config"
            )
        self.endpoint_url = endpoint_url
        self.endpoint_mode = EndpointMode.from_session(self._session)
        """FIPS and dual-stack switches, read as every AWS SDK reads them."""
        if stun_url == "auto":
            stun_url = None if endpoint_url else regional_stun_url(self.region, self.endpoint_mode)
        self.stun_url = stun_url
        self.endpoint_ttl = endpoint_ttl
        self.clock_offset = 0.0
        """Server time minus local time, learned from control-plane ``Date`` headers."""
        self._config = botocore.config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            user_agent_extra="kvs-peer",
        )
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="kvs-peer-boto3")
        self._kv: KinesisVideoClient | None = None
        self._timeout = timeout
        self._http: Any = None  # aiohttp session for GetIceServerConfig, made on first use
        self._ssl_context: Any = None
        # Worker threads may ask for a client at once (ICE servers fetched while the channel
        # is described); a boto3 session is not thread-safe, so clients are made one at a time.
        self._client_lock = threading.Lock()
        self._signaling: dict[str, Any] = {}
        self._cache = _Cache(clock)
        if isinstance(disk_cache, ChannelCache):
            self.disk_cache: ChannelCache | None = disk_cache
        elif disk_cache is True:
            self.disk_cache = ChannelCache()
        elif disk_cache is False or disk_cache is None:
            self.disk_cache = None
        else:
            self.disk_cache = ChannelCache(Path(disk_cache))
        self.calls: dict[str, int] = {}
        """Control-plane calls made, by operation name (for tests and metrics)."""

    async def __aenter__(self) -> ChannelResolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the worker threads and the HTTP session. Idempotent."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            await self._http.close()

    # -- blocking side ------------------------------------------------------------------------

    def _client(
        self, service: Literal["kinesisvideo"], endpoint_url: str | None
    ) -> KinesisVideoClient:
        return self._session.client(
            service,
            region_name=self.region,
            endpoint_url=endpoint_url,
            config=self._config,
            verify=self._verify,
        )

    def _call(self, operation: str, fn: Callable[..., R], **kwargs: Any) -> R:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        response = fn(**kwargs)
        self._learn_clock(response)
        return response

    def _learn_clock(self, response: Mapping[str, Any]) -> None:
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        offset = server - time.time()
        # A Date header has 1 s resolution; only a real skew is worth correcting.
        self.clock_offset = offset if abs(offset) > 2 else 0.0

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise AccessDenied(
                "no AWS credentials found: configure them (environment, ~/.aws, instance role) "
                "or use --signer to get signed URLs from a signer service"
            ) from exc
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ) as exc:
            where = self.endpoint_url or f"the {self.region} KVS endpoint"
            raise ChannelError(
                f"could not reach {where}: {exc}; check the network, region and --endpoint-url"
            ) from exc

    # -- control plane ---------------------------------------------------------------------

    def _kinesisvideo(self) -> KinesisVideoClient:
        with self._client_lock:
            if self._kv is None:
                self._kv = self._client("kinesisvideo", self.endpoint_url)
            return self._kv

    async def describe(self, name: str) -> ChannelInfoTypeDef:
        """DescribeSignalingChannel by exact name (never prefix matching). Not cached."""
        validate_channel_name(name)

        try:
            response = await self._signed_post(
                self._control_plane("describeSignalingChannel"),
                "DescribeSignalingChannel",
                {"ChannelName": name},
            )
            info = cast("ChannelInfoTypeDef", response["ChannelInfo"])
        except (KeyError, TypeError) as exc:
            raise ChannelError(
                f"DescribeSignalingChannel returned no ChannelInfo for {name!r}; check "
                "--endpoint-url"
            ) from exc
        except ChannelNotFound:
            raise ChannelNotFound(name) from None
        if info.get("ChannelStatus") == "DELETING":
            raise ChannelNotFound(name, f"signaling channel {name!r} is being deleted")
        return info

    async def create_channel(self, name: str, *, message_ttl: int = MESSAGE_TTL) -> str:
        """CreateSignalingChannel (SINGLE_MASTER); returns the ARN. Existing channel -> its ARN.

        Args:
            name: the channel name.
            message_ttl: seconds an undelivered message waits for its recipient (KVS allows
                :data:`~kvs_peer.rules.MESSAGE_TTL_RANGE`).

        Raises:
            InvalidArgument: a bad name or ``message_ttl``, before any call.
        """
        validate_channel_name(name)
        low, high = MESSAGE_TTL_RANGE
        if isinstance(message_ttl, bool) or not isinstance(message_ttl, int):
            raise InvalidArgument(f"message_ttl {message_ttl!r} must be whole seconds")
        if not low <= message_ttl <= high:
            raise InvalidArgument(
                f"message_ttl {message_ttl} is out of range: KVS allows {low} to {high} seconds"
            )

        def call() -> str:
            kv = self._kinesisvideo()
            try:
                return self._call(
                    "CreateSignalingChannel",
                    kv.create_signaling_channel,
                    ChannelName=name,
                    ChannelType="SINGLE_MASTER",
                    SingleMasterConfiguration={"MessageTtlSeconds": message_ttl},
                )["ChannelARN"]
            except kv.exceptions.ResourceInUseException:
                # Created concurrently by someone else: fine, describe it.
                return self._call(
                    "DescribeSignalingChannel", kv.describe_signaling_channel, ChannelName=name
                )["ChannelInfo"]["ChannelARN"]

        arn = await self._run(call)
        logger.info("created signaling channel %s", name)
        return arn

    async def _endpoints(self, name: str, role: Role, create: bool) -> dict[str, Any]:
        async def load() -> tuple[dict[str, Any], float]:
            disk = self.disk_cache
            if disk is not None:
                # A few hundred bytes from the page cache: cheaper inline than a thread hop.
                cached = disk.load(self.region, self.endpoint_url, name, role)
                if cached is not None:
                    logger.debug("channel %s (%s) from the disk cache", name, role)
                    remaining = min(cached.expires_at - time.time(), self.endpoint_ttl)
                    value = {
                        "arn": cached.arn,
                        "wss": cached.wss,
                        "https": cached.https,
                        "message_ttl": cached.message_ttl,
                    }
                    return value, max(remaining, 0.0)
            try:
                info = await self.describe(name)
            except ChannelNotFound:
                if not create:
                    raise
                await self.create_channel(name)
                info = await self.describe(name)
            arn = info["ChannelARN"]

            response = await self._signed_post(
                self._control_plane("getSignalingChannelEndpoint"),
                "GetSignalingChannelEndpoint",
                {
                    "ChannelARN": arn,
                    "SingleMasterChannelEndpointConfiguration": {
                        "Protocols": ["WSS", "HTTPS"],
                        "Role": role.value,
                    },
                },
            )
            endpoints = {
                str(e.get("Protocol", "")).upper(): str(e.get("ResourceEndpoint", ""))
                for e in response.get("ResourceEndpointList") or ()
                if isinstance(e, dict)
            }
            missing = {"WSS", "HTTPS"} - endpoints.keys()
            if missing:
                raise ChannelError(
                    f"GetSignalingChannelEndpoint for {name!r} returned no "
                    f"{' or '.join(sorted(missing))} endpoint: check that the endpoint URL is "
                    "Kinesis Video Streams' control plane (or `kvs-peer local`) and that the "
                    "channel is a SINGLE_MASTER signaling channel"
                )
            ttl_seconds = info.get("SingleMasterConfiguration", {}).get("MessageTtlSeconds")
            value = {
                "arn": arn,
                "wss": endpoints["WSS"],
                "https": endpoints["HTTPS"],
                "message_ttl": ttl_seconds,
            }
            if disk is not None:
                disk.store(self.region, self.endpoint_url, name, role, value, self.endpoint_ttl)
            return value, self.endpoint_ttl

        return await self._cache.get(("endpoints", name, role), load)

    async def _ice(
        self, arn: str, https: str, client_id: str
    ) -> tuple[tuple[IceServer, ...], float]:
        """TURN servers of a channel and the wall-clock time they must be refreshed by."""

        async def load() -> tuple[tuple[tuple[IceServer, ...], float], float]:
            entries = await self._get_ice_server_config(https, arn, client_id)
            ttls = [int(e["Ttl"]) for e in entries if isinstance(e.get("Ttl"), int)]
            # No TURN entries: nothing expires, but ask again after a while anyway.
            ttl = max(min(ttls) - ICE_TTL_MARGIN, 1.0) if ttls else float(ICE_SERVER_TTL)
            return (ice_servers_from_boto(entries), time.time() + ttl), ttl

        # TURN credentials are per channel (TURN REST username = expiry + channel ARN), so
        # they are cached per channel whatever client id asked first. The API takes a
        # ClientId; that the credentials are not tied to it is our reading, not documented.
        return await self._cache.get(("ice", arn), load)

    async def _get_ice_server_config(
        self, https: str, arn: str, client_id: str
    ) -> list[dict[str, Any]]:
        """GetIceServerConfig, on the channel's HTTPS endpoint (docs/protocol.md)."""
        data = await self._signed_post(
            https.rstrip("/") + "/v1/get-ice-server-config",
            "GetIceServerConfig",
            {"ChannelARN": arn, "ClientId": client_id, "Service": "TURN"},
        )
        entries = data.get("IceServerList")
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def _control_plane(self, path: str) -> str:
        base = self.endpoint_url or control_plane_url(self.region, self.endpoint_mode)
        return f"{base.rstrip('/')}/{path}"

    async def _signed_post(
        self, url: str, operation: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One SigV4-signed JSON POST, the way a boto3 client would send ``operation``.

        The calls on a peer's path to its first frame (DescribeSignalingChannel,
        GetSignalingChannelEndpoint, GetIceServerConfig) go this way rather than through a
        boto3 client: creating one costs 40-90 ms of CPU (botocore parses its service model
        and endpoint data) with the GIL held, and GetIceServerConfig runs while the WebSocket
        opens and the offer is made. SigV4 is still botocore's (``SigV4Auth``, signing name
        ``kinesisvideo``) and errors are translated as boto3's are. Unlike boto3 there is no
        retry here: the reconnect policy (agents) or the signer's own deadline decides.
        """
        import aiohttp
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body = json.dumps(payload)

        def sign() -> dict[str, str]:
            # Reading refreshable credentials may call STS: off the event loop.
            credentials = self._session.get_credentials()
            if credentials is None:
                raise botocore.exceptions.NoCredentialsError()
            request = AWSRequest(
                "POST", url, data=body, headers={"Content-Type": "application/json"}
            )
            request.context["timestamp"] = (
                dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)
            ).strftime("%Y%m%dT%H%M%SZ")
            SigV4Auth(credentials.get_frozen_credentials(), "kinesisvideo", self.region).add_auth(
                request
            )
            return {k: v for k, v in request.headers.items() if k.lower() != "host"}

        self.calls[operation] = self.calls.get(operation, 0) + 1
        headers = await self._run(sign)
        try:
            if self._http is None or self._http.closed:
                # trust_env: HTTPS_PROXY and friends, which boto3 honours too.
                self._http = aiohttp.ClientSession(
                    trust_env=True,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=self._timeout, sock_read=self._timeout
                    ),
                )
            async with self._http.post(
                url, data=body.encode(), headers=headers, ssl=self._ssl_for_http()
            ) as response:
                text = await response.text()
                self._learn_clock(
                    {"ResponseMetadata": {"HTTPHeaders": {"date": response.headers.get("Date")}}}
                )
                try:
                    data = json.loads(text) if text else {}
                except ValueError:
                    data = None
                if response.status == 200 and isinstance(data, dict):
                    return data
                code = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
                if isinstance(data, dict):
                    code = code or str(data.get("__type", "")).rsplit("#", 1)[-1]
                    message = data.get("message") or data.get("Message") or text[:200]
                else:
                    message = text[:200]
                # Shaped as boto3's, headers included: the signer reads a clock skew from Date.
                error = botocore.exceptions.ClientError(
                    {
                        "Error": {"Code": code or str(response.status), "Message": message},
                        "ResponseMetadata": {
                            "RequestId": response.headers.get("x-amzn-RequestId", ""),
                            "HostId": "",
                            "RetryAttempts": 0,
                            "HTTPStatusCode": response.status,
                            "HTTPHeaders": {k.lower(): v for k, v in response.headers.items()},
                        },
                    },
                    operation,
                )
                raise _translate(error) from error
        except aiohttp.ClientConnectorCertificateError as exc:
            # Chained from the ssl error: the reconnect policy ends the run on it, as a
            # certificate nobody trusts stays untrusted however often it is retried.
            parts = urlsplit(url)
            reason = getattr(exc.certificate_error, "verify_message", None) or str(
                exc.certificate_error
            )
            raise ChannelError(
                f"the TLS certificate of {parts.scheme}://{parts.netloc} is not trusted "
                f"({reason}): set AWS_CA_BUNDLE to the CA certificate that signed it "
                "(`kvs-peer local --tls` prints the path of its ca.pem)"
            ) from exc.certificate_error
        except (aiohttp.ClientError, TimeoutError) as exc:
            where = url.split("/", 3)[2] if "//" in url else url
            raise ChannelError(
                f"could not reach {where} for {operation}: {connect_failure(exc)}; check the "
                "network, the region and --endpoint-url"
            ) from exc

    def _ssl_for_http(self) -> Any:
        """aiohttp's ``ssl`` argument with boto3's meaning of ``verify`` and AWS_CA_BUNDLE."""
        verify = self._verify
        if verify is None:
            verify = os.environ.get("AWS_CA_BUNDLE") or True
        if verify is True:
            return True
        if verify is False:
            return False
        if self._ssl_context is None:
            import ssl

            self._ssl_context = ssl.create_default_context(cafile=str(verify))
        return self._ssl_context

    async def locate(self, name: str, role: Role | str, *, create: bool = False) -> ChannelLocation:
        """ARN and endpoints of ``name`` for ``role``, without the ICE servers.

        Enough to sign a URL and open the WebSocket (:meth:`presign` takes it), so a peer
        can connect while :meth:`resolve` fetches the TURN servers. Served from memory, then
        the disk cache (``disk_cache``), then the control plane.

        Raises:
            ChannelNotFound, AccessDenied, Throttled, ChannelError, InvalidArgument.
        """
        role = Role.parse(role)
        endpoints = await self._endpoints(name, role, create)
        return ChannelLocation(
            name=name,
            arn=endpoints["arn"],
            region=self.region,
            role=role,
            wss_endpoint=endpoints["wss"],
            https_endpoint=endpoints["https"],
            message_ttl=endpoints["message_ttl"],
        )

    async def resolve(
        self,
        name: str,
        role: Role | str,
        *,
        client_id: str | None = None,
        create: bool = False,
    ) -> ResolvedChannel:
        """Resolve ``name`` for ``role``: ARN, WSS and HTTPS endpoints, ICE servers.

        Args:
            name: exact channel name.
            role: MASTER or VIEWER.
            client_id: the viewer's client id (sent to GetIceServerConfig).
            create: create the channel when it does not exist.

        Raises:
            ChannelNotFound, AccessDenied, Throttled, ChannelError, InvalidArgument.
        """
        if client_id is not None:
            validate_client_id(client_id)
        location = await self.locate(name, role, create=create)
        turn, ice_expires_at = await self._ice(
            location.arn, location.https_endpoint, client_id or "kvs-peer"
        )
        stun = (IceServer((self.stun_url,)),) if self.stun_url else ()
        # A resolved channel is its location plus the ICE servers: every location field.
        where = {f.name: getattr(location, f.name) for f in fields(ChannelLocation)}
        return ResolvedChannel(**where, ice_servers=stun + turn, ice_expires_at=ice_expires_at)

    # -- WebRTC ingestion ----------------------------------------------------------------------

    async def media_storage(self, name: str) -> MediaStorageConfigurationTypeDef:
        """DescribeMediaStorageConfiguration of channel ``name``: ``{"Status", "StreamARN"?}``.

        Not cached: a master calls it once per start (KVS allows 5 calls/s per channel).
        """
        validate_channel_name(name)

        def call() -> MediaStorageConfigurationTypeDef:
            return self._call(
                "DescribeMediaStorageConfiguration",
                self._kinesisvideo().describe_media_storage_configuration,
                ChannelName=name,
            )["MediaStorageConfiguration"]

        return await self._run(call)

    async def webrtc_endpoint(self, arn: str, role: Role | str = Role.MASTER) -> str:
        """The channel's WEBRTC endpoint (for JoinStorageSession), asked with ``role``.

        Raises:
            ChannelError: ``InvalidArgumentException`` when the channel stores no media.
        """
        role = Role.parse(role)

        def call() -> list[ResourceEndpointListItemTypeDef]:
            return self._call(
                "GetSignalingChannelEndpoint",
                self._kinesisvideo().get_signaling_channel_endpoint,
                ChannelARN=arn,
                SingleMasterChannelEndpointConfiguration={
                    "Protocols": ["WSS", "HTTPS", "WEBRTC"],
                    "Role": role.value,
                },
            )["ResourceEndpointList"]

        for entry in await self._run(call):
            if entry.get("Protocol", "").upper() == "WEBRTC":
                return entry["ResourceEndpoint"]
        raise ChannelError(
            "GetSignalingChannelEndpoint returned no WEBRTC endpoint: the channel stores no "
            "media; link it to a video stream with data retention first "
            "(`aws kinesisvideo update-media-storage-configuration --channel-arn ARN "
            "--media-storage-configuration StreamARN=STREAM_ARN,Status=ENABLED`)"
        )

    async def join_storage_session(
        self, endpoint: str, arn: str, *, client_id: str | None = None, timeout: float = 6.0
    ) -> None:
        """JoinStorageSession (or JoinStorageSessionAsViewer with ``client_id``) on the WEBRTC
        ``endpoint``. One attempt with a ``timeout``-second HTTP timeout, as the JS SDK's
        sample calls it: the caller decides about retries (each call sends one offer)."""
        config = botocore.config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
            user_agent_extra="kvs-peer",
        )

        def call() -> None:
            client = self._session.client(
                "kinesis-video-webrtc-storage",
                region_name=self.region,
                endpoint_url=endpoint,
                config=config,
                verify=self._verify,
            )
            if client_id is None:
                self._call("JoinStorageSession", client.join_storage_session, channelArn=arn)
            else:
                self._call(
                    "JoinStorageSessionAsViewer",
                    client.join_storage_session_as_viewer,
                    channelArn=arn,
                    clientId=client_id,
                )

        await self._run(call)

    def invalidate(self, name: str | None = None, *, ice_only: bool = False) -> None:
        """Forget what is cached for channel ``name`` (every channel when None).

        Args:
            name: the channel; None for all.
            ice_only: keep the endpoints and forget only the ICE servers (TURN rotation).
        """
        endpoints = [
            (key, entry)
            for key, entry in self._cache.items()
            if key[0] == "endpoints" and (name is None or key[1] == name)
        ]
        arns = {entry.value["arn"] for _, entry in endpoints}

        def match(key: Any) -> bool:
            if key[0] == "ice":
                return name is None or key[1] in arns
            return not ice_only and (name is None or key[1] == name)

        self._cache.invalidate(match)
        if self.disk_cache is not None and not ice_only:
            # The reconnect policy's 404/403 (and 400/5xx) refreshes end up here: the next
            # start must describe the channel again too, not reuse a stale ARN from disk.
            names = {name} if name is not None else {key[1] for key, _ in endpoints}
            for each in names:
                self.disk_cache.drop(self.region, self.endpoint_url, each)

    def refresh_credentials(self) -> None:
        """Read credentials again before the next call and signature (after an HTTP 403).

        A session this resolver made itself is made again, so credentials rotated in the
        environment or ``~/.aws`` are picked up; a session passed in is kept (its refreshable
        credentials renew themselves). The clock offset is learned again by the next
        control-plane call, as always.
        """
        if self._own_session:
            self._session = boto3.Session(region_name=self.region)
        # Clients hold the credentials they were made with; calls under way keep theirs.
        self._kv = None
        self._signaling = {}

    async def presign(
        self,
        channel: ResolvedChannel | ChannelLocation,
        *,
        client_id: str | None = None,
        expires: int = DEFAULT_EXPIRES,
    ) -> str:
        """:meth:`sign` in a worker thread: reading refreshable credentials may call STS or
        the instance metadata service, which must not block the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            functools.partial(self.sign, channel, client_id=client_id, expires=expires),
        )

    def sign(
        self,
        channel: ResolvedChannel | ChannelLocation,
        *,
        client_id: str | None = None,
        expires: int = DEFAULT_EXPIRES,
    ) -> str:
        """Presign the WSS URL for ``channel`` with this resolver's credentials.

        The signing time includes the clock offset learned from the control plane, so a
        device with a wrong clock still produces URLs the service accepts.

        Raises:
            AccessDenied: no credentials are configured.
            InvalidArgument: a viewer without a valid client id, or a master with one.
        """
        credentials = self._session.get_credentials()
        if credentials is None:
            raise AccessDenied(
                "no AWS credentials found: configure them or use --signer to get signed URLs "
                "from a signer service"
            )
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)
        if channel.role is Role.MASTER:
            if client_id is not None:
                raise InvalidArgument("a MASTER connects without a client id")
            return master_url(
                channel.wss_endpoint,
                channel_arn=channel.arn,
                region=channel.region,
                credentials=credentials,
                expires=expires,
                now=now,
            )
        if client_id is None:
            raise InvalidArgument("a VIEWER needs a client id")
        return viewer_url(
            channel.wss_endpoint,
            channel_arn=channel.arn,
            client_id=client_id,
            region=channel.region,
            credentials=credentials,
            expires=expires,
            now=now,
        )


def _translate(exc: botocore.exceptions.ClientError) -> ChannelError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = error.get("Message") or str(exc)
    operation = exc.operation_name
    if code == "ResourceNotFoundException":
        return ChannelNotFound("?", f"{operation}: {message}")
    if code in _AUTH_CODES:
        return AccessDenied(
            f"{operation} was denied ({code}: {message}); check the credentials, the region and "
            "that the IAM policy allows kinesisvideo:" + operation,
            code=code,
        )
    if code in _THROTTLE_CODES:
        return Throttled(
            f"{operation} was throttled or hit a limit ({code}: {message}); slow down and retry",
            code=code,
        )
    return ChannelError(f"{operation} failed ({code}: {message})", code=code)
