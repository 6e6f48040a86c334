"""NACK and PLI/FIR counts of one peer connection, which aiortc does not keep.

:func:`count_rtcp` hooks the RTCP paths of a peer connection's senders (what the remote
asks of us) and receivers (what we ask of the remote). Only RTCP goes through the hooks (a
few packets per second), never media.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender

from ..aiortc_internals import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    on_feedback_sent,
    on_rtcp_received,
)

__all__ = ["RtcpCounts", "count_rtcp", "rtcp_counts"]

logger = logging.getLogger(__name__)

_ATTRIBUTE = "_kvs_peer_rtcp"


@dataclass
class RtcpCounts:
    """Feedback counted on one peer connection, both directions added up (a master only
    receives feedback, a viewer only sends it)."""

    nacks: int = 0
    """Packets asked for again: sequence numbers in NACKs received or sent."""
    plis: int = 0
    """Keyframe requests: PLIs and FIRs received, PLIs sent."""


def count_rtcp(pc: RTCPeerConnection) -> RtcpCounts:
    """Start counting NACKs and PLI/FIRs on ``pc``'s current transceivers. Idempotent.

    Call it once every transceiver exists (an answerer: after ``setRemoteDescription``).
    Without the aiortc methods it hooks (another aiortc version), nothing is counted and a
    debug line says so.
    """
    counts: RtcpCounts | None = getattr(pc, _ATTRIBUTE, None)
    if counts is None:
        counts = RtcpCounts()
        setattr(pc, _ATTRIBUTE, counts)
    for transceiver in pc.getTransceivers():
        _hook_sender(transceiver.sender, counts)
        _hook_receiver(transceiver.receiver, counts)
    return counts


def rtcp_counts(pc: RTCPeerConnection) -> RtcpCounts | None:
    """The counts :func:`count_rtcp` keeps for ``pc``, or None if it was never called."""
    return getattr(pc, _ATTRIBUTE, None)


# The hooks are per instance, on aiortc's private RTCP paths (kvs_peer.aiortc_internals).


def _hook_sender(sender: RTCRtpSender, counts: RtcpCounts) -> None:
    def counted(packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            counts.nacks += len(packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            counts.plis += 1

    if not on_rtcp_received(sender, counted):
        logger.debug("aiortc sender without _handle_rtcp_packet: NACK/PLI not counted")


def _hook_receiver(receiver: RTCRtpReceiver, counts: RtcpCounts) -> None:
    def nack(media_ssrc: int, lost: list[int]) -> None:
        counts.nacks += len(lost)

    def pli(media_ssrc: int) -> None:
        counts.plis += 1

    if not on_feedback_sent(receiver, nack, pli):
        logger.debug("aiortc receiver without _send_rtcp_nack/_pli: NACK/PLI not counted")
