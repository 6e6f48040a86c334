"""JoinStorageSessionAsViewer through unmodified boto3, against the emulator's storage session.

A viewer connects to signaling, calls ``join_storage_session_as_viewer`` on the channel's
WEBRTC endpoint (``kinesis-video-webrtc-storage``), gets the storage session's candidates and
offer (no ``senderClientId``) over its own connection, answers with a plain aiortc peer and
receives the video a kvs-peer master stores. The multi-viewer limits (three viewers, a held
slot, three minutes without a master) and KVS's errors are checked with short knobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import boto3
import botocore.exceptions
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from storage_support import link_stream
from support import MS

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import LocalKvs
from kvs_peer.emulator.storage_peer import SessionState
from kvs_peer.ingestion import StorageOptions
from kvs_peer.master import Master
from kvs_peer.media import TestPatternTrack, ToneTrack
from kvs_peer.peerconnection import candidate_from_json
from kvs_peer.protocol import Event, IceCandidate, Role, SdpOffer, StatusResponse
from kvs_peer.signaling import SignalingClient


def _join_client(kvs: LocalKvs, channel_arn: str, **overrides: Any) -> Any:
    """``kinesis-video-webrtc-storage`` on the WEBRTC endpoint, found as a device finds it."""
    kv = boto3.client("kinesisvideo", **kvs.boto3_kwargs())
    endpoints = kv.get_signaling_channel_endpoint(
        ChannelARN=channel_arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "VIEWER"},
    )["ResourceEndpointList"]
    kwargs = kvs.boto3_kwargs()
    kwargs.update(endpoint_url=endpoints[0]["ResourceEndpoint"], **overrides)
    return boto3.client("kinesis-video-webrtc-storage", **kwargs)


async def _join(client: Any, channel_arn: str, client_id: str) -> None:
    await asyncio.to_thread(
        client.join_storage_session_as_viewer, channelArn=channel_arn, clientId=client_id
    )


async def _refused(client: Any, channel_arn: str, client_id: str) -> tuple[str, int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await _join(client, channel_arn, client_id)
    response = info.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


class _Events:
    """A viewer's signaling events, waited for by type."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self._changed = asyncio.Event()

    def add(self, event: Event) -> None:
        self.items.append(event)
        self._changed.set()

    async def first(self, kind: type[Any], timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                found = next((e for e in self.items if isinstance(e, kind)), None)
                if found is not None:
                    return found
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def _viewer(
    resolver: ChannelResolver, client_id: str
) -> AsyncIterator[tuple[SignalingClient, _Events]]:
    """A viewer's signaling connection (ConnectAsViewer) and what it receives."""
    resolved = await resolver.resolve("cam", Role.VIEWER)

    async def url() -> str:
        return await resolver.presign(resolved, client_id=client_id)

    events = _Events()
    async with SignalingClient(url, role=Role.VIEWER, client_id=client_id) as signaling:
        signaling.on_event(events.add)
        yield signaling, events


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_viewer_receives_the_stored_master_through_the_storage_session(
    kvs: LocalKvs, resolver: ChannelResolver
) -> None:
    """Join as viewer while a kvs-peer master stores: the storage session offers to the
    viewer (candidates, then the offer without senderClientId), takes a recvonly answer and
    sends the master's video (H.264) and audio."""
    await link_stream(kvs, "cam", "cam-stream")
    arn = kvs.channel_arn("cam")
    master = Master(
        AwsAccess(resolver, "cam", Role.MASTER),
        video=TestPatternTrack(width=320, height=240, fps=30),
        audio=ToneTrack(),
        storage=True,
        storage_options=StorageOptions(offer_timeout=1.0, backoff_base=0.1, backoff_cap=0.5),
        takeover_check=None,
    )
    async with master, _viewer(resolver, "watcher") as (signaling, events):
        async with asyncio.timeout(15_000 * MS):
            await kvs.storage.wait_for(
                lambda: (s := kvs.storage.session("cam")) is not None and s.frames_written > 0
            )
        client = await asyncio.to_thread(_join_client, kvs, arn)
        await _join(client, arn, "watcher")
        offer: SdpOffer = await events.first(SdpOffer, 5_000 * MS)
        assert offer.sender_client_id is None
        assert "a=sendonly" in offer.sdp and "H264" in offer.sdp
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        frames: dict[str, list[Any]] = {"video": [], "audio": []}

        async def read(track: MediaStreamTrack) -> None:
            while True:
                frames[track.kind].append(await track.recv())

        readers: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            candidates = [e for e in events.items if isinstance(e, IceCandidate)]
            assert candidates, "the storage session sent no candidates to the viewer"
            for event in candidates:
                candidate = candidate_from_json(
                    event.candidate, event.sdp_mid, event.sdp_mline_index
                )
                if candidate is not None:
                    await pc.addIceCandidate(candidate)
            await pc.setLocalDescription(await pc.createAnswer())
            await signaling.send_answer(pc.localDescription.sdp, correlation_id="42")
            await _until(
                lambda: len(frames["video"]) >= 15 and len(frames["audio"]) >= 25,
                15_000 * MS,
                "the master's media at the viewer",
            )
        finally:
            for task in readers:
                task.cancel()
            await pc.close()
    video = frames["video"][-1]
    assert (video.width, video.height) == (320, 240)
    assert not any(isinstance(e, StatusResponse) for e in events.items)
    [session] = kvs.storage.viewer_sessions("cam")
    assert (session.client_id, session.answer_correlation_id) == ("watcher", "42")


async def test_viewer_that_sends_video_is_refused(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    """Viewers cannot send video: an answer that does gets STATUS_RESPONSE 400."""
    await link_stream(kvs, "cam", "cam-stream")
    arn = kvs.channel_arn("cam")
    async with _viewer(resolver, "sender") as (signaling, events):
        await _join(await asyncio.to_thread(_join_client, kvs, arn), arn, "sender")
        offer: SdpOffer = await events.first(SdpOffer, 5_000 * MS)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sending = pc.localDescription.sdp.replace("a=recvonly", "a=sendonly", 1)
            await signaling.send_answer(sending, correlation_id="7")
            status: StatusResponse = await events.first(StatusResponse, 5_000 * MS)
        finally:
            await pc.close()
    assert (status.correlation_id, status.status_code) == ("7", "400")
    assert "cannot send video" in (status.description or "")


async def test_viewer_limits_and_errors(kvs: LocalKvs, resolver: ChannelResolver) -> None:
    """Three viewers at most; a slot stays taken for a while after its viewer leaves (the
    same clientId may take it back at once); no master means the session ends; errors are
    KVS's."""
    kvs.create_channel("cam")
    arn = kvs.channel_arn("cam")
    # Before the channel is linked to a stream it has no WEBRTC endpoint (as KVS).
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await asyncio.to_thread(_join_client, kvs, arn)
    assert info.value.response["Error"]["Code"] == "InvalidArgumentException"

    await link_stream(kvs, "cam", "cam-stream")
    client = await asyncio.to_thread(_join_client, kvs, arn)
    kvs.storage.viewer_alone_limit = 600 * MS
    kvs.storage.viewer_slot_hold = 1_000 * MS
    async with (
        _viewer(resolver, "v1"),
        _viewer(resolver, "v2"),
        _viewer(resolver, "v3"),
        _viewer(resolver, "v4"),
    ):
        async with asyncio.timeout(5_000 * MS):
            await kvs.wait_connected("cam", viewers=["v1", "v2", "v3", "v4"])
        for client_id in ("v1", "v2", "v3"):
            await _join(client, arn, client_id)
        code, status, message = await _refused(client, arn, "v4")
        assert (code, status) == ("ClientLimitExceededException", 400)
        assert "maximum number of viewers" in message
        await _join(client, arn, "v1")  # the same clientId takes precedence, in its own slot
        await _until(
            lambda: any(
                "replaced" in (s.end_reason or "") for s in kvs.storage.viewer_sessions("cam")
            ),
            5_000 * MS,
            "the replaced session of v1 to end",
        )
        # Nobody answers and no master joins: every session ends at the alone limit...
        await _until(
            lambda: all(s.state is SessionState.ENDED for s in kvs.storage.viewer_sessions("cam")),
            5_000 * MS,
            "the viewers' sessions to end without a master",
        )
        reasons = {s.end_reason for s in kvs.storage.viewer_sessions("cam")}
        assert "no master joined the storage session in time" in reasons
        # ...but their slots stay taken for a while: a new viewer is refused, v2 comes back.
        code, _, _ = await _refused(client, arn, "v4")
        assert code == "ClientLimitExceededException"
        await _join(client, arn, "v2")
        await asyncio.sleep(1_200 * MS)
        await _join(client, arn, "v4")

        wrong = await asyncio.to_thread(
            _join_client, kvs, arn, aws_secret_access_key="not-the-secret"
        )
        code, status, message = await _refused(wrong, arn, "v3")
        assert (code, status) == ("AccessDeniedException", 403)
        assert "not-the-secret" not in message
        code, status, _ = await _refused(client, arn.replace("/cam/", "/ghost/"), "v3")
        assert (code, status) == ("ResourceNotFoundException", 404)
        code, _, message = await _refused(client, arn, "v9")
        assert code == "InvalidArgumentException" and "ConnectAsViewer" in message
        code, _, _ = await _refused(client, arn, "bad id!")
        assert code == "InvalidArgumentException"
    assert kvs.storage.joins("cam") == 0  # viewers' joins are not the master's
