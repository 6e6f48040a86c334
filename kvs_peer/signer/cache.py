"""Resolved channels kept in memory and refreshed in the background, so a hung or failing
AWS control plane never delays (or fails) a channel the signer has answered for before.

Stale-while-revalidate over :class:`~kvs_peer.channel.ChannelResolver`: an entry is due for a
refresh when the resolver's own cache would expire (endpoint TTL, or TURN credentials 30 s
before their end), but it is served until a refresh succeeds. Only a channel the signer has
never resolved waits for AWS, and several requests for it share one load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..channel import ChannelResolver, ResolvedChannel
from ..errors import ChannelError, ChannelNotFound
from ..protocol import Role

__all__ = ["ChannelCache"]

logger = logging.getLogger(__name__)

FAILED_REFRESH_DELAY = 5.0
"""Seconds between refresh attempts while AWS fails, so a fast-failing control plane is not
asked once per request."""


@dataclass
class _Entry:
    value: ResolvedChannel
    refresh_at: float  # monotonic


class ChannelCache:
    """The signer's view of resolved channels, per (channel, role).

    Args:
        resolver: the shared control-plane resolver.
        clock: monotonic clock.
        failed_refresh_delay: seconds before retrying a refresh that failed.
        max_entries: channels kept; the least recently asked for are dropped first.
    """

    def __init__(
        self,
        resolver: ChannelResolver,
        *,
        clock: Callable[[], float] = time.monotonic,
        failed_refresh_delay: float = FAILED_REFRESH_DELAY,
        max_entries: int = 10_000,
    ) -> None:
        self._resolver = resolver
        self._clock = clock
        self._failed_refresh_delay = failed_refresh_delay
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, Role], _Entry] = OrderedDict()
        self._loads: dict[tuple[str, Role, bool], asyncio.Task[ResolvedChannel]] = {}

    async def get(
        self, channel: str, role: Role, *, client_id: str | None, create: bool
    ) -> ResolvedChannel:
        """The channel as last resolved; resolve it (waiting for AWS) only the first time.

        A cancelled caller (a request past its deadline) leaves the load running, so the next
        request finds the answer.

        Raises:
            ChannelError: the first resolution failed (not found, denied, unreachable).
        """
        key = (channel, role)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            if self._clock() >= entry.refresh_at:
                self._load(channel, role, client_id, create)
            return entry.value
        return await asyncio.shield(self._load(channel, role, client_id, create))

    def _load(
        self, channel: str, role: Role, client_id: str | None, create: bool
    ) -> asyncio.Task[ResolvedChannel]:
        # create is part of the key: a request that may not create must never hand its 404 to
        # one that may, nor the reverse.
        key = (channel, role, create)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(
                self._resolve(channel, role, client_id, create),
                name=f"kvs-peer-signer-resolve-{channel}-{role.value}",
            )
            self._loads[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: tuple[str, Role, bool], task: asyncio.Task[ResolvedChannel]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        # A background refresh has no awaiting caller: its failure is logged in _resolve.
        if not task.cancelled():
            task.exception()

    async def _resolve(
        self, channel: str, role: Role, client_id: str | None, create: bool
    ) -> ResolvedChannel:
        key = (channel, role)
        try:
            value = await self._resolver.resolve(channel, role, client_id=client_id, create=create)
        except ChannelNotFound:
            # Deleted: serving it would hand out URLs the service refuses.
            self._entries.pop(key, None)
            raise
        except ChannelError as exc:
            entry = self._entries.get(key)
            if entry is not None:
                entry.refresh_at = self._clock() + self._failed_refresh_delay
                logger.warning(
                    "refreshing channel %r for %s failed, serving the cached answer: %s",
                    channel,
                    role.value,
                    exc,
                )
            raise
        self._store(key, value)
        return value

    def _store(self, key: tuple[str, Role], value: ResolvedChannel) -> None:
        # Due when the resolver's own entries expire; earlier would only hit its cache.
        ice_left = value.ice_expires_at - time.time()
        ttl = max(0.0, min(self._resolver.endpoint_ttl, ice_left))
        self._entries[key] = _Entry(value, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        """Cancel loads in flight. Idempotent."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
