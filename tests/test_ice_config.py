"""GetIceServerConfig as one signed request (no boto3 client): results, errors, TLS."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import AccessDenied, ChannelError, ChannelNotFound, Throttled
from kvs_peer.protocol import Role

CHANNEL = "ice-config"
TURN = {"Uris": ["turn:192.0.2.1:3478?transport=udp"], "Ttl": 300}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(ice_servers=[TURN])


async def test_turn_servers_with_minted_credentials(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    kvs.create_channel(CHANNEL)
    resolved = await resolver.resolve(CHANNEL, Role.VIEWER, client_id="v")
    (server,) = resolved.ice_servers
    assert server.urls == tuple(TURN["Uris"]) and server.username and server.credential
    assert resolver.calls["GetIceServerConfig"] == 1


@pytest.mark.parametrize(
    ("error_type", "status", "raised"),
    [
        ("ClientLimitExceededException", 400, Throttled),
        ("ResourceNotFoundException", 404, ChannelNotFound),
        ("AccessDeniedException", 403, AccessDenied),
        ("InternalFailure", 500, ChannelError),
    ],
)
async def test_errors_are_translated_as_boto3_errors_are(
    kvs: LocalKvs, resolver: ChannelResolver, error_type: str, status: int, raised: type
) -> None:
    kvs.create_channel(CHANNEL)
    await resolver.locate(CHANNEL, Role.VIEWER)
    kvs.fail_next_api_calls("GetIceServerConfig", error_type=error_type, status=status)
    with pytest.raises(raised, match="GetIceServerConfig"):
        await resolver.resolve(CHANNEL, Role.VIEWER, client_id="v")


async def test_a_wrong_secret_is_refused(kvs: LocalKvs) -> None:
    kvs.create_channel(CHANNEL)
    session = boto3.Session(
        aws_access_key_id=kvs.credentials.access_key,
        aws_secret_access_key="wrong",
        region_name=kvs.region,
    )
    async with ChannelResolver(endpoint_url=kvs.endpoint_url, session=session) as resolver:
        with pytest.raises(AccessDenied):
            await resolver.resolve(CHANNEL, Role.VIEWER, client_id="v")


async def test_over_tls_with_the_emulator_ca(tmp_path: Path) -> None:
    async with LocalKvs(EmulatorConfig(ice_servers=[TURN]), tls=True) as kvs:
        kvs.create_channel(CHANNEL)
        # verify=<the emulator's ca.pem>; the disk cache lets the next resolver skip boto3.
        async with kvs.resolver(disk_cache=tmp_path) as resolver:
            resolved = await resolver.resolve(CHANNEL, Role.VIEWER, client_id="v")
            assert resolved.https_endpoint.startswith("https://") and resolved.ice_servers
        async with kvs.resolver(verify=None, disk_cache=tmp_path) as untrusting:
            with pytest.raises(ChannelError, match=r"is not trusted.*AWS_CA_BUNDLE"):
                await untrusting.resolve(CHANNEL, Role.VIEWER, client_id="v")
            assert "DescribeSignalingChannel" not in untrusting.calls
