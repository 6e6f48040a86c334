"""Unmodified boto3 against the emulator's control plane and GetIceServerConfig (spec section 5).

boto3 blocks, so every call runs in a thread while the emulator keeps serving on this loop.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from support import MS
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from kvs_peer.emulator import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ACCESS_KEY,
    EmulatorConfig,
    LocalKvs,
)
from kvs_peer.errors import ChannelError, ChannelNotFound, InvalidArgument, InvalidState
from kvs_peer.signing import validate_channel_arn


@pytest.fixture
async def kvs() -> AsyncIterator[LocalKvs]:
    async with LocalKvs() as emulator:
        yield emulator


async def call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    method: Callable[..., dict[str, Any]] = getattr(client, operation)
    return await asyncio.to_thread(method, **params)


async def make_client(service: str, kvs: LocalKvs, **overrides: Any) -> Any:
    return await asyncio.to_thread(boto3.client, service, **{**kvs.boto3_kwargs(), **overrides})


async def expect_error(client: Any, name: str, operation: str, **params: Any) -> ClientError:
    expected = getattr(client.exceptions, name)
    with pytest.raises(expected) as info:
        await call(client, operation, **params)
    error = info.value
    assert error.response["Error"]["Code"] == name
    assert error.response["ResponseMetadata"]["RequestId"]
    assert error.response["Error"]["Message"]
    return error


def test_documented_local_defaults() -> None:
    config = EmulatorConfig()
    assert (config.region, config.access_key_id, config.secret_access_key) == (
        "us-east-1",
        "AKIALOCALKVSPEER0000",
        "kvs-peer-local-secret",
    )
    assert (DEFAULT_REGION, DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY) == (
        config.region,
        config.access_key_id,
        config.secret_access_key,
    )
    assert config.ice_servers == () and config.rate_limits is False
    assert (config.idle_timeout, config.max_connection_duration) == (600.0, 3600.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_viewers": -1},
        {"idle_timeout": 0},
        {"max_skew": float("nan")},
        {"takeover": "explode"},
        {"account_id": "12"},
        {"ice_servers": [{"Username": "u"}]},
        {"ice_servers": [{"Uris": ["turn:x"], "Ttl": 5}]},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        EmulatorConfig(**kwargs)


async def test_endpoint_needs_start() -> None:
    emulator = LocalKvs()
    with pytest.raises(InvalidState, match="not started"):
        _ = emulator.endpoint_url
    with pytest.raises(InvalidState):
        emulator.boto3_kwargs()


async def test_channel_lifecycle(kvs: LocalKvs) -> None:
    kv = await make_client("kinesisvideo", kvs)
    arn = (await call(kv, "create_signaling_channel", ChannelName="cam-1"))["ChannelARN"]
    validate_channel_arn(arn)
    assert arn.startswith(f"arn:aws:kinesisvideo:{kvs.region}:123456789012:channel/cam-1/")
    await call(
        kv,
        "create_signaling_channel",
        ChannelName="cam-2",
        SingleMasterConfiguration={"MessageTtlSeconds": 5},
        Tags=[{"Key": "k", "Value": "v"}],
    )
    kvs.create_channel("other")

    by_name = (await call(kv, "describe_signaling_channel", ChannelName="cam-1"))["ChannelInfo"]
    by_arn = (await call(kv, "describe_signaling_channel", ChannelARN=arn))["ChannelInfo"]
    assert by_name == by_arn
    assert by_name["ChannelARN"] == arn and by_name["ChannelStatus"] == "ACTIVE"
    assert by_name["ChannelType"] == "SINGLE_MASTER"
    assert by_name["SingleMasterConfiguration"] == {"MessageTtlSeconds": 60}
    assert re.fullmatch(r"[a-zA-Z0-9]{20}", by_name["Version"])
    assert isinstance(by_name["CreationTime"], dt.datetime)
    age = dt.datetime.now(dt.UTC) - by_name["CreationTime"]
    assert dt.timedelta(0) <= age < dt.timedelta(seconds=30)

    listed = (await call(kv, "list_signaling_channels"))["ChannelInfoList"]
    assert [c["ChannelName"] for c in listed] == ["cam-1", "cam-2", "other"]
    prefixed = await call(
        kv,
        "list_signaling_channels",
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"},
        MaxResults=1,
    )
    assert [c["ChannelName"] for c in prefixed["ChannelInfoList"]] == ["cam-1"]
    second = await call(
        kv,
        "list_signaling_channels",
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"},
        MaxResults=1,
        NextToken=prefixed["NextToken"],
    )
    assert [c["ChannelName"] for c in second["ChannelInfoList"]] == ["cam-2"]
    assert "NextToken" not in second

    await call(
        kv,
        "update_signaling_channel",
        ChannelARN=arn,
        CurrentVersion=by_name["Version"],
        SingleMasterConfiguration={"MessageTtlSeconds": 120},
    )
    updated = (await call(kv, "describe_signaling_channel", ChannelARN=arn))["ChannelInfo"]
    assert updated["SingleMasterConfiguration"] == {"MessageTtlSeconds": 120}
    assert updated["Version"] != by_name["Version"]

    storage = await call(kv, "describe_media_storage_configuration", ChannelARN=arn)
    assert storage["MediaStorageConfiguration"]["Status"] == "DISABLED"

    await call(kv, "delete_signaling_channel", ChannelARN=arn, CurrentVersion=updated["Version"])
    await expect_error(
        kv, "ResourceNotFoundException", "describe_signaling_channel", ChannelARN=arn
    )
    with pytest.raises(ChannelNotFound):
        kvs.connected("cam-1")
    # The name is free again and gets a new ARN.
    again = (await call(kv, "create_signaling_channel", ChannelName="cam-1"))["ChannelARN"]
    assert again != arn


async def test_control_plane_errors(kvs: LocalKvs) -> None:
    kv = await make_client("kinesisvideo", kvs)
    arn = kvs.create_channel("taken")
    version = (await call(kv, "describe_signaling_channel", ChannelARN=arn))["ChannelInfo"][
        "Version"
    ]
    await expect_error(
        kv, "ResourceInUseException", "create_signaling_channel", ChannelName="taken"
    )
    missing = await expect_error(
        kv, "ResourceNotFoundException", "describe_signaling_channel", ChannelName="nope"
    )
    assert missing.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    await expect_error(
        kv, "ResourceNotFoundException", "describe_media_storage_configuration", ChannelName="x"
    )
    bad_name = await expect_error(
        kv, "InvalidArgumentException", "create_signaling_channel", ChannelName="bad name!"
    )
    assert "bad name!" in bad_name.response["Error"]["Message"]
    await expect_error(
        kv,
        "InvalidArgumentException",
        "create_signaling_channel",
        ChannelName="ttl",
        SingleMasterConfiguration={"MessageTtlSeconds": 500},
    )
    await expect_error(kv, "InvalidArgumentException", "describe_signaling_channel")
    await expect_error(
        kv, "InvalidArgumentException", "describe_signaling_channel", ChannelARN="arn:nope"
    )
    await expect_error(kv, "InvalidArgumentException", "list_signaling_channels", NextToken="!!")
    mismatch = await expect_error(
        kv, "VersionMismatchException", "update_signaling_channel", ChannelARN=arn,
        CurrentVersion="0" * 20,
    )  # fmt: skip
    assert mismatch.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    await expect_error(
        kv, "VersionMismatchException", "delete_signaling_channel", ChannelARN=arn,
        CurrentVersion="1" * 20,
    )  # fmt: skip
    await expect_error(
        kv,
        "InvalidArgumentException",
        "get_signaling_channel_endpoint",
        ChannelARN=arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "VIEWER"},
    )
    # Nothing above changed the channel.
    info = (await call(kv, "describe_signaling_channel", ChannelARN=arn))["ChannelInfo"]
    assert info["Version"] == version
    with pytest.raises(ChannelError) as in_use:
        kvs.create_channel("taken")
    assert in_use.value.code == "ResourceInUseException"
    assert kvs.create_channel("taken", exist_ok=True) == arn
    with pytest.raises(InvalidArgument):
        kvs.create_channel("bad/name")


async def test_bad_signatures_raise_access_denied(kvs: LocalKvs) -> None:
    wrong_secret = await make_client("kinesisvideo", kvs, aws_secret_access_key="not-the-secret")
    error = await expect_error(wrong_secret, "AccessDeniedException", "list_signaling_channels")
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature" in error.response["Error"]["Message"].lower()
    unknown_key = await make_client("kinesisvideo", kvs, aws_access_key_id="AKIAUNKNOWN")
    await expect_error(unknown_key, "AccessDeniedException", "list_signaling_channels")
    wrong_region = await make_client("kinesisvideo", kvs, region_name="eu-west-1")
    error = await expect_error(wrong_region, "AccessDeniedException", "list_signaling_channels")
    assert "eu-west-1" in error.response["Error"]["Message"]
    # A session token (signed, as boto3 sends it) is accepted.
    with_token = await make_client("kinesisvideo", kvs, aws_session_token="FakeSessionToken")
    assert (await call(with_token, "list_signaling_channels"))["ChannelInfoList"] == []


async def test_clock_offset_makes_signatures_skewed_and_shows_in_date(kvs: LocalKvs) -> None:
    kv = await make_client("kinesisvideo", kvs)
    kvs.clock_offset = 3600.0
    error = await expect_error(kv, "AccessDeniedException", "list_signaling_channels")
    message = error.response["Error"]["Message"]
    assert "Signature expired" in message and "fix the client clock" in message
    served = parsedate_to_datetime(error.response["ResponseMetadata"]["HTTPHeaders"]["date"])
    assert abs((served - dt.datetime.now(dt.UTC)).total_seconds() - 3600) < 60
    kvs.clock_offset = 100.0  # within the 5-minute window
    await call(kv, "list_signaling_channels")


async def test_unsigned_security_token_header_is_accepted(kvs: LocalKvs) -> None:
    # The C SDK adds x-amz-security-token after signing (docs/protocol.md#control-plane).
    body = json.dumps({"ChannelName": "c-sdk"}).encode()
    url = f"{kvs.endpoint_url}/createSignalingChannel"

    def signed(secret: str) -> dict[str, str]:
        request = AWSRequest("POST", url, data=body, headers={"content-type": "application/json"})
        SigV4Auth(Credentials(DEFAULT_ACCESS_KEY_ID, secret), "kinesisvideo", kvs.region).add_auth(
            request
        )
        return {**dict(request.headers), "x-amz-security-token": "unsigned-token"}

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=signed(DEFAULT_SECRET_ACCESS_KEY)) as ok:
            assert ok.status == 200, await ok.text()
            assert (await ok.json())["ChannelARN"].endswith(tuple("0123456789"))
        async with http.post(url, data=body, headers=signed("wrong")) as bad:
            assert bad.status == 403
            assert bad.headers["x-amzn-ErrorType"] == "AccessDeniedException"
            text = await bad.text()
            assert "Message" in json.loads(text)
        async with http.post(url, data=b"not json", headers={}) as unsigned:
            assert unsigned.status == 403
            assert "Authorization" in (await unsigned.json())["Message"]


async def test_endpoints_point_back_at_the_emulator(kvs: LocalKvs) -> None:
    kv = await make_client("kinesisvideo", kvs)
    arn = kvs.create_channel("ep")
    endpoints = {}
    for role in ("MASTER", "VIEWER"):
        answer = await call(
            kv,
            "get_signaling_channel_endpoint",
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": role},
        )
        endpoints[role] = {
            e["Protocol"]: e["ResourceEndpoint"] for e in answer["ResourceEndpointList"]
        }
    port = kvs.port
    assert endpoints["MASTER"]["WSS"].startswith(f"ws://127.0.0.1:{port}/")
    assert endpoints["VIEWER"]["WSS"].startswith(f"ws://127.0.0.1:{port}/")
    assert endpoints["MASTER"]["WSS"] != endpoints["VIEWER"]["WSS"]
    assert endpoints["MASTER"]["HTTPS"] == endpoints["VIEWER"]["HTTPS"] == kvs.endpoint_url
    await expect_error(
        kv,
        "ResourceNotFoundException",
        "get_signaling_channel_endpoint",
        ChannelARN=arn.replace("/ep/", "/gone/"),
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS"], "Role": "MASTER"},
    )


async def test_ice_server_config_is_empty_by_default(kvs: LocalKvs) -> None:
    arn = kvs.create_channel("ice")
    signaling = await make_client("kinesis-video-signaling", kvs)
    answer = await call(signaling, "get_ice_server_config", ChannelARN=arn, ClientId="v1")
    assert answer["IceServerList"] == []
    await expect_error(
        signaling,
        "ResourceNotFoundException",
        "get_ice_server_config",
        ChannelARN=arn.replace("/ice/", "/nope/"),
    )
    await expect_error(
        signaling, "InvalidArgumentException", "get_ice_server_config", ChannelARN=arn,
        ClientId="bad id",
    )  # fmt: skip
    wrong = await make_client("kinesis-video-signaling", kvs, aws_secret_access_key="nope")
    await expect_error(wrong, "NotAuthorizedException", "get_ice_server_config", ChannelARN=arn)


async def test_configured_ice_servers_get_turn_rest_credentials() -> None:
    config = EmulatorConfig(
        ice_servers=[
            {"Uris": ["turn:127.0.0.1:3478?transport=udp"]},
            {"Uris": ["turns:127.0.0.1:5349"], "Username": "u", "Password": "p", "Ttl": 120},
        ],
        turn_secret="s3cret",
    )
    async with LocalKvs(config) as kvs:
        arn = kvs.create_channel("turn")
        signaling = await make_client("kinesis-video-signaling", kvs)
        servers = (await call(signaling, "get_ice_server_config", ChannelARN=arn, ClientId="m"))[
            "IceServerList"
        ]
    minted, fixed = servers
    assert fixed == {"Uris": ["turns:127.0.0.1:5349"], "Username": "u", "Password": "p", "Ttl": 120}
    assert minted["Uris"] == ["turn:127.0.0.1:3478?transport=udp"] and minted["Ttl"] == 300
    expiry, tail = minted["Username"].split(":", 1)
    assert abs(int(expiry) - (dt.datetime.now(dt.UTC).timestamp() + 300)) < 30
    assert base64.b64decode(tail).decode() == f"v1:{arn}"
    digest = hmac.new(b"s3cret", minted["Username"].encode(), hashlib.sha1).digest()
    assert minted["Password"] == base64.b64encode(digest).decode()


async def test_forced_api_errors_raise_the_modelled_classes(kvs: LocalKvs) -> None:
    arn = kvs.create_channel("busy")
    kv = await make_client("kinesisvideo", kvs)
    signaling = await make_client("kinesis-video-signaling", kvs)
    kvs.fail_next_api_calls("DescribeSignalingChannel", count=2)
    kvs.fail_next_api_calls("GetIceServerConfig", error_type="SessionExpiredException")
    for _ in range(2):
        await expect_error(
            kv, "ClientLimitExceededException", "describe_signaling_channel", ChannelARN=arn
        )
    await expect_error(
        signaling, "SessionExpiredException", "get_ice_server_config", ChannelARN=arn
    )
    assert (await call(kv, "describe_signaling_channel", ChannelARN=arn))["ChannelInfo"]
    assert (await call(signaling, "get_ice_server_config", ChannelARN=arn))["IceServerList"] == []
    with pytest.raises(InvalidArgument, match="DescribeSignalingChannel"):
        kvs.fail_next_api_calls("GetMedia")


class _SignsUserAgent(SigV4Auth):
    """botocore as a signer that also signs user-agent, as the KVS C SDK does."""

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        headers["user-agent"] = request.headers["User-Agent"]
        return headers


C_SDK_USER_AGENT = "AWS-WEBRTC-KVS-AGENT/1.14.0/1.5.4"


async def test_c_sdk_signed_headers_are_accepted(kvs: LocalKvs) -> None:
    # The C SDK signs host;user-agent;x-amz-date (docs/protocol.md#control-plane, issue 9).
    body = json.dumps({"ChannelName": "c-sdk", "ChannelType": "SINGLE_MASTER"}).encode()
    url = f"{kvs.endpoint_url}/createSignalingChannel"

    def signed(user_agent: str) -> dict[str, str]:
        request = AWSRequest(
            "POST",
            url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": C_SDK_USER_AGENT},
        )
        credentials = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
        _SignsUserAgent(credentials, "kinesisvideo", kvs.region).add_auth(request)
        assert "SignedHeaders=content-type;host;user-agent;x-amz-date," in str(
            request.headers["Authorization"]
        )
        return {**dict(request.headers), "User-Agent": user_agent}

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=signed(C_SDK_USER_AGENT)) as ok:
            assert ok.status == 200, await ok.text()
        async with http.post(url, data=body, headers=signed("other-agent/1.0")) as bad:
            assert bad.status == 403
            assert "does not match" in (await bad.json())["Message"]
        # aiohttp leaves User-Agent to its own default when the header is absent: drop it
        # through skip_auto_headers so the request lacks a header it signed.
        headers = signed(C_SDK_USER_AGENT)
        del headers["User-Agent"]
        async with http.post(
            url, data=body, headers=headers, skip_auto_headers=["User-Agent"]
        ) as missing:
            assert missing.status == 403
            assert "user-agent is missing" in (await missing.json())["Message"]
    assert ":channel/c-sdk/" in kvs.channel_arn("c-sdk")


async def test_connect_verifies_every_signed_header(kvs: LocalKvs) -> None:
    arn = kvs.create_channel("signed-ua")
    endpoint = kvs.endpoint_url.replace("http://", "ws://", 1)
    query = f"X-Amz-ChannelARN={arn}&X-Amz-ClientId=cam"
    request = AWSRequest(
        "GET", f"{endpoint}/signaling/viewer?{query}", headers={"User-Agent": "cam/1.0"}
    )
    credentials = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)

    class QueryAuth(SigV4QueryAuth, _SignsUserAgent):
        pass

    QueryAuth(credentials, "kinesisvideo", kvs.region, expires=299).add_auth(request)
    assert "X-Amz-SignedHeaders=host%3Buser-agent" in request.url
    async with ws_connect(request.url, user_agent_header="cam/1.0"):
        async with asyncio.timeout(5000 * MS):
            await kvs.wait_connected("signed-ua", viewers=["cam"])
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(request.url, user_agent_header="cam/2.0"):
            pass
    assert info.value.response.status_code == 403
    assert b"does not match" in info.value.response.body
