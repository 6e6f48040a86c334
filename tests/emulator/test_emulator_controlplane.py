"""Pure tests of the emulator's control plane (no HTTP): odd input and registry rules."""

from __future__ import annotations

import json

import pytest

from kvs_peer.emulator.apierror import ApiError
from kvs_peer.emulator.controlplane import ControlPlane, Endpoints, IceServer
from kvs_peer.emulator.storage import check_join_body
from kvs_peer.errors import InvalidArgument
from kvs_peer.rules import (
    CHANNEL_ARN_RE,
    MAX_ARN_LENGTH,
    MAX_DEVICE_NAME_LENGTH,
    MAX_LIST_RESULTS,
    STREAM_ARN_RE,
)

NOW = 1_700_000_000.0


def make_plane() -> ControlPlane:
    plane = ControlPlane(region="us-east-1")
    plane.endpoints = Endpoints("ws://h:1/m", "ws://h:1/v", "http://h:1")
    return plane


HOSTILE_BODIES = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b"[" * 100_000,
    b'{"ChannelName": 5}',
    b'{"ChannelName": ""}',
    b'{"ChannelName": "x", "SingleMasterConfiguration": []}',
    b'{"ChannelName": "x", "SingleMasterConfiguration": {"MessageTtlSeconds": true}}',
    b'{"ChannelName": "x", "Tags": [1]}',
    b'{"ChannelName": "x", "ChannelType": "MESHY"}',
    b"\xff\xfe",
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_get_a_4xx_never_an_exception(body: bytes) -> None:
    plane = make_plane()
    for path in ("/createSignalingChannel", "/getSignalingChannelEndpoint", "/nope"):
        result = plane.handle(path, body, now=NOW)
        assert 400 <= result.status < 500, (path, body, result)
        assert result.error_type and result.body["Message"]
    assert plane.find("x") is None


def test_same_name_recreated_in_the_same_millisecond_gets_a_new_arn() -> None:
    plane = make_plane()
    first = plane.create_channel("c", now=NOW)
    plane.delete_channel(first.arn)
    second = plane.create_channel("c", now=NOW)
    assert second.arn != first.arn
    assert plane.message_ttl(first.arn) is None
    assert plane.message_ttl(second.arn) == 60.0


def test_endpoint_defaults_and_protocol_order() -> None:
    plane = make_plane()
    arn = plane.create_channel("c", now=NOW).arn
    body = json.dumps({"ChannelARN": arn}).encode()
    result = plane.handle("/getSignalingChannelEndpoint", body, now=NOW)
    assert result.body == {
        "ResourceEndpointList": [
            {"Protocol": "WSS", "ResourceEndpoint": "ws://h:1/m"},
            {"Protocol": "HTTPS", "ResourceEndpoint": "http://h:1"},
        ]
    }
    body = json.dumps(
        {
            "ChannelARN": arn,
            "SingleMasterChannelEndpointConfiguration": {
                "Protocols": ["HTTPS", "WSS"],
                "Role": "VIEWER",
            },
        }
    ).encode()
    endpoints = plane.handle("/getSignalingChannelEndpoint", body, now=NOW).body
    assert [e["ResourceEndpoint"] for e in endpoints["ResourceEndpointList"]] == [
        "http://h:1",
        "ws://h:1/v",
    ]


def test_ice_server_values() -> None:
    server = IceServer.from_value({"Uris": "turn:a", "Ttl": 60})
    assert server == IceServer(("turn:a",), None, None, 60)
    assert IceServer.from_value(server) is server
    with pytest.raises(InvalidArgument, match="Uris"):
        IceServer.from_value({"Uris": []})


# -- KVS's limits, from kvs_peer.rules -----------------------------------------------------------


def _call(plane: ControlPlane, path: str, **body: object) -> tuple[int, dict[str, object]]:
    result = plane.handle(path, json.dumps(body).encode(), now=NOW)
    return result.status, result.body


def test_list_max_results_bounds() -> None:
    plane = make_plane()
    plane.create_channel("c", now=NOW)
    for good in (1, MAX_LIST_RESULTS):
        status, body = _call(plane, "/listSignalingChannels", MaxResults=good)
        assert status == 200 and len(body["ChannelInfoList"]) == 1  # type: ignore[arg-type]
    for bad in (0, MAX_LIST_RESULTS + 1, "10"):
        status, body = _call(plane, "/listSignalingChannels", MaxResults=bad)
        assert status == 400 and f"1 to {MAX_LIST_RESULTS}" in str(body["Message"]), bad


def test_stream_device_name_length() -> None:
    plane = make_plane()
    fits = "d" * MAX_DEVICE_NAME_LENGTH
    assert _call(plane, "/createStream", StreamName="s1", DeviceName=fits)[0] == 200
    status, body = _call(plane, "/createStream", StreamName="s2", DeviceName=fits + "d")
    assert status == 400 and f"1-{MAX_DEVICE_NAME_LENGTH}" in str(body["Message"])
    assert _call(plane, "/createStream", StreamName="s3", DeviceName="bad name")[0] == 400
    assert plane.storage.find_stream("s2") is None


def test_stream_and_channel_arns_are_not_interchangeable() -> None:
    plane = make_plane()
    channel = plane.create_channel("c", now=NOW).arn
    _, body = _call(plane, "/createStream", StreamName="s")
    stream = str(body["StreamARN"])
    assert STREAM_ARN_RE.fullmatch(stream) and CHANNEL_ARN_RE.fullmatch(channel)
    assert _call(plane, "/describeStream", StreamARN=stream)[0] == 200
    assert _call(plane, "/describeStream", StreamARN=channel)[0] == 400
    too_long = stream.replace("/s/", "/" + "s" * MAX_ARN_LENGTH + "/")
    assert _call(plane, "/describeStream", StreamARN=too_long)[0] == 400
    assert check_join_body({"channelArn": channel}, viewer=False) == (channel, None)
    china = channel.replace("arn:aws:", "arn:aws-cn:")
    assert check_join_body({"channelArn": china}, viewer=False)[0] == china
    for bad in (stream, channel.replace("/c/", "/" + "c" * MAX_ARN_LENGTH + "/")):
        with pytest.raises(ApiError, match="not a signaling channel ARN"):
            check_join_body({"channelArn": bad}, viewer=False)
