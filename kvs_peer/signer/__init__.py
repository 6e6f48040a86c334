"""The signer service: AWS credentials stay here; devices and browsers get short-lived URLs.

``GET /kinesis-video-url?channel=NAME&role=MASTER|VIEWER[&clientId=ID]`` with
``Authorization: Bearer <token>`` answers a SigV4-presigned WSS URL plus an
``RTCConfiguration`` (STUN/TURN), after checking the token against the config file.

Parts: :mod:`.config` (TOML format, pure), :mod:`.auth` (tokens, globs, roles, rate limits,
pure), :mod:`.forwarded` (client address behind proxies, pure), :mod:`.clock` (a clock skew
behind an AWS refusal, pure), :mod:`.cache` (channels served through AWS outages),
:mod:`.connections` (per-address connection limit, redacted parser errors), :mod:`.views` and
:mod:`.middleware` (HTTP), :mod:`.app` (factory and server), :mod:`.cli` (``kvs-peer signer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .app import URL_PATH, create_app, serve
    from .auth import Authorizer, Principal, Refusal, hash_token
    from .config import AnonymousRule, SignerConfig, TokenRule, load_config, parse_config

# Names are imported on first use so that registering `kvs-peer signer` (which imports
# kvs_peer.signer.cli) does not load aiohttp and boto3 for every `kvs-peer --help`.
_EXPORTS = {
    "URL_PATH": "app",
    "create_app": "app",
    "serve": "app",
    "Authorizer": "auth",
    "Principal": "auth",
    "Refusal": "auth",
    "hash_token": "auth",
    "AnonymousRule": "config",
    "SignerConfig": "config",
    "TokenRule": "config",
    "load_config": "config",
    "parse_config": "config",
}

__all__ = [
    "URL_PATH",
    "AnonymousRule",
    "Authorizer",
    "Principal",
    "Refusal",
    "SignerConfig",
    "TokenRule",
    "create_app",
    "hash_token",
    "load_config",
    "parse_config",
    "serve",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
