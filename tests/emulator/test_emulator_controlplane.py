"""Pure tests of the emulator's control plane (no HTTP): odd input and registry rules."""

from __future__ import annotations

import json

import pytest

from kvs_peer.emulator.controlplane import ControlPlane, Endpoints, IceServer
from kvs_peer.errors import InvalidArgument

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
