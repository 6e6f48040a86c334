"""aiortc glue: candidate conversions, ICE configuration, loopback candidates."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from kvs_peer.channel import IceServer
from kvs_peer.peerconnection import (
    candidate_from_json,
    candidate_to_json,
    enable_loopback_candidates,
    rtc_configuration,
)

BROWSER_MDNS = (
    "candidate:0 2 UDP 2122252542 829d0025-f4fb-bb4c-8b33-39578c427ced.local 53963 typ host"
)


def test_browser_candidate_with_prefix() -> None:
    c = candidate_from_json(
        "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.5 "
        "rport 46154 generation 0 ufrag sEMT network-cost 999",
        "0",
        0,
    )
    assert c is not None
    assert (c.foundation, c.component, c.ip, c.port, c.type) == (
        "842163049",
        1,
        "203.0.113.7",
        46154,
        "srflx",
    )
    assert c.relatedAddress == "10.0.0.5" and c.relatedPort == 46154
    assert c.sdpMid == "0" and c.sdpMLineIndex == 0


def test_mdns_candidate_is_kept_for_aioice_to_resolve() -> None:
    c = candidate_from_json(BROWSER_MDNS, "0", 0)
    assert c is not None and c.ip.endswith(".local") and c.component == 2


@pytest.mark.parametrize("line", ["", "   ", "candidate:", "a=candidate:"])
def test_end_of_candidates(line: str) -> None:
    assert candidate_from_json(line, "0", 0) is None


@pytest.mark.parametrize(
    "line", ["candidate:1 1 udp", "garbage", "candidate:x y udp 1 1.2.3.4 port typ host"]
)
def test_unparsable_candidates_are_dropped_not_raised(line: str) -> None:
    assert candidate_from_json(line, "0", 0) is None


def test_missing_mid_and_index_defaults_to_first_mline() -> None:
    c = candidate_from_json("candidate:1 1 udp 1 1.2.3.4 9 typ host", None, None)
    assert c is not None and c.sdpMLineIndex == 0


def test_round_trip_to_browser_form() -> None:
    line = "candidate:1 1 udp 2130706431 192.0.2.2 5000 typ host"
    c = candidate_from_json(line, "0", 0)
    assert c is not None
    assert candidate_to_json(c) == line


KVS_TURN = IceServer(
    (
        "turn:1-2-3-4.t-1.kinesisvideo.us-west-2.amazonaws.com:443?transport=udp",
        "turns:1-2-3-4.t-1.kinesisvideo.us-west-2.amazonaws.com:443?transport=udp",
        "turns:1-2-3-4.t-1.kinesisvideo.us-west-2.amazonaws.com:443?transport=tcp",
    ),
    "1700000000:djE6YXJu",
    "secret",
)


def test_rtc_configuration_keeps_what_aiortc_can_use() -> None:
    stun = IceServer(("stun:stun.kinesisvideo.us-west-2.amazonaws.com:443",))
    config = rtc_configuration([stun, KVS_TURN])
    urls = [server.urls for server in config.iceServers]
    assert urls[0] == ["stun:stun.kinesisvideo.us-west-2.amazonaws.com:443"]
    # TURN over DTLS (turns:...udp) is dropped; KVS order kept: TURN/UDP first
    assert urls[1] == [KVS_TURN.urls[0], KVS_TURN.urls[2]]
    assert config.iceServers[1].username == "1700000000:djE6YXJu"


def test_empty_list_never_means_google_stun() -> None:
    assert rtc_configuration([]).iceServers == []


def test_relay_policy() -> None:
    config = rtc_configuration([KVS_TURN], transport_policy="relay")
    assert str(config.iceTransportPolicy.value) == "relay"


async def test_loopback_candidates_are_gathered_on_request() -> None:
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    looped = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for pc in (plain, looped):
            pc.addTransceiver("video", direction="recvonly")
            pc.createDataChannel("x")
        enable_loopback_candidates(looped)
        enable_loopback_candidates(looped)  # idempotent
        for pc in (plain, looped):
            await pc.setLocalDescription(await pc.createOffer())
        assert " 127.0.0.1 " not in plain.localDescription.sdp
        # every m-section lists the (bundled) transport's candidates
        assert looped.localDescription.sdp.count(" 127.0.0.1 ") == 2
    finally:
        await plain.close()
        await looped.close()


def test_split_mdns_candidates_moves_only_local_hosts() -> None:
    from kvs_peer.peerconnection import split_mdns_candidates

    sdp = (
        "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:1 1 udp 2122260223 abcd-1234.local 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 192.0.2.9 50001 typ host\r\n"
        "a=mid:0\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:data\r\n"
        "a=candidate:3 1 udp 2122260223 EFGH.LOCAL 50002 typ host\r\n"
    )
    kept, moved = split_mdns_candidates(sdp)
    assert ".local" not in kept.lower()
    assert "192.0.2.9 50001" in kept and kept.endswith("\r\n")
    assert [(c.candidate.split()[4], c.sdp_mid, c.sdp_mline_index) for c in moved] == [
        ("abcd-1234.local", "0", 0),
        ("EFGH.LOCAL", "data", 1),
    ]
    assert all(c.candidate.startswith("candidate:") for c in moved)
    assert split_mdns_candidates("v=0\r\nm=audio 9 x 0\r\n") == ("v=0\r\nm=audio 9 x 0\r\n", [])
