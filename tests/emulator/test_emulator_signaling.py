"""Raw websockets clients against the emulator's signaling endpoints, over 127.0.0.1.

URLs come from kvs_peer.signing and the ws:// endpoints GetSignalingChannelEndpoint returns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from support import MS
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.protocol import (
    decode_payload,
    encode_message,
    encode_payload,
    sdp_payload,
)
from kvs_peer.signing import master_url, viewer_url

WAIT = 2000 * MS  # generous upper bound for a frame that must arrive
QUIET = 150 * MS  # how long to listen for a frame that must not arrive


class Channel:
    """A channel on the emulator plus the role endpoints boto3 got for it."""

    def __init__(self, kvs: LocalKvs, arn: str, endpoints: dict[str, str]) -> None:
        self.kvs = kvs
        self.arn = arn
        self.endpoints = endpoints

    def master_url(self, **kw: Any) -> str:
        return master_url(
            self.endpoints["MASTER"],
            channel_arn=self.arn,
            region=self.kvs.region,
            credentials=self.kvs.credentials,
            **kw,
        )

    def viewer_url(self, client_id: str, **kw: Any) -> str:
        return viewer_url(
            self.endpoints["VIEWER"],
            channel_arn=self.arn,
            client_id=client_id,
            region=self.kvs.region,
            credentials=self.kvs.credentials,
            **kw,
        )


async def open_channel(kvs: LocalKvs, name: str = "chan") -> Channel:
    def lookup() -> tuple[str, dict[str, str]]:
        kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
        arn = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
        endpoints = {}
        for role in ("MASTER", "VIEWER"):
            answer = kv.get_signaling_channel_endpoint(
                ChannelARN=arn,
                SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS"], "Role": role},
            )
            endpoints[role] = answer["ResourceEndpointList"][0]["ResourceEndpoint"]
        return arn, endpoints

    arn, endpoints = await asyncio.to_thread(lookup)
    return Channel(kvs, arn, endpoints)


@pytest.fixture
async def kvs() -> AsyncIterator[LocalKvs]:
    async with LocalKvs() as emulator:
        yield emulator


@pytest.fixture
async def channel(kvs: LocalKvs) -> Channel:
    return await open_channel(kvs)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())


async def assert_silent(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QUIET):
            frame = await ws.recv()
            pytest.fail(f"unexpected frame {frame!r}")


async def refused(url: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=WAIT):
            pass
    return info.value


def offer(sdp: str) -> str:
    return encode_message("SDP_OFFER", sdp_payload("offer", sdp))


async def test_master_and_two_viewers_exchange_offers_answers_and_candidates(
    channel: Channel,
) -> None:
    kvs = channel.kvs
    async with (
        connect(channel.master_url()) as master,
        connect(channel.viewer_url("v1")) as v1,
        connect(channel.viewer_url("v2")) as v2,
    ):
        presence = kvs.connected("chan")
        assert presence.master and presence.viewers == ("v1", "v2")
        for viewer, client_id in ((v1, "v1"), (v2, "v2")):
            await viewer.send(offer(f"offer from {client_id}"))
            event = await recv_json(master)
            assert event["messageType"] == "SDP_OFFER"
            assert event["senderClientId"] == client_id
            assert event["messagePayload"] == encode_payload(
                sdp_payload("offer", f"offer from {client_id}")
            )
        for client_id in ("v2", "v1"):
            await master.send(
                encode_message("SDP_ANSWER", sdp_payload("answer", client_id), client_id, "1")
            )
            cand = {"candidate": f"candidate:1 1 udp 1 127.0.0.1 9 typ host {client_id}"}
            await master.send(encode_message("ICE_CANDIDATE", cand, client_id))
        for viewer, client_id in ((v1, "v1"), (v2, "v2")):
            answer = await recv_json(viewer)
            assert answer == {
                "messagePayload": encode_payload(sdp_payload("answer", client_id)),
                "messageType": "SDP_ANSWER",
            }
            candidate = await recv_json(viewer)
            assert candidate["messageType"] == "ICE_CANDIDATE"
            assert "senderClientId" not in candidate
            sent = decode_payload(candidate["messagePayload"])
            assert sent is not None and sent["candidate"].endswith(f"typ host {client_id}")
        await v2.send(encode_message("ICE_CANDIDATE", {"candidate": "candidate:2"}))
        assert (await recv_json(master))["senderClientId"] == "v2"
        await assert_silent(v1)
        await assert_silent(v2)
    async with asyncio.timeout(WAIT):
        await kvs.wait_presence("chan", lambda p: not p.master and not p.viewers)


async def test_offer_sent_before_the_master_connects_is_delivered(channel: Channel) -> None:
    async with connect(channel.viewer_url("early")) as viewer:
        await viewer.send(offer("waiting"))
        await viewer.send(encode_message("ICE_CANDIDATE", {"candidate": "candidate:1"}))
        async with connect(channel.master_url()) as master:
            first, second = await recv_json(master), await recv_json(master)
    assert (first["messageType"], first["senderClientId"]) == ("SDP_OFFER", "early")
    assert second["messageType"] == "ICE_CANDIDATE"


async def test_failed_message_with_correlation_id_gets_status_response(channel: Channel) -> None:
    async with connect(channel.master_url()) as master:
        await master.send(encode_message("SDP_OFFER", sdp_payload("offer", "x"), None, "corr-1"))
        status = await recv_json(master)
    assert status["messageType"] == "STATUS_RESPONSE"
    assert status["statusResponse"]["correlationId"] == "corr-1"
    assert status["statusResponse"]["statusCode"] == "400"


async def test_eleventh_viewer_is_refused_with_400(channel: Channel) -> None:
    viewers = [connect(channel.viewer_url(f"viewer-{i}")) for i in range(10)]
    sockets = [await v for v in viewers]
    try:
        error = await refused(channel.viewer_url("viewer-10"))
        assert error.response.status_code == 400
        assert b"10 viewers" in error.response.body
        assert error.response.headers["x-amzn-ErrorType"] == "ClientLimitExceededException"
        # A known id replaces its older connection instead of needing a slot.
        async with connect(channel.viewer_url("viewer-3")):
            assert len(channel.kvs.connected("chan").viewers) == 10
    finally:
        for ws in sockets:
            await ws.close()


async def test_newest_master_takes_over_and_the_old_one_stays_open(channel: Channel) -> None:
    async with connect(channel.master_url()) as old, connect(channel.master_url()) as new:
        async with connect(channel.viewer_url("v")) as viewer:
            await viewer.send(offer("hello"))
            assert (await recv_json(new))["senderClientId"] == "v"
            await assert_silent(old)
            await old.send(encode_message("SDP_ANSWER", sdp_payload("answer", "x"), "v"))
            await assert_silent(viewer)
            await old.ping()  # still open


async def test_expired_tampered_and_skewed_urls_are_refused_with_403(channel: Channel) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    expired = await refused(channel.viewer_url("v", now=past))
    assert expired.response.status_code == 403
    assert b"expired" in expired.response.body

    url = channel.master_url()
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    forged = "0" * 64 if signature != "0" * 64 else "1" * 64
    tampered = await refused(url.replace(signature, forged))
    assert tampered.response.status_code == 403
    assert b"does not match" in tampered.response.body
    # The refusal never reveals the expected signature.
    assert signature.encode() not in tampered.response.body

    other_region = await refused(
        master_url(
            channel.endpoints["MASTER"],
            channel_arn=channel.arn,
            region="eu-west-1",
            credentials=channel.kvs.credentials,
        )
    )
    assert other_region.response.status_code == 403

    channel.kvs.clock_offset = -3600.0  # the client looks an hour in the future
    skewed = await refused(channel.master_url())
    assert skewed.response.status_code == 403
    assert b"not yet current" in skewed.response.body
    channel.kvs.clock_offset = 0.0
    async with connect(channel.master_url()):
        pass


async def test_wrong_channel_is_404_and_bad_parameters_400(channel: Channel) -> None:
    missing = channel.arn.replace("/chan/", "/missing/")
    url = master_url(
        channel.endpoints["MASTER"],
        channel_arn=missing,
        region=channel.kvs.region,
        credentials=channel.kvs.credentials,
    )
    assert (await refused(url)).response.status_code == 404
    # A viewer URL on the master endpoint (and the reverse) is a malformed request.
    crossed = viewer_url(
        channel.endpoints["MASTER"],
        channel_arn=channel.arn,
        client_id="v",
        region=channel.kvs.region,
        credentials=channel.kvs.credentials,
    )
    assert (await refused(crossed)).response.status_code == 400
    no_client = master_url(
        channel.endpoints["VIEWER"],
        channel_arn=channel.arn,
        region=channel.kvs.region,
        credentials=channel.kvs.credentials,
    )
    assert (await refused(no_client)).response.status_code == 400


async def test_forced_handshake_failures(channel: Channel) -> None:
    channel.kvs.fail_next_connects("chan", 403)
    channel.kvs.fail_next_connects("chan", 404, count=2)
    statuses = [(await refused(channel.master_url())).response.status_code for _ in range(3)]
    assert statuses == [403, 404, 404]
    async with connect(channel.master_url()):
        assert channel.kvs.connected("chan").master


async def test_go_away_reconnect_ice_and_raw_frames_are_injected(channel: Channel) -> None:
    kvs = channel.kvs
    async with connect(channel.master_url()) as master, connect(channel.viewer_url("v")) as v:
        assert await kvs.send_go_away("chan", client_id="v") == 1
        assert await recv_json(v) == {"messageType": "GO_AWAY"}
        await assert_silent(master)
        assert await kvs.send_reconnect_ice_server(channel.arn, master=True) == 1
        assert await recv_json(master) == {"messageType": "RECONNECT_ICE_SERVER"}
        junk = '{"message": "Endpoint request timed out", "connectionId": "x"}'
        assert await kvs.send_raw("chan", junk) == 2
        assert await kvs.send_raw("chan", "", master=True) == 1
        async with asyncio.timeout(WAIT):
            assert await v.recv() == junk
            assert await master.recv() == junk
            assert await master.recv() == ""
        assert await kvs.send_go_away("chan", client_id="nobody") == 0


async def test_go_away_grace_then_close_1001() -> None:
    async with LocalKvs(EmulatorConfig(go_away_grace=0.2)) as kvs:
        channel = await open_channel(kvs)
        async with connect(channel.master_url()) as master:
            await kvs.send_go_away("chan")
            assert (await recv_json(master))["messageType"] == "GO_AWAY"
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(master)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_max_connection_duration_closes_with_1001_going_away() -> None:
    async with LocalKvs(EmulatorConfig(max_connection_duration=0.3)) as kvs:
        channel = await open_channel(kvs)
        loop = asyncio.get_running_loop()
        async with connect(channel.master_url(), ping_interval=0.05) as master:
            opened = loop.time()
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(master)
            lifetime = loop.time() - opened
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "Going away")
    assert 0.25 <= lifetime < 0.3 + WAIT  # measured from the end of the handshake


async def test_idle_timeout_counts_pings_as_activity() -> None:
    async with LocalKvs(EmulatorConfig(idle_timeout=0.4)) as kvs:
        channel = await open_channel(kvs)
        async with (
            connect(channel.master_url(), ping_interval=None) as quiet,
            connect(channel.viewer_url("pinger"), ping_interval=0.1) as pinging,
        ):
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(quiet)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            await asyncio.sleep(0.5)  # > idle_timeout since connect: pings kept it alive
            await pinging.send(offer("still here"))
            assert kvs.connected("chan").viewers == ("pinger",)


async def test_hostile_client_frames_never_break_the_emulator() -> None:
    async with LocalKvs(EmulatorConfig(max_frame_bytes=4096)) as kvs:
        channel = await open_channel(kvs)
        async with connect(channel.master_url()) as master, connect(channel.viewer_url("ok")) as ok:
            async with connect(channel.viewer_url("evil")) as evil:
                for frame in [
                    b"\x00\xff binary",
                    "not json",
                    "",
                    "[" * 1000 + "]" * 1000,
                    '{"action": "SDP_OFFER"}',
                    json.dumps({"action": "SDP_OFFER", "messagePayload": "A" * 3000}),
                ]:
                    await evil.send(frame)
                await evil.send('{"action":"NOPE","messagePayload":"eA==","correlationId":"e"}')
                assert (await recv_json(evil))["statusResponse"]["correlationId"] == "e"
                # Only the last, valid offer reached the master.
                assert (await recv_json(master))["senderClientId"] == "evil"
                await assert_silent(master)
                await evil.send("x" * 10_000)  # over max_frame_bytes: that socket is closed
                with pytest.raises(ConnectionClosed) as closed:
                    await recv_json(evil)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await ok.send(offer("fine"))
            assert (await recv_json(master))["senderClientId"] == "ok"
            await master.send(encode_message("SDP_ANSWER", sdp_payload("answer", "a"), "ok"))
            assert (await recv_json(ok))["messageType"] == "SDP_ANSWER"


async def test_deleting_the_channel_closes_its_connections(channel: Channel) -> None:
    async with connect(channel.master_url()) as master:
        await asyncio.to_thread(
            boto3.client("kinesisvideo", **channel.kvs.boto3_kwargs()).delete_signaling_channel,
            ChannelARN=channel.arn,
        )
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(master)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert (await refused(channel.master_url())).response.status_code == 404


async def test_close_ends_open_connections_with_1001() -> None:
    kvs = LocalKvs()
    await kvs.start()
    channel = await open_channel(kvs)
    ws = await connect(channel.master_url())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await kvs.close()
    assert loop.time() - started < WAIT
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await kvs.close()  # idempotent


async def test_serve_forever_runs_until_cancelled() -> None:
    kvs = LocalKvs()
    task = asyncio.create_task(kvs.serve_forever())
    async with asyncio.timeout(WAIT):
        while True:
            try:
                url = kvs.endpoint_url
                break
            except Exception:
                await asyncio.sleep(0.01)
    channel = await open_channel(kvs)
    async with connect(channel.master_url()) as ws:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
    assert url.startswith("http://127.0.0.1:")
