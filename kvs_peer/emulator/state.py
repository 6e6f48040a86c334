"""What the emulator's handlers share: the registries, the router, open sockets and the clock.

:class:`EmulatorState` is built by :class:`~.server.LocalKvs` and handed to every handler
(:mod:`.api`, :mod:`.signaling_ws`, :mod:`.faults`, :mod:`.storage_service`); it carries out
the router's actions on the open sockets and wakes whoever waits for a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from ..errors import ChannelNotFound
from ..signing import verify_signed_request
from .config import EmulatorConfig
from .connection import SignalingSocket
from .controlplane import ControlPlane
from .routing import Action, Deliver, Router

__all__ = ["EmulatorState"]

_FLUSH_TIMEOUT = 5.0
"""Seconds a test hook waits for its frames to be written."""


@dataclass(eq=False)
class EmulatorState:
    """The emulator's shared state.

    Attributes:
        config: credentials, limits and policies.
        control: channels, streams and the control-plane operations (pure).
        router: signaling routing (pure).
        tls: whether the emulator serves ``https``/``wss``.
        sockets: the open signaling WebSockets by the router's connection id.
        clock_offset: seconds added to the wall clock (signature checks, ``Date`` headers).
    """

    config: EmulatorConfig
    control: ControlPlane
    router: Router
    tls: bool
    sockets: dict[int, SignalingSocket] = field(default_factory=dict)
    clock_offset: float = 0.0
    wake: asyncio.Event | None = None
    """Set to make the ticker look at the router's deadlines again (None until started)."""
    _changed: asyncio.Event | None = None

    @property
    def secrets(self) -> dict[str, str]:
        """Access key id -> secret key, for signature checks."""
        return {self.config.access_key_id: self.config.secret_access_key}

    def now(self) -> dt.datetime:
        """The emulator's wall clock (real time plus :attr:`clock_offset`)."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)

    def channel_arn(self, channel: str) -> str:
        """The ARN of a channel given by name or ARN.

        Raises:
            ChannelNotFound: no such channel.
        """
        found = self.control.find(channel)
        if found is None:
            raise ChannelNotFound(channel)
        return found.arn

    def verify(self, request: web.Request, body: bytes) -> None:
        """Check a SigV4 header-signed REST call (service ``kinesisvideo``, as every API the
        emulator serves signs) against the emulator's credentials.

        Raises:
            SignatureError: the signature, credentials or clock do not match.
        """
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{request.headers.get(hdrs.HOST, '')}{request.raw_path}"
        verify_signed_request(
            request.method,
            url,
            request.headers,
            body,
            secrets=self.secrets,
            region=self.config.region,
            now=self.now(),
            max_skew=self.config.max_skew,
        )

    # -- carrying out the router's actions -----------------------------------------------------

    def start(self) -> None:
        """Create the events (on the running loop)."""
        self.wake, self._changed = asyncio.Event(), asyncio.Event()

    def execute(self, actions: list[Action] | tuple[Action, ...]) -> None:
        """Queue each action on its socket (actions for closed sockets are dropped)."""
        for action in actions:
            sock = self.sockets.get(action.conn_id)
            if sock is None:
                continue
            sock.send(action.text if isinstance(action, Deliver) else action)

    def targets_sent(self, actions: list[Action]) -> list[SignalingSocket]:
        """:meth:`execute`, then the sockets the actions went to."""
        self.execute(actions)
        return [self.sockets[a.conn_id] for a in actions if a.conn_id in self.sockets]

    @staticmethod
    async def flush(sockets: list[SignalingSocket]) -> int:
        """Wait until the frames are written (so a test can assert on them right away);
        returns how many sockets."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FLUSH_TIMEOUT):
                await asyncio.gather(*(s.flush() for s in sockets))
        return len(sockets)

    def send_to_master(self, channel_arn: str, text: str) -> bool:
        """Deliver a frame to the channel's master; False when none is connected."""
        return bool(self.targets_sent(self.router.inject(channel_arn, text, master=True)))

    def send_to_viewer(self, channel_arn: str, client_id: str, text: str) -> bool:
        """Deliver a frame to the viewer ``client_id``; False when it is not connected."""
        actions = self.router.inject(channel_arn, text, client_id=client_id)
        return bool(self.targets_sent(actions))

    # -- change notification -------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every :meth:`wait_change` (presence changed)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def poke(self) -> None:
        """Make the ticker re-read the router's deadlines."""
        if self.wake is not None:
            self.wake.set()

    async def wait_change(self) -> None:
        """Wait for the next :meth:`notify`."""
        assert self._changed is not None, "the emulator is not started"
        await self._changed.wait()
