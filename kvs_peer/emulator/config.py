"""Settings of the local KVS emulator and its documented local defaults."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..channelcache import ChannelCache
from ..errors import InvalidArgument
from ..protocol import IceServer
from ..rules import (
    ACCOUNT_ID_LENGTH,
    CLOCK_SKEW,
    GO_AWAY_GRACE,
    IDLE_TIMEOUT,
    MAX_CONNECTION_DURATION,
    MAX_ICE_SERVERS,
    MAX_PAYLOAD_CHARS,
    MAX_URIS_PER_ICE_SERVER,
    MAX_VIEWERS,
    STORAGE_SESSION_LIMIT,
)
from .routing import RouterConfig, Takeover
from .turn import DEFAULT_TURN_PORT

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_ACCESS_KEY",
    "EmulatorConfig",
    "ice_servers_from_uris",
]

# Local-only credentials: they protect nothing and are published on purpose so every tool
# (boto3, the JS SDK in a browser, the CLI) can talk to an emulator without configuration.
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCESS_KEY_ID = "AKIALOCALKVSPEER0000"
DEFAULT_SECRET_ACCESS_KEY = "kvs-peer-local-secret"
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_TURN_SECRET = "kvs-peer-local-turn-secret"

_TURN_URI_RE = re.compile(
    r"(?P<scheme>turns?):(?:(?P<userinfo>[^@/?]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


def ice_servers_from_uris(uris: Iterable[str]) -> tuple[IceServer, ...]:
    """GetIceServerConfig entries from ``turn:``/``turns:`` URIs, e.g. ``--ice-server`` values.

    A URI may carry fixed credentials as ``turn:USER:PASSWORD@host:3478?transport=udp``
    (percent-encode ``@``, ``:`` and ``%`` inside them); without, the emulator mints TURN REST
    credentials with its ``turn_secret``, which a coturn started with ``--use-auth-secret
    --static-auth-secret=SECRET`` accepts. Consecutive URIs with the same credentials share
    one entry (up to 4 URIs), as KVS returns them.

    Raises:
        InvalidArgument: a URI that is not ``turn:``/``turns:`` with a host, port 1-65535 and
            at most ``?transport=udp|tcp``.
    """
    servers: list[IceServer] = []
    for uri in uris:
        match = _TURN_URI_RE.fullmatch(uri.strip())
        port = match["port"] if match else None
        if match is None or (port is not None and not 1 <= int(port) <= 65535):
            shown = re.sub(r"^(turns?:)[^@/?]*@", r"\1***@", uri.strip())[:100]
            raise InvalidArgument(
                f"ICE server {shown!r} is not a TURN URI such as "
                "turn:host:3478?transport=udp or turn:user:password@host:3478?transport=tcp "
                "(GetIceServerConfig returns TURN servers only; clients add STUN themselves)"
            )
        username = password = None
        if match["userinfo"] is not None:
            user, sep, secret = match["userinfo"].partition(":")
            if not user or not sep:
                raise InvalidArgument(
                    "credentials in an ICE server URI must be USER:PASSWORD@ (or none, "
                    "to mint them with the TURN secret)"
                )
            username, password = unquote(user), unquote(secret)
        clean = f"{match['scheme']}:{match['host']}"
        if port is not None:
            clean += f":{port}"
        if match["transport"]:
            clean += f"?transport={match['transport']}"
        last = servers[-1] if servers else None
        if (
            last is not None
            and (last.username, last.credential) == (username, password)
            and len(last.urls) < MAX_URIS_PER_ICE_SERVER
        ):
            servers[-1] = IceServer((*last.urls, clean), username, password, last.ttl)
        else:
            servers.append(IceServer((clean,), username, password))
    return tuple(servers)


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise InvalidArgument(f"{name} must be a positive number of seconds or None to disable")


@dataclass
class EmulatorConfig:
    """What the emulator accepts and how strict it is.

    Defaults follow the real service's documented quotas (:mod:`kvs_peer.rules`,
    docs/protocol.md#limits), except that rate limits are off and GetIceServerConfig returns
    no servers (see ``ice_servers`` and ``turn``).

    Attributes:
        region: the only region accepted in signatures and used in ARNs.
        access_key_id: the accepted access key id.
        secret_access_key: its secret. Any session token is accepted.
        account_id: 12-digit account id in channel ARNs.
        max_viewers: concurrent viewers per channel; the next one gets HTTP 400.
        payload_limit: max ``messagePayload`` length in base64 characters; longer messages fail
            (STATUS_RESPONSE when a correlation id is set).
        ice_servers: TURN servers returned by GetIceServerConfig, as :class:`IceServer` or
            ``{"Uris": [...], "Username": ..., "Password": ..., "Ttl": ...}`` mappings (missing
            Username/Password are minted TURN-REST style). Empty by default: real KVS always
            returns TURN servers, but a URI nobody answers makes aioice wait about 5 s per
            server before ICE completes, so local tests run without any. At most
            ``MAX_ICE_SERVERS`` entries (with ``turn``'s), as the C SDK accepts;
            :func:`ice_servers_from_uris` builds them from URIs.
        turn_secret: shared secret for minted TURN passwords (coturn ``static-auth-secret``).
        turn: run a TURN server (Debian's coturn, ``turnserver``, see :mod:`.turn`) on the
            emulator's host while it runs, and list it first in GetIceServerConfig
            (``turn:HOST:PORT?transport=udp`` and ``?transport=tcp``, minted credentials,
            ``ICE_SERVER_TTL``) as real KVS always lists its own.
        turn_port: its UDP and TCP port; 0 picks a free one.
        idle_timeout: seconds without any inbound frame (pings count) before the emulator closes
            a connection with 1001; None disables.
        max_connection_duration: seconds after which every connection is closed with 1001
            "Going away"; None disables.
        go_away_grace: seconds between an injected GO_AWAY and the close; None never closes.
        max_skew: accepted clock difference for signatures, in seconds.
        rate_limits: enforce ``SDP_RATE`` and ``ICE_RATE`` per connection and
            ``CONNECT_RATE`` per channel. Off by default so fast tests (reconnect loops,
            candidate bursts) never trip them; turn on to test pacing.
        takeover: what happens to a master or same-id viewer socket replaced by a newer one:
            ``silent`` (default, what the docs describe: stays open, gets nothing),
            ``close-1000`` or ``close-1001``.
        max_frame_bytes: largest WebSocket frame accepted; larger ones close the socket with
            1009 (message too big).
        max_queued: per-recipient cap of messages waiting for a recipient to connect.
        storage_dir: folder of the storage sessions' recordings
            (``<stream name>/<start time>.mkv``); None makes a temporary one on first use,
            removed when the emulator stops unless it holds recordings. A given folder is
            never removed.
        storage_session_duration: seconds a storage session (WebRTC ingestion) lasts at most
            before the emulator ends it, as KVS does after one hour; None never ends it.
        channel_cache: the clients' channel cache on disk (:mod:`kvs_peer.channelcache`; by
            default the one kvs-peer's master uses) whose entries for this emulator's endpoint
            go when it starts: its channels get new ARNs, and a cached old one would make the
            next client's first connect fail with a 404. None leaves every cache alone.
    """

    region: str = DEFAULT_REGION
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY
    account_id: str = DEFAULT_ACCOUNT_ID
    max_viewers: int = MAX_VIEWERS
    payload_limit: int = MAX_PAYLOAD_CHARS
    ice_servers: Sequence[IceServer | Mapping[str, Any]] = ()
    turn_secret: str = DEFAULT_TURN_SECRET
    turn: bool = False
    turn_port: int = DEFAULT_TURN_PORT
    idle_timeout: float | None = IDLE_TIMEOUT
    max_connection_duration: float | None = MAX_CONNECTION_DURATION
    go_away_grace: float | None = GO_AWAY_GRACE
    max_skew: float = CLOCK_SKEW
    rate_limits: bool = False
    takeover: Takeover | str = Takeover.SILENT
    max_frame_bytes: int = 64 * 1024
    max_queued: int = 100
    storage_dir: str | Path | None = None
    storage_session_duration: float | None = STORAGE_SESSION_LIMIT
    channel_cache: ChannelCache | None = field(default_factory=ChannelCache)

    def __post_init__(self) -> None:
        if not self.region or not self.access_key_id or not self.secret_access_key:
            raise InvalidArgument("region, access_key_id and secret_access_key must be non-empty")
        if not self.account_id.isdigit() or len(self.account_id) != ACCOUNT_ID_LENGTH:
            raise InvalidArgument(
                f"account_id {self.account_id!r} must be {ACCOUNT_ID_LENGTH} digits"
            )
        if self.max_viewers < 0:
            raise InvalidArgument("max_viewers must be 0 or more")
        if self.payload_limit < 1:
            raise InvalidArgument("payload_limit must be at least 1")
        if self.max_frame_bytes < 1024:
            raise InvalidArgument("max_frame_bytes must be at least 1024")
        if self.max_queued < 1:
            raise InvalidArgument("max_queued must be at least 1")
        _positive_or_none("idle_timeout", self.idle_timeout)
        _positive_or_none("max_connection_duration", self.max_connection_duration)
        _positive_or_none("go_away_grace", self.go_away_grace)
        _positive_or_none("storage_session_duration", self.storage_session_duration)
        if self.storage_dir is not None:
            self.storage_dir = Path(self.storage_dir)
            if self.storage_dir.exists() and not self.storage_dir.is_dir():
                raise InvalidArgument(f"storage_dir {self.storage_dir} is a file, not a folder")
        if not math.isfinite(self.max_skew) or self.max_skew <= 0:
            raise InvalidArgument("max_skew must be a positive number of seconds")
        try:
            self.takeover = Takeover(self.takeover)
        except ValueError:
            choices = ", ".join(t.value for t in Takeover)
            raise InvalidArgument(f"takeover {self.takeover!r} must be one of {choices}") from None
        # Normalized once so a bad entry fails here, not on the first GetIceServerConfig.
        self.ice_servers = tuple(IceServer.from_value(s) for s in self.ice_servers)
        if len(self.ice_servers) + self.turn > MAX_ICE_SERVERS:
            raise InvalidArgument(
                f"at most {MAX_ICE_SERVERS} ICE server entries (the C SDK accepts no more), "
                "counting the one of turn=True"
            )
        if self.turn and not self.turn_secret:
            raise InvalidArgument("turn=True needs a non-empty turn_secret")
        if not 0 <= self.turn_port <= 65535:
            raise InvalidArgument(f"turn_port {self.turn_port} must be from 0 to 65535")

    def router_config(self) -> RouterConfig:
        """The routing subset of this configuration."""
        return RouterConfig(
            max_viewers=self.max_viewers,
            payload_limit=self.payload_limit,
            idle_timeout=self.idle_timeout,
            max_connection_duration=self.max_connection_duration,
            go_away_grace=self.go_away_grace,
            rate_limits=self.rate_limits,
            takeover=Takeover(self.takeover),
            max_queued=self.max_queued,
        )
