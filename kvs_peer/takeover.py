"""Notice when another master takes a channel over.

KVS allows one master per channel and "the most recent request takes precedence. Existing
connection metadata is overwritten by the new one" (docs/protocol.md#takeover): every viewer's
message goes to the newest master. Whether the older master's socket is closed is not
documented; public reports (awslabs/amazon-kinesis-video-streams-webrtc-sdk-c#1151: the
second master gets no error; #1304, #493 and webrtc-sdk-js#195: a master stays connected but
receives no offers until it is restarted) fit a socket that stays open and silently gets
nothing, which is what the local emulator does (:class:`~kvs_peer.emulator.Takeover`).
[inferred] So a stranded master cannot learn it from its own socket.

It can learn it end to end: a short-lived probe VIEWER connection sends a marked message to
the channel's master, and the master checks that its own socket received it. No answer twice
in a row, while our socket stayed up, means the service routes the channel to someone else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from .access import ChannelAccess
from .errors import InvalidArgument, KvsPeerError, SignalingClosed
from .protocol import Role
from .signaling import SignalingClient

__all__ = ["TakeoverWatch", "probe_master"]

logger = logging.getLogger(__name__)


async def probe_master(
    signaling: SignalingClient, access: ChannelAccess, *, client_id: str, timeout: float = 5.0
) -> bool | None:
    """Check that the service delivers the channel's viewer messages to ``signaling``.

    Args:
        signaling: the master's connected signaling client.
        access: the master's channel access; its :meth:`~ChannelAccess.for_viewer` gives the
            probe its URL (so the credentials must allow ConnectAsViewer).
        client_id: the probe viewer's client id; keep one per master so probes replace each
            other instead of taking viewer slots.
        timeout: seconds for the probe to connect, and then for its message to arrive.

    Returns:
        True when the probe arrived, False when it was sent but never arrived (another
        master gets the channel's messages), None when it could not tell (the probe could
        not connect, e.g. no ConnectAsViewer permission or a full channel).
    """
    viewer_access = access.for_viewer(client_id)
    nonce, arrived = signaling.expect_probe()
    probe = SignalingClient(
        viewer_access,
        role=Role.VIEWER,
        client_id=client_id,
        reconnect=False,
        first_connect_attempts=1,
        ping_interval=None,
        open_timeout=timeout,
        send_timeout=timeout,
    )
    try:
        try:
            async with asyncio.timeout(timeout):
                await probe.connect()
            await probe.send_probe(nonce)
        except (KvsPeerError, TimeoutError) as exc:
            logger.debug("takeover probe could not run: %s", exc)
            return None
        try:
            await asyncio.wait_for(asyncio.shield(arrived), timeout)
        except TimeoutError:
            return False
        return True
    finally:
        arrived.cancel()
        await probe.close()


@dataclass
class TakeoverWatch:
    """Probe every ``interval`` seconds until another master has taken the channel over.

    Attributes:
        signaling: the master's signaling client.
        access: the master's channel access.
        channel: the channel name, for messages.
        interval: seconds between probes.
        timeout: seconds per probe step (connect, then delivery).
        misses: probes in a row that must go unanswered before giving up the channel.
    """

    signaling: SignalingClient
    access: ChannelAccess
    channel: str
    interval: float = 60.0
    timeout: float = 5.0
    misses: int = 2

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.misses < 1:
            raise InvalidArgument("takeover checks need interval > 0, timeout > 0, misses >= 1")
        self.client_id = f"kvs-peer-probe-{secrets.token_hex(6)}"
        self.probes = 0
        self.unanswered = 0

    async def run(self) -> SignalingClosed:
        """Return (never raise) the error to end the master with once it is stranded."""
        warned = False
        while True:
            await asyncio.sleep(self.interval)
            if not self.signaling.connected:
                continue  # reconnecting: that connect makes us the newest master again
            connects = self.signaling.stats.connects
            result = await probe_master(
                self.signaling, self.access, client_id=self.client_id, timeout=self.timeout
            )
            self.probes += 1
            if self.signaling.stats.connects != connects or not self.signaling.connected:
                continue  # our socket changed meanwhile: the answer says nothing
            if result is None:
                if not warned:
                    logger.info(
                        "cannot check whether another master took channel %r over (a probe "
                        "viewer could not connect; see debug logs)",
                        self.channel,
                    )
                    warned = True
                continue
            if result:
                self.unanswered = 0
                continue
            self.unanswered += 1
            logger.warning(
                "channel %r: a probe sent to the master did not reach this master (%d of %d)",
                self.channel,
                self.unanswered,
                self.misses,
            )
            if self.unanswered >= self.misses:
                return SignalingClosed(
                    f"another master took channel {self.channel!r} over: KVS sends every "
                    "viewer's messages to the newest master, so this one gets no new viewers; "
                    "stop the other master or give each master its own channel",
                    reason="taken over by another master",
                )
