"""Every use of aiortc's and aioice's private names, in one place.

kvs-peer needs a few things neither library offers publicly: gathering and trickling its own
server candidates, reading and writing candidate lines, a data channel open without the
remote's ACK, proof that the remote accepted our DTLS certificate, counts of RTCP feedback,
keyframes on PLI for packets it encodes itself, and a cheaper RTP send loop. Each function here
is one such need, and its docstring names the private modules, fields or methods it relies on
("private": not exported by the ``aiortc`` or ``aioice`` package itself). Hooks are per
instance (an attribute that shadows a method on one object); no aiortc or aioice class or module
is ever changed.

The rest of kvs-peer imports from ``aiortc`` and ``aioice`` only what those packages export,
and everything else from here: the functions below, and aiortc's unexported building blocks
(RTP and RTCP packets, the H.264 packetizer, the Opus encoder, ...), re-exported as they are.
``pyproject.toml`` pins aiortc and aioice to the minor versions named in
:data:`AIORTC_VERSION` and :data:`AIOICE_VERSION`, and ``tests/test_aiortc_internals.py``
drives every function here against real aiortc objects and fails on another version, so an
upgrade that renames a field fails there, not deep in a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import aiortc.rtcrtpsender
from aioice import Candidate, Connection
from aioice.ice import relayed_candidate, server_reflexive_candidate
from aiortc import (
    RTCDataChannel,
    RTCDtlsTransport,
    RTCIceCandidate,
    RTCIceServer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcicetransport import candidate_from_aioice, connection_kwargs
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp
from aiortc.utils import random16, random32, uint32_add

try:
    from aioice.ice import StunProtocol
except ImportError:  # an aioice without it: every packet takes aiortc's layers
    StunProtocol = None  # type: ignore[assignment,misc]

__all__ = [
    "AIOICE_VERSION",
    "AIORTC_VERSION",
    "RTCP_PSFB_FIR",
    "RTCP_PSFB_PLI",
    "RTCP_RTPFB_NACK",
    "RTP_HISTORY_SIZE",
    "H264Encoder",
    "HeaderExtensions",
    "HeaderExtensionsMap",
    "Hook",
    "JitterFrame",
    "OpusEncoder",
    "RtcpPsfbPacket",
    "RtcpRtpfbPacket",
    "RtpPacket",
    "SenderFields",
    "add_local_candidate",
    "add_relay_candidate",
    "allocate_relay",
    "candidate_from_line",
    "candidate_line",
    "depayloaded",
    "gather_loopback",
    "hook_incoming_packets",
    "host_protocols",
    "ice_connection",
    "ice_server_kwargs",
    "local_candidates",
    "local_protocols",
    "missing_send_loop_fields",
    "negotiated_codecs",
    "on_feedback_sent",
    "on_keyframe_request",
    "on_rtcp_received",
    "open_data_channel",
    "query_reflexive",
    "random16",
    "random32",
    "remove_hooks",
    "replace_decoder_queue",
    "replace_send_loop",
    "send_pli",
    "send_rtp",
    "takes_late_candidates",
    "to_rtc_candidate",
    "uint32_add",
    "use_jitter_buffer",
]

AIORTC_VERSION = "1.16"
"""The aiortc minor version these internals were checked against (``pyproject.toml`` pins it)."""
AIOICE_VERSION = "0.13"
"""The aioice minor version these internals were checked against (``pyproject.toml`` pins it)."""

# aiortc's building blocks that its package does not export (from aiortc.rtp, aiortc.codecs,
# aiortc.jitterbuffer and aiortc.utils) are imported above and re-exported as they are, so that
# every name kvs-peer takes from outside aiortc's exports comes through this module:
#   RtpPacket, HeaderExtensions, HeaderExtensionsMap: the RTP packets of media/rtpsender.py.
#   RtcpPsfbPacket, RtcpRtpfbPacket and the RTCP_* formats: the feedback counted by metrics.
#   H264Encoder: only its pack(), which packetizes an encoded av.Packet and keeps no state.
#   OpusEncoder: encodes one audio frame for every subscriber of media/fanout.py.
#   JitterFrame: what aiortc's receiver takes from a jitter buffer (media/jitter.py).
#   random16, random32, uint32_add: RTP sequence and timestamp arithmetic, as aiortc's sender.

Hook = tuple[object, str]
"""``(object, name)``: an instance attribute that shadows a method (see :func:`remove_hooks`)."""


def _wrap_async(obj: object, name: str, before: Callable[..., object]) -> bool:
    """Make ``obj.name(*args)`` call ``before(*args)`` first, on this instance only.

    Returns:
        ``False`` if ``obj`` is already wrapped under ``name``.
    """
    if name in vars(obj):
        return False
    original = getattr(obj, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return await original(*args, **kwargs)

    setattr(obj, name, wrapped)
    return True


def remove_hooks(hooks: Iterable[Hook]) -> None:
    """Put the class's methods back (no cost per packet any more). Idempotent."""
    for obj, name in hooks:
        if name in vars(obj):
            delattr(obj, name)


# -- ICE (aioice) ------------------------------------------------------------------------------


def ice_connection(ice_transport: RTCIceTransport) -> Connection:
    """The aioice connection behind an aiortc ICE transport.

    Relies on ``RTCIceGatherer._connection``; aiortc exposes the gatherer but not its
    connection, which holds the candidates and sockets.
    """
    return ice_transport.iceGatherer._connection


def gather_loopback(connection: Connection) -> None:
    """Also gather a 127.0.0.1 host candidate on ``connection``. Idempotent.

    aioice leaves loopback out of its host addresses. Relies on aioice calling
    ``Connection.get_component_candidates(component=, addresses=, timeout=)`` with the host
    addresses from ``gather_candidates``; the method is wrapped on this connection only.
    """
    if "get_component_candidates" in vars(connection):
        return
    original = connection.get_component_candidates

    async def with_loopback(component: int, addresses: list[str], timeout: int = 5) -> Any:
        if "127.0.0.1" not in addresses:
            addresses = [*addresses, "127.0.0.1"]
        return await original(component=component, addresses=addresses, timeout=timeout)

    connection.get_component_candidates = with_loopback  # type: ignore[method-assign]


_LATE_CANDIDATE_FIELDS = (
    "_protocols",
    "_local_candidates",
    "_remote_candidates",
    "_pair_remote_candidate",
)


def takes_late_candidates(connection: Connection) -> bool:
    """Whether :func:`add_relay_candidate` and :func:`add_local_candidate` work on ``connection``.

    aioice has no API to add a local candidate after gathering; these rely on the fields
    ``_protocols``, ``_local_candidates``, ``_remote_candidates`` and the method
    ``_pair_remote_candidate`` of ``aioice.Connection``.
    """
    return all(hasattr(connection, name) for name in _LATE_CANDIDATE_FIELDS)


def add_relay_candidate(connection: Connection, protocol: Any, candidate: Candidate) -> None:
    """Hand a TURN allocation gathered after ``setLocalDescription`` to ``connection``.

    Does what aioice does with a relay candidate it gathered itself (appends the protocol to
    ``_protocols`` and the candidate to ``_local_candidates``), then pairs it with the remote
    candidates known so far as aioice's ``connect()`` does (``_pair_remote_candidate``); the
    connectivity checks pick the new pairs up.
    """
    connection._protocols.append(protocol)
    connection._local_candidates.append(candidate)
    for remote in list(connection._remote_candidates):
        connection._pair_remote_candidate(remote)
    with contextlib.suppress(AttributeError):
        connection.sort_check_list()


def add_local_candidate(connection: Connection, candidate: Candidate) -> None:
    """Count a server-reflexive candidate found late as ``connection``'s own.

    Appends to ``Connection._local_candidates``; aioice pairs only host and relay candidates
    (a reflexive one shares its host's socket), so there is nothing to pair.
    """
    connection._local_candidates.append(candidate)


def local_candidates(connection: Connection) -> list[Candidate]:
    """``connection``'s local candidates so far, late ones included (``_local_candidates``)."""
    return list(getattr(connection, "_local_candidates", []))


def local_protocols(connection: Connection) -> list[Any]:
    """``connection``'s sockets, one ``StunProtocol`` per local candidate (``_protocols``)."""
    return list(getattr(connection, "_protocols", []))


def ice_server_kwargs(servers: list[RTCIceServer]) -> dict[str, Any]:
    """The STUN and TURN server aiortc would use from ``servers``, as aioice keyword arguments.

    ``aiortc.rtcicetransport.connection_kwargs``: the first STUN URL (``stun_server``) and the
    first usable TURN URL (``turn_server``, ``turn_username``, ``turn_password``, ``turn_ssl``,
    ``turn_transport``); keys are absent when there is no such server.
    """
    return connection_kwargs(servers)


async def allocate_relay(connection: Connection, turn: dict[str, Any]) -> tuple[Candidate, Any]:
    """Allocate a relay candidate for ``connection`` on the TURN server in ``turn``.

    ``turn`` is :func:`ice_server_kwargs`'s answer (with a ``turn_server``). Calls
    ``aioice.ice.relayed_candidate`` with a ``StunProtocol`` of ``connection``, as aioice's own
    gathering does; hand both to :func:`add_relay_candidate`, or ``await protocol.close()``.

    Returns:
        The relay candidate (component 1) and its protocol (the TURN allocation).

    Raises:
        Exception: whatever aioice raises when the server is unreachable or refuses.
    """
    if StunProtocol is None:
        raise RuntimeError("this aioice has no StunProtocol: no relay candidate")
    return await relayed_candidate(
        component=1,
        hide_related_address=False,
        protocol_factory=lambda: StunProtocol(connection),
        turn_server=turn["turn_server"],
        turn_username=turn.get("turn_username"),
        turn_password=turn.get("turn_password"),
        turn_ssl=turn.get("turn_ssl", False),
        turn_transport=turn.get("turn_transport", "udp"),
    )


async def query_reflexive(protocol: Any, stun_server: tuple[str, int]) -> Candidate:
    """Ask ``stun_server`` for the server-reflexive candidate of one host socket.

    ``protocol`` is one of :func:`local_protocols`; calls
    ``aioice.ice.server_reflexive_candidate``. Add the answer with :func:`add_local_candidate`.

    Raises:
        Exception: whatever aioice raises when the server does not answer.
    """
    candidate, _ = await server_reflexive_candidate(protocol, stun_server)
    return candidate


def host_protocols(connection: Connection) -> list[tuple[Any, Candidate]]:
    """``connection``'s host sockets and their candidates (``StunProtocol.local_candidate``)."""
    found = []
    for protocol in local_protocols(connection):
        candidate = getattr(protocol, "local_candidate", None)
        if candidate is not None and candidate.type == "host":
            found.append((protocol, candidate))
    return found


def to_rtc_candidate(candidate: Candidate) -> RTCIceCandidate:
    """aioice's candidate as aiortc's (``aiortc.rtcicetransport.candidate_from_aioice``)."""
    return candidate_from_aioice(candidate)


def candidate_from_line(line: str) -> RTCIceCandidate:
    """Parse a candidate line without ``a=`` and ``candidate:`` (``aiortc.sdp``).

    Raises:
        AssertionError, ValueError, IndexError: the line is not a candidate aiortc can read
            (aiortc's parser raises any of them).
    """
    return candidate_from_sdp(line)


def candidate_line(candidate: RTCIceCandidate) -> str:
    """The SDP form of ``candidate``, without ``a=`` and ``candidate:`` (``aiortc.sdp``)."""
    return candidate_to_sdp(candidate)


# -- DTLS and SCTP -----------------------------------------------------------------------------


def hook_incoming_packets(pc: RTCPeerConnection, on_packet: Callable[[], object]) -> list[Hook]:
    """Call ``on_packet()`` before aiortc handles each SRTP, SRTCP or SCTP packet on ``pc``.

    Wraps, per instance, ``RTCDtlsTransport._handle_rtp_data`` and ``_handle_rtcp_data`` of
    every transport ``pc`` has now, and ``RTCSctpTransport._handle_data``: the only places
    where data keyed by the DTLS handshake comes in. Transports already hooked are skipped.

    Returns:
        The hooks installed now, for :func:`remove_hooks`.

    Raises:
        AttributeError: this aiortc lacks one of those methods (named); nothing is hooked.
    """
    transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
    targets: list[Hook] = []
    sctp = pc.sctp
    if sctp is not None:
        transports[id(sctp.transport)] = sctp.transport
        targets.append((sctp, "_handle_data"))
    for dtls in transports.values():
        targets += [(dtls, "_handle_rtp_data"), (dtls, "_handle_rtcp_data")]
    for obj, name in targets:
        if not callable(getattr(obj, name)):
            raise AttributeError(name)
    return [
        (obj, name)
        for obj, name in targets
        if _wrap_async(obj, name, lambda *args, **kwargs: on_packet())
    ]


_DTLS = "_RTCDtlsTransport__"
_DTLS_FIELDS = ("tx_bytes", "tx_packets")
_TX_BYTES = _DTLS + "tx_bytes"
_TX_PACKETS = _DTLS + "tx_packets"


def _direct_sendto(dtls: RTCDtlsTransport) -> Callable[[bytes], None] | None:
    # Relies on RTCIceTransport._connection, Connection._nominated ({component: pair}) and the
    # pair's StunProtocol, whose transport is the UDP socket aioice's Connection.send ends in.
    connection = getattr(dtls.transport, "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    pair = nominated.get(1) if isinstance(nominated, dict) else None
    if pair is None or StunProtocol is None or type(pair.protocol) is not StunProtocol:
        return None
    transport = pair.protocol.transport
    if transport is None:
        return None
    address = pair.remote_addr
    return lambda data: transport.sendto(data, address)


async def send_rtp(dtls: RTCDtlsTransport, datagrams: list[bytes]) -> None:
    """Protect and send RTP datagrams, counted in the transport's stats.

    What ``RTCDtlsTransport._send_rtp`` does for each, in one call: protect with
    ``_tx_srtp``, send through the ICE transport (straight to the nominated pair's UDP socket
    when there is one, else ``RTCIceTransport._send``), and add to the ``__tx_bytes`` and
    ``__tx_packets`` counters behind ``getStats``.

    Raises:
        ConnectionError: the transport is not connected (as aiortc raises).
    """
    if dtls.state != "connected":
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    protect = dtls._tx_srtp.protect
    sendto = _direct_sendto(dtls)
    sent = 0
    for data in datagrams:
        data = protect(data)
        if sendto is not None:
            sendto(data)
        else:
            await dtls.transport._send(data)
        sent += len(data)
    setattr(dtls, _TX_BYTES, getattr(dtls, _TX_BYTES) + sent)
    setattr(dtls, _TX_PACKETS, getattr(dtls, _TX_PACKETS) + len(datagrams))


# -- data channels -----------------------------------------------------------------------------


def open_data_channel(channel: RTCDataChannel) -> None:
    """Mark ``channel`` open now, without waiting for the remote's DATA_CHANNEL_ACK.

    aiortc has no public way to do it; ``RTCDataChannel._setReadyState("open")`` sets the state
    and emits ``open``, as when the ACK arrives. Touches this channel only.
    """
    channel._setReadyState("open")


# -- RTP senders and receivers -----------------------------------------------------------------


def on_rtcp_received(sender: RTCRtpSender, callback: Callable[[AnyRtcpPacket], object]) -> bool:
    """Call ``callback(packet)`` for each RTCP packet ``sender`` receives, before aiortc.

    aiortc hands each one to ``RTCRtpSender._handle_rtcp_packet``, wrapped on this sender.

    Returns:
        ``False`` if this aiortc has no such method (nothing is hooked); ``True`` once hooked
        (a sender already hooked keeps its first callback).
    """
    if not callable(getattr(sender, "_handle_rtcp_packet", None)):
        return False
    _wrap_async(sender, "_handle_rtcp_packet", callback)
    return True


def on_feedback_sent(
    receiver: RTCRtpReceiver,
    on_nack: Callable[[int, list[int]], object],
    on_pli: Callable[[int], object],
) -> bool:
    """Call ``on_nack(ssrc, lost)`` and ``on_pli(ssrc)`` before ``receiver`` sends each.

    aiortc sends them through ``RTCRtpReceiver._send_rtcp_nack`` and ``_send_rtcp_pli``,
    wrapped on this receiver.

    Returns:
        ``False`` if this aiortc lacks either method (nothing is hooked); ``True`` once hooked
        (a receiver already hooked keeps its first callbacks).
    """
    if "_send_rtcp_nack" in vars(receiver):
        return True
    names = ("_send_rtcp_nack", "_send_rtcp_pli")
    if not all(callable(getattr(receiver, name, None)) for name in names):
        return False
    _wrap_async(receiver, "_send_rtcp_nack", on_nack)
    _wrap_async(receiver, "_send_rtcp_pli", on_pli)
    return True


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], object]) -> bool:
    """Call ``callback()`` each time the remote asks ``sender`` for a keyframe (PLI or FIR).

    aiortc answers PLI/FIR in ``_handle_rtcp_packet`` by calling ``RTCRtpSender._send_keyframe``,
    which only sets a flag read by its own encoder. It is wrapped on this sender, and the
    original still runs so aiortc's state is as it expects.

    Returns:
        ``False`` if this aiortc has no ``_send_keyframe`` (nothing is hooked).
    """
    original = getattr(sender, "_send_keyframe", None)
    if not callable(original):
        return False

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]
    return True


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters] | None:
    """The transceiver's negotiated codec list itself (to change in place), or None.

    ``RTCRtpTransceiver._codecs`` is filled by ``setRemoteDescription``; the answer and the
    sender both read it, so a change there touches this transceiver only.
    """
    codecs: list[RTCRtpCodecParameters] | None = getattr(transceiver, "_codecs", None)
    return codecs


# -- the RTP send loop (kvs_peer.media.rtpsender) ----------------------------------------------

RTP_HISTORY_SIZE: int | None = getattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", None)
"""aiortc's ``_retransmit`` looks a NACKed packet up in slot ``sequence_number % RTP_HISTORY_SIZE``
of the sender's history; a history written by another loop must use the same size."""

_SENDER = "_RTCRtpSender__"
_SENDER_FIELDS = (
    "track",
    "encoder",
    "mid",
    "rtp_started",
    "rtp_exited",
    "rtp_history",
    "rtp_header_extensions_map",
    "ntp_timestamp",
    "rtp_timestamp",
    "octet_count",
    "packet_count",
)
# The fields touched for every frame, spelled out once rather than concatenated per frame.
_TRACK = _SENDER + "track"
_NTP_TIMESTAMP = _SENDER + "ntp_timestamp"
_RTP_TIMESTAMP = _SENDER + "rtp_timestamp"
_OCTET_COUNT = _SENDER + "octet_count"
_PACKET_COUNT = _SENDER + "packet_count"


def missing_send_loop_fields(sender: RTCRtpSender) -> list[str]:
    """The private names :class:`SenderFields`, :func:`send_rtp` and
    :func:`replace_send_loop` rely on that this aiortc lacks (none with the pinned version)."""
    missing = [name for name in _SENDER_FIELDS if not hasattr(sender, _SENDER + name)]
    missing += [name for name in ("_enabled", "_ssrc") if not hasattr(sender, name)]
    for method in ("_next_encoded_frame", "_run_rtp"):
        if not callable(getattr(sender, method, None)):
            missing.append(method)
    if RTP_HISTORY_SIZE is None:
        missing.append("RTP_HISTORY_SIZE")
    dtls = sender.transport
    missing += [name for name in _DTLS_FIELDS if not hasattr(dtls, _DTLS + name)]
    missing += [name for name in ("state", "_tx_srtp", "transport") if not hasattr(dtls, name)]
    return missing


def replace_send_loop(
    sender: RTCRtpSender,
    loop: Callable[[RTCRtpCodecParameters], Coroutine[Any, Any, None]],
) -> None:
    """Make ``sender`` run ``loop(codec)`` instead of its own RTP send loop.

    aiortc's ``RTCRtpSender.send()`` starts the loop with ``self._run_rtp(codec)``; an
    instance attribute shadows that method for this sender only. Call it before negotiation
    starts the sender. ``loop`` must do what ``_run_rtp`` does with :class:`SenderFields`.
    """
    sender._run_rtp = loop  # type: ignore[method-assign,assignment]


class SenderFields:
    """The private state of one ``RTCRtpSender`` that its RTP send loop reads and writes.

    A replacement loop (:func:`replace_send_loop`) must keep these as aiortc's own
    ``_run_rtp`` does: ``stop()`` waits for the started and exited events, NACKs are answered
    from the history, and sender reports and ``getStats`` read the counters. Check
    :func:`missing_send_loop_fields` first.

    Args:
        sender: the sender whose fields these are.
    """

    __slots__ = ("_sender",)

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender

    @property
    def track(self) -> Any:
        """The sender's current track (``__track``; ``replaceTrack`` changes it), or None."""
        return getattr(self._sender, _TRACK)

    @property
    def enabled(self) -> bool:
        """``_enabled``: False while the sender must drop what its track gives."""
        return bool(self._sender._enabled)

    @property
    def ssrc(self) -> int:
        """``_ssrc``: the media SSRC."""
        return self._sender._ssrc

    @property
    def mid(self) -> str | None:
        """``__mid``: the negotiated MID, sent in a header extension."""
        mid: str | None = getattr(self._sender, _SENDER + "mid")
        return mid

    @property
    def extensions_map(self) -> HeaderExtensionsMap:
        """``__rtp_header_extensions_map``: the negotiated header extension ids."""
        extensions: HeaderExtensionsMap = getattr(
            self._sender, _SENDER + "rtp_header_extensions_map"
        )
        return extensions

    def loop_started(self) -> None:
        """Set ``__rtp_started``, first thing in the loop (``stop()`` waits for it)."""
        getattr(self._sender, _SENDER + "rtp_started").set()

    def use_history(self, history: dict[int, Any]) -> None:
        """Answer NACKs from ``history`` (``__rtp_history``, read by ``_retransmit``)."""
        setattr(self._sender, _SENDER + "rtp_history", history)

    async def next_encoded_frame(self, codec: RTCRtpCodecParameters) -> Any:
        """aiortc's own ``_next_encoded_frame``: the next frame of the track, encoded by aiortc,
        or None (dropped while disabled)."""
        return await self._sender._next_encoded_frame(codec)

    def count_sent(self, ntp_timestamp: int, rtp_timestamp: int, octets: int, packets: int) -> None:
        """Record one frame sent, for sender reports and ``getStats`` (``__ntp_timestamp``,
        ``__rtp_timestamp``, ``__octet_count``, ``__packet_count``)."""
        sender = self._sender
        setattr(sender, _NTP_TIMESTAMP, ntp_timestamp)
        setattr(sender, _RTP_TIMESTAMP, rtp_timestamp)
        setattr(sender, _OCTET_COUNT, getattr(sender, _OCTET_COUNT) + octets)
        setattr(sender, _PACKET_COUNT, getattr(sender, _PACKET_COUNT) + packets)

    def loop_exited(self) -> None:
        """End the loop as aiortc's does: stop and drop the track, drop the encoder, and set
        ``__rtp_exited`` (``stop()`` hangs without it)."""
        sender = self._sender
        track = getattr(sender, _TRACK)
        if track is not None:
            track.stop()
            setattr(sender, _TRACK, None)
        setattr(sender, _SENDER + "encoder", None)
        event: asyncio.Event = getattr(sender, _SENDER + "rtp_exited")
        event.set()


def use_jitter_buffer(receiver: RTCRtpReceiver, buffer: object) -> bool:
    """Make one receiver reassemble frames with ``buffer`` (``__jitter_buffer``).

    ``_handle_rtp_packet`` only calls ``add(packet)`` on it. Must happen before the first
    packet arrives (right after ``addTransceiver``). False when the field is not there (the
    receiver keeps aiortc's own buffer).
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        return False
    setattr(receiver, name, buffer)
    return True


# -- received frames before decoding (kvs_peer.media.encoded) ----------------------------------


def replace_decoder_queue(receiver: RTCRtpReceiver, replacement: queue.Queue[Any]) -> bool:
    """Make one receiver put its encoded frames on ``replacement`` (``__decoder_queue``).

    ``_handle_rtp_packet`` puts ``(codec, JitterFrame)`` there for each frame the jitter
    buffer completes (``JitterFrame.data``: an Annex-B access unit for H.264;
    ``.timestamp``: the RTP timestamp counted from the first frame), and None to stop;
    ``receive()`` hands the queue to the decoder thread it starts. Must happen before
    ``receive()`` (right after ``addTransceiver``). False when the field is not there or the
    receiver already started (``__started``): it keeps decoding everything.
    """
    name = "_RTCRtpReceiver__decoder_queue"
    current = getattr(receiver, name, None)
    if not isinstance(current, queue.Queue) or getattr(receiver, "_RTCRtpReceiver__started", True):
        return False
    setattr(receiver, name, replacement)
    return True


async def send_pli(receiver: RTCRtpReceiver) -> None:
    """Ask the sender(s) of ``receiver``'s media for a keyframe (PLI).

    aiortc sends PLI only when its own decoder fails or its jitter buffer overflows. Relies on
    ``_send_rtcp_pli(media_ssrc)`` and ``__rtx_ssrc`` (RTX SSRC -> media SSRC): the media
    SSRCs are the active sources that are not RTX ones.
    """
    rtx = set(getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {}))
    for source in receiver.getSynchronizationSources():
        if source.source not in rtx:
            await receiver._send_rtcp_pli(source.source)


def depayloaded(packet: Any) -> bytes:
    """The codec bytes aiortc's receiver put on an ``RtpPacket`` before its jitter buffer
    (``_data``: the depayloaded payload, ``b""`` for padding)."""
    data: bytes = packet._data
    return data
