"""Presign and verify KVS signaling URLs (SigV4 query auth through botocore).

The URL a peer opens to connect to a signaling channel is a SigV4 *query* presign of
``GET wss://host/path?X-Amz-ChannelARN=...[&X-Amz-ClientId=...]`` for the service
``kinesisvideo``, with ``host`` as the only signed header, the empty-body hash, and the session
token inside the signed query (docs/protocol.md#the-signed-wss-url). botocore computes the
signature; this module only fixes the timestamp, re-sorts the query so the URL is
byte-identical to the official JS SDK's ``SigV4RequestSigner``, and validates inputs (by the
rules of :mod:`kvs_peer.rules`).

Verification (:func:`verify_presigned_url`, :func:`verify_signed_request`, used by the local
emulator) rebuilds the canonical request from exactly the headers the client named in
``SignedHeaders``, whatever client signed it (botocore, the JS SDK, the C SDK), and lets botocore
compute the expected signature. :func:`canonical_netloc` is the one rule for spelling a host
(lowercase, no default port) that signing, verifying, connecting and the emulator share.

Everything here is pure: the clock is an argument (``now``), nothing touches the network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from .errors import InvalidArgument, SignatureError
from .rules import (
    CLOCK_SKEW,
    MAX_PRESIGN_EXPIRES,
    PRESIGN_EXPIRES,
    validate_channel_arn,
    validate_channel_name,
    validate_client_id,
)

__all__ = [
    "CHANNEL_ARN_PARAM",
    "CLIENT_ID_PARAM",
    "DEFAULT_EXPIRES",
    "DEFAULT_PORTS",
    "VerifiedRequest",
    "canonical_netloc",
    "master_url",
    "normalize_endpoint",
    "presign_url",
    "redact_url",
    "validate_channel_arn",
    "validate_channel_name",
    "validate_client_id",
    "verify_presigned_url",
    "verify_signed_request",
    "viewer_url",
]

CHANNEL_ARN_PARAM = "X-Amz-ChannelARN"
CLIENT_ID_PARAM = "X-Amz-ClientId"
DEFAULT_EXPIRES = PRESIGN_EXPIRES  # signing's public name for the JS SDK's value

# A URL's default port means the same as no port (RFC 3986 6.2.3; ws/wss use http/https's
# ports, RFC 6455 3). Real KVS endpoints carry none, the C SDK cannot parse one, and WebSocket
# clients leave it out of the Host header they send (docs/protocol.md#the-signed-wss-url).
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType(
    {"http": 80, "ws": 80, "https": 443, "wss": 443}
)
# SigV4: "The host header must be included as a signed header"; SignedHeaders lists lowercase
# names sorted by character code, separated by ';'; header values are trimmed with inner runs
# of spaces collapsed and repeated headers joined with ','. (AWS IAM User Guide, "Create a
# signed AWS API request":
# https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html)
_REQUIRED_SIGNED_HEADER = "host"
_SIGNED_HEADERS_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+(;[a-z0-9!#$%&'*+.^_`|~-]+)*")
# SigV4: the payload hash is the hex SHA-256 of the body; x-amz-content-sha256, when sent and
# signed, carries that value (same page, "HashedPayload").
_CONTENT_SHA256_HEADER = "x-amz-content-sha256"
# A presigned URL may stand for a body its signer never saw and then signs this literal instead
# of a hash (AWS S3 API Reference, "Authenticating Requests: Using Query Parameters",
# https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html). KVS signers
# (JS, C, botocore) sign the empty-body hash; header-signed requests must hash their body.
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_REGION_RE = re.compile(r"[a-z0-9-]{1,64}")
_AUTH_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
        "X-Amz-SignedHeaders",
    }
)
_SECRET_PARAMS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token")
_CREDENTIAL_RE = re.compile(
    r"(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)/aws4_request"
)


class CredentialsLike(Protocol):
    """Anything with ``access_key``, ``secret_key`` and ``token`` (botocore ``Credentials``)."""

    access_key: str
    secret_key: str
    token: str | None


def _encode(value: str) -> str:
    # RFC 3986 unreserved set, uppercase hex: what botocore signs and, for every value KVS
    # uses (ARNs, ids, base64 tokens), what the JS SDK's encodeURIComponent produces.
    return quote(value, safe="-_.~")


def _frozen(credentials: Any) -> Credentials:
    # Refreshable credentials may rotate between reading the key and the secret.
    if hasattr(credentials, "get_frozen_credentials"):
        credentials = credentials.get_frozen_credentials()
    access_key = getattr(credentials, "access_key", None)
    secret_key = getattr(credentials, "secret_key", None)
    if not access_key or not secret_key:
        raise InvalidArgument(
            "credentials need a non-empty access key and secret key; configure AWS credentials "
            "(environment, profile or role) or use a signer service"
        )
    return Credentials(access_key, secret_key, getattr(credentials, "token", None) or None)


def _timestamp(now: dt.datetime | None) -> str:
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise InvalidArgument("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(dt.UTC).strftime(SIGV4_TIMESTAMP)


class _QueryAuth(SigV4QueryAuth):
    """botocore's query signer with an explicit timestamp.

    botocore's own ``add_auth`` reads the wall clock and logs the canonical request at debug
    level, which contains the session token; this runs the same steps without either.
    """

    def sign(self, request: AWSRequest, timestamp: str) -> str:
        request.context["timestamp"] = timestamp
        # botocore-stubs leave out this private step of add_auth; it is botocore's own.
        self._modify_request_before_signing(request)  # type: ignore[attr-defined]
        string_to_sign = self.string_to_sign(request, self.canonical_request(request))
        return self.signature(string_to_sign, request)


def canonical_netloc(scheme: str, netloc: str) -> str:
    """Return ``netloc`` (``host[:port]``) lowercased and without ``scheme``'s default port.

    The one spelling of a host that signing (:func:`presign_url`), verifying, connecting
    (:class:`~kvs_peer.signaling.SignalingClient`) and the emulator's endpoints share: ``:443``
    goes for ``https``/``wss`` and ``:80`` for ``http``/``ws``, as real KVS endpoints and the
    ``Host`` header of every WebSocket client have it.

    Raises:
        InvalidArgument: no host, user info, or a port that is not a number from 0 to 65535.
    """
    if "@" in netloc:
        # Not echoed: user info may hold a password.
        raise InvalidArgument("a host must not carry user info ('user:password@')")
    parts = urlsplit(f"//{netloc}")
    if not parts.hostname:
        raise InvalidArgument(f"{netloc!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise InvalidArgument(f"{netloc!r} has an invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS.get(scheme.lower()):
        return host
    return f"{host}:{port}"


def normalize_endpoint(url: str) -> str:
    """Return ``url`` with its host spelled by :func:`canonical_netloc` (no default port).

    Raises:
        InvalidArgument: the URL has no host or a bad port.
    """
    parts = urlsplit(url)
    return parts._replace(netloc=canonical_netloc(parts.scheme, parts.netloc)).geturl()


def _split_endpoint(endpoint: str) -> tuple[str, str, str]:
    if not isinstance(endpoint, str):
        raise InvalidArgument(f"endpoint must be a string, got {type(endpoint).__name__}")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("wss", "ws"):
        raise InvalidArgument(
            f"endpoint {redact_url(endpoint)!r} is not a WebSocket endpoint: it must start "
            "with wss:// (or ws:// for a local emulator)"
        )
    if parts.query or "?" in endpoint or parts.fragment:
        raise InvalidArgument(
            f"endpoint {redact_url(endpoint)!r} already carries a query or fragment: pass "
            "the bare WSS endpoint from GetSignalingChannelEndpoint and the parameters "
            "separately"
        )
    if not parts.hostname:
        raise InvalidArgument(f"endpoint {redact_url(endpoint)!r} has no host")
    try:
        netloc = canonical_netloc(parts.scheme, parts.netloc)
    except InvalidArgument as exc:
        raise InvalidArgument(f"endpoint {redact_url(endpoint)!r}: {exc}") from None
    # Signed as WebSocket clients send the Host header: lowercased, no default port.
    return parts.scheme, netloc, parts.path or "/"


def presign_url(
    endpoint: str,
    *,
    region: str,
    credentials: CredentialsLike | Any,
    query: Mapping[str, str],
    expires: int = DEFAULT_EXPIRES,
    service: str = "kinesisvideo",
    now: dt.datetime | None = None,
) -> str:
    """Presign a signaling WebSocket URL.

    Args:
        endpoint: the channel's WSS endpoint (``wss://...``; ``ws://`` for a local emulator),
            without a query. A default port (``:443`` for wss, ``:80`` for ws) is dropped, as
            the WebSocket client leaves it out of the Host header (:func:`canonical_netloc`).
        region: AWS region of the channel, e.g. ``us-west-2``.
        credentials: botocore ``Credentials`` (refreshable ones are frozen first) or any
            object with ``access_key``, ``secret_key`` and ``token``.
        query: the role parameters, e.g. ``{"X-Amz-ChannelARN": arn}``.
        expires: validity in seconds (1 to ``rules.MAX_PRESIGN_EXPIRES``); the JS SDK always
            uses ``rules.PRESIGN_EXPIRES``.
        service: SigV4 service name; KVS uses ``kinesisvideo``.
        now: signing time (timezone-aware); defaults to the current time. Add a known clock
            offset here to sign for a server whose clock differs from ours.

    Returns:
        The signed URL, query keys in byte order exactly as the JS SDK writes them.

    Raises:
        InvalidArgument: bad endpoint, credentials, region or expiry.
    """
    scheme, host, path = _split_endpoint(endpoint)
    if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
        raise InvalidArgument(f"invalid region {region!r}: expected a name like 'us-west-2'")
    if (
        isinstance(expires, bool)
        or not isinstance(expires, int)
        or not 1 <= expires <= MAX_PRESIGN_EXPIRES
    ):
        raise InvalidArgument(f"expires must be an integer from 1 to {MAX_PRESIGN_EXPIRES} seconds")
    creds = _frozen(credentials)
    params = {str(k): str(v) for k, v in query.items()}
    clashing = sorted(params.keys() & _AUTH_PARAMS)
    if clashing:
        raise InvalidArgument(
            f"query must not carry signing parameters ({', '.join(clashing)}): they are set "
            "by the signer (use expires= for X-Amz-Expires)"
        )
    request = AWSRequest(method="GET", url=f"{scheme}://{host}{path}", params=params)
    auth = _QueryAuth(creds, service, region, expires=expires)
    signature = auth.sign(request, _timestamp(now))
    assert request.url is not None  # given above; signing only adds its parameters
    signed = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
    signed["X-Amz-Signature"] = signature
    query_string = "&".join(f"{k}={_encode(v)}" for k, v in sorted(signed.items()))
    return f"{scheme}://{host}{path}?{query_string}"


def master_url(
    endpoint: str,
    *,
    channel_arn: str,
    region: str,
    credentials: CredentialsLike | Any,
    expires: int = DEFAULT_EXPIRES,
    now: dt.datetime | None = None,
) -> str:
    """Presign a ConnectAsMaster URL (only ``X-Amz-ChannelARN``; KVS masters have no client id)."""
    validate_channel_arn(channel_arn)
    return presign_url(
        endpoint,
        region=region,
        credentials=credentials,
        query={CHANNEL_ARN_PARAM: channel_arn},
        expires=expires,
        now=now,
    )


def viewer_url(
    endpoint: str,
    *,
    channel_arn: str,
    client_id: str,
    region: str,
    credentials: CredentialsLike | Any,
    expires: int = DEFAULT_EXPIRES,
    now: dt.datetime | None = None,
) -> str:
    """Presign a ConnectAsViewer URL (``X-Amz-ChannelARN`` and a validated ``X-Amz-ClientId``)."""
    validate_channel_arn(channel_arn)
    validate_client_id(client_id)
    return presign_url(
        endpoint,
        region=region,
        credentials=credentials,
        query={CHANNEL_ARN_PARAM: channel_arn, CLIENT_ID_PARAM: client_id},
        expires=expires,
        now=now,
    )


def redact_url(url: str) -> str:
    """Return ``url`` with the signature, credential and session token values hidden, and
    the password of a ``user:password@`` part.

    Use it for every log line or error message that would otherwise show a signed URL, or a
    URL a user gave (which may carry a password).
    """
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:REDACTED@{host}")
    if not parts.query:
        return parts.geturl() if at else url
    shown = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        shown.append(f"{key}={'REDACTED' if key in _SECRET_PARAMS else _encode(value)}")
    return parts._replace(query="&".join(shown)).geturl()


# --------------------------------------------------------------------------------------------
# Verification (servers: the local emulator, tests)


SecretLookup = Callable[[str], str | None] | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """What a valid signature proves about a request."""

    access_key: str
    region: str
    service: str
    signed_at: dt.datetime
    expires_at: dt.datetime | None
    params: Mapping[str, str] = field(repr=False)
    """Every query parameter except ``X-Amz-Signature`` (decoded); kept out of ``repr`` as it
    holds the session token too."""
    session_token: str | None = field(repr=False)


def _lookup_secret(secrets: SecretLookup, access_key: str) -> str | None:
    if callable(secrets):
        return secrets(access_key)
    return secrets.get(access_key)


def _parse_scope(credential: str, region: str | None, service: str) -> dict[str, str]:
    match = _CREDENTIAL_RE.fullmatch(credential)
    if not match:
        raise SignatureError("malformed", f"malformed credential scope {credential.split('/')[1:]}")
    scope = match.groupdict()
    if region is not None and scope["region"] != region:
        raise SignatureError(
            "scope",
            f"credential scope is for region {scope['region']!r}, this endpoint is {region!r}: "
            "sign with the channel's region",
        )
    if scope["service"] != service:
        raise SignatureError(
            "scope", f"credential scope is for service {scope['service']!r}, expected {service!r}"
        )
    return scope


def _check_time(
    signed_at: dt.datetime,
    expires: int | None,
    now: dt.datetime,
    max_skew: float,
) -> dt.datetime | None:
    skew = (signed_at - now).total_seconds()
    if skew > max_skew:
        raise SignatureError(
            "skew",
            f"Signature not yet current: {signed_at:%Y%m%dT%H%M%SZ} is more than "
            f"{int(max_skew)} s ahead of server time {now:%Y%m%dT%H%M%SZ}; fix the client clock",
        )
    if expires is None:
        if -skew > max_skew:
            raise SignatureError(
                "skew",
                f"Signature expired: {signed_at:%Y%m%dT%H%M%SZ} is more than {int(max_skew)} s "
                f"before server time {now:%Y%m%dT%H%M%SZ}; fix the client clock",
            )
        return None
    expires_at = signed_at + dt.timedelta(seconds=expires)
    if now > expires_at:
        raise SignatureError(
            "expired",
            f"Signature expired: URL signed at {signed_at:%Y%m%dT%H%M%SZ} was valid for "
            f"{expires} s; fetch a freshly signed URL for every connect",
        )
    return expires_at


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise InvalidArgument("now must be timezone-aware")
    return now.astimezone(dt.UTC)


HeaderSource = Mapping[str, str] | Iterable[tuple[str, str]]
"""Request headers: a mapping (a multidict such as aiohttp's yields repeated headers from
``items()``) or ``(name, value)`` pairs; names in any case."""


def _query_pairs(query: str) -> list[tuple[str, str]]:
    # SigV4 canonicalizes decoded names and values (a '+' is a literal plus, not a space),
    # re-encoded by botocore with the RFC 3986 unreserved set.
    pairs = []
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _header_pairs(headers: HeaderSource) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name).strip().lower(), str(value)) for name, value in items]


def _signed_names(value: str) -> list[str]:
    if not _SIGNED_HEADERS_RE.fullmatch(value):
        raise SignatureError(
            "malformed",
            f"SignedHeaders {value[:200]!r} must be lowercase header names separated by ';'",
        )
    names = value.split(";")
    if names != sorted(set(names)):
        raise SignatureError(
            "malformed", f"SignedHeaders {value[:200]!r} must be sorted and without repeats"
        )
    if _REQUIRED_SIGNED_HEADER not in names:
        raise SignatureError(
            "malformed", "SignedHeaders must include host: SigV4 requires the Host header signed"
        )
    return names


def _host_spellings(scheme: str, host: str) -> tuple[str, ...]:
    """The Host header value as signed: canonical, and with an explicit default port.

    Both spell the same origin (:data:`DEFAULT_PORTS`); a client may have signed either,
    e.g. a signer handed an endpoint with ``:443`` whose WebSocket library then sent no port.
    """
    try:
        canonical = canonical_netloc(scheme, host.strip())
    except InvalidArgument as exc:
        raise SignatureError("malformed", f"bad Host header: {exc}") from None
    default = DEFAULT_PORTS.get(scheme.lower())
    if default is None or urlsplit(f"//{canonical}").port is not None:
        return (canonical,)
    return (canonical, f"{canonical}:{default}")


def _payload_hashes(
    signed: Mapping[str, list[str]], body: bytes, *, presigned: bool
) -> tuple[str, ...]:
    body_hash = hashlib.sha256(body).hexdigest()
    declared = signed.get(_CONTENT_SHA256_HEADER)
    if declared is not None:
        value = ",".join(v.strip() for v in declared)
        if value == _UNSIGNED_PAYLOAD:
            if not presigned:
                raise SignatureError(
                    "unsupported",
                    f"{_CONTENT_SHA256_HEADER}: {_UNSIGNED_PAYLOAD} is accepted only on presigned "
                    "URLs; sign the SHA-256 of the body",
                )
            return (value,)
        if value.lower() != body_hash:
            raise SignatureError(
                "mismatch",
                f"the body does not match its {_CONTENT_SHA256_HEADER} header: the body was "
                "changed after signing or the header is wrong",
            )
        return (value,)
    return (body_hash, _UNSIGNED_PAYLOAD) if presigned else (body_hash,)


class _CanonicalAuth(SigV4Auth):
    """botocore's SigV4 over a request exactly as its client signed it.

    As a signer, botocore decides what to sign: every header but a few (it leaves out
    ``user-agent``, which the C SDK signs), the query of the URL, the body. A verifier must take
    exactly what ``SignedHeaders`` names instead, so those three choices are overridden; the
    canonical forms (path, query encoding, trimmed header values), the string to sign and the
    key derivation stay botocore's.
    """

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        region: str,
        *,
        headers: HTTPHeaders,
        query: Sequence[tuple[str, str]],
        payload_hash: str,
    ) -> None:
        super().__init__(credentials, service, region)
        self._signed = headers
        self._query = list(query)
        self._payload_hash = payload_hash

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed

    def canonical_query_string(self, request: AWSRequest) -> str:
        # botocore-stubs leave out this private helper of canonical_query_string.
        canonical: str = self._canonical_query_string_params(self._query)  # type: ignore[attr-defined]
        return canonical

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash

    def signature_for(self, request: AWSRequest, timestamp: str) -> str:
        request.context["timestamp"] = timestamp
        string_to_sign = self.string_to_sign(request, self.canonical_request(request))
        return self.signature(string_to_sign, request)


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a request says was signed, and by whom."""

    method: str
    scheme: str
    path: str
    query: Sequence[tuple[str, str]]
    signed_names: Sequence[str]
    headers: Sequence[tuple[str, str]]
    host: str | None
    """Overrides the Host header (a server that knows better than the request)."""
    body: bytes
    presigned: bool


def _signature_matches(
    claim: _Claim, credentials: Credentials, scope: Mapping[str, str], timestamp: str, given: str
) -> bool:
    received: dict[str, list[str]] = {}
    for name, value in claim.headers:
        received.setdefault(name, []).append(value)
    if claim.host is not None:
        received["host"] = [claim.host]
    missing = [name for name in claim.signed_names if name not in received]
    if missing:
        raise SignatureError(
            "malformed",
            f"signed header {', '.join(missing)} is missing from the request: send it or leave "
            "it out of SignedHeaders",
        )
    if len(received["host"]) != 1:
        raise SignatureError("malformed", "the request has more than one Host header")
    signed = {name: received[name] for name in claim.signed_names}
    matched = False
    for host in _host_spellings(claim.scheme, received["host"][0]):
        headers = HTTPHeaders()
        for name in claim.signed_names:
            for value in [host] if name == "host" else signed[name]:
                headers[name] = value
        for payload_hash in _payload_hashes(signed, claim.body, presigned=claim.presigned):
            auth = _CanonicalAuth(
                credentials,
                scope["service"],
                scope["region"],
                headers=headers,
                query=claim.query,
                payload_hash=payload_hash,
            )
            # botocore reads only the path of this URL; the host comes from ``headers``.
            request = AWSRequest(method=claim.method.upper(), url=f"http://verifier{claim.path}")
            # Every candidate is computed and compared: no early exit that timing could show.
            matched |= hmac.compare_digest(auth.signature_for(request, timestamp), given)
    return matched


def verify_presigned_url(
    url: str,
    *,
    secrets: SecretLookup,
    region: str | None = None,
    service: str = "kinesisvideo",
    host: str | None = None,
    headers: HeaderSource | None = None,
    now: dt.datetime | None = None,
    max_skew: float = CLOCK_SKEW,
) -> VerifiedRequest:
    """Verify a SigV4 query-presigned GET URL as the KVS signaling service would.

    The canonical request is rebuilt from exactly the headers ``X-Amz-SignedHeaders`` names
    (``host`` is required; KVS clients sign only ``host``). A default port is the same as none
    in the Host header (:func:`canonical_netloc`), whichever spelling the client signed.

    Args:
        url: the full request URL (scheme, host, path and query as received); the scheme
            decides which port is the default.
        secrets: access key id -> secret key, as a mapping or a callable returning None for
            unknown keys.
        region: required region of the credential scope; None accepts any.
        service: required service of the credential scope.
        host: the ``Host`` header as received, when it differs from the URL's host; it
            overrides any Host in ``headers``.
        headers: the request headers as received; needed when more than ``host`` is signed.
            Without them (and without ``host``) the URL's host stands for the Host header.
        now: server time (timezone-aware); defaults to the current time.
        max_skew: accepted clock difference in seconds between signer and server.

    Returns:
        A :class:`VerifiedRequest` describing the signer and the signed parameters.

    Raises:
        SignatureError: with ``reason`` set to what failed; the message is safe to return to
            the client (it never includes the expected signature).
    """
    parts = urlsplit(url)
    params: dict[str, str] = {}
    for key, value in _query_pairs(parts.query):
        if key in params:
            raise SignatureError("malformed", f"query parameter {key} appears more than once")
        params[key] = value
    required = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    missing = [name for name in required if not params.get(name)]
    if missing:
        raise SignatureError("malformed", f"missing query parameters: {', '.join(missing)}")
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        raise SignatureError("unsupported", "only X-Amz-Algorithm=AWS4-HMAC-SHA256 is supported")
    signed_names = _signed_names(params["X-Amz-SignedHeaders"])
    try:
        expires = int(params["X-Amz-Expires"])
        signed_at = dt.datetime.strptime(params["X-Amz-Date"], SIGV4_TIMESTAMP).replace(
            tzinfo=dt.UTC
        )
    except ValueError:
        raise SignatureError("malformed", "X-Amz-Date or X-Amz-Expires is malformed") from None
    if not 1 <= expires <= MAX_PRESIGN_EXPIRES:
        raise SignatureError("malformed", f"X-Amz-Expires must be from 1 to {MAX_PRESIGN_EXPIRES}")
    scope = _parse_scope(params["X-Amz-Credential"], region, service)
    if scope["date"] != params["X-Amz-Date"][:8]:
        raise SignatureError("scope", "credential scope date does not match X-Amz-Date")
    secret = _lookup_secret(secrets, scope["akid"])
    if secret is None:
        raise SignatureError(
            "unknown-key", "The security token included in the request is invalid (unknown key)"
        )
    expires_at = _check_time(signed_at, expires, _utc(now), max_skew)
    provided = params["X-Amz-Signature"]
    if not _SIGNATURE_RE.fullmatch(provided):
        raise SignatureError("malformed", "X-Amz-Signature must be 64 lowercase hex digits")

    header_pairs = _header_pairs(headers if headers is not None else ())
    if host is None and not any(name == "host" for name, _ in header_pairs):
        host = parts.netloc
    token = params.get("X-Amz-Security-Token")
    # Every parameter but the signature is signed, including unknown ones such as the C SDK's
    # X-Amz-Role: keep them all.
    claim = _Claim(
        method="GET",
        scheme=parts.scheme,
        path=parts.path or "/",
        query=[(k, v) for k, v in params.items() if k != "X-Amz-Signature"],
        signed_names=signed_names,
        headers=header_pairs,
        host=host,
        body=b"",
        presigned=True,
    )
    creds = Credentials(scope["akid"], secret, token)
    if not _signature_matches(claim, creds, scope, params["X-Amz-Date"], provided):
        raise SignatureError(
            "mismatch",
            "The request signature we calculated does not match the signature you provided: "
            "check the secret key and that the URL was not modified",
        )
    verified = {k: v for k, v in params.items() if k != "X-Amz-Signature"}
    return VerifiedRequest(
        access_key=scope["akid"],
        region=scope["region"],
        service=scope["service"],
        signed_at=signed_at,
        expires_at=expires_at,
        params=verified,
        session_token=token,
    )


_AUTH_HEADER_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)


def verify_signed_request(
    method: str,
    url: str,
    headers: HeaderSource,
    body: bytes,
    *,
    secrets: SecretLookup,
    region: str | None = None,
    service: str = "kinesisvideo",
    now: dt.datetime | None = None,
    max_skew: float = CLOCK_SKEW,
) -> VerifiedRequest:
    """Verify a SigV4 ``Authorization``-header request, as boto3 and the C SDK send them.

    The canonical request is rebuilt from exactly the headers ``SignedHeaders`` names, in any
    case and with values trimmed as SigV4 defines (boto3 signs ``content-type;host;x-amz-date``,
    the C SDK ``host;user-agent;x-amz-date``). Headers left out of it (the C SDK's unsigned
    ``x-amz-security-token``) take no part. The payload hash is ``x-amz-content-sha256`` when
    that header is signed (it must match the body) and the body's SHA-256 otherwise.

    Args:
        method: the HTTP method.
        url: scheme, host, path and query as received; the scheme decides which port is the
            default (the Host header is what is verified).
        headers: the request headers as received (repeated headers as pairs or a multidict).
        body: the request body.
        secrets: access key id -> secret key, as a mapping or a callable.
        region: required region of the credential scope; None accepts any.
        service: required service of the credential scope.
        now: server time (timezone-aware); defaults to the current time.
        max_skew: accepted clock difference in seconds between signer and server.

    Returns:
        A :class:`VerifiedRequest` (``params`` holds the decoded query).

    Raises:
        SignatureError: with ``reason`` set to what failed; the message names what to fix and
            never includes a signature.
    """
    header_pairs = _header_pairs(headers)
    authorizations = [value for name, value in header_pairs if name == "authorization"]
    match = _AUTH_HEADER_RE.fullmatch(authorizations[0].strip()) if authorizations else None
    if not match or len(authorizations) > 1:
        raise SignatureError(
            "malformed", "Missing or malformed Authorization header (SigV4 expected)"
        )
    timestamp = next((v.strip() for n, v in header_pairs if n == "x-amz-date"), "")
    try:
        signed_at = dt.datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureError("malformed", "missing or malformed X-Amz-Date header") from None
    scope = _parse_scope(match["credential"], region, service)
    if scope["date"] != timestamp[:8]:
        raise SignatureError("scope", "credential scope date does not match X-Amz-Date")
    secret = _lookup_secret(secrets, scope["akid"])
    if secret is None:
        raise SignatureError(
            "unknown-key", "The security token included in the request is invalid (unknown key)"
        )
    _check_time(signed_at, None, _utc(now), max_skew)
    signed_names = _signed_names(match["signed"])
    parts = urlsplit(url)
    query = _query_pairs(parts.query)
    claim = _Claim(
        method=method,
        scheme=parts.scheme,
        path=parts.path or "/",
        query=query,
        signed_names=signed_names,
        headers=header_pairs,
        host=None,
        body=body,
        presigned=False,
    )
    token = next((v for n, v in header_pairs if n == "x-amz-security-token"), None)
    creds = Credentials(scope["akid"], secret, token)
    if not _signature_matches(claim, creds, scope, timestamp, match["signature"]):
        raise SignatureError(
            "mismatch",
            "The request signature we calculated does not match the signature you provided "
            f"(SignedHeaders={match['signed']}). Check your AWS Secret Access Key and signing "
            "method.",
        )
    return VerifiedRequest(
        access_key=scope["akid"],
        region=scope["region"],
        service=scope["service"],
        signed_at=signed_at,
        expires_at=None,
        params=dict(query),
        session_token=token,
    )
