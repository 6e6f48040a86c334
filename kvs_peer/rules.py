"""KVS's rules, each spelled once: name and id formats, message limits, quotas, TTLs.

Every number and pattern here is the Kinesis Video Streams service's (or, where marked, an
SDK's that kvs-peer must stay compatible with), not a kvs-peer choice; the section of
``docs/protocol.md`` that gives its source is cited next to it. kvs-peer's own defaults
(reconnect margins, caches, candidate caps) live with the code that uses them.

Pure: no I/O, no third-party imports, so the emulator's routing and control plane, the signer
and the client all read the same values (tests/test_import_light.py).
"""

from __future__ import annotations

import re
import secrets

from .errors import InvalidArgument

__all__ = [
    "ACCOUNT_ID_LENGTH",
    "CHANNEL_ARN_RE",
    "CLOCK_SKEW",
    "CONNECT_RATE",
    "GOING_AWAY",
    "GO_AWAY_GRACE",
    "ICE_RATE",
    "ICE_SERVER_TTL",
    "ICE_TTL_MARGIN",
    "IDLE_TIMEOUT",
    "ID_CHARS",
    "ID_RE",
    "ID_RULE",
    "MAX_ARN_LENGTH",
    "MAX_CONNECTION_DURATION",
    "MAX_DEVICE_NAME_LENGTH",
    "MAX_ICE_SERVERS",
    "MAX_ICE_SERVER_TTL",
    "MAX_ID_LENGTH",
    "MAX_LIST_RESULTS",
    "MAX_PAYLOAD_CHARS",
    "MAX_PRESIGN_EXPIRES",
    "MAX_STATUS_DESCRIPTION",
    "MAX_STORAGE_VIEWERS",
    "MAX_TAGS",
    "MAX_URIS_PER_ICE_SERVER",
    "MAX_VIEWERS",
    "MESSAGE_TTL",
    "MESSAGE_TTL_RANGE",
    "MIN_ICE_SERVER_TTL",
    "PRESIGN_EXPIRES",
    "RESERVED_CLIENT_ID_PREFIX",
    "SDP_RATE",
    "STORAGE_SESSION_LIMIT",
    "STORAGE_VIEWER_ALONE_LIMIT",
    "STORAGE_VIEWER_SLOT_HOLD",
    "STREAM_ARN_RE",
    "new_client_id",
    "validate_channel_arn",
    "validate_channel_name",
    "validate_client_id",
]

# --- Names and ids (docs/protocol.md#names-and-ids) --------------------------------------------

ID_CHARS = "a-zA-Z0-9_.-"
"""The alphabet of channel and stream names, client ids and correlation ids (a regex class body)."""
MAX_ID_LENGTH = 256
ID_RE = re.compile(f"[{ID_CHARS}]{{1,{MAX_ID_LENGTH}}}")
"""Channel names, client ids, correlation ids: use with ``fullmatch``."""
ID_RULE = f"1-{MAX_ID_LENGTH} characters from a-z, A-Z, 0-9, '_', '.', '-'"
"""The rule of :data:`ID_RE` in words, for error messages."""
RESERVED_CLIENT_ID_PREFIX = "AWS_"
"""Client ids may not start with this, in any case."""
MAX_ARN_LENGTH = 1024
ACCOUNT_ID_LENGTH = 12
"""Digits of the AWS account id in an ARN."""
CHANNEL_ARN_RE = re.compile(
    f"arn:aws[a-z-]*:kinesisvideo:[a-z0-9-]+:[0-9]+:channel/[{ID_CHARS}]+/[0-9]+"
)
"""A signaling channel ARN in any partition (``aws``, ``aws-cn``, ``aws-us-gov``)."""
STREAM_ARN_RE = re.compile(
    f"arn:aws[a-z-]*:kinesisvideo:[a-z0-9-]+:[0-9]+:stream/[{ID_CHARS}]+/[0-9]+"
)
"""A KVS stream ARN (WebRTC ingestion's storage target); at most :data:`MAX_ARN_LENGTH` too."""
MAX_DEVICE_NAME_LENGTH = 128
"""CreateStream's ``DeviceName``: 1 to this many :data:`ID_CHARS` (stream names follow ID_RE)."""
MAX_TAGS = 50
"""Tags per channel or stream."""

# --- Messages (docs/protocol.md#limits) --------------------------------------------------------

MAX_PAYLOAD_CHARS = 10_000
"""Largest ``messagePayload`` in base64 characters. The quotas page says "10k" without saying
10,000 or 10,240; the SendAlexaOfferToMaster model caps at 10,000 and the C SDK sizes buffers at
10,240. kvs-peer never sends more than the stricter reading."""
MAX_STATUS_DESCRIPTION = 1000
"""``statusResponse.description`` is "up to 1K"."""
MESSAGE_TTL = 60
"""Default MessageTtlSeconds: how long an undelivered message waits for its recipient."""
MESSAGE_TTL_RANGE = (5, 120)
"""Allowed MessageTtlSeconds, inclusive."""
MAX_LIST_RESULTS = 10_000
"""Largest ``MaxResults`` of ListSignalingChannels and ListStreams (the smallest is 1)."""

# --- Quotas (docs/protocol.md#limits) ----------------------------------------------------------

SDP_RATE = 5
"""SDP offers plus answers per second per WebSocket connection."""
ICE_RATE = 20
"""ICE candidates per second per WebSocket connection."""
CONNECT_RATE = 3
"""ConnectAsMaster/ConnectAsViewer per second per channel."""
MAX_VIEWERS = 10
"""Viewers connected to one channel at once (a soft quota: AWS may raise it for an account)."""

# --- Connection lifetime (docs/protocol.md#connection-lifetime) --------------------------------

IDLE_TIMEOUT = 600.0
"""Seconds without traffic (pings count) after which KVS closes a signaling connection."""
MAX_CONNECTION_DURATION = 3600.0
"""Seconds after which KVS closes any signaling connection (documented; observed up to 2 h)."""
GO_AWAY_GRACE = 60.0
"""Seconds between GO_AWAY and KVS closing the connection."""
GOING_AWAY = 1001
"""The WebSocket close code KVS closes with at the connection's end of life."""

# --- Storage sessions, WebRTC ingestion (docs/protocol.md#storage-sessions) ---------------------

STORAGE_SESSION_LIMIT = 3600.0
"""Seconds a storage session lasts at most."""
MAX_STORAGE_VIEWERS = 3
"""Viewers per storage session (multi-viewer preview)."""
STORAGE_VIEWER_SLOT_HOLD = 60.0
"""Seconds a viewer's slot stays taken after it leaves (the same client id may take it back)."""
STORAGE_VIEWER_ALONE_LIMIT = 180.0
"""Seconds a viewer stays in a storage session without a master."""

# --- Signed URLs (docs/protocol.md#the-signed-wss-url) ----------------------------------------

PRESIGN_EXPIRES = 299
"""``X-Amz-Expires`` of the JS SDK (fixed there); the service accepts up to 7 days."""
MAX_PRESIGN_EXPIRES = 604_800
"""SigV4's cap on ``X-Amz-Expires``; the C SDK signs for the credentials' lifetime up to this."""
CLOCK_SKEW = 300.0
"""Seconds ``X-Amz-Date`` may differ from the service's clock ("+/- 5 minutes")."""

# --- ICE configuration (docs/protocol.md#ice-configuration) -----------------------------------

ICE_SERVER_TTL = 300
"""Seconds TURN credentials stay valid: what GetIceServerConfig returns in practice."""
MIN_ICE_SERVER_TTL = 30
MAX_ICE_SERVER_TTL = 86_400
"""The model's range for ``IceServer.Ttl``."""
ICE_TTL_MARGIN = 30.0
"""Refresh TURN credentials this long before their Ttl ends, as the C SDK does."""
MAX_ICE_SERVERS = 5
"""IceServer entries the C SDK accepts in one answer..."""
MAX_URIS_PER_ICE_SERVER = 4
"""...each with up to this many URIs."""


def validate_client_id(client_id: str) -> str:
    """Return ``client_id`` if KVS accepts it as a viewer client id, else raise.

    Rules: :data:`ID_RULE`, and no :data:`RESERVED_CLIENT_ID_PREFIX` in any case.

    Raises:
        InvalidArgument: with the rule that was broken.
    """
    if not isinstance(client_id, str) or not ID_RE.fullmatch(client_id):
        raise InvalidArgument(f"invalid client id {client_id!r}: use {ID_RULE}")
    if client_id.upper().startswith(RESERVED_CLIENT_ID_PREFIX):
        raise InvalidArgument(
            f"invalid client id {client_id!r}: KVS reserves ids starting with "
            f"{RESERVED_CLIENT_ID_PREFIX!r}"
        )
    return client_id


def validate_channel_name(name: str) -> str:
    """Return ``name`` if it is a valid signaling channel name, else raise InvalidArgument."""
    if not isinstance(name, str) or not ID_RE.fullmatch(name):
        raise InvalidArgument(f"invalid channel name {name!r}: use {ID_RULE}")
    return name


def validate_channel_arn(arn: str) -> str:
    """Return ``arn`` if it looks like a signaling channel ARN, else raise InvalidArgument."""
    if not isinstance(arn, str) or len(arn) > MAX_ARN_LENGTH or not CHANNEL_ARN_RE.fullmatch(arn):
        raise InvalidArgument(
            f"invalid channel ARN {arn!r}: expected "
            "arn:aws:kinesisvideo:REGION:ACCOUNT:channel/NAME/CREATION_MILLIS"
        )
    return arn


def new_client_id(prefix: str = "kvs-peer") -> str:
    """A fresh, unguessable viewer client id (keep it for the viewer's whole life).

    A viewer that takes a new id on every reconnect leaves stale entries counted against
    :data:`MAX_VIEWERS` for a while (docs/protocol.md#what-each-peer-does-differently); 64
    random bits keep another viewer from guessing and taking over the id.

    Raises:
        InvalidArgument: ``prefix`` would make an id KVS refuses.
    """
    return validate_client_id(f"{prefix}-{secrets.token_hex(8)}")
