"""A channel cache on disk: ARN and endpoints that survive a restart.

A restarted agent reads its channel's ARN and WSS/HTTPS endpoints from here and goes
straight to the WebSocket, skipping DescribeSignalingChannel and GetSignalingChannelEndpoint,
as the KVS C SDK's file cache does (``SIGNALING_API_CALL_CACHE_TYPE_FILE``). One small JSON
file per (region, control-plane endpoint, channel, role) under the user cache directory.

Safe with several processes on one machine: every write goes to a temporary file that
replaces the entry atomically (``os.replace``), and a reader ignores a file it cannot parse
or whose fields do not match what it asked for. Files are created with mode 0600 in a 0700
directory and hold no credentials (the endpoint URL is stored without any user info; TURN
credentials are never cached). Entries expire after the resolver's endpoint TTL, and the
reconnect policy's 403/404 refreshes drop them (:meth:`ChannelCache.drop`). A service that
starts afresh at an address drops every entry of that address
(:meth:`ChannelCache.forget_endpoint`): the emulator does, as its channels get new ARNs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .protocol import Role

__all__ = ["CACHE_DIR_ENV", "CachedEndpoints", "ChannelCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "KVS_PEER_CACHE_DIR"
"""Environment variable overriding the cache directory."""

_VERSION = 1
_PRUNE_EVERY = 64
"""Stores between sweeps of expired files (a sweep lists the directory)."""


def default_cache_dir() -> Path:
    """``$KVS_PEER_CACHE_DIR``, else ``$XDG_CACHE_HOME/kvs-peer``, else ``~/.cache/kvs-peer``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvs-peer"


def _public_url(url: str | None) -> str | None:
    """``url`` without user info: a cache file must never hold credentials."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _endpoint_key(url: object) -> str | None:
    """What tells two spellings of one endpoint apart: not a trailing slash."""
    public = _public_url(url) if isinstance(url, str) else None
    return public.rstrip("/") if public else None


@dataclass(frozen=True, slots=True)
class CachedEndpoints:
    """What a cache entry holds for one channel and role."""

    arn: str
    wss: str
    https: str
    message_ttl: int | None
    expires_at: float
    """``time.time()`` after which the entry is not used."""


class ChannelCache:
    """Channel ARNs and endpoints in one JSON file per (region, endpoint, channel, role).

    Every method is best effort: an unwritable directory or a damaged file costs a
    control-plane call, never an error.

    Args:
        directory: where the files go; None: :func:`default_cache_dir`.
        clock: wall clock (``time.time``); entries outlive the process, so no monotonic one.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._clock = clock
        self._stores = 0

    def path(self, region: str, endpoint_url: str | None, channel: str, role: Role) -> Path:
        """The file of one entry; the name shows channel and role, the digest the rest."""
        key = json.dumps([region, endpoint_url or "", channel, role.value])
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        # Channel names use rules.ID_CHARS only (validated before we get here): safe in a path.
        return self.directory / f"{channel}.{role.value.lower()}.{digest}.json"

    def load(
        self, region: str, endpoint_url: str | None, channel: str, role: Role
    ) -> CachedEndpoints | None:
        """The entry if present, intact, for exactly this key, and not expired; else None."""
        path = self.path(region, endpoint_url, channel, role)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = self._parse(data, region, endpoint_url, channel, role)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # A torn or foreign file (another process, a full disk): a miss, fixed by the
            # next store.
            logger.debug("ignoring unreadable channel cache file %s: %s", path, exc)
            return None
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry

    def _parse(
        self,
        data: Any,
        region: str,
        endpoint_url: str | None,
        channel: str,
        role: Role,
    ) -> CachedEndpoints | None:
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return None
        if (data["region"], data["endpointUrl"], data["channel"], data["role"]) != (
            region,
            _public_url(endpoint_url),
            channel,
            role.value,
        ):
            return None
        arn, wss, https = data["arn"], data["wss"], data["https"]
        ttl, expires = data.get("messageTtl"), data["expiresAt"]
        if not all(isinstance(v, str) and v for v in (arn, wss, https)):
            return None
        if not isinstance(expires, int | float) or not (ttl is None or isinstance(ttl, int)):
            return None
        return CachedEndpoints(arn, wss, https, ttl, float(expires))

    def store(
        self,
        region: str,
        endpoint_url: str | None,
        channel: str,
        role: Role,
        value: Mapping[str, Any],
        ttl: float,
    ) -> None:
        """Write an entry atomically (``value``: ``arn``, ``wss``, ``https``, ``message_ttl``)."""
        now = self._clock()
        data = {
            "version": _VERSION,
            "region": region,
            "endpointUrl": _public_url(endpoint_url),
            "channel": channel,
            "role": role.value,
            "arn": value["arn"],
            "wss": value["wss"],
            "https": value["https"],
            "messageTtl": value.get("message_ttl"),
            "storedAt": now,
            "expiresAt": now + ttl,
        }
        path = self.path(region, endpoint_url, channel, role)
        tmp: str | None = None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkstemp creates the file 0600; the rename makes it visible whole or not at all.
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.directory)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            logger.debug("could not write the channel cache in %s: %s", self.directory, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._stores += 1
        if self._stores % _PRUNE_EVERY == 1:
            self.prune()

    def drop(
        self, region: str, endpoint_url: str | None, channel: str, role: Role | None = None
    ) -> None:
        """Forget a channel's entries (one role, or both when ``role`` is None)."""
        for each in (role,) if role is not None else tuple(Role):
            with contextlib.suppress(OSError):
                self.path(region, endpoint_url, channel, each).unlink()

    def forget_endpoint(self, endpoint_url: str) -> int:
        """Delete every entry of one control-plane endpoint (any region, channel, role).

        For a service that starts afresh at ``endpoint_url``, such as ``kvs-peer local``: its
        channels have new ARNs, so an entry left by its previous run would only earn the next
        client a 404. Real AWS channels outlive restarts; nothing calls this for them.
        Spellings are compared without user info and trailing slash only: an entry stored
        for ``localhost`` stays when ``127.0.0.1`` is forgotten (its client then recovers
        through the 404 refresh).

        Returns:
            How many entries went.
        """
        wanted = _endpoint_key(endpoint_url)
        removed = 0
        for path, data in self._entries():
            if isinstance(data, dict) and _endpoint_key(data.get("endpointUrl")) == wanted:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def _entries(self) -> list[tuple[Path, Any]]:
        """Every ``*.json`` file with its parsed content (None when unreadable)."""
        try:
            paths = [p for p in self.directory.iterdir() if p.name.endswith(".json")]
        except OSError:
            return []
        entries: list[tuple[Path, Any]] = []
        for path in paths:
            try:
                entries.append((path, json.loads(path.read_text(encoding="utf-8"))))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                entries.append((path, None))
        return entries

    def prune(self) -> int:
        """Delete expired entries and stale temporary files; returns how many went."""
        now = self._clock()
        removed = 0
        with contextlib.suppress(OSError):
            for path in self.directory.glob(".tmp-*"):
                # A writer killed between mkstemp and replace; live writers take ms.
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < now - 60:
                        path.unlink()
                        removed += 1
        for path, data in self._entries():
            try:
                expired = not isinstance(data, dict) or float(data.get("expiresAt", 0)) <= now
            except (TypeError, ValueError):
                expired = True
            if expired:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed
