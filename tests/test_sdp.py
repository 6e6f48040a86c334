"""The SDP rewrite that makes kvs-peer's offers and answers readable by the KVS C SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from kvs_peer.errors import InvalidArgument
from kvs_peer.sdp import TRICKLE_LINE, for_kvs_peers


@pytest.fixture
async def offer_pc() -> AsyncIterator[RTCPeerConnection]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("kvs-peer")
    await pc.setLocalDescription(await pc.createOffer())
    yield pc
    await pc.close()


def sections(sdp: str) -> list[list[str]]:
    """The session part, then one list per m= section."""
    out: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            out.append([])
        out[-1].append(line)
    return out


def fingerprints(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("a=fingerprint:")]


async def test_only_the_sha256_fingerprint_of_our_certificate_is_kept(
    offer_pc: RTCPeerConnection,
) -> None:
    original = offer_pc.localDescription.sdp
    assert {line.split()[0] for line in fingerprints(original.splitlines())} == {
        "a=fingerprint:sha-256",
        "a=fingerprint:sha-384",
        "a=fingerprint:sha-512",
    }  # what aiortc writes, and the C SDK misreads
    ours = offer_pc.getTransceivers()[0].receiver.transport.getLocalParameters().fingerprints
    expected = next(f.value for f in ours if f.algorithm == "sha-256")

    rewritten = for_kvs_peers(original)

    media = sections(rewritten)[1:]
    assert len(media) == 3
    for section in media:
        assert fingerprints(section) == [f"a=fingerprint:sha-256 {expected}"]
    # Nothing else changed: same lines minus the dropped fingerprints, plus the trickle line.
    dropped = [
        line
        for line in original.splitlines()
        if line.startswith(("a=fingerprint:sha-384", "a=fingerprint:sha-512"))
    ]
    assert len(dropped) == 6
    assert sorted(rewritten.splitlines()) == sorted(
        [line for line in original.splitlines() if line not in dropped] + [TRICKLE_LINE]
    )


async def test_trickle_is_advertised_once_at_session_level(offer_pc: RTCPeerConnection) -> None:
    rewritten = for_kvs_peers(offer_pc.localDescription.sdp)
    assert rewritten.count("a=ice-options") == 1
    session = sections(rewritten)[0]
    assert session[-1] == TRICKLE_LINE  # right before the first m= line
    assert rewritten.endswith("\r\n") and "\n" not in rewritten.replace("\r\n", "")

    no_trickle = for_kvs_peers(offer_pc.localDescription.sdp, trickle=False)
    assert "a=ice-options" not in no_trickle


async def test_rewrite_is_idempotent(offer_pc: RTCPeerConnection) -> None:
    once = for_kvs_peers(offer_pc.localDescription.sdp)
    assert for_kvs_peers(once) == once
    assert for_kvs_peers(once.replace("\r\n", "\n")) == once


def test_duplicate_sha256_lines_collapse_and_session_level_fingerprints_are_filtered() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "a=fingerprint:SHA-256 AA:BB\r\na=fingerprint:sha-1 CC:DD\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        "a=fingerprint:sha-256 AA:BB\r\na=fingerprint:sha-256 AA:BB\r\n"
        "a=fingerprint:sha-512 EE:FF\r\n"
    )
    out = for_kvs_peers(sdp)
    session, media = sections(out)
    assert fingerprints(session) == ["a=fingerprint:SHA-256 AA:BB"]
    assert fingerprints(media) == ["a=fingerprint:sha-256 AA:BB"]


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("", "not an SDP"),
        ("hello\r\nm=video 9 RTP/AVP 0\r\n", "not an SDP"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media section"),
        (
            "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-512 AA:BB\r\n",
            "no sha-256",
        ),
    ],
)
def test_bad_sdp_gets_a_clear_error(sdp: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        for_kvs_peers(sdp)
