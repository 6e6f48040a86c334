"""Pure control plane of the local KVS emulator: channel registry and REST operations.

:meth:`ControlPlane.handle` takes an operation path (``/describeSignalingChannel``...) and the
JSON request body and returns an :class:`ApiResult` with the status, the response body and,
for errors, the ``x-amzn-ErrorType`` code that makes botocore raise the modelled exception
class (docs/protocol.md#control-plane). Signature checks and HTTP belong to the server shell;
the clock is an argument (``now``, wall-clock epoch seconds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChannelError, InvalidArgument
from ..protocol import IceServer
from ..rules import (
    CHANNEL_ARN_RE,
    ICE_SERVER_TTL,
    ID_RE,
    ID_RULE,
    MAX_ARN_LENGTH,
    MAX_LIST_RESULTS,
    MAX_TAGS,
    MESSAGE_TTL,
    MESSAGE_TTL_RANGE,
    validate_channel_name,
)
from .apierror import ApiError, check_version, invalid, string_field
from .storage import StreamRegistry, check_join_body

__all__ = [
    "OPERATIONS",
    "OPERATION_PATHS",
    "ApiResult",
    "Channel",
    "ControlPlane",
    "Endpoints",
    "IceServer",
    "StorageJoin",
]

logger = logging.getLogger(__name__)

_NOT_FOUND = "The requested channel is not found or not active."


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where GetSignalingChannelEndpoint points clients (all on the emulator)."""

    master_wss: str
    viewer_wss: str
    https: str


@dataclass(frozen=True, slots=True)
class ApiResult:
    """A REST answer: ``error_type`` is None on success."""

    status: int
    body: dict[str, Any]
    error_type: str | None = None


@dataclass
class Channel:
    """A signaling channel as the registry keeps it."""

    name: str
    arn: str
    creation_time: float
    message_ttl: int = MESSAGE_TTL
    channel_type: str = "SINGLE_MASTER"
    version: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The ``ChannelInfo`` shape of Describe/ListSignalingChannels."""
        return {
            "ChannelARN": self.arn,
            "ChannelName": self.name,
            "ChannelStatus": "ACTIVE",
            "ChannelType": self.channel_type,
            "CreationTime": self.creation_time,
            "SingleMasterConfiguration": {"MessageTtlSeconds": self.message_ttl},
            "Version": self.version,
        }


@dataclass(frozen=True, slots=True)
class StorageJoin:
    """An accepted JoinStorageSession[AsViewer]: who joins which channel's storage session."""

    channel_arn: str
    channel_name: str
    stream_name: str
    stream_arn: str
    client_id: str | None = None
    """The viewer's client id (JoinStorageSessionAsViewer), None for the master."""


def _ttl(config: Any) -> int | None:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise invalid("SingleMasterConfiguration must be an object")
    ttl = config.get("MessageTtlSeconds")
    return None if ttl is None else _check_message_ttl(ttl)


def _check_message_ttl(ttl: Any) -> int:
    low, high = MESSAGE_TTL_RANGE
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not low <= ttl <= high:
        raise invalid(f"MessageTtlSeconds must be an integer from {low} to {high}")
    return ttl


class ControlPlane:
    """Channel registry plus the REST operations of ``kinesisvideo`` and GetIceServerConfig.

    Args:
        region: the emulated region (ARNs use it).
        account_id: 12-digit account in ARNs.
        ice_servers: what GetIceServerConfig returns (empty by default, see EmulatorConfig).
        turn_secret: shared secret for minted TURN REST passwords.
    """

    def __init__(
        self,
        *,
        region: str,
        account_id: str = "123456789012",
        ice_servers: Sequence[IceServer] = (),
        turn_secret: str = "",
    ) -> None:
        self.region = region
        self.account_id = account_id
        self.ice_servers = tuple(ice_servers)
        self.turn_secret = turn_secret
        self.endpoints: Endpoints | None = None
        """Set by the server once it knows its port."""
        self.storage = StreamRegistry(region=region, account_id=account_id)
        """Streams and media storage links (WebRTC ingestion)."""
        self._by_arn: dict[str, Channel] = {}
        self._forced: dict[str, deque[ApiError]] = {}
        self._versions = 0
        self._last_millis = 0
        self._operations: dict[str, Callable[[Mapping[str, Any], float], dict[str, Any]]] = {
            "/createSignalingChannel": self._create,
            "/describeSignalingChannel": self._describe,
            "/listSignalingChannels": self._list,
            "/deleteSignalingChannel": self._delete,
            "/updateSignalingChannel": self._update,
            "/getSignalingChannelEndpoint": self._get_endpoint,
            "/describeMediaStorageConfiguration": self._describe_media_storage,
            "/updateMediaStorageConfiguration": self._update_media_storage,
            "/createStream": self.storage.create_stream,
            "/describeStream": self.storage.describe_stream,
            "/deleteStream": self.storage.delete_stream,
            "/v1/get-ice-server-config": self._get_ice_server_config,
        }

    # -- registry ------------------------------------------------------------------------------

    def channels(self) -> list[Channel]:
        """Every channel, in creation order."""
        return list(self._by_arn.values())

    def find(self, name_or_arn: str) -> Channel | None:
        """The channel with this ARN or name, or None."""
        if name_or_arn in self._by_arn:
            return self._by_arn[name_or_arn]
        return next((c for c in self._by_arn.values() if c.name == name_or_arn), None)

    def message_ttl(self, arn: str) -> float | None:
        """MessageTtlSeconds of the channel ``arn``, or None when it does not exist."""
        channel = self._by_arn.get(arn)
        return None if channel is None else float(channel.message_ttl)

    def _next_version(self, arn: str) -> str:
        self._versions += 1
        return hashlib.sha256(f"{arn}#{self._versions}".encode()).hexdigest()[:20]

    def create_channel(
        self,
        name: str,
        *,
        message_ttl: int = MESSAGE_TTL,
        channel_type: str = "SINGLE_MASTER",
        tags: Mapping[str, str] | None = None,
        now: float,
    ) -> Channel:
        """Create a channel directly (tests, CLI).

        Raises:
            InvalidArgument: bad name, TTL or type.
            ChannelError: a channel with this name exists (code ``ResourceInUseException``).
        """
        try:
            return self._create_channel(name, message_ttl, channel_type, dict(tags or {}), now)
        except ApiError as exc:
            if exc.code == "InvalidArgumentException":
                raise InvalidArgument(exc.message) from None
            raise ChannelError(exc.message, code=exc.code) from None

    def _create_channel(
        self, name: str, ttl: int, channel_type: str, tags: dict[str, str], now: float
    ) -> Channel:
        try:
            validate_channel_name(name)
        except InvalidArgument as exc:
            raise invalid(str(exc)) from None
        _check_message_ttl(ttl)
        if channel_type not in ("SINGLE_MASTER", "FULL_MESH"):
            raise invalid(f"ChannelType {channel_type!r} must be SINGLE_MASTER or FULL_MESH")
        if len(tags) > MAX_TAGS:
            raise ApiError(400, "TagsPerResourceExceededLimitException", f"at most {MAX_TAGS} tags")
        if self.find(name) is not None:
            raise ApiError(
                400, "ResourceInUseException", f"The signaling channel {name} already exists."
            )
        # ARNs end with the creation time in milliseconds; keep them unique even when a
        # channel is re-created within the same millisecond.
        millis = max(int(now * 1000), self._last_millis + 1)
        self._last_millis = millis
        arn = f"arn:aws:kinesisvideo:{self.region}:{self.account_id}:channel/{name}/{millis}"
        channel = Channel(name, arn, millis / 1000, ttl, channel_type, tags=tags)
        channel.version = self._next_version(arn)
        self._by_arn[arn] = channel
        logger.info("created channel %s (%s)", name, arn)
        return channel

    def delete_channel(self, arn: str) -> None:
        """Forget a channel (deletion is immediate: Describe answers 404 right away)."""
        self._by_arn.pop(arn, None)
        self.storage.forget_channel(arn)

    def fail_next_calls(
        self, operation: str, *, status: int, error_type: str, count: int = 1
    ) -> None:
        """Make the next ``count`` calls of ``operation`` fail (test hook).

        Args:
            operation: botocore name (``DescribeSignalingChannel``) or path.
            status: HTTP status of the error.
            error_type: the ``x-amzn-ErrorType`` code, e.g. ``ClientLimitExceededException``.
            count: how many calls fail.

        Raises:
            InvalidArgument: unknown operation.
        """
        path = OPERATION_PATHS.get(operation, operation)
        if path not in self._operations:
            names = ", ".join(OPERATION_PATHS)
            raise InvalidArgument(f"unknown operation {operation!r}: use one of {names}")
        message = f"forced {error_type} (emulator test hook)"
        self._forced.setdefault(path, deque()).extend(
            ApiError(status, error_type, message) for _ in range(count)
        )

    # -- REST ----------------------------------------------------------------------------------

    def handle(self, path: str, body: bytes | str, *, now: float) -> ApiResult:
        """Run one REST operation. Never raises on client input."""
        operation = self._operations.get(path)
        if operation is None:
            return ApiResult(
                404, {"Message": f"unknown operation {path[:100]}"}, "UnknownOperationException"
            )
        forced = self._forced.get(path)
        if forced:
            error = forced.popleft()
            return ApiResult(error.status, {"Message": error.message}, error.code)
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return ApiResult(400, {"Message": "body is not valid JSON"}, "SerializationException")
        if not isinstance(payload, dict):
            return ApiResult(
                400, {"Message": "body must be a JSON object"}, "SerializationException"
            )
        try:
            return ApiResult(200, operation(payload, now))
        except ApiError as exc:
            return ApiResult(exc.status, {"Message": exc.message}, exc.code)

    def join_storage(self, body: bytes | str, *, viewer: bool) -> ApiResult | StorageJoin:
        """Check a ``/joinStorageSession`` (``viewer``: ``/joinStorageSessionAsViewer``) body.

        Returns:
            The join to carry out, or the error to answer (``kinesis-video-webrtc-storage``
            error bodies spell ``message`` in lower case).
        """
        try:
            try:
                payload = json.loads(body or b"{}")
            except (ValueError, RecursionError):
                raise ApiError(400, "InvalidArgumentException", "body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise ApiError(400, "InvalidArgumentException", "body must be a JSON object")
            arn, client_id = check_join_body(payload, viewer=viewer)
            channel = self._by_arn.get(arn)
            if channel is None:
                raise ApiError(404, "ResourceNotFoundException", _NOT_FOUND)
            stream = self.storage.linked_stream(arn)
            if stream is None:
                # The troubleshooting page: InvalidArgumentException "if channel is not mapped
                # to a stream" (docs/protocol.md#storage-sessions).
                raise ApiError(
                    400,
                    "InvalidArgumentException",
                    f"channel {channel.name} is not mapped to a stream: link one with "
                    "UpdateMediaStorageConfiguration (Status ENABLED)",
                )
        except ApiError as exc:
            return ApiResult(exc.status, {"message": exc.message}, exc.code)
        return StorageJoin(arn, channel.name, stream.name, stream.arn, client_id)

    def _channel(self, body: Mapping[str, Any], *, by_name: bool) -> Channel:
        arn = string_field(body, "ChannelARN")
        name = string_field(body, "ChannelName") if by_name else None
        if arn is None and name is None:
            raise invalid(
                "ChannelARN is required" if not by_name else "ChannelName or ChannelARN is required"
            )
        if arn is not None:
            if len(arn) > MAX_ARN_LENGTH or not CHANNEL_ARN_RE.fullmatch(arn):
                raise invalid(f"ChannelARN {arn[:200]!r} is not a signaling channel ARN")
            channel = self._by_arn.get(arn)
            if channel is not None and name is not None and channel.name != name:
                raise invalid("ChannelName and ChannelARN name different channels")
        else:
            assert name is not None
            if not ID_RE.fullmatch(name):
                raise invalid(f"ChannelName {name[:200]!r} is not a valid channel name")
            channel = self.find(name)
        if channel is None:
            raise ApiError(404, "ResourceNotFoundException", _NOT_FOUND)
        return channel

    def _version_check(self, body: Mapping[str, Any], channel: Channel, *, required: bool) -> None:
        check_version(body, channel.version, "channel", required=required)

    def _create(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        name = string_field(body, "ChannelName", required=True)
        assert name is not None
        ttl = _ttl(body.get("SingleMasterConfiguration"))
        channel_type = body.get("ChannelType", "SINGLE_MASTER")
        tags_in = body.get("Tags") or []
        if not isinstance(tags_in, list) or not all(
            isinstance(t, Mapping) and isinstance(t.get("Key"), str) for t in tags_in
        ):
            raise invalid("Tags must be a list of {Key, Value}")
        tags = {t["Key"]: str(t.get("Value", "")) for t in tags_in}
        ttl = MESSAGE_TTL if ttl is None else ttl
        channel = self._create_channel(name, ttl, channel_type, tags, now)
        return {"ChannelARN": channel.arn}

    def _describe(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        return {"ChannelInfo": self._channel(body, by_name=True).info()}

    def _list(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        max_results = body.get("MaxResults", MAX_LIST_RESULTS)
        if not isinstance(max_results, int) or not 1 <= max_results <= MAX_LIST_RESULTS:
            raise invalid(f"MaxResults must be an integer from 1 to {MAX_LIST_RESULTS}")
        offset = 0
        token = string_field(body, "NextToken")
        if token is not None:
            try:
                offset = int(base64.b64decode(token, validate=True).decode("ascii"))
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise invalid("NextToken is invalid") from None
        channels = list(self._by_arn.values())
        condition = body.get("ChannelNameCondition")
        if condition is not None:
            if not isinstance(condition, Mapping):
                raise invalid("ChannelNameCondition must be an object")
            operator = condition.get("ComparisonOperator", "BEGINS_WITH")
            if operator != "BEGINS_WITH":
                raise invalid("ComparisonOperator must be BEGINS_WITH")
            prefix = condition.get("ComparisonValue") or ""
            if not isinstance(prefix, str):
                raise invalid("ComparisonValue must be a string")
            channels = [c for c in channels if c.name.startswith(prefix)]
        page = channels[offset : offset + max_results]
        result: dict[str, Any] = {"ChannelInfoList": [c.info() for c in page]}
        if offset + max_results < len(channels):
            result["NextToken"] = base64.b64encode(str(offset + max_results).encode()).decode()
        return result

    def _delete(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        channel = self._channel(body, by_name=False)
        self._version_check(body, channel, required=False)
        self.delete_channel(channel.arn)
        logger.info("deleted channel %s", channel.name)
        return {}

    def _update(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        channel = self._channel(body, by_name=False)
        self._version_check(body, channel, required=True)
        ttl = _ttl(body.get("SingleMasterConfiguration"))
        if ttl is not None:
            channel.message_ttl = ttl
        channel.version = self._next_version(channel.arn)
        return {}

    def _get_endpoint(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        channel = self._channel(body, by_name=False)
        config = body.get("SingleMasterChannelEndpointConfiguration") or {}
        if not isinstance(config, Mapping):
            raise invalid("SingleMasterChannelEndpointConfiguration must be an object")
        # [inferred] defaults when the configuration is omitted.
        protocols = config.get("Protocols") or ["WSS", "HTTPS"]
        role = config.get("Role", "MASTER")
        if role not in ("MASTER", "VIEWER"):
            raise invalid("Role must be MASTER or VIEWER")
        if not isinstance(protocols, list) or not 1 <= len(protocols) <= 5:
            raise invalid("Protocols must be a list of 1 to 5 of WSS, HTTPS, WEBRTC")
        if self.endpoints is None:
            raise ApiError(500, "InternalFailure", "the emulator is not serving yet")
        endpoints = []
        for protocol in dict.fromkeys(protocols):
            if protocol == "WSS":
                url = self.endpoints.master_wss if role == "MASTER" else self.endpoints.viewer_wss
            elif protocol == "HTTPS":
                url = self.endpoints.https
            elif protocol == "WEBRTC":
                if not self.storage.media_storage(channel.arn).enabled:
                    raise invalid(
                        "the WEBRTC protocol needs media storage, which is not enabled on "
                        f"{channel.name}: UpdateMediaStorageConfiguration first"
                    )
                # [inferred] KVS hands out a separate host; the emulator serves the storage
                # API (/joinStorageSession...) on its one port.
                url = self.endpoints.https
            else:
                raise invalid(f"unknown protocol {str(protocol)[:20]!r}")
            endpoints.append({"Protocol": protocol, "ResourceEndpoint": url})
        return {"ResourceEndpointList": endpoints}

    def _describe_media_storage(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        channel = self._channel(body, by_name=True)
        # DISABLED (the default) keeps every client in peer-to-peer mode (docs/protocol.md#flow).
        return {"MediaStorageConfiguration": self.storage.media_storage(channel.arn).shape()}

    def _update_media_storage(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        arn = string_field(body, "ChannelARN", required=True)
        assert arn is not None
        channel = self._channel({"ChannelARN": arn}, by_name=False)
        return self.storage.update_media_storage(channel.arn, body)

    def ice_server_list(self, channel_arn: str, *, now: float) -> list[dict[str, Any]]:
        """The ``IceServerList`` GetIceServerConfig would return for a channel now."""
        servers: list[dict[str, Any]] = self._get_ice_server_config(
            {"ChannelARN": channel_arn}, now
        )["IceServerList"]
        return servers

    def _get_ice_server_config(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        arn = string_field(body, "ChannelARN", required=True)
        assert arn is not None
        for key in ("ClientId", "Username"):
            value = string_field(body, key)
            if value is not None and not ID_RE.fullmatch(value):
                raise invalid(f"{key} must be {ID_RULE}")
        service = body.get("Service", "TURN")
        if service != "TURN":
            raise invalid("Service must be TURN")
        channel = self._channel({"ChannelARN": arn}, by_name=False)
        servers = []
        for server in self.ice_servers:
            username = server.username
            password = server.credential
            ttl = server.ttl if server.ttl is not None else ICE_SERVER_TTL
            if username is None:
                tail = base64.b64encode(f"v1:{channel.arn}".encode()).decode()
                username = f"{int(now) + ttl}:{tail}"
            if password is None:
                digest = hmac.new(self.turn_secret.encode(), username.encode(), hashlib.sha1)
                password = base64.b64encode(digest.digest()).decode()
            servers.append(
                {
                    "Uris": list(server.urls),
                    "Username": username,
                    "Password": password,
                    "Ttl": ttl,
                }
            )
        return {"IceServerList": servers}


OPERATION_PATHS = {
    "CreateSignalingChannel": "/createSignalingChannel",
    "DescribeSignalingChannel": "/describeSignalingChannel",
    "ListSignalingChannels": "/listSignalingChannels",
    "DeleteSignalingChannel": "/deleteSignalingChannel",
    "UpdateSignalingChannel": "/updateSignalingChannel",
    "GetSignalingChannelEndpoint": "/getSignalingChannelEndpoint",
    "DescribeMediaStorageConfiguration": "/describeMediaStorageConfiguration",
    "UpdateMediaStorageConfiguration": "/updateMediaStorageConfiguration",
    "CreateStream": "/createStream",
    "DescribeStream": "/describeStream",
    "DeleteStream": "/deleteStream",
    "GetIceServerConfig": "/v1/get-ice-server-config",
}
"""botocore operation name -> POST path."""

OPERATIONS = tuple(OPERATION_PATHS.values())
"""Every POST path the control plane answers."""
