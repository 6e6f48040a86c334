"""The emulator's fault hooks: GO_AWAY, RECONNECT_ICE_SERVER, raw frames, refused connects
and failing REST calls, for tests of how clients cope.

:class:`FaultHooks` is a part of :class:`~.server.LocalKvs` (its methods are the emulator's
public test hooks); it needs only the shared :class:`~.state.EmulatorState`.
"""

from __future__ import annotations

import time

from ..errors import InvalidArgument
from ..protocol import MessageType, encode_event
from .state import EmulatorState

__all__ = ["FaultHooks"]


def _check_error(status: int, count: int) -> None:
    if not 400 <= status <= 599 or count < 1:
        raise InvalidArgument("status must be an HTTP error (400-599) and count at least 1")


class FaultHooks:
    """Fault injection on a running emulator (mixed into :class:`~.server.LocalKvs`)."""

    _state: EmulatorState

    async def send_go_away(
        self, channel: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send GO_AWAY to the viewer ``client_id`` and/or the master, or to every connection
        of ``channel`` when neither is given; they are closed after ``go_away_grace``.

        Returns:
            How many connections were notified.
        """
        state = self._state
        actions = state.router.go_away(
            state.channel_arn(channel), client_id=client_id, master=master, now=time.monotonic()
        )
        state.poke()
        return await state.flush(state.targets_sent(actions))

    async def send_reconnect_ice_server(
        self, channel: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send RECONNECT_ICE_SERVER (targets as :meth:`send_go_away`); returns the count."""
        text = encode_event(MessageType.RECONNECT_ICE_SERVER)
        return await self.send_raw(channel, text, client_id=client_id, master=master)

    async def send_raw(
        self, channel: str, text: str, *, client_id: str | None = None, master: bool = False
    ) -> int:
        """Send ``text`` verbatim as a text frame (junk, empty frames...); returns the count."""
        state = self._state
        actions = state.router.inject(
            state.channel_arn(channel), text, client_id=client_id, master=master
        )
        return await state.flush(state.targets_sent(actions))

    def fail_next_connects(self, channel: str, status: int, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket connects to ``channel`` with HTTP ``status``."""
        _check_error(status, count)
        self._state.router.fail_next_connects(self._state.channel_arn(channel), status, count)

    def fail_next_api_calls(
        self,
        operation: str,
        *,
        error_type: str = "ClientLimitExceededException",
        status: int = 400,
        count: int = 1,
    ) -> None:
        """Make the next ``count`` REST calls of ``operation`` (``DescribeSignalingChannel``...)
        fail with ``error_type``; boto3 raises the matching exception class."""
        _check_error(status, count)
        self._state.control.fail_next_calls(
            operation, status=status, error_type=error_type, count=count
        )
