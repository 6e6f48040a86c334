"""Signer service settings: the TOML file format, parsed and validated. Pure.

:data:`CONFIG_EXAMPLE` is a complete file (``kvs-peer signer --config-example`` prints it);
every key but ``[[tokens]]`` is optional.

Unknown keys are errors, so a typo never silently disables a limit.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidArgument
from ..protocol import Role
from ..rules import PRESIGN_EXPIRES, validate_channel_name
from ..tomlconfig import check_keys, config_channel_glob, config_error, load_toml_config

__all__ = [
    "CONFIG_EXAMPLE",
    "DEFAULT_ANONYMOUS_RATE",
    "AnonymousRule",
    "IpNetwork",
    "SignerConfig",
    "TokenRule",
    "channel_allowed",
    "load_config",
    "parse_config",
]

CONFIG_EXAMPLE = """\
region = "eu-west-1"                 # else --region, AWS_REGION, ~/.aws/config
# endpoint_url = "http://127.0.0.1:4577"   # control-plane override (a local emulator)
url_expires = 299                    # seconds a signed URL stays valid (10-3600)
request_timeout = 5                  # deadline of one request; past it: 503 + Retry-After
header_timeout = 10                  # seconds a connection has to send a request head
max_connections_per_address = 32     # open connections per client address (not proxies)
cors_origins = ["https://app.example.com"]   # exact browser origins allowed to call
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"] # peers whose X-Forwarded-For is believed
# static_dir = "../examples/browser"   # serve these files at / (relative to this file)

[[tokens]]
name = "garage-camera"               # shown in logs instead of the token
sha256 = "<64 hex digits>"           # kvs-peer signer hash-token
channels = ["garage", "cam-*"]       # fnmatch globs over exact channel names
roles = ["MASTER"]                   # MASTER and/or VIEWER
rate_per_minute = 20                 # optional request limit for this token
burst = 5                            # optional; defaults to rate_per_minute
create_channels = false              # true: may create unknown channels it covers

[[anonymous]]                        # viewer access without a token; off when absent
channels = ["lobby-*"]
rate_per_minute = 30                 # per client address; default 60
"""
"""A commented example of the file: every key, with what it does."""

DEFAULT_ANONYMOUS_RATE = 60.0
"""Requests per minute per client address when an ``[[anonymous]]`` rule sets no limit."""
MIN_URL_EXPIRES = 10
MAX_URL_EXPIRES = 3600  # a signed URL is a bearer credential for the channel: keep it short
DEFAULT_REQUEST_TIMEOUT = 5.0
"""Seconds one request may take; below :class:`~kvs_peer.access.SignerAccess`'s 10 s timeout."""
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 32

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-zA-Z0-9_.@:\-]{1,64}")


def channel_allowed(patterns: Sequence[str], channel: str) -> bool:
    """Whether ``channel`` matches one of the glob ``patterns`` (case-sensitive, anchored).

    Names that are not valid channel names never match, whatever the pattern: ``cam-*``
    matches ``cam-1`` but not ``cam-1/../x``.
    """
    try:
        validate_channel_name(channel)
    except InvalidArgument:
        return False
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class TokenRule:
    """One bearer token and what it may do."""

    name: str
    """Shown in logs and error messages instead of the token."""
    digest: bytes
    """SHA-256 of the token's UTF-8 bytes."""
    channels: tuple[str, ...]
    """Glob patterns over channel names."""
    roles: frozenset[Role]
    rate_per_minute: float | None = None
    """Requests per minute; None means no limit."""
    burst: float | None = None
    """Largest burst of requests; defaults to ``rate_per_minute``."""
    create_channels: bool = False
    """May create a channel it covers that does not exist yet (instead of a 404)."""


@dataclass(frozen=True, slots=True)
class AnonymousRule:
    """Viewer access without a token for channels matching ``channels``."""

    channels: tuple[str, ...]
    rate_per_minute: float = DEFAULT_ANONYMOUS_RATE
    """Requests per minute per client address."""
    burst: float | None = None


@dataclass(frozen=True)
class SignerConfig:
    """Everything the signer service needs besides AWS credentials.

    Build it with :func:`load_config` (TOML file) or :func:`parse_config` (a mapping), or
    directly in code.
    """

    tokens: tuple[TokenRule, ...] = ()
    anonymous: tuple[AnonymousRule, ...] = ()
    region: str | None = None
    endpoint_url: str | None = None
    url_expires: int = PRESIGN_EXPIRES
    """X-Amz-Expires of the URLs handed out, in seconds."""
    cors_origins: frozenset[str] = field(default_factory=frozenset)
    trusted_proxies: tuple[IpNetwork, ...] = ()
    static_dir: Path | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    """Deadline of one request, AWS calls included; past it the answer is 503 + Retry-After."""
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    """Seconds a connection has, from opening or from its previous answer, to send a complete
    request head; then it is closed (slow-client protection, also the keep-alive limit)."""
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    """Open connections one client address may hold; trusted proxies are exempt."""

    def __post_init__(self) -> None:
        if not MIN_URL_EXPIRES <= self.url_expires <= MAX_URL_EXPIRES:
            raise InvalidArgument(
                f"url_expires must be from {MIN_URL_EXPIRES} to {MAX_URL_EXPIRES} seconds, got "
                f"{self.url_expires}"
            )
        for name, low, high in (("request_timeout", 0.05, 60), ("header_timeout", 0.05, 3600)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidArgument(
                    f"{name} must be from {low:g} to {high:g} seconds, got {value}"
                )
        if self.max_connections_per_address < 1:
            raise InvalidArgument("max_connections_per_address must be at least 1")
        digests = [t.digest for t in self.tokens]
        if len(set(digests)) != len(digests):
            raise InvalidArgument("two tokens have the same sha256: give every token its own")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise InvalidArgument("two tokens have the same name: names must be unique")

    @property
    def create_channels(self) -> bool:
        """Whether any token may create channels."""
        return any(t.create_channels for t in self.tokens)


# -- parsing -----------------------------------------------------------------------------------

_TOP_KEYS = {
    "region",
    "endpoint_url",
    "create_channels",
    "url_expires",
    "request_timeout",
    "header_timeout",
    "max_connections_per_address",
    "cors_origins",
    "trusted_proxies",
    "static_dir",
    "tokens",
    "anonymous",
}
_TOKEN_KEYS = {"name", "sha256", "channels", "roles", "rate_per_minute", "burst", "create_channels"}
_ANONYMOUS_KEYS = {"channels", "rate_per_minute", "burst"}


def _string_list(where: str, value: Any, *, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise config_error(where, "must be a list of strings")
    if not value and not allow_empty:
        raise config_error(where, "must not be empty")
    return value


def _patterns(where: str, value: Any) -> tuple[str, ...]:
    return tuple(config_channel_glob(where, p) for p in _string_list(where, value))


def _rate(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise config_error(where, "must be a number")
    if not math.isfinite(value) or value <= 0:
        raise config_error(where, "must be a positive number (remove the key to disable the limit)")
    return float(value)


def _burst(where: str, value: Any) -> float:
    burst = _rate(where, value)
    if burst < 1:
        raise config_error(where, "must be at least 1")
    return burst


def _token(where: str, table: Any) -> TokenRule:
    table = check_keys(where, table, _TOKEN_KEYS)
    for key in ("name", "sha256", "channels", "roles"):
        if key not in table:
            raise config_error(where, f"missing {key!r}")
    name = table["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise config_error(
            f"{where}.name",
            "use 1-64 characters from a-z, A-Z, 0-9, '_', '.', '@', ':', '-'",
        )
    sha = table["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha.lower()):
        raise config_error(
            f"{where}.sha256",
            "must be the 64 hex digits of the token's SHA-256 "
            "(kvs-peer signer hash-token prints it); never put the token itself in the file",
        )
    roles = _string_list(f"{where}.roles", table["roles"])
    try:
        parsed_roles = frozenset(Role.parse(r) for r in roles)
    except InvalidArgument as exc:
        raise config_error(f"{where}.roles", str(exc)) from None
    rate = table.get("rate_per_minute")
    burst = table.get("burst")
    if burst is not None and rate is None:
        raise config_error(f"{where}.burst", "only makes sense with rate_per_minute")
    create = table.get("create_channels", False)
    if not isinstance(create, bool):
        raise config_error(f"{where}.create_channels", "must be true or false")
    return TokenRule(
        name=name,
        digest=bytes.fromhex(sha.lower()),
        channels=_patterns(f"{where}.channels", table["channels"]),
        roles=parsed_roles,
        rate_per_minute=None if rate is None else _rate(f"{where}.rate_per_minute", rate),
        burst=None if burst is None else _burst(f"{where}.burst", burst),
        create_channels=create,
    )


def _anonymous(where: str, table: Any) -> AnonymousRule:
    if isinstance(table, Mapping) and "roles" in table:
        raise config_error(
            f"{where}.roles",
            "anonymous access is VIEWER only and a MASTER always needs a token: remove 'roles'",
        )
    if isinstance(table, Mapping) and "create_channels" in table:
        raise config_error(
            f"{where}.create_channels",
            "anonymous viewers can never create channels: give create_channels = true to the "
            "[[tokens]] that may",
        )
    table = check_keys(where, table, _ANONYMOUS_KEYS)
    if "channels" not in table:
        raise config_error(where, "missing 'channels'")
    rate = table.get("rate_per_minute", DEFAULT_ANONYMOUS_RATE)
    burst = table.get("burst")
    return AnonymousRule(
        channels=_patterns(f"{where}.channels", table["channels"]),
        rate_per_minute=_rate(f"{where}.rate_per_minute", rate),
        burst=None if burst is None else _burst(f"{where}.burst", burst),
    )


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise config_error(where, "must be a number of seconds")
    return float(value)


def _origin(value: str) -> str:
    where = "cors_origins"
    if value == "*" or "*" in value:
        raise config_error(
            where,
            "wildcards are not allowed: list every browser origin exactly "
            "(e.g. 'https://app.example.com')",
        )
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise config_error(
            where,
            f"{value!r} is not an origin: use scheme://host[:port] with no path or trailing "
            "slash, e.g. 'https://app.example.com'",
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _network(value: Any) -> IpNetwork:
    try:
        return ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise config_error(
            "trusted_proxies", f"{value!r} is not an IP address or network (e.g. '10.0.0.0/8')"
        ) from None


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> SignerConfig:
    """Validate a parsed TOML document (or any mapping) into a :class:`SignerConfig`.

    Args:
        data: the document.
        base_dir: directory relative ``static_dir`` paths start from (the config file's).

    Raises:
        InvalidArgument: naming the key that is wrong and how to fix it.
    """
    data = check_keys("config", data, _TOP_KEYS)
    tokens_value = data.get("tokens", [])
    if not isinstance(tokens_value, list):
        raise config_error("tokens", "must be an array of tables: write each one as [[tokens]]")
    anonymous_value = data.get("anonymous", [])
    if not isinstance(anonymous_value, list):
        raise config_error(
            "anonymous", "must be an array of tables: write each one as [[anonymous]]"
        )
    tokens = tuple(_token(f"tokens[{i}]", t) for i, t in enumerate(tokens_value))
    anonymous = tuple(_anonymous(f"anonymous[{i}]", a) for i, a in enumerate(anonymous_value))

    region = data.get("region")
    if region is not None and (not isinstance(region, str) or not region):
        raise config_error("region", "must be a region name such as 'us-west-2'")
    endpoint_url = data.get("endpoint_url")
    if endpoint_url is not None and (
        not isinstance(endpoint_url, str) or not endpoint_url.startswith(("http://", "https://"))
    ):
        raise config_error("endpoint_url", "must start with http:// or https://")
    create = data.get("create_channels", False)
    if not isinstance(create, bool):
        raise config_error("create_channels", "must be true or false")
    if create:
        # A service-wide switch let anonymous viewers create channels: refuse it loudly
        # rather than silently creating nothing after an upgrade.
        raise config_error(
            "create_channels",
            "is a per-token permission: remove it here and put create_channels = true in the "
            "[[tokens]] tables that may create channels (anonymous viewers never can)",
        )
    expires = data.get("url_expires", PRESIGN_EXPIRES)
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise config_error("url_expires", "must be a whole number of seconds")
    timeouts = {
        name: _seconds(name, data.get(name, default))
        for name, default in (
            ("request_timeout", DEFAULT_REQUEST_TIMEOUT),
            ("header_timeout", DEFAULT_HEADER_TIMEOUT),
        )
    }
    per_address = data.get("max_connections_per_address", DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
    if isinstance(per_address, bool) or not isinstance(per_address, int) or per_address < 1:
        raise config_error("max_connections_per_address", "must be a whole number, at least 1")
    origins = frozenset(
        _origin(o)
        for o in _string_list("cors_origins", data.get("cors_origins", []), allow_empty=True)
    )
    proxies_value = data.get("trusted_proxies", [])
    proxies = tuple(
        _network(p) for p in _string_list("trusted_proxies", proxies_value, allow_empty=True)
    )
    static = data.get("static_dir")
    static_dir = None
    if static is not None:
        if not isinstance(static, str) or not static:
            raise config_error("static_dir", "must be a directory path")
        static_dir = Path(static)
        if base_dir is not None and not static_dir.is_absolute():
            static_dir = base_dir / static_dir
    return SignerConfig(
        tokens=tokens,
        anonymous=anonymous,
        region=region,
        endpoint_url=endpoint_url,
        url_expires=expires,
        cors_origins=origins,
        trusted_proxies=proxies,
        static_dir=static_dir,
        max_connections_per_address=per_address,
        **timeouts,
    )


def load_config(path: str | Path) -> SignerConfig:
    """Read and validate a signer TOML file.

    Raises:
        InvalidArgument: the file is missing, not TOML, or has a wrong key (the message names
            the file and the key).
    """
    return load_toml_config(path, parse_config, what="signer config", command="signer")
