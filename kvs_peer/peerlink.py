"""One RTCPeerConnection wired the way every kvs-peer session needs it.

The master (one per viewer), the viewer and the storage link each negotiate a peer
connection the same way: ICE servers aiortc can use, STUN/TURN candidates trickled after the
SDP (:mod:`kvs_peer.gathering`) unless relay-only, the remote's trickled and mDNS candidates
applied in the background, the remote's DTLS confirmation, RTCP counts, optional loopback
candidates, and an SDP every KVS peer accepts. :class:`PeerLink` holds that wiring; who
offers, which tracks go in and what counts as connected stay with each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from .access import ChannelAccess, IceConfig
from .channel import IceServer
from .gathering import BackgroundGathering, SendCandidate, without_end_of_candidates
from .metrics.rtcp import count_rtcp
from .peerconnection import (
    RemoteCandidates,
    RemoteDtls,
    enable_loopback_candidates,
    rtc_configuration,
    split_mdns_candidates,
)
from .sdp import for_kvs_peers

__all__ = ["IcePlan", "PeerLink"]

logger = logging.getLogger(__name__)

StateCallback = Callable[[str], Awaitable[None]] | Callable[[str], None]
"""Called with aiortc's connection state on each change (sync, or async: then in a task)."""


@dataclass(frozen=True, slots=True)
class IcePlan:
    """Where a new peer connection's ICE servers come from.

    Attributes:
        config: the channel's ICE configuration, possibly still being fetched.
        relay_servers: the servers to use with transport policy ``relay``, or None: host
            candidates go in the SDP and STUN/TURN ones are trickled after it.
    """

    config: asyncio.Future[IceConfig]
    relay_servers: tuple[IceServer, ...] | None = None

    @classmethod
    async def fetch(cls, access: ChannelAccess, *, relay_only: bool) -> IcePlan:
        """Start fetching ``access``'s ICE configuration; wait for it only if relay-only.

        Relay-only is asked for (``relay_only``) or set by the configuration itself, which
        can only be seen when it is ready at once (a cached one, a signer's always is).
        """
        config = asyncio.ensure_future(access.ice_config())
        config.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.sleep(0)  # a cached configuration is ready now
        relay = relay_only or (
            config.done()
            and config.exception() is None
            and config.result().transport_policy == "relay"
        )
        if not relay:
            return cls(config)
        return cls(config, tuple((await config).servers))


class PeerLink:
    """A peer connection with its remote candidates, DTLS watch and background gathering.

    Args:
        configuration: aiortc's configuration (see :func:`~kvs_peer.peerconnection.
            rtc_configuration`).
        label: names the session in logs, e.g. ``viewer CLIENT_ID``.
        loopback: also gather 127.0.0.1 host candidates.
        instrument: watch the remote's DTLS confirmation (:attr:`dtls`) and count RTCP
            feedback; off, aiortc's connection state is all there is.
    """

    def __init__(
        self,
        configuration: RTCConfiguration,
        *,
        label: str,
        loopback: bool = False,
        instrument: bool = True,
    ) -> None:
        self.pc = RTCPeerConnection(configuration)
        self.label = label
        self._loopback = loopback
        self._instrument = instrument
        self.candidates = RemoteCandidates(self.pc, label=label)
        self.dtls = RemoteDtls(self.pc)
        """Whether the remote accepted our DTLS certificate (only with ``instrument``)."""
        self.gathering: BackgroundGathering | None = None
        """STUN/TURN candidates trickled after the SDP (None: aiortc gathers them itself)."""
        self.tracks: list[MediaStreamTrack] = []
        """Our own tracks on this connection, stopped by :meth:`close`."""

    @classmethod
    def planned(
        cls, plan: IcePlan, send: SendCandidate, *, label: str, loopback: bool = False
    ) -> PeerLink:
        """A link for ``plan``: relay-only, or host candidates first and the STUN/TURN ones
        trickled through ``send`` once the SDP is out, so neither GetIceServerConfig nor a
        TURN server that does not answer holds the SDP up."""
        if plan.relay_servers is not None:
            configuration = rtc_configuration(plan.relay_servers, transport_policy="relay")
            return cls(configuration, label=label, loopback=loopback)
        link = cls(rtc_configuration(()), label=label, loopback=loopback)
        link.gathering = BackgroundGathering(link.pc, plan.config, send, label=label)
        return link

    def on_state(self, callback: StateCallback) -> None:
        """Log each connection state change and hand the state to ``callback``."""
        pc = self.pc
        if inspect.iscoroutinefunction(callback):
            # aiortc runs an async listener in its own task, a sync one inline: keep each.
            @pc.on("connectionstatechange")
            async def on_state_async() -> None:
                state = pc.connectionState
                logger.info("%s: peer connection %s", self.label, state)
                await callback(state)

            return

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            logger.info("%s: peer connection %s", self.label, state)
            callback(state)

    async def apply_remote(
        self,
        sdp: str,
        kind: Literal["offer", "answer"],
        rewrite: Callable[[str], str] | None = None,
    ) -> None:
        """Apply the remote's SDP, its mDNS candidates resolved in the background.

        ``rewrite`` edits the SDP (mDNS candidates taken out) before it is applied. Raises
        what aiortc raises for an SDP it refuses.
        """
        sdp, mdns_candidates = split_mdns_candidates(sdp)
        if rewrite is not None:
            sdp = rewrite(sdp)
        for event in mdns_candidates:
            self.candidates.add(event)  # held until the description is applied
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        self.candidates.remote_description_set()

    async def offer(self, send: Callable[[str], Awaitable[None]]) -> str:
        """Make and ``send`` our offer; returns the SDP as sent."""
        return await self._describe("offer", send, None)

    async def answer(
        self, send: Callable[[str], Awaitable[None]], rewrite: Callable[[str], str] | None = None
    ) -> str:
        """Make and ``send`` our answer (``rewrite`` edits it first); returns it as sent."""
        return await self._describe("answer", send, rewrite)

    async def _describe(
        self,
        kind: Literal["offer", "answer"],
        send: Callable[[str], Awaitable[None]],
        rewrite: Callable[[str], str] | None,
    ) -> str:
        # Every transceiver and data channel exists now (an answerer: the offer is applied).
        pc = self.pc
        if self._loopback:
            enable_loopback_candidates(pc)
        if self._instrument:
            self.dtls.attach()
            count_rtcp(pc)  # NACK and PLI/FIR counts for metrics (RTCP only)
        if self.gathering is not None:
            self.gathering.prepare()
        description = await (pc.createOffer() if kind == "offer" else pc.createAnswer())
        await pc.setLocalDescription(description)
        sdp = for_kvs_peers(pc.localDescription.sdp)
        if rewrite is not None:
            sdp = rewrite(sdp)
        if self.gathering is not None:
            sdp = without_end_of_candidates(sdp)
        await send(sdp)
        if self.gathering is not None:
            self.gathering.described(sdp)
        return sdp

    async def close(self) -> None:
        """Stop gathering and candidate lookups, stop our tracks, close the peer connection.
        Idempotent."""
        if self.gathering is not None:
            await self.gathering.close()
        await self.candidates.close()
        for track in self.tracks:
            track.stop()
        with contextlib.suppress(Exception):
            # Shielded: a cancelled second close() cancels the future aiortc's own close()
            # (started when a connection fails) resolves, which then raises
            # InvalidStateError in a task nobody awaits.
            await asyncio.shield(self.pc.close())
