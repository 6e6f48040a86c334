"""SignalingClient against the local emulator over real sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import (
    HandshakeRejected,
    InvalidArgument,
    ServiceError,
    SignalingClosed,
)
from kvs_peer.protocol import IceCandidate, Role, SdpAnswer, SdpOffer, StatusResponse
from kvs_peer.signaling import Connected, Disconnected, SignalingClient
from kvs_peer.signing import master_url

FAST = {"backoff_base": 0.02, "backoff_cap": 0.1}


class CountingAccess(AwsAccess):
    """Real AwsAccess that counts how many URLs it signed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.urls: list[str] = []

    async def __call__(self) -> str:
        url = await super().__call__()
        self.urls.append(url)
        return url


async def next_of(
    client: SignalingClient,
    kind: type | tuple[type, ...],
    timeout: float = 5.0,
    where: Callable[[Any], bool] = lambda _: True,
) -> Any:
    """The next event of ``kind`` (matching ``where``) from ``client``, skipping others."""

    async def find() -> Any:
        async for event in client:
            if isinstance(event, kind) and where(event):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), timeout)


@pytest.fixture
async def channel(kvs: LocalKvs) -> str:
    kvs.create_channel("sig")
    return "sig"


@pytest.fixture
def client_factory(resolver: ChannelResolver, channel: str) -> Callable[..., SignalingClient]:
    def make(role: Role, client_id: str | None = None, **kwargs: Any) -> SignalingClient:
        access = CountingAccess(resolver, channel, role, client_id=client_id)
        return SignalingClient(access, role=role, client_id=client_id, **{**FAST, **kwargs})

    return make


@pytest.fixture
async def master(client_factory: Callable[..., SignalingClient]) -> AsyncIterator[SignalingClient]:
    async with client_factory(Role.MASTER) as client:
        yield client


async def test_master_and_two_viewers_exchange_offer_answer_candidates(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    async with client_factory(Role.VIEWER, "v1") as v1, client_factory(Role.VIEWER, "v2") as v2:
        await v1.send_offer("v=0 offer-1")
        await v2.send_offer("v=0 offer-2")
        await v1.send_ice_candidate(
            "candidate:1 1 udp 1 10.0.0.1 9 typ host", sdp_mid="0", sdp_mline_index=0
        )
        offers = {}
        for _ in range(2):
            offer = await next_of(master, SdpOffer)
            offers[offer.sender_client_id] = offer.sdp
        assert offers == {"v1": "v=0 offer-1", "v2": "v=0 offer-2"}
        candidate = await next_of(master, IceCandidate)
        assert candidate.sender_client_id == "v1"
        assert candidate.sdp_mid == "0"

        await master.send_answer("v=0 answer-2", recipient_client_id="v2")
        await master.send_ice_candidate(
            "candidate:2 1 udp 1 10.0.0.2 9 typ host",
            sdp_mid="0",
            sdp_mline_index=0,
            recipient_client_id="v2",
        )
        answer = await next_of(v2, SdpAnswer)
        assert answer.sdp == "v=0 answer-2"
        assert answer.sender_client_id is None  # from the master
        assert (await next_of(v2, IceCandidate)).candidate.startswith("candidate:2")


async def test_candidates_before_answer_are_held(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    async with client_factory(Role.VIEWER, "early") as viewer:
        await viewer.send_offer("v=0")
        await next_of(master, SdpOffer)
        await master.send_ice_candidate(
            "candidate:9 1 udp 1 1.2.3.4 9 typ host",
            sdp_mid="0",
            sdp_mline_index=0,
            recipient_client_id="early",
        )
        await master.send_answer("v=0 answer", recipient_client_id="early")
        first = await next_of(viewer, (SdpAnswer, IceCandidate))
        second = await next_of(viewer, (SdpAnswer, IceCandidate))
        assert isinstance(first, SdpAnswer)  # the candidate was held until its SDP
        assert isinstance(second, IceCandidate)


async def test_role_rules_are_enforced_locally(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    with pytest.raises(InvalidArgument, match="recipient_client_id"):
        await master.send_answer("v=0")
    async with client_factory(Role.VIEWER, "v") as viewer:
        with pytest.raises(InvalidArgument):
            await viewer.send_offer("v=0", recipient_client_id="other")
    with pytest.raises(InvalidArgument):
        client_factory(Role.VIEWER)  # no client id
    with pytest.raises(InvalidArgument):
        await master.send_answer("x" * 20_000, recipient_client_id="v")


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(max_viewers=2)])
async def test_viewer_cap_refused_with_400(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    async with client_factory(Role.VIEWER, "a"), client_factory(Role.VIEWER, "b"):
        third = client_factory(Role.VIEWER, "c", first_connect_attempts=2)
        with pytest.raises(HandshakeRejected) as info:
            await third.connect()
        assert info.value.status == 400
        assert "viewers" in str(info.value)


async def test_newest_master_takes_over(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    async with client_factory(Role.MASTER) as newer, client_factory(Role.VIEWER, "v") as viewer:
        await viewer.send_offer("v=0 to-newest")
        offer = await next_of(newer, SdpOffer)
        assert offer.sdp == "v=0 to-newest"
        with pytest.raises(TimeoutError):
            await next_of(master, SdpOffer, timeout=300 * MS)


async def test_go_away_reconnects_with_a_fresh_url(
    kvs: LocalKvs,
    channel: str,
    master: SignalingClient,
    client_factory: Callable[..., SignalingClient],
) -> None:
    async with client_factory(Role.VIEWER, "g") as viewer:
        access = viewer._provider
        assert len(access.urls) == 1
        assert await kvs.send_go_away(channel, client_id="g") == 1
        await next_of(viewer, Connected, where=lambda e: e.reconnect)
        assert len(access.urls) == 2  # signed again (same second may give the same URL)
        assert viewer.stats.go_aways == 1 and viewer.stats.reconnects == 1
        await viewer.send_offer("v=0 after go-away")
        assert (await next_of(master, SdpOffer)).sdp == "v=0 after go-away"


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(max_connection_duration=0.5, go_away_grace=None)]
)
async def test_reconnects_after_service_closes_connection(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    disconnected = await next_of(master, Disconnected)
    assert disconnected.code == 1001 and disconnected.will_reconnect
    await next_of(master, Connected, where=lambda e: e.reconnect)
    async with client_factory(Role.VIEWER, "late") as viewer:
        await viewer.send_offer("v=0 still works")
        assert (await next_of(master, SdpOffer)).sdp == "v=0 still works"


async def test_proactive_rotation_before_the_cap(
    client_factory: Callable[..., SignalingClient],
) -> None:
    async with client_factory(Role.MASTER, max_connection_duration=0.4, rotate_margin=0.2) as m:
        event = await next_of(
            m, (Connected, Disconnected), timeout=3000 * MS, where=lambda e: e.reconnect
        )
        assert isinstance(event, Connected)  # make before break: no Disconnected first
        assert m.stats.reconnects >= 1


async def test_expired_url_refused_with_403(
    kvs: LocalKvs, resolver: ChannelResolver, channel: str
) -> None:
    resolved = await resolver.resolve(channel, Role.MASTER)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)

    async def stale() -> str:
        return master_url(
            resolved.wss_endpoint,
            channel_arn=resolved.arn,
            region=kvs.region,
            credentials=kvs.credentials,
            now=old,
        )

    with pytest.raises(HandshakeRejected) as info:
        await SignalingClient(stale, role=Role.MASTER).connect()
    assert info.value.status == 403
    assert "expired" in info.value.body.lower()


async def test_tampered_signature_refused_with_403(resolver: ChannelResolver, channel: str) -> None:
    access = AwsAccess(resolver, channel, Role.MASTER)

    async def tampered() -> str:
        url = await access()
        head, sig = url.split("X-Amz-Signature=")
        return head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]

    with pytest.raises(HandshakeRejected) as info:
        await SignalingClient(tampered, role=Role.MASTER).connect()
    assert info.value.status == 403


async def test_deleted_channel_gives_404(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    kvs.create_channel("gone")
    access = AwsAccess(resolver, "gone", Role.MASTER)
    url = await access()
    kvs.fail_next_connects("gone", 404, count=3)

    async def same() -> str:
        return url

    client = SignalingClient(same, role=Role.MASTER, **FAST)
    with pytest.raises(HandshakeRejected) as info:
        await client.connect()
    assert info.value.status == 404
    assert "channel" in str(info.value)
    assert client.stats.failed_attempts == 3  # one 404 is retried after re-describing


async def test_transient_refusals_are_retried(
    kvs: LocalKvs, channel: str, client_factory: Callable[..., SignalingClient]
) -> None:
    kvs.fail_next_connects(channel, 400, count=2)
    async with client_factory(Role.MASTER, first_connect_attempts=3) as m:
        assert m.connected and m.stats.failed_attempts == 2


async def test_hostile_frames_are_ignored(
    kvs: LocalKvs,
    channel: str,
    master: SignalingClient,
    client_factory: Callable[..., SignalingClient],
) -> None:
    async with client_factory(Role.VIEWER, "h") as viewer:
        junk = [
            "",
            " ",
            "not json",
            "[]",
            '{"message": "Endpoint request timed out", "connectionId": "x", "requestId": "y"}',
            '{"messageType": "SDP_ANSWER", "messagePayload": "%%%"}',
            '{"messageType": "SDP_ANSWER", "messagePayload": "WzEsMl0="}',
            '{"messageType": "NOPE"}',
            "[" * 5000,
        ]
        for text in junk:
            await kvs.send_raw(channel, text, client_id="h")
        await kvs.send_raw(
            channel,
            '{"messageType":"STATUS_RESPONSE","statusResponse":'
            '{"correlationId":"c1","errorType":"InvalidArgumentException","statusCode":"400"}}',
            client_id="h",
        )
        status = await next_of(viewer, StatusResponse)
        assert status.correlation_id == "c1" and status.status_code == "400"
        assert viewer.stats.ignored_frames == len(junk)
        await viewer.send_offer("v=0 still alive")
        assert (await next_of(master, SdpOffer)).sdp == "v=0 still alive"


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(payload_limit=100)])
async def test_status_response_for_a_failed_send(master: SignalingClient) -> None:
    await master.send_answer("v=0 " + "x" * 200, recipient_client_id="v", correlation_id="big-1")
    status = await next_of(master, StatusResponse)
    assert status.correlation_id == "big-1"
    assert status.status_code == "400"
    error = status.error()
    assert isinstance(error, ServiceError) and "big-1" in str(error)
    # without a correlation id, failures are silent (docs/protocol.md#client-frames)
    await master.send_answer("v=0 " + "x" * 200, recipient_client_id="v")
    with pytest.raises(TimeoutError):
        await next_of(master, StatusResponse, timeout=300 * MS)


async def test_closed_client_ends_iteration_and_refuses_sends(
    client_factory: Callable[..., SignalingClient],
) -> None:
    client = client_factory(Role.MASTER)
    await client.connect()
    await client.close()
    await client.close()  # idempotent
    assert [e async for e in client] == [Connected(reconnect=False)]
    with pytest.raises(Exception, match="closed"):
        await client.send_answer("v=0", recipient_client_id="v")


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(max_connection_duration=0.5, go_away_grace=None)]
)
async def test_no_reconnect_mode_ends_with_signaling_closed(
    client_factory: Callable[..., SignalingClient],
) -> None:
    async with client_factory(Role.MASTER, reconnect=False) as m:
        events = []
        with pytest.raises(SignalingClosed) as info:
            async with asyncio.timeout(5000 * MS):
                async for event in m:
                    events.append(event)
        assert info.value.code == 1001
        assert events[-1] == Disconnected(1001, "Going away", will_reconnect=False)
        assert not m.connected


async def test_bad_provider_url_never_leaks_the_signature(
    resolver: ChannelResolver, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    access = AwsAccess(resolver, channel, Role.MASTER)

    async def https_instead() -> str:
        return (await access()).replace("ws://", "https://", 1)

    client = SignalingClient(https_instead, role=Role.MASTER)
    with pytest.raises(InvalidArgument) as info:  # a configuration error: no retry
        await client.connect()
    assert client.stats.failed_attempts == 1
    signature = (await access()).split("X-Amz-Signature=")[1].split("&")[0]
    assert "not a ws:// or wss:// URL" in str(info.value)
    assert signature not in str(info.value)
    assert signature not in caplog.text
    assert signature not in (client.stats.last_error or "")


async def test_callbacks_see_every_event_in_order(
    master: SignalingClient, client_factory: Callable[..., SignalingClient]
) -> None:
    seen: list[Any] = []

    async def async_callback(event: Any) -> None:
        seen.append(("async", type(event).__name__))

    master.on_event(lambda event: seen.append(("sync", type(event).__name__)))
    master.on_event(async_callback)
    master.on_event(lambda event: 1 / 0)  # a broken callback is logged, never fatal
    async with client_factory(Role.VIEWER, "cb") as viewer:
        await viewer.send_offer("v=0 callbacks")
        await next_of(master, SdpOffer)
    assert ("sync", "SdpOffer") in seen and ("async", "SdpOffer") in seen
    assert seen.index(("sync", "SdpOffer")) < seen.index(("async", "SdpOffer"))
