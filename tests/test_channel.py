"""ChannelResolver against the local emulator over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from kvs_peer.channel import ChannelResolver, regional_stun_url
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import AccessDenied, ChannelError, ChannelNotFound, InvalidArgument, Throttled
from kvs_peer.protocol import Role
from kvs_peer.rules import MESSAGE_TTL, MESSAGE_TTL_RANGE
from kvs_peer.signing import verify_presigned_url

TURN = {"Uris": ["turn:127.0.0.1:3478?transport=udp"], "Ttl": 300}


async def test_resolve_existing_channel_both_roles(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    arn = kvs.create_channel("cam")
    master = await resolver.resolve("cam", Role.MASTER)
    viewer = await resolver.resolve("cam", "viewer", client_id="v1")
    assert master.arn == viewer.arn == arn
    assert master.wss_endpoint != viewer.wss_endpoint  # endpoints are per role
    assert master.wss_endpoint.startswith("ws://127.0.0.1:")
    assert master.https_endpoint.startswith("http://127.0.0.1:")
    assert master.ice_servers == ()  # no STUN with endpoint_url, emulator has no TURN
    assert master.message_ttl == 60


async def test_exact_name_never_prefix(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    kvs.create_channel("cam-10")
    with pytest.raises(ChannelNotFound) as info:
        await resolver.resolve("cam-1", Role.MASTER)
    # The Python API and the command line both say how to have it created.
    assert "create=True" in str(info.value) and "--create-channel" in str(info.value)
    arn = kvs.create_channel("cam-1")
    assert (await resolver.resolve("cam-1", Role.MASTER)).arn == arn


async def test_create_when_asked(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    resolved = await resolver.resolve("fresh", Role.MASTER, create=True)
    assert resolved.arn == kvs.channel_arn("fresh")
    assert resolver.calls["CreateSignalingChannel"] == 1


async def test_create_channel_message_ttl(resolver: ChannelResolver) -> None:
    await resolver.create_channel("default-ttl")
    assert (await resolver.resolve("default-ttl", Role.MASTER)).message_ttl == MESSAGE_TTL
    low, high = MESSAGE_TTL_RANGE
    await resolver.create_channel("short-ttl", message_ttl=low)
    assert (await resolver.resolve("short-ttl", Role.MASTER)).message_ttl == low
    calls = dict(resolver.calls)
    for bad in (low - 1, high + 1, 60.5, True):
        with pytest.raises(InvalidArgument, match=f"message_ttl .*{low}.*{high}|whole seconds"):
            await resolver.create_channel("bad-ttl", message_ttl=bad)  # type: ignore[arg-type]
    assert resolver.calls == calls  # refused before any call


@pytest.fixture
async def endpointless_kvs() -> AsyncIterator[str]:
    """A control plane whose channel has only an HTTPS endpoint (not KVS: a wrong URL)."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/describeSignalingChannel":
            info = {"ChannelName": "cam", "ChannelARN": ARN, "ChannelStatus": "ACTIVE"}
            return web.json_response({"ChannelInfo": info})
        endpoints = [{"Protocol": "HTTPS", "ResourceEndpoint": "https://127.0.0.1:9"}]
        return web.json_response({"ResourceEndpointList": endpoints})

    app = web.Application()
    app.router.add_post("/{operation}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/cam/1700000000000"


async def test_missing_endpoints_say_what_to_check(endpointless_kvs: str) -> None:
    session = boto3.Session(aws_access_key_id="AKIAX", aws_secret_access_key="s")
    async with ChannelResolver(
        region="us-east-1", endpoint_url=endpointless_kvs, session=session
    ) as resolver:
        with pytest.raises(ChannelError, match="returned no WSS endpoint") as info:
            await resolver.resolve("cam", Role.MASTER)
        assert "SINGLE_MASTER" in str(info.value) and "endpoint URL" in str(info.value)
        with pytest.raises(ChannelError, match="no WEBRTC endpoint") as info:
            await resolver.webrtc_endpoint(ARN)
        assert "update-media-storage-configuration" in str(info.value)


async def test_bad_names_are_refused_before_any_call(resolver: ChannelResolver) -> None:
    for bad in ("", "has space", "x" * 257, "a/b"):
        with pytest.raises(InvalidArgument):
            await resolver.resolve(bad, Role.MASTER)
    with pytest.raises(InvalidArgument):
        await resolver.resolve("ok", Role.VIEWER, client_id="AWS_reserved")
    with pytest.raises(InvalidArgument):
        await resolver.resolve("ok", "owner")
    assert resolver.calls == {}


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(ice_servers=[TURN])])
async def test_concurrent_callers_share_one_round_trip(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("busy")
    results = await asyncio.gather(
        *(resolver.resolve("busy", Role.VIEWER, client_id=f"v{i}") for i in range(20))
    )
    assert len({r.arn for r in results}) == 1
    assert resolver.calls == {
        "DescribeSignalingChannel": 1,
        "GetSignalingChannelEndpoint": 1,
        "GetIceServerConfig": 1,
    }
    turn = results[0].ice_servers[0]
    assert turn.urls == ("turn:127.0.0.1:3478?transport=udp",)
    assert turn.username and turn.credential  # minted TURN-REST style by the emulator


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(ice_servers=[TURN])])
async def test_ice_refreshed_after_ttl_minus_margin(
    kvs: LocalKvs, resolver_factory: Callable[..., ChannelResolver]
) -> None:
    now = [1000.0]
    kvs.create_channel("ttl")
    async with resolver_factory(clock=lambda: now[0]) as resolver:
        first = await resolver.resolve("ttl", Role.MASTER)
        now[0] += 300 - 31  # still inside Ttl - 30 s
        await resolver.resolve("ttl", Role.MASTER)
        assert resolver.calls["GetIceServerConfig"] == 1
        now[0] += 2
        second = await resolver.resolve("ttl", Role.MASTER)
        assert resolver.calls["GetIceServerConfig"] == 2
        assert resolver.calls["GetSignalingChannelEndpoint"] == 1  # endpoints live longer
        assert second.ice_expires_at >= first.ice_expires_at


async def test_invalidate_forces_a_new_describe(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    kvs.create_channel("inv")
    await resolver.resolve("inv", Role.MASTER)
    resolver.invalidate("inv")
    await resolver.resolve("inv", Role.MASTER)
    assert resolver.calls["DescribeSignalingChannel"] == 2


async def test_failed_load_is_not_cached(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    with pytest.raises(ChannelNotFound):
        await resolver.resolve("later", Role.MASTER)
    kvs.create_channel("later")
    assert (await resolver.resolve("later", Role.MASTER)).name == "later"


async def test_wrong_secret_is_access_denied(kvs: LocalKvs) -> None:
    kvs.create_channel("cam")
    session = boto3.Session(
        aws_access_key_id=kvs.credentials.access_key,
        aws_secret_access_key="wrong",
        region_name=kvs.region,
    )
    async with ChannelResolver(
        region=kvs.region, endpoint_url=kvs.endpoint_url, session=session
    ) as resolver:
        with pytest.raises(AccessDenied) as info:
            await resolver.resolve("cam", Role.MASTER)
    assert "credentials" in str(info.value)


async def test_signed_url_verifies_with_emulator_credentials(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("cam")
    resolved = await resolver.resolve("cam", Role.VIEWER, client_id="v-1")
    url = resolver.sign(resolved, client_id="v-1")
    verified = verify_presigned_url(
        url,
        secrets={kvs.credentials.access_key: kvs.credentials.secret_key},
        region=kvs.region,
    )
    assert verified.params["X-Amz-ClientId"] == "v-1"
    assert verified.params["X-Amz-ChannelARN"] == resolved.arn
    with pytest.raises(InvalidArgument):
        resolver.sign(resolved)  # viewer without client id
    master = await resolver.resolve("cam", Role.MASTER)
    assert "X-Amz-ClientId" not in parse_qs(urlsplit(resolver.sign(master)).query)


async def test_clock_offset_learned_from_date_header(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    """URLs are signed in server time, learned from the control plane's Date header.

    (botocore signs control-plane calls with the local clock, so those still need the clock
    within the service's 5-minute window; the learned offset makes the WSS URL exact.)
    """
    kvs.clock_offset = 200.0
    kvs.create_channel("skew")
    resolved = await resolver.resolve("skew", Role.MASTER)
    assert resolver.clock_offset == pytest.approx(200, abs=3)
    verified = verify_presigned_url(
        resolver.sign(resolved),
        secrets={kvs.credentials.access_key: kvs.credentials.secret_key},
        now=kvs.now(),
    )
    assert abs((verified.signed_at - kvs.now()).total_seconds()) < 3


def test_stun_only_against_aws() -> None:
    aws = ChannelResolver(region="eu-west-1")
    local = ChannelResolver(region="eu-west-1", endpoint_url="http://127.0.0.1:1")
    assert aws.stun_url == regional_stun_url("eu-west-1")
    assert aws.stun_url == "stun:stun.kinesisvideo.eu-west-1.amazonaws.com:443"
    assert local.stun_url is None


def test_missing_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(InvalidArgument) as info:
        ChannelResolver()
    assert "--region" in str(info.value)


async def test_throttling_is_a_typed_error(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    kvs.create_channel("busy")
    kvs.fail_next_api_calls("GetSignalingChannelEndpoint", count=5)
    with pytest.raises(Throttled) as info:
        await resolver.resolve("busy", Role.MASTER)
    assert info.value.code == "ClientLimitExceededException"
    assert "slow down" in str(info.value)


async def test_other_service_errors_keep_their_code(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel("odd")
    kvs.fail_next_api_calls("DescribeSignalingChannel", error_type="InvalidArgumentException")
    with pytest.raises(ChannelError) as info:
        await resolver.resolve("odd", Role.MASTER)
    assert info.value.code == "InvalidArgumentException"
    assert (await resolver.resolve("odd", Role.MASTER)).name == "odd"  # not cached


async def test_unreachable_endpoint_is_a_clear_error() -> None:
    session = boto3.Session(aws_access_key_id="AKIAX", aws_secret_access_key="s")
    async with ChannelResolver(
        region="us-east-1", endpoint_url="http://127.0.0.1:9", timeout=2, session=session
    ) as resolver:
        with pytest.raises(ChannelError) as info:
            await resolver.resolve("x", Role.MASTER)
    message = str(info.value)
    assert "could not reach 127.0.0.1:9" in message
    # Said in words, not as aiohttp's reprs ("ssl:<ssl.SSLContext object at 0x...>").
    assert "connection to 127.0.0.1:9 refused (nothing listens there)" in message
    assert "ssl:" not in message and "object at" not in message


async def test_missing_credentials_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    async with ChannelResolver(region="us-east-1", endpoint_url="http://127.0.0.1:9") as r:
        with pytest.raises(AccessDenied) as info:
            await r.resolve("x", Role.MASTER)
    assert "--signer" in str(info.value)
