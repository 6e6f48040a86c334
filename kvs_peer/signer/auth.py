"""Who may get a signed URL: bearer tokens, channel globs, roles and rate limits. Pure.

The clock is an argument (``now``, monotonic seconds) and nothing here does I/O, so every
decision can be tested without a server. Decisions are values: :class:`Principal` when the
request may go on, :class:`Refusal` (HTTP status, error code, message) when it may not.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections import OrderedDict
from dataclasses import dataclass

from ..protocol import Role
from ..ratelimit import TokenBucket
from .config import AnonymousRule, SignerConfig, TokenRule, channel_allowed

__all__ = [
    "ANONYMOUS",
    "REALM",
    "Authorizer",
    "Principal",
    "Refusal",
    "hash_token",
    "valid_token_syntax",
]

REALM = "kvs-peer signer"
ANONYMOUS = "anonymous"

# RFC 6750 section 2.1 b64token.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER_RE = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)


_KVS_PEER_TOKEN_HINT = " (kvs-peer: env KVS_PEER_SIGNER_TOKEN or --token)"
"""How kvs-peer's own commands send one, for the 401 of a request without a token."""


def valid_token_syntax(token: str) -> bool:
    """Whether ``token`` can travel in ``Authorization: Bearer`` (RFC 6750 b64token)."""
    return bool(_TOKEN_RE.fullmatch(token))


def hash_token(token: str) -> str:
    """The ``sha256`` value to put in the config for ``token``: hex SHA-256 of its UTF-8 bytes.

    Same as ``printf %s "$TOKEN" | sha256sum``.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a request was granted to."""

    name: str
    """Token name, or ``anonymous``."""
    anonymous: bool = False
    may_create: bool = False
    """The token may create a channel it covers that does not exist yet."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, as the HTTP answer to give."""

    status: int
    error: str
    """Machine-readable code, the ``error`` field of the JSON body."""
    message: str
    """What the caller should do, the ``message`` field."""
    retry_after: int | None = None
    """Seconds, for 429 and 503."""
    challenge: str | None = None
    """``WWW-Authenticate`` value, for 401."""

    def headers(self) -> dict[str, str]:
        """Extra response headers this refusal needs."""
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.challenge is not None:
            headers["WWW-Authenticate"] = self.challenge
        return headers


def _unauthorized(error: str, message: str) -> Refusal:
    challenge = f'Bearer realm="{REALM}"'
    if error == "invalid_token":
        challenge += ', error="invalid_token"'
    return Refusal(401, error, message, challenge=challenge)


def _bucket(rate_per_minute: float, burst: float | None) -> TokenBucket:
    return TokenBucket(rate_per_minute / 60.0, max(1.0, burst or rate_per_minute))


class Authorizer:
    """Decide, per request, whether to hand out a signed URL.

    Args:
        tokens: the configured tokens.
        anonymous: channel patterns open to anonymous viewers (empty: none).
        max_addresses: anonymous rate-limit buckets kept (least recently used are dropped).
    """

    def __init__(
        self,
        tokens: tuple[TokenRule, ...],
        anonymous: tuple[AnonymousRule, ...] = (),
        *,
        max_addresses: int = 10_000,
    ) -> None:
        self._tokens = tokens
        self._anonymous = anonymous
        self._max_addresses = max_addresses
        self._token_buckets: dict[str, TokenBucket] = {}
        self._address_buckets: OrderedDict[tuple[int, str], TokenBucket] = OrderedDict()

    @classmethod
    def from_config(cls, config: SignerConfig) -> Authorizer:
        """An authorizer for the tokens and anonymous rules of ``config``."""
        return cls(config.tokens, config.anonymous)

    def authenticate(self, authorization: str | None) -> TokenRule | Refusal | None:
        """Find the token rule for an ``Authorization`` header value.

        Returns:
            None when there is no header, the matching :class:`TokenRule`, or a 401
            :class:`Refusal` for a malformed or unknown token.
        """
        if authorization is None:
            return None
        match = _BEARER_RE.fullmatch(authorization)
        if match is None or not valid_token_syntax(match[1]):
            return _unauthorized(
                "invalid_token",
                "malformed Authorization header: send 'Authorization: Bearer <token>'",
            )
        digest = hashlib.sha256(match[1].encode("utf-8")).digest()
        found: TokenRule | None = None
        # Compare against every token without stopping at a match, so the response time
        # does not tell which token (or how many) were tried before the right one.
        for rule in self._tokens:
            equal = hmac.compare_digest(rule.digest, digest)
            found = rule if equal else found
        if found is None:
            return _unauthorized(
                "invalid_token",
                "the bearer token is not known to this signer: check it, or ask the operator "
                "for a valid one",
            )
        return found

    def check(
        self,
        authorization: str | None,
        channel: str,
        role: Role,
        *,
        address: str,
        now: float,
    ) -> Principal | Refusal:
        """Authenticate, authorize and rate-limit one request.

        Args:
            authorization: the ``Authorization`` header, or None when absent.
            channel: the (already validated) channel name.
            role: the role asked for.
            address: the client address (for anonymous rate limits).
            now: monotonic time in seconds.
        """
        rule = self.authenticate(authorization)
        if isinstance(rule, Refusal):
            return rule
        if rule is None:
            return self._check_anonymous(channel, role, address, now)
        if not channel_allowed(rule.channels, channel):
            return Refusal(
                403,
                "channel_not_allowed",
                f"token {rule.name!r} may not access channel {channel!r}: ask the operator to "
                "add the channel to the token's channels",
            )
        if role not in rule.roles:
            allowed = " or ".join(sorted(r.value for r in rule.roles))
            return Refusal(
                403,
                "role_not_allowed",
                f"token {rule.name!r} may not connect as {role.value}, only as {allowed}",
            )
        if rule.rate_per_minute is not None:
            bucket = self._token_buckets.get(rule.name)
            if bucket is None:
                bucket = self._token_buckets[rule.name] = _bucket(rule.rate_per_minute, rule.burst)
            refusal = _take(bucket, now, f"token {rule.name!r}", rule.rate_per_minute)
            if refusal is not None:
                return refusal
        return Principal(rule.name, may_create=rule.create_channels)

    def _check_anonymous(
        self, channel: str, role: Role, address: str, now: float
    ) -> Principal | Refusal:
        if role is Role.MASTER:
            return _unauthorized(
                "token_required",
                f"MASTER access always needs a token: send 'Authorization: Bearer <token>'"
                f"{_KVS_PEER_TOKEN_HINT}",
            )
        for index, rule in enumerate(self._anonymous):
            if channel_allowed(rule.channels, channel):
                refusal = _take(
                    self._address_bucket(index, rule, address),
                    now,
                    f"anonymous access from {address}",
                    rule.rate_per_minute,
                )
                return refusal or Principal(ANONYMOUS, anonymous=True)
        return _unauthorized(
            "token_required",
            f"channel {channel!r} has no anonymous viewer access: send "
            f"'Authorization: Bearer <token>'{_KVS_PEER_TOKEN_HINT}",
        )

    def _address_bucket(self, index: int, rule: AnonymousRule, address: str) -> TokenBucket:
        key = (index, address)
        bucket = self._address_buckets.get(key)
        if bucket is None:
            bucket = self._address_buckets[key] = _bucket(rule.rate_per_minute, rule.burst)
            # Bounded memory: a flood of addresses evicts the least recently seen ones, which
            # at worst gives those a fresh allowance.
            while len(self._address_buckets) > self._max_addresses:
                self._address_buckets.popitem(last=False)
        else:
            self._address_buckets.move_to_end(key)
        return bucket


def _take(bucket: TokenBucket, now: float, who: str, rate_per_minute: float) -> Refusal | None:
    if bucket.try_take(now):
        return None
    wait = max(1, math.ceil(bucket.delay(now)))
    return Refusal(
        429,
        "rate_limited",
        f"{who} is over its limit of {rate_per_minute:g} requests per minute: retry after {wait} s",
        retry_after=wait,
    )
