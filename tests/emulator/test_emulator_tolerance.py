"""What peers other than kvs-peer send, and the emulator and kvs-peer's signaling accept.

- The KVS C SDK (libwebsockets) asks for the WebSocket subprotocol ``wss``.
- go2rtc, as a viewer, sends its own client id as ``recipientClientId``.
- The KVS storage session sends candidates before its offer, neither with ``senderClientId``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from support import MS
from websockets.asyncio.client import ClientConnection, connect

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.protocol import (
    IceCandidate,
    MessageType,
    Role,
    SdpOffer,
    candidate_payload,
    encode_event,
    encode_message,
    encode_payload,
    sdp_payload,
)
from kvs_peer.signaling import Connected, SignalingClient

CHANNEL = "tolerance"
WAIT = 2000 * MS


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel(CHANNEL)
    return CHANNEL


async def presigned(resolver: ChannelResolver, role: Role, client_id: str | None = None) -> str:
    resolved = await resolver.resolve(CHANNEL, role, client_id=client_id)
    return await resolver.presign(resolved, client_id=client_id)


async def recv_json(ws: ClientConnection) -> dict[str, object]:
    async with asyncio.timeout(WAIT):
        return dict(json.loads(await ws.recv()))


@pytest.mark.parametrize("role", [Role.MASTER, Role.VIEWER])
async def test_the_c_sdk_subprotocol_is_answered_without_warnings(
    resolver: ChannelResolver, channel: str, role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client_id = "c-sdk-viewer" if role is Role.VIEWER else None
    url = await presigned(resolver, role, client_id)
    async with connect(url, subprotocols=["wss"]) as ws:  # what libwebsockets sends
        assert ws.subprotocol == "wss"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "wss"
    async with connect(url) as ws:  # JS SDK, kvs-peer: no subprotocol asked, none answered
        assert ws.subprotocol is None
        assert ws.response is not None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_a_viewer_naming_itself_as_recipient_reaches_the_master(
    resolver: ChannelResolver, channel: str
) -> None:
    async with (
        connect(await presigned(resolver, Role.MASTER)) as master,
        connect(await presigned(resolver, Role.VIEWER, "go2rtc-7")) as viewer,
    ):
        offer = sdp_payload("offer", "v=0 go2rtc")
        await viewer.send(encode_message("SDP_OFFER", offer, recipient_client_id="go2rtc-7"))
        frame = await recv_json(master)
        assert frame == {
            "messageType": "SDP_OFFER",
            "messagePayload": encode_payload(offer),
            "senderClientId": "go2rtc-7",
        }
        # The master's answer goes back to that viewer, without a sender.
        answer = sdp_payload("answer", "v=0 answer")
        await master.send(encode_message("SDP_ANSWER", answer, recipient_client_id="go2rtc-7"))
        assert await recv_json(viewer) == {
            "messageType": "SDP_ANSWER",
            "messagePayload": encode_payload(answer),
        }


async def test_storage_session_candidates_before_its_offer_are_held_for_the_offer(
    kvs: LocalKvs, resolver: ChannelResolver, channel: str
) -> None:
    events: list[object] = []
    connected = asyncio.Event()
    client = SignalingClient(AwsAccess(resolver, CHANNEL, Role.MASTER), role=Role.MASTER)
    client.on_event(lambda e: connected.set() if isinstance(e, Connected) else events.append(e))
    async with client:
        await asyncio.wait_for(connected.wait(), WAIT)
        line = "candidate:1 1 udp 2130706431 192.0.2.7 40000 typ host"
        # The storage session's frames carry no senderClientId, and its candidates come first.
        candidate = encode_event(
            MessageType.ICE_CANDIDATE,
            message_payload=encode_payload(candidate_payload(line, "0", 0)),
        )
        offer = encode_event(
            MessageType.SDP_OFFER,
            message_payload=encode_payload(sdp_payload("offer", "v=0 storage")),
        )
        assert await kvs.send_raw(CHANNEL, candidate, master=True) == 1
        await asyncio.sleep(100 * MS)
        assert events == []  # held: nothing to apply it to yet
        assert await kvs.send_raw(CHANNEL, offer, master=True) == 1
        async with asyncio.timeout(WAIT):
            while len(events) < 2:
                await asyncio.sleep(0.01)
    assert events == [
        SdpOffer("v=0 storage", sender_client_id=None),
        IceCandidate(line, "0", 0, sender_client_id=None),
    ]
