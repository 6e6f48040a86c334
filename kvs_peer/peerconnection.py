"""aiortc peer-connection helpers shared by the master, the viewer and the storage link.

Conversions between KVS/browser JSON and aiortc objects (candidate lines carry a
``candidate:`` prefix aiortc does not expect, an empty candidate means end of candidates),
the ICE configuration aiortc can actually use, and an opt-in for loopback host candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceCandidate, RTCIceServer, RTCPeerConnection

from ._tasks import TaskSet
from .aiortc_internals import (
    Hook,
    candidate_from_line,
    candidate_line,
    gather_loopback,
    hook_incoming_packets,
    ice_connection,
    remove_hooks,
)
from .channel import IceServer
from .errors import InvalidArgument
from .protocol import MAX_CANDIDATES_PER_PEER, IceCandidate

__all__ = [
    "LinkStats",
    "RemoteCandidates",
    "RemoteDtls",
    "candidate_from_json",
    "candidate_to_json",
    "enable_loopback_candidates",
    "link_stats",
    "rtc_configuration",
    "split_mdns_candidates",
]

logger = logging.getLogger(__name__)


def _usable(url: str) -> bool:
    # aiortc ignores TURN over DTLS (turns:...?transport=udp) and rejects STUN URLs with a
    # transport parameter (docs/protocol.md#aiortc-notes).
    if url.startswith("turns:"):
        return "transport=udp" not in url
    if url.startswith("stun:") or url.startswith("stuns:"):
        return "?" not in url
    return url.startswith("turn:")


def rtc_configuration(
    servers: Iterable[IceServer],
    *,
    transport_policy: str = "all",
) -> RTCConfiguration:
    """Build an aiortc ``RTCConfiguration`` from KVS ICE servers.

    aiortc uses only the first STUN URL and the first usable TURN URL, and every unreachable
    server costs 5 s of gathering. So the list is trimmed to URLs aiortc can use, in KVS's
    order (TURN/UDP first).

    An empty ``servers`` gives an empty list, never aiortc's default Google STUN server.

    Raises:
        InvalidArgument: an unknown ``transport_policy``, or ``relay`` without a TURN URL.
    """
    entries: list[RTCIceServer] = []
    for server in servers:
        urls = [u for u in server.urls if _usable(u)]
        if urls:
            entries.append(
                RTCIceServer(urls=urls, username=server.username, credential=server.credential)
            )
    kwargs: dict[str, Any] = {"iceServers": entries}
    if transport_policy != "all":
        # aiortc >= 1.16 hands the policy to aioice: with "relay" it gathers no host or srflx
        # candidates (only the TURN allocation) and ignores mDNS remote candidates, per
        # peer connection, so no hook is needed.
        from aiortc import RTCIceTransportPolicy

        try:
            kwargs["iceTransportPolicy"] = RTCIceTransportPolicy(transport_policy)
        except ValueError:
            raise InvalidArgument(
                f"ICE transport policy {transport_policy!r} must be 'all' or 'relay'"
            ) from None
        if not any(str(url).startswith("turn") for entry in entries for url in entry.urls):
            raise InvalidArgument(
                "relay-only ICE needs a TURN server, but the channel's ICE configuration has "
                "none that aiortc can use (with `kvs-peer local`, start it with --turn)"
            )
    return RTCConfiguration(**kwargs)


def candidate_from_json(
    candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> RTCIceCandidate | None:
    """Parse a trickled candidate as browsers and KVS SDKs send it.

    Returns:
        The aiortc candidate, or None for end-of-candidates (empty string) and for lines
        aiortc cannot parse (logged, never raised: it is remote input).
    """
    line = candidate.strip()
    if line.startswith("a="):
        line = line[2:]
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    if not line:
        return None
    try:
        parsed = candidate_from_line(line)
    except (AssertionError, ValueError, IndexError) as exc:
        logger.debug("ignoring unparsable remote candidate %r: %s", candidate[:200], exc)
        return None
    parsed.sdpMid = sdp_mid
    parsed.sdpMLineIndex = sdp_mline_index
    if sdp_mid is None and sdp_mline_index is None:
        # aiortc needs one of them; KVS SDKs assume BUNDLE on the first m-line.
        parsed.sdpMLineIndex = 0
    return parsed


def split_mdns_candidates(sdp: str) -> tuple[str, list[IceCandidate]]:
    """Take browser mDNS (``.local``) candidates out of a remote SDP.

    aiortc resolves each one inside ``setRemoteDescription`` (up to 1 s apiece), which would
    hold up the answer of a non-trickle offer. Returned as trickle events instead, they are
    resolved in the background by :class:`RemoteCandidates` while negotiation goes on.

    Returns:
        The SDP without those lines, and the candidates with their m-line index and mid.
    """
    kept: list[str] = []
    found: list[tuple[int, str]] = []
    mids: dict[int, str] = {}
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:") and index >= 0:
            mids[index] = line[len("a=mid:") :].strip()
        elif line.startswith("a=candidate:") and index >= 0:
            fields = line.split()
            if len(fields) > 4 and fields[4].lower().endswith(".local"):
                found.append((index, line[2:]))
                continue
        kept.append(line)
    if not found:
        return sdp, []
    events = [
        IceCandidate(candidate=line, sdp_mid=mids.get(i), sdp_mline_index=i) for i, line in found
    ]
    return "\r\n".join(kept) + "\r\n", events


def candidate_to_json(candidate: RTCIceCandidate) -> str:
    """The ``candidate:...`` line browsers expect in ``RTCIceCandidateInit.candidate``."""
    return "candidate:" + candidate_line(candidate)


def _ice_connections(pc: RTCPeerConnection) -> Sequence[Any]:
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    seen: dict[int, Any] = {}
    for dtls in transports:
        connection = ice_connection(dtls.transport)
        seen[id(connection)] = connection
    return list(seen.values())


def enable_loopback_candidates(pc: RTCPeerConnection) -> None:
    """Also gather 127.0.0.1 host candidates on this peer connection.

    aioice leaves loopback out of its host addresses, so on a host (or network namespace)
    whose only interface is ``lo`` two peers gather nothing and never connect. This hooks
    the ICE connections of ``pc`` only (no module-wide patch). Call it after adding every
    transceiver and data channel (and, when answering, after ``setRemoteDescription``), and
    before ``setLocalDescription``.
    """
    for connection in _ice_connections(pc):
        gather_loopback(connection)


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Totals of one peer connection."""

    bytes_sent: int = 0
    bytes_received: int = 0
    packets_lost: int = 0
    round_trip_time: float | None = None
    """Seconds, from the remote's RTCP receiver reports (sending side only in aiortc)."""


async def link_stats(pc: RTCPeerConnection) -> LinkStats:
    """Byte counters of ``pc``'s transports, packets lost, and the worst round-trip time."""
    sent = received = lost = 0
    rtts: list[float] = []
    report = await pc.getStats()
    for stat in report.values():
        kind = getattr(stat, "type", "")
        if kind == "transport":
            # aiortc's inbound-rtp stats carry no byte count; the transport's include
            # RTCP and data channels too, which is what a bandwidth figure should show.
            sent += stat.bytesSent
            received += stat.bytesReceived
        elif kind == "inbound-rtp":
            lost += max(stat.packetsLost, 0)
        elif kind == "remote-inbound-rtp" and stat.roundTripTime is not None:
            rtts.append(stat.roundTripTime)
    return LinkStats(sent, received, lost, max(rtts) if rtts else None)


MAX_REMOTE_CANDIDATES = MAX_CANDIDATES_PER_PEER
"""Candidates accepted per peer connection (KVS itself allows ``rules.ICE_RATE`` per second)."""


class RemoteCandidates:
    """Applies a peer's trickled candidates to one RTCPeerConnection.

    Candidates that arrive before the remote description are held; afterwards each is
    applied in its own task, because aioice resolves a browser's mDNS ``.local`` candidate
    inside ``addIceCandidate`` (up to 1 s each): awaiting them in line would delay the answer
    and every other message behind them.
    """

    def __init__(self, pc: RTCPeerConnection, *, label: str = "peer") -> None:
        self._pc = pc
        self._label = label
        self._ready = False
        self._pending: list[IceCandidate] = []
        self._tasks = TaskSet()
        self._received = 0

    def add(self, event: IceCandidate) -> None:
        """Apply ``event`` now (in the background) or once the remote description is set."""
        if self._received >= MAX_REMOTE_CANDIDATES:
            return  # a real peer sends a few dozen; more is a flood
        self._received += 1  # once per candidate, held or not
        if not self._ready:
            self._pending.append(event)
            return
        self._start(event)

    def _start(self, event: IceCandidate) -> None:
        candidate = candidate_from_json(event.candidate, event.sdp_mid, event.sdp_mline_index)
        if candidate is None:
            return  # end-of-candidates or unparsable: aioice keeps checking what it has
        self._tasks.spawn(self._apply(candidate), "remote-candidate")

    async def _apply(self, candidate: RTCIceCandidate) -> None:
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:  # remote input: one bad candidate must not end anything
            logger.debug("%s: candidate refused: %s", self._label, exc)

    def remote_description_set(self) -> None:
        """The remote SDP is applied: release held candidates."""
        self._ready = True
        pending, self._pending = self._pending, []
        for event in pending:
            self._start(event)  # counted when it was held

    async def close(self) -> None:
        """Cancel candidates still being applied (e.g. mDNS lookups). Idempotent."""
        await self._tasks.cancel()


class RemoteDtls:
    """Tells whether the remote end of a peer connection accepted our DTLS certificate.

    aiortc calls a connection ``connected`` once *its* DTLS handshake and fingerprint check
    pass. OpenSSL-based peers (the KVS C SDK, aiortc) check our fingerprint only after the
    handshake, and one that refuses it sends no alert: our side looks connected while the
    remote has given up. The first SRTP, SRTCP or SCTP packet the remote sends is keyed by that
    handshake and proves it accepted us; until then the session is not connected.

    The proof is seen through per-instance hooks on ``pc``'s DTLS and SCTP transports (no
    module-wide patch), removed after the first packet. Without those aiortc internals the
    connection state alone is trusted (logged once at debug level).

    Args:
        pc: the peer connection to watch.
        on_confirmed: called once, on the event loop, when the remote's first packet arrives;
            keep it quick (it runs inside aiortc's receive loop).
    """

    def __init__(
        self, pc: RTCPeerConnection, on_confirmed: Callable[[], object] | None = None
    ) -> None:
        self._pc = pc
        self.on_confirmed = on_confirmed
        """Called once, when the remote's first packet arrives (may be set after creation)."""
        self._hooks: list[Hook] = []
        self.confirmed = False
        """The remote sent DTLS-protected data (it completed DTLS with our certificate)."""

    @property
    def connected(self) -> bool:
        """aiortc's connection state is ``connected`` and the remote confirmed DTLS."""
        return self.confirmed and self._pc.connectionState == "connected"

    @property
    def state(self) -> str:
        """aiortc's connection state, except ``connecting`` while a ``connected`` one is not
        confirmed by the remote yet."""
        state = self._pc.connectionState
        return "connecting" if state == "connected" and not self.confirmed else state

    def attach(self) -> None:
        """Watch the transports ``pc`` has now. Call it once every transceiver and data
        channel exists (an answerer: after ``setRemoteDescription``) and before
        ``setLocalDescription``. Idempotent."""
        if self.confirmed:
            return
        try:
            self._hooks += hook_incoming_packets(self._pc, self._confirm)
        except AttributeError as exc:
            logger.debug("cannot watch the remote's DTLS (%s): trusting aiortc's state", exc)
            self._confirm()

    def _confirm(self) -> None:
        if self.confirmed:
            return
        self.confirmed = True
        remove_hooks(self._hooks)  # back to the class's methods: no cost per packet
        self._hooks.clear()
        if self.on_confirmed is not None:
            self.on_confirmed()
