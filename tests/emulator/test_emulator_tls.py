"""TLS mode: https control plane and wss signaling with a generated certificate."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import stat
from typing import Any

import boto3
import pytest
from conftest import MS
from cryptography import x509
from websockets.asyncio.client import connect

from kvs_peer.emulator import LocalKvs, generate_certificate
from kvs_peer.errors import InvalidState
from kvs_peer.protocol import encode_message, sdp_payload
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


async def test_boto3_and_wss_over_tls() -> None:
    async with LocalKvs(tls=True) as kvs:
        assert kvs.endpoint_url.startswith("https://127.0.0.1:")
        assert stat.S_IMODE(kvs.tls_key_path.stat().st_mode) == 0o600
        assert kvs.ca_cert_path.read_bytes() == kvs.certificate.ca_pem  # type: ignore[union-attr]

        def control_plane() -> tuple[str, dict[str, dict[str, str]], list[Any]]:
            kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
            arn = kv.create_signaling_channel(ChannelName="secure")["ChannelARN"]
            endpoints = {}
            for role in ("MASTER", "VIEWER"):
                answer = kv.get_signaling_channel_endpoint(
                    ChannelARN=arn,
                    SingleMasterChannelEndpointConfiguration={
                        "Protocols": ["WSS", "HTTPS"],
                        "Role": role,
                    },
                )
                endpoints[role] = {
                    e["Protocol"]: e["ResourceEndpoint"] for e in answer["ResourceEndpointList"]
                }
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
