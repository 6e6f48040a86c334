"""Partitions and endpoint variants: the control-plane and STUN URLs for every region kind."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.endpoints import EndpointMode, control_plane_url, stun_url
from kvs_peer.errors import InvalidArgument

PLAIN, FIPS, DUAL, BOTH = (
    EndpointMode(),
    EndpointMode(fips=True),
    EndpointMode(dualstack=True),
    EndpointMode(fips=True, dualstack=True),
)

# One region of each partition, with the hosts botocore's data gives them.
CASES = [
    ("eu-west-1", PLAIN, "kinesisvideo.eu-west-1.amazonaws.com"),
    ("eu-west-1", DUAL, "kinesisvideo.eu-west-1.api.aws"),
    ("us-east-1", FIPS, "kinesisvideo-fips.us-east-1.amazonaws.com"),
    ("us-east-1", BOTH, "kinesisvideo-fips.us-east-1.api.aws"),
    ("cn-north-1", PLAIN, "kinesisvideo.cn-north-1.amazonaws.com.cn"),
    ("cn-northwest-1", DUAL, "kinesisvideo.cn-northwest-1.api.amazonwebservices.com.cn"),
    ("us-gov-west-1", FIPS, "kinesisvideo-fips.us-gov-west-1.amazonaws.com"),
    ("eusc-de-east-1", PLAIN, "kinesisvideo.eusc-de-east-1.amazonaws.eu"),
    ("us-iso-east-1", PLAIN, "kinesisvideo.us-iso-east-1.c2s.ic.gov"),
    ("us-isob-east-1", PLAIN, "kinesisvideo.us-isob-east-1.sc2s.sgov.gov"),
]


@pytest.mark.parametrize(("region", "mode", "host"), CASES)
def test_each_partition_and_variant(region: str, mode: EndpointMode, host: str) -> None:
    assert control_plane_url(region, mode) == f"https://{host}"
    scheme = "stuns" if mode.fips else "stun"
    assert stun_url(region, mode) == f"{scheme}:stun.{host}:443"


@pytest.mark.parametrize(("region", "mode", "host"), CASES)
def test_the_same_url_as_a_boto3_client(
    region: str, mode: EndpointMode, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cross-check: a boto3 client configured the standard way resolves the same host.
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", str(mode.fips).lower())
    monkeypatch.setenv("AWS_USE_DUALSTACK_ENDPOINT", str(mode.dualstack).lower())
    session = boto3.Session(region_name=region, aws_access_key_id="a", aws_secret_access_key="b")
    assert EndpointMode.from_session(session) == mode
    client = session.client("kinesisvideo")
    assert client.meta.endpoint_url == control_plane_url(region, mode)


def test_switches_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nuse_fips_endpoint = true\nuse_dualstack_endpoint = true\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_USE_DUALSTACK_ENDPOINT", raising=False)
    assert EndpointMode.from_session(boto3.Session(region_name="us-east-1")) == BOTH


def test_the_resolver_lists_the_partitions_stun_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_USE_DUALSTACK_ENDPOINT", "true")
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT", raising=False)
    china = ChannelResolver(region="cn-north-1")
    assert china.stun_url == "stun:stun.kinesisvideo.cn-north-1.api.amazonwebservices.com.cn:443"
    # Against an emulator, no STUN server at all (aiortc would wait on it).
    assert ChannelResolver(region="cn-north-1", endpoint_url="http://127.0.0.1:1").stun_url is None


@pytest.mark.parametrize("region", ["eu west 1", "", "-eu-west-1", "eu_west_1"])
def test_a_malformed_region_is_refused(region: str) -> None:
    with pytest.raises(InvalidArgument, match="not an AWS region name"):
        control_plane_url(region)


async def test_the_path_to_a_channel_creates_no_boto3_client(kvs: LocalKvs) -> None:
    """Describe, GetSignalingChannelEndpoint and GetIceServerConfig are signed requests."""
    kvs.create_channel("cam")
    session = boto3.Session(
        region_name=kvs.region,
        aws_access_key_id=kvs.credentials.access_key,
        aws_secret_access_key=kvs.credentials.secret_key,
    )
    created: list[str] = []
    session.events.register(
        "creating-client-class", lambda class_attributes, base_classes, **kw: created.append("x")
    )
    async with ChannelResolver(session=session, endpoint_url=kvs.endpoint_url) as resolver:
        resolved = await resolver.resolve("cam", "VIEWER", client_id="v1")
        assert resolved.wss_endpoint.startswith("ws")
        assert resolver.calls == {
            "DescribeSignalingChannel": 1,
            "GetSignalingChannelEndpoint": 1,
            "GetIceServerConfig": 1,
        }
        assert created == []
        # Creating a channel is rare and stays on boto3.
        await resolver.create_channel("other")
        assert created
