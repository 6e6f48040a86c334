"""TLS mode (https control plane, wss signaling, generated certificate) and default ports."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from cryptography import x509
from support import MS
from websockets.asyncio.client import connect

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs, generate_certificate
from kvs_peer.errors import InvalidArgument, InvalidState
from kvs_peer.protocol import Role, encode_message, sdp_payload
from kvs_peer.signing import master_url, viewer_url

WAIT = 2000 * MS


def test_certificate_names_loopback_and_localhost() -> None:
    bundle = generate_certificate()
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = x509.load_pem_x509_certificate(bundle.ca_pem)
    assert cert.issuer == ca.subject
    assert len(bundle.spki_sha256) == 44  # base64 of 32 bytes


def signaling_endpoints(client: Any, arn: str) -> dict[str, dict[str, str]]:
    """``{role: {protocol: endpoint}}`` of channel ``arn`` from a kinesisvideo client (blocks)."""
    endpoints = {}
    for role in ("MASTER", "VIEWER"):
        answer = client.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": role},
        )
        endpoints[role] = {
            e["Protocol"]: e["ResourceEndpoint"] for e in answer["ResourceEndpointList"]
        }
    return endpoints


async def test_boto3_and_wss_over_tls() -> None:
    async with LocalKvs(tls=True) as kvs:
        assert kvs.endpoint_url.startswith("https://127.0.0.1:")
        assert stat.S_IMODE(kvs.tls_key_path.stat().st_mode) == 0o600
        assert kvs.ca_cert_path.read_bytes() == kvs.certificate.ca_pem  # type: ignore[union-attr]

        def control_plane() -> tuple[str, dict[str, dict[str, str]], list[Any]]:
            kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
            arn = kv.create_signaling_channel(ChannelName="secure")["ChannelARN"]
            endpoints = signaling_endpoints(kv, arn)
            signaling = boto3.client(
                "kinesis-video-signaling",
                **{**kvs.boto3_kwargs(), "endpoint_url": endpoints["VIEWER"]["HTTPS"]},
            )
            ice = signaling.get_ice_server_config(ChannelARN=arn, ClientId="v")["IceServerList"]
            return arn, endpoints, ice

        arn, endpoints, ice = await asyncio.to_thread(control_plane)
        assert ice == []
        assert endpoints["MASTER"]["WSS"].startswith("wss://127.0.0.1:")
        assert endpoints["VIEWER"]["HTTPS"] == kvs.endpoint_url
        trust = kvs.certificate.client_context()  # type: ignore[union-attr]
        signed_master = master_url(
            endpoints["MASTER"]["WSS"],
            channel_arn=arn,
            region=kvs.region,
            credentials=kvs.credentials,
        )
        # Signed for "localhost": the emulator checks the Host header as received.
        viewer_endpoint = endpoints["VIEWER"]["WSS"].replace("127.0.0.1", "localhost")
        signed_viewer = viewer_url(
            viewer_endpoint,
            channel_arn=arn,
            client_id="v",
            region=kvs.region,
            credentials=kvs.credentials,
        )
        async with (
            connect(signed_master, ssl=trust) as master,
            connect(signed_viewer, ssl=trust) as viewer,
        ):
            await viewer.send(encode_message("SDP_OFFER", sdp_payload("offer", "tls")))
            async with asyncio.timeout(WAIT):
                event = json.loads(await master.recv())
            assert (event["messageType"], event["senderClientId"]) == ("SDP_OFFER", "v")

        # A client that does not trust the emulator's CA is refused by its own TLS stack.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(signed_master, ssl=ssl.create_default_context()):
                pass
        paths = [kvs.ca_cert_path, kvs.tls_cert_path, kvs.tls_key_path]
    assert not any(path.exists() for path in paths)


async def test_reused_certificate_and_plain_mode_has_no_paths() -> None:
    bundle = generate_certificate()
    async with LocalKvs(tls=bundle) as kvs:
        assert kvs.tls_cert_path.read_bytes() == bundle.cert_pem
    async with LocalKvs() as plain:
        assert plain.certificate is None
        with pytest.raises(InvalidState, match="tls=True"):
            _ = plain.ca_cert_path


# --------------------------------------------------------------------------------------------
# Default ports (443 with TLS, 80 without): endpoints without a port, as real KVS returns them

BIND_ATTEMPTS = 5  # another test (the C SDK interop runs) may hold 443 for a moment


async def start_on_port(port: int, **kwargs: Any) -> LocalKvs:
    """Start a LocalKvs on 127.0.0.1:``port``, or skip the test when the port cannot be had."""
    for _ in range(BIND_ATTEMPTS):
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        except PermissionError:
            pytest.skip(f"binding port {port} needs root or CAP_NET_BIND_SERVICE")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        else:
            probe.close()
            kvs = LocalKvs(port=port, **kwargs)
            with contextlib.suppress(InvalidArgument):  # taken between probe and bind: retry
                await kvs.start()
                return kvs
        finally:
            probe.close()
        await asyncio.sleep(1.0)
    pytest.skip(f"127.0.0.1:{port} stayed in use for {BIND_ATTEMPTS} s (another emulator?)")


@pytest.fixture
async def kvs_emulator() -> AsyncIterator[LocalKvs]:
    """The plugin's emulator, here with TLS on port 443 (what the C SDK requires)."""
    kvs = await start_on_port(443, tls=True)
    try:
        yield kvs
    finally:
        await kvs.close()


async def get_endpoints(kvs: LocalKvs, arn: str) -> dict[str, dict[str, str]]:
    client = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
    return await asyncio.to_thread(signaling_endpoints, client, arn)


async def test_port_443_is_left_out_and_either_spelling_connects(kvs_emulator: LocalKvs) -> None:
    kvs = kvs_emulator
    assert kvs.endpoint_url == "https://127.0.0.1"
    arn = kvs.create_channel("on-443")
    endpoints = await get_endpoints(kvs, arn)
    assert endpoints["MASTER"] == {
        "WSS": "wss://127.0.0.1/signaling/master",
        "HTTPS": "https://127.0.0.1",
    }
    assert endpoints["VIEWER"]["WSS"] == "wss://127.0.0.1/signaling/viewer"
    # Signing "wss://127.0.0.1:443" gives the same URL as "wss://127.0.0.1", and it connects.
    explicit, plain = (
        viewer_url(
            endpoint,
            channel_arn=arn,
            client_id="v",
            region=kvs.region,
            credentials=kvs.credentials,
            now=kvs.now(),
        )
        for endpoint in ("wss://127.0.0.1:443/signaling/viewer", endpoints["VIEWER"]["WSS"])
    )
    assert explicit == plain
    async with connect(explicit, ssl=kvs.ssl_context()):
        async with asyncio.timeout(WAIT):
            await kvs.wait_connected("on-443", viewers=["v"])


async def test_port_80_is_left_out() -> None:
    kvs = await start_on_port(80)
    try:
        assert kvs.endpoint_url == "http://127.0.0.1"
        arn = kvs.create_channel("on-80")
        endpoints = await get_endpoints(kvs, arn)
        assert endpoints["VIEWER"] == {
            "WSS": "ws://127.0.0.1/signaling/viewer",
            "HTTPS": "http://127.0.0.1",
        }
    finally:
        await kvs.close()


async def test_kvs_peer_master_and_viewer_through_tls_on_443(
    kvs_emulator: LocalKvs, kvs_resolver: ChannelResolver, kvs_master: Any, kvs_viewer: Any
) -> None:
    # Before issue 9 the peers signed "127.0.0.1:443" while sending "Host: 127.0.0.1": 403.
    kvs_emulator.create_channel("tls-443")
    resolved = await kvs_resolver.resolve("tls-443", Role.VIEWER, client_id="v-443")
    assert resolved.wss_endpoint == "wss://127.0.0.1/signaling/viewer"
    assert kvs_resolver.sign(resolved, client_id="v-443").startswith(
        "wss://127.0.0.1/signaling/viewer?"
    )
    master = await kvs_master("tls-443", width=160, height=120)
    viewer = await kvs_viewer("tls-443", client_id="v-443")
    await viewer.wait_frames(3, timeout=20_000 * MS)
    viewer.assert_video(size=(160, 120))
    async with asyncio.timeout(WAIT):  # the master counts its session a moment later
        while master.stats.sessions_connected != 1:
            await asyncio.sleep(0.02)
