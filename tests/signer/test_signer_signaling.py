"""Agents with no AWS credentials join a channel through the signer and exchange SDP.

The signer's resolver holds the emulator's credentials explicitly; the agents' environment
has no AWS_* variables and a HOME without ~/.aws, so only the signed URLs get them in.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import boto3
import pytest
from signer_helpers import MASTER_TOKEN, VIEWER_TOKEN, clear_aws_environment, signer_stack
from support import MS

from kvs_peer.access import SignerAccess
from kvs_peer.errors import SignerError
from kvs_peer.protocol import Role, SdpAnswer, SdpOffer
from kvs_peer.signaling import SignalingClient

WAIT = 3000 * MS
OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_aws_environment(monkeypatch, tmp_path)


async def _next(client: SignalingClient, kind: type) -> object:
    async with asyncio.timeout(WAIT):
        async for event in client:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"signaling ended before a {kind.__name__}")


def test_agent_environment_has_no_aws_credentials(no_aws_env: None) -> None:
    assert boto3.Session().get_credentials() is None


async def test_master_and_viewer_exchange_offer_and_answer(no_aws_env: None) -> None:
    async with signer_stack() as stack:
        master_access = SignerAccess(stack.url, "cam-1", Role.MASTER, token=MASTER_TOKEN)
        viewer_access = SignerAccess(
            stack.url, "cam-1", Role.VIEWER, client_id="viewer-7", token=VIEWER_TOKEN
        )
        async with SignalingClient(master_access, role=Role.MASTER, ping_interval=None) as master:
            async with asyncio.timeout(WAIT):
                await stack.kvs.wait_connected("cam-1", master=True)
            async with SignalingClient(
                viewer_access, role=Role.VIEWER, client_id="viewer-7", ping_interval=None
            ) as viewer:
                await viewer.send_offer(OFFER)
                offer = await _next(master, SdpOffer)
                assert isinstance(offer, SdpOffer)
                assert offer.sender_client_id == "viewer-7"
                assert offer.sdp == OFFER
                await master.send_answer(ANSWER, recipient_client_id="viewer-7")
                answer = await _next(viewer, SdpAnswer)
                assert isinstance(answer, SdpAnswer)
                assert answer.sdp == ANSWER
        # The ICE configuration came from the signer too.
        ice = await viewer_access.ice_config()
        assert ice.transport_policy == "all"
        assert viewer_access.last_response is not None
        assert viewer_access.last_response["clientId"] == "viewer-7"


async def test_refusal_reaches_the_agent_with_the_signers_message(no_aws_env: None) -> None:
    async with signer_stack() as stack:
        access = SignerAccess(stack.url, "cam-1", Role.MASTER, token=VIEWER_TOKEN)
        with pytest.raises(SignerError) as info:
            await access()
        assert info.value.status == 403
        assert info.value.code == "role_not_allowed"
        assert "may not connect as MASTER" in str(info.value)
