"""Offer or answer at once with host candidates; STUN and TURN candidates follow by trickle.

aiortc gathers every candidate inside ``setLocalDescription`` and cannot trickle its own:
a TURN allocation on the path to the first frame costs its round trips, and a STUN or TURN
server that does not answer (a network that blocks its port) holds the SDP for the 5 s
aioice allows it, on each side. KVS always lists TURN servers, so that is every session.

:class:`BackgroundGathering` takes the STUN and TURN servers out of that path. The peer
connection is made with no ICE servers, so ``setLocalDescription`` gathers host candidates
only (milliseconds) and the SDP goes out at once, without ``a=end-of-candidates``. Meanwhile
the servers' candidates are gathered in the background with aioice's own functions and,
as they come, added to the ICE connection and sent as trickled candidates, which every KVS
peer applies (browsers, the C SDK, kvs-peer's :class:`~kvs_peer.peerconnection.RemoteCandidates`).
The ICE servers may even be still on their way (GetIceServerConfig) when the SDP is made.

Adding a candidate after gathering is not in aioice's API: the relay socket is handed to the
connection and paired with the remote candidates known so far through aioice internals
(:mod:`kvs_peer.aiortc_internals`), on this connection only (no module-wide patch), as aioice
itself does at gathering time. If those internals are missing (another aioice version) the
relay candidate is dropped with a warning and the session runs on host and server-reflexive
candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aioice import Candidate
from aiortc import RTCPeerConnection

from .aiortc_internals import (
    add_local_candidate,
    add_relay_candidate,
    allocate_relay,
    host_protocols,
    ice_connection,
    ice_server_kwargs,
    local_candidates,
    query_reflexive,
    takes_late_candidates,
    to_rtc_candidate,
)
from .channel import IceServer
from .peerconnection import candidate_to_json, rtc_configuration

__all__ = ["RELAY_TIMEOUT", "BackgroundGathering", "without_end_of_candidates"]

logger = logging.getLogger(__name__)

RELAY_TIMEOUT = 10.0
"""Seconds a TURN allocation or STUN query may take in the background before it is dropped
(aioice allows 5 s inside ``setLocalDescription``; here nothing waits for it)."""

_END_OF_CANDIDATES = "a=end-of-candidates"

SendCandidate = Callable[[str, str | None, int | None], Awaitable[None]]
"""``send(candidate_line, sdp_mid, sdp_mline_index)``: trickle one candidate to the remote."""


def without_end_of_candidates(sdp: str) -> str:
    """``sdp`` without ``a=end-of-candidates``: more candidates follow by trickle.

    An aiortc peer refuses every candidate trickled after it (aioice raises), so an SDP whose
    server candidates come later must not claim to be complete.
    """
    lines = [line for line in sdp.splitlines() if line.strip() != _END_OF_CANDIDATES]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class _Link:
    """One ICE connection of the peer connection and what was gathered for it."""

    ice_transport: Any  # aiortc RTCIceTransport
    connection: Any  # aioice Connection
    mid: str | None = None
    mline_index: int | None = None
    pending: list[Any] = field(default_factory=list)  # relay protocols not handed over yet


class BackgroundGathering:
    """STUN and TURN candidates of one peer connection, gathered after its SDP went out.

    ::

        pc = RTCPeerConnection(rtc_configuration(()))  # no servers: host candidates only
        gathering = BackgroundGathering(pc, access.ice_config(), send)
        ...  # add transceivers (an answerer: setRemoteDescription)
        gathering.prepare()
        await pc.setLocalDescription(await pc.createOffer())
        sdp = without_end_of_candidates(pc.localDescription.sdp)
        await signaling.send_offer(sdp)
        gathering.described(sdp)  # candidates may follow the SDP now
        ...
        await gathering.close()

    Args:
        pc: a peer connection made without ICE servers (transport policy ``all``).
        servers: the ICE servers, or an awaitable of them (e.g. ``access.ice_config()``,
            whose ``servers`` are used) still being fetched.
        send: trickles one candidate (see :data:`SendCandidate`).
        label: names the session in logs.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        servers: Iterable[IceServer] | Awaitable[Any],
        send: SendCandidate,
        *,
        label: str = "peer",
    ) -> None:
        self._pc = pc
        self._servers = servers
        self._send = send
        self._label = label
        self._links: list[_Link] = []
        self._described = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.trickled: list[str] = []
        """Candidate lines sent so far (srflx and relay)."""
        self.error: BaseException | None = None
        """Why the ICE servers could not be had, if they could not (host candidates only)."""

    def prepare(self) -> None:
        """Start gathering in the background. Call it once every transceiver and data channel
        exists (an answerer: after ``setRemoteDescription``), before ``setLocalDescription``.
        """
        if self._task is not None or self._closed:
            return
        seen: set[int] = set()
        for ice_transport in _ice_transports(self._pc):
            connection = ice_connection(ice_transport)
            if id(connection) not in seen:
                seen.add(id(connection))
                self._links.append(_Link(ice_transport, connection))
        self._task = asyncio.ensure_future(self._run())

    def described(self, sdp: str) -> None:
        """The SDP (as sent) is out: candidates may follow it. Takes the m-line of each ICE
        connection from it, for the trickled candidates' ``sdpMid``/``sdpMLineIndex``."""
        mids = [
            line[len("a=mid:") :].strip() for line in sdp.splitlines() if line.startswith("a=mid:")
        ]
        for link in self._links:
            link.mid = _mid_of(self._pc, link.ice_transport)
            if link.mid in mids:
                link.mline_index = mids.index(link.mid)
            elif mids:
                link.mid, link.mline_index = mids[0], 0  # BUNDLE: the first m-line carries all
        self._described.set()

    async def close(self) -> None:
        """Stop gathering and release allocations not handed to a connection. Idempotent."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for link in self._links:
            for protocol in link.pending:
                with contextlib.suppress(Exception):
                    await protocol.close()
            link.pending.clear()

    # -- background --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            servers = self._servers
            if inspect.isawaitable(servers):
                servers = await servers
            servers = getattr(servers, "servers", servers)
            # rtc_configuration always sets a list; aiortc's field is Optional.
            kwargs = ice_server_kwargs(rtc_configuration(servers).iceServers or [])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the control plane or signer failed: host candidates only
            self.error = exc
            logger.warning("%s: no STUN/TURN candidates (%s)", self._label, exc)
            return
        jobs = []
        for link in self._links:
            if kwargs.get("turn_server"):
                jobs.append(self._relay(link, kwargs))
            if kwargs.get("stun_server"):
                jobs.append(self._reflexive(link, kwargs["stun_server"]))
        await asyncio.gather(*jobs)

    async def _relay(self, link: _Link, kwargs: dict[str, Any]) -> None:
        connection = link.connection
        server = kwargs["turn_server"]
        try:
            candidate, protocol = await asyncio.wait_for(
                allocate_relay(connection, kwargs), RELAY_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable, refused, bad credentials: no relay, no stall
            logger.info("%s: no relay candidate from %s:%s: %s", self._label, *server, exc)
            return
        link.pending.append(protocol)
        await self._described.wait()
        if self._finished(link) or not takes_late_candidates(connection):
            if not self._finished(link):
                logger.warning("%s: this aioice cannot take a late relay candidate", self._label)
            return  # close() releases it
        link.pending.remove(protocol)
        add_relay_candidate(connection, protocol, candidate)  # this connection only
        await self._trickle(link, candidate)

    async def _reflexive(self, link: _Link, stun_server: tuple[str, int]) -> None:
        await self._described.wait()  # host sockets exist once the SDP is made
        hosts = [
            protocol
            for protocol, host in host_protocols(link.connection)
            if ":" not in host.host  # STUN is queried over IPv4, as aioice does
        ]

        async def query(protocol: Any) -> None:
            try:
                candidate = await asyncio.wait_for(
                    query_reflexive(protocol, stun_server), RELAY_TIMEOUT
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("%s: no srflx candidate: %s", self._label, exc)
                return
            if self._finished(link):
                return
            if any(c.host == candidate.host and c.port == candidate.port for c in _locals(link)):
                return  # not behind a NAT: the same address as a host candidate
            add_local_candidate(link.connection, candidate)
            await self._trickle(link, candidate)

        await asyncio.gather(*(query(p) for p in hosts))

    def _finished(self, link: _Link) -> bool:
        """Nothing to add any more: closed, or ICE is done (aiortc restarts no ICE)."""
        return self._closed or link.ice_transport.state in ("completed", "failed", "closed")

    async def _trickle(self, link: _Link, candidate: Candidate) -> None:
        line = candidate_to_json(to_rtc_candidate(candidate))
        self.trickled.append(line)
        logger.debug("%s: trickling %s candidate", self._label, candidate.type)
        try:
            await self._send(line, link.mid, link.mline_index)
        except Exception as exc:  # signaling down: the session may still connect without it
            logger.info(
                "%s: could not trickle a %s candidate: %s", self._label, candidate.type, exc
            )


def _locals(link: _Link) -> list[Candidate]:
    return local_candidates(link.connection)


def _ice_transports(pc: RTCPeerConnection) -> list[Any]:
    transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    return transports


def _mid_of(pc: RTCPeerConnection, ice_transport: Any) -> str | None:
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.transport.transport is ice_transport and transceiver.mid:
            return transceiver.mid
    sctp = pc.sctp
    if sctp is not None and sctp.transport.transport is ice_transport:
        return sctp.mid
    return None
