"""Settings of the local KVS emulator and its documented local defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..protocol import MAX_PAYLOAD_CHARS
from .controlplane import IceServer
from .routing import RouterConfig, Takeover

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_ACCESS_KEY",
    "EmulatorConfig",
]

# Local-only credentials: they protect nothing and are published on purpose so every tool
# (boto3, the JS SDK in a browser, the CLI) can talk to an emulator without configuration.
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCESS_KEY_ID = "AKIALOCALKVSPEER0000"
DEFAULT_SECRET_ACCESS_KEY = "kvs-peer-local-secret"
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_TURN_SECRET = "kvs-peer-local-turn-secret"


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise InvalidArgument(f"{name} must be a positive number of seconds or None to disable")


@dataclass
class EmulatorConfig:
    """What the emulator accepts and how strict it is.

    Defaults follow the real service's documented quotas (kvs-signaling.md 4.1), except that
    rate limits are off and GetIceServerConfig returns no servers (see ``ice_servers``).

    Attributes:
        region: the only region accepted in signatures and used in ARNs.
        access_key_id: the accepted access key id.
        secret_access_key: its secret. Any session token is accepted.
        account_id: 12-digit account id in channel ARNs.
        max_viewers: concurrent viewers per channel; the next one gets HTTP 400.
        payload_limit: max ``messagePayload`` length in base64 characters; longer messages fail
            (STATUS_RESPONSE when a correlation id is set).
        ice_servers: TURN servers returned by GetIceServerConfig, as :class:`IceServer` or
            ``{"Uris": [...], "Username": ..., "Password": ..., "Ttl": 300}`` mappings (missing
            Username/Password are minted TURN-REST style). Empty by default: real KVS always
            returns TURN servers, but a URI nobody answers makes aioice wait about 5 s per
            server before ICE completes, so local tests run without any.
        turn_secret: shared secret for minted TURN passwords (coturn ``static-auth-secret``).
        idle_timeout: seconds without any inbound frame (pings count) before the emulator closes
            a connection with 1001; None disables.
        max_connection_duration: seconds after which every connection is closed with 1001
            "Going away"; None disables.
        go_away_grace: seconds between an injected GO_AWAY and the close; None never closes.
        max_skew: accepted clock difference for signatures, in seconds.
        rate_limits: enforce 5 SDP/s and 20 ICE/s per connection and 3 connects/s per
            channel. Off by default so fast tests (reconnect loops, candidate bursts) never
            trip them; turn on to test pacing.
        takeover: what happens to a master or same-id viewer socket replaced by a newer one:
            ``silent`` (default, what the docs describe: stays open, gets nothing),
            ``close-1000`` or ``close-1001``.
        max_frame_bytes: largest WebSocket frame accepted; larger ones close the socket with
            1009 (message too big).
        max_queued: per-recipient cap of messages waiting for a recipient to connect.
    """

    region: str = DEFAULT_REGION
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY
    account_id: str = DEFAULT_ACCOUNT_ID
    max_viewers: int = 10
    payload_limit: int = MAX_PAYLOAD_CHARS
    ice_servers: Sequence[IceServer | Mapping[str, Any]] = ()
    turn_secret: str = DEFAULT_TURN_SECRET
    idle_timeout: float | None = 600.0
    max_connection_duration: float | None = 3600.0
    go_away_grace: float | None = 60.0
    max_skew: float = 300.0
    rate_limits: bool = False
    takeover: Takeover | str = Takeover.SILENT
    max_frame_bytes: int = 64 * 1024
    max_queued: int = 100

    def __post_init__(self) -> None:
        if not self.region or not self.access_key_id or not self.secret_access_key:
            raise InvalidArgument("region, access_key_id and secret_access_key must be non-empty")
        if not self.account_id.isdigit() or len(self.account_id) != 12:
            raise InvalidArgument(f"account_id {self.account_id!r} must be 12 digits")
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
        if not math.isfinite(self.max_skew) or self.max_skew <= 0:
            raise InvalidArgument("max_skew must be a positive number of seconds")
        try:
            self.takeover = Takeover(self.takeover)
        except ValueError:
            choices = ", ".join(t.value for t in Takeover)
            raise InvalidArgument(f"takeover {self.takeover!r} must be one of {choices}") from None
        # Normalized once so a bad entry fails here, not on the first GetIceServerConfig.
        self.ice_servers = tuple(IceServer.from_value(s) for s in self.ice_servers)

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
