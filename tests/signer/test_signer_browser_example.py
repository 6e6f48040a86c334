"""examples/browser/viewer.js with the official JS SDK, through the signer, to a Python master.

Node runs the page's script with the real ``kvs-webrtc.min.js`` bundle and a scripted
RTCPeerConnection (Node has none); the master is kvs-peer's SignalingClient behind
SignerAccess. Needs Node >= 20 and the SDK bundle, which is not in the repository: it is
fetched (pinned, checksummed) by ``tests/js_sdk.py``, or taken from ``KVS_PEER_JS_SDK``.
Missing pieces skip the test locally and fail it when ``KVS_PEER_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from js_sdk import SdkUnavailable, ensure_sdk
from signer_helpers import MASTER_TOKEN, VIEWER_TOKEN, signer_stack, standard_tokens
from support import MS

from kvs_peer.access import SignerAccess
from kvs_peer.protocol import IceCandidate, Role, SdpOffer
from kvs_peer.signaling import SignalingClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "browser"
HARNESS = Path(__file__).with_name("viewer_harness.js")
ANSWER = "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=kvs-peer\r\nt=0 0\r\n"


def _sdk() -> Path:
    candidate = os.environ.get("KVS_PEER_JS_SDK")
    if candidate:
        return Path(candidate)
    return ensure_sdk(fetch=None)  # tests never download: CI fetches it first


@pytest.fixture(scope="module")
def sdk_and_node() -> tuple[Path, str]:
    problem = None
    try:
        sdk = _sdk()
    except SdkUnavailable as exc:
        problem = f"the KVS WebRTC SDK bundle is unavailable: {exc}"
    node = shutil.which("node")
    if node is None:
        problem = "node is not installed"
    if problem is not None:
        if os.environ.get("KVS_PEER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KVS_PEER_REQUIRE_BROWSER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    return sdk, node


async def _answer_first_offer(
    master: SignalingClient, seen: dict, candidate_seen: asyncio.Event
) -> None:
    async for event in master:
        if isinstance(event, SdpOffer) and "offer" not in seen:
            seen["offer"] = event
            await master.send_answer(ANSWER, recipient_client_id=event.sender_client_id)
        elif isinstance(event, IceCandidate):
            seen.setdefault("candidates", []).append(event)
            candidate_seen.set()


@pytest.mark.parametrize("bearer", [None, VIEWER_TOKEN], ids=["anonymous", "token"])
async def test_example_viewer_gets_the_masters_answer(
    bearer: str | None, sdk_and_node: tuple[Path, str]
) -> None:
    sdk, node = sdk_and_node
    config = {"tokens": standard_tokens(), "anonymous": [{"channels": ["cam-*"]}]}
    async with signer_stack(config) as stack:
        access = SignerAccess(stack.url, "cam-1", Role.MASTER, token=MASTER_TOKEN)
        async with SignalingClient(access, role=Role.MASTER, ping_interval=None) as master:
            seen: dict = {}
            candidate_seen = asyncio.Event()
            answering = asyncio.create_task(_answer_first_offer(master, seen, candidate_seen))
            args = [str(sdk), str(EXAMPLE / "viewer.js"), stack.url, "cam-1"]
            process = await asyncio.create_subprocess_exec(
                node,
                "--experimental-websocket",
                "--no-warnings",
                str(HARNESS),
                *args,
                *([bearer] if bearer else []),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(10_000 * MS):
                out, err = await process.communicate()
            steps = [json.loads(line) for line in out.decode().splitlines()]
            assert process.returncode == 0, (steps, err.decode()[-2000:])
            async with asyncio.timeout(2000 * MS):
                await candidate_seen.wait()
            answering.cancel()
    [answer] = [s for s in steps if s["step"] == "answer"]
    assert answer["sdp"] == ANSWER
    assert {(t["kind"], t["direction"]) for t in answer["transceivers"]} == {
        ("video", "recvonly"),
        ("audio", "recvonly"),
    }
    [pc] = [s for s in steps if s["step"] == "peer-connection"]
    assert pc["configuration"]["iceTransportPolicy"] == "all"
    # The offer came from the client id the signer generated and signed into the URL.
    client_id = seen["offer"].sender_client_id
    assert client_id.startswith("viewer-")
    assert any(client_id in s.get("line", "") for s in steps)
    assert seen["candidates"][0].candidate.startswith("candidate:1 1 udp")
    # The page never logs the signed URL.
    assert not any("X-Amz-Signature" in s.get("line", "") for s in steps)
