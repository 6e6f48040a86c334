"""What :class:`~kvs_peer.master.Master` and :class:`~kvs_peer.viewer.Viewer` share.

One signaling client read by one task, which hands each event to ``_handle``; background
tasks owned by the peer; an ``async with`` lifecycle whose ``close()`` always tears down in
the same order: reader, tasks, signaling, the subclass's resources.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from typing import Self

from ._tasks import TaskSet
from .errors import InvalidState, KvsPeerError
from .signaling import SignalingClient, SignalingEvent

__all__ = ["SignalingPeer"]

logger = logging.getLogger(__name__)


class SignalingPeer(abc.ABC):
    """Base of the master and viewer agents; not used directly."""

    def __init__(self, signaling: SignalingClient) -> None:
        self.signaling = signaling
        self._tasks = TaskSet()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: KvsPeerError | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to signaling and start handling its events."""
        if self._runner is not None:
            raise InvalidState(f"{type(self).__name__}.start() may be called once")
        await self.signaling.connect()
        self._runner = asyncio.create_task(self._run(), name=f"kvs-{type(self).__name__}")

    async def close(self) -> None:
        """Stop handling events, close this peer's resources and signaling. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        await self._tasks.cancel()
        # Signaling first: a remote peer that reacts to its session ending (e.g. a viewer
        # offering again when a master restarts) then reaches no one rather than a peer that
        # no longer reads; KVS keeps such messages for the next one (MessageTtlSeconds).
        await self.signaling.close()
        await self._release()

    async def wait_closed(self) -> None:
        """Wait until the peer stops: close() was called, signaling gave up for good, or the
        peer stopped on its own (a master whose source ended, or that another master took
        the channel from).

        Raises:
            KvsPeerError: why the run ended when a person must act: signaling gave up
                (e.g. ChannelNotFound, HandshakeRejected) or the peer failed on its own.
        """
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._runner)
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: KvsPeerError) -> None:
        """Stop handling events because of ``error``, which :meth:`wait_closed` raises.

        Peer connections keep running until :meth:`close`: the caller decides when to end.
        """
        if self._failure is None:
            self._failure = error
        if self._runner is not None:
            self._runner.cancel()

    async def _run(self) -> None:
        async for event in self.signaling:
            try:
                await self._handle(event)
            except KvsPeerError as exc:
                # A control-plane or signer hiccup while handling one message must not stop
                # the peer: the remote side offers again, or our watchdog does.
                logger.warning(
                    "%s could not handle %s: %s", type(self).__name__, type(event).__name__, exc
                )

    @abc.abstractmethod
    async def _handle(self, event: SignalingEvent) -> None:
        """Act on one signaling event."""

    @abc.abstractmethod
    async def _release(self) -> None:
        """Close what the subclass owns (peer connections, encoders, recordings)."""
