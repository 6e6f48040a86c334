"""The emulator's WebRTC ingestion API through unmodified boto3, errors included.

``kinesisvideo`` (streams, media storage configuration, the WEBRTC endpoint) and
``kinesis-video-webrtc-storage`` (JoinStorageSession[AsViewer]) as a device calls them, plus
the storage session's codec check on a raw answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import boto3
import botocore.exceptions
import pytest
from storage_support import link_stream
from support import MS

from kvs_peer.emulator import LocalKvs
from kvs_peer.emulator.storage import answer_codec_problem
from kvs_peer.protocol import Role, SdpOffer, StatusResponse
from kvs_peer.signaling import SignalingClient


def _kv(kvs: LocalKvs) -> Any:
    return boto3.client("kinesisvideo", **kvs.boto3_kwargs())


def _storage(kvs: LocalKvs, **overrides: Any) -> Any:
    kwargs = kvs.boto3_kwargs()
    kwargs.update(overrides)
    return boto3.client("kinesis-video-webrtc-storage", **kwargs)


async def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, **kwargs)


async def _error(fn: Callable[..., Any], **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await _call(fn, **kwargs)
    error = info.value.response["Error"]
    return (
        error["Code"],
        info.value.response["ResponseMetadata"]["HTTPStatusCode"],
        error["Message"],
    )


async def test_streams_create_describe_delete(kvs: LocalKvs) -> None:
    kv = _kv(kvs)
    arn = (await _call(kv.create_stream, StreamName="cam-1", DataRetentionInHours=2))["StreamARN"]
    assert arn.startswith(f"arn:aws:kinesisvideo:{kvs.region}:") and ":stream/cam-1/" in arn
    info = (await _call(kv.describe_stream, StreamName="cam-1"))["StreamInfo"]
    assert (info["StreamARN"], info["Status"], info["DataRetentionInHours"]) == (arn, "ACTIVE", 2)
    assert (await _call(kv.describe_stream, StreamARN=arn))["StreamInfo"]["StreamName"] == "cam-1"

    code, status, _ = await _error(kv.create_stream, StreamName="cam-1")
    assert (code, status) == ("ResourceInUseException", 400)
    code, status, _ = await _error(kv.describe_stream, StreamName="nope")
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, _, message = await _error(kv.delete_stream, StreamARN=arn, CurrentVersion="stale")
    assert code == "VersionMismatchException" and "describe the stream again" in message

    await _call(kv.delete_stream, StreamARN=arn, CurrentVersion=info["Version"])
    code, _, _ = await _error(kv.describe_stream, StreamARN=arn)
    assert code == "ResourceNotFoundException"


async def test_media_storage_configuration_and_webrtc_endpoint(kvs: LocalKvs) -> None:
    kv = _kv(kvs)
    channel = kvs.create_channel("cam")
    described = await _call(kv.describe_media_storage_configuration, ChannelName="cam")
    assert described["MediaStorageConfiguration"] == {"Status": "DISABLED"}
    endpoint_config = {"Protocols": ["WSS", "HTTPS", "WEBRTC"], "Role": "MASTER"}
    code, _, message = await _error(
        kv.get_signaling_channel_endpoint,
        ChannelARN=channel,
        SingleMasterChannelEndpointConfiguration=endpoint_config,
    )
    assert code == "InvalidArgumentException" and "UpdateMediaStorageConfiguration" in message

    no_retention = (await _call(kv.create_stream, StreamName="zero"))["StreamARN"]
    code, status, message = await _error(
        kv.update_media_storage_configuration,
        ChannelARN=channel,
        MediaStorageConfiguration={"StreamARN": no_retention, "Status": "ENABLED"},
    )
    assert (code, status) == ("NoDataRetentionException", 400)
    assert message == "The Stream data retention in hours is equal to zero."
    code, _, _ = await _error(
        kv.update_media_storage_configuration,
        ChannelARN=channel,
        MediaStorageConfiguration={"Status": "ENABLED"},
    )
    assert code == "InvalidArgumentException"
    gone = no_retention.replace("/zero/", "/gone/")
    code, _, _ = await _error(
        kv.update_media_storage_configuration,
        ChannelARN=channel,
        MediaStorageConfiguration={"StreamARN": gone, "Status": "ENABLED"},
    )
    assert code == "ResourceNotFoundException"
    code, _, _ = await _error(
        kv.update_media_storage_configuration,
        ChannelARN=channel.replace("/cam/", "/other/"),
        MediaStorageConfiguration={"Status": "DISABLED"},
    )
    assert code == "ResourceNotFoundException"

    stream = await link_stream(kvs, "cam", "kept")
    described = await _call(kv.describe_media_storage_configuration, ChannelARN=channel)
    assert described["MediaStorageConfiguration"] == {"StreamARN": stream, "Status": "ENABLED"}
    endpoints = await _call(
        kv.get_signaling_channel_endpoint,
        ChannelARN=channel,
        SingleMasterChannelEndpointConfiguration=endpoint_config,
    )
    by_protocol = {e["Protocol"]: e["ResourceEndpoint"] for e in endpoints["ResourceEndpointList"]}
    assert by_protocol["WEBRTC"] == kvs.endpoint_url

    kvs.create_channel("second")
    code, _, _ = await _error(
        kv.update_media_storage_configuration,
        ChannelARN=kvs.channel_arn("second"),
        MediaStorageConfiguration={"StreamARN": stream, "Status": "ENABLED"},
    )
    assert code == "ResourceInUseException"


async def test_join_storage_session_errors(kvs: LocalKvs) -> None:
    channel = kvs.create_channel("cam")
    storage = _storage(kvs)
    code, status, message = await _error(storage.join_storage_session, channelArn=channel)
    assert (code, status) == ("InvalidArgumentException", 400)
    assert "not mapped to a stream" in message

    await link_stream(kvs, "cam", "cam-stream")
    code, _, message = await _error(storage.join_storage_session, channelArn=channel)
    assert code == "InvalidArgumentException" and "no master is connected" in message
    code, status, _ = await _error(
        storage.join_storage_session, channelArn=channel.replace("/cam/", "/ghost/")
    )
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, _, _ = await _error(storage.join_storage_session, channelArn="arn:nope")
    assert code == "InvalidArgumentException"

    wrong = _storage(kvs, aws_secret_access_key="not-the-secret")
    code, status, message = await _error(wrong.join_storage_session, channelArn=channel)
    assert (code, status) == ("AccessDeniedException", 403)
    assert "not-the-secret" not in message

    code, _, _ = await _error(
        storage.join_storage_session_as_viewer, channelArn=channel, clientId="bad id!"
    )
    assert code == "InvalidArgumentException"
    code, _, message = await _error(
        storage.join_storage_session_as_viewer, channelArn=channel, clientId="v1"
    )
    assert code == "InvalidArgumentException" and "ConnectAsViewer" in message
    assert kvs.storage.joins("cam") == 0


async def test_join_offers_over_signaling_and_rejects_a_vp8_answer(kvs: LocalKvs) -> None:
    """A raw master gets candidates then an offer without senderClientId; an answer that
    sends VP8 comes back as STATUS_RESPONSE 400 for its correlationId."""
    await link_stream(kvs, "cam", "cam-stream")
    async with kvs.resolver() as resolver:
        resolved = await resolver.resolve("cam", Role.MASTER)

        async def url() -> str:
            return await resolver.presign(resolved)

        events: list[Any] = []
        async with SignalingClient(url, role=Role.MASTER) as signaling:
            signaling.on_event(events.append)
            endpoint = await resolver.webrtc_endpoint(resolved.arn)
            await resolver.join_storage_session(endpoint, resolved.arn)
            async with asyncio.timeout(5000 * MS):
                while not any(isinstance(e, SdpOffer) for e in events):
                    await asyncio.sleep(0.02)
            offer = next(e for e in events if isinstance(e, SdpOffer))
            assert offer.sender_client_id is None
            assert "a=candidate" not in offer.sdp  # they were trickled (and held) instead
            assert "H264" in offer.sdp and "VP8" not in offer.sdp
            vp8 = offer.sdp.replace("H264/90000", "VP8/90000").replace("a=recvonly", "a=sendonly")
            await signaling.send_storage_answer(vp8, correlation_id="1700186220273")
            async with asyncio.timeout(5000 * MS):
                while not any(isinstance(e, StatusResponse) for e in events):
                    await asyncio.sleep(0.02)
    status = next(e for e in events if isinstance(e, StatusResponse))
    assert status.correlation_id == "1700186220273"
    assert (status.error_type, status.status_code) == ("InvalidArgumentException", "400")
    assert "VP8" in (status.description or "")
    assert kvs.storage.joins("cam") == 1
    async with asyncio.timeout(5000 * MS):
        await kvs.storage.wait_for(lambda: kvs.storage.session("cam") is None)
    assert "answer rejected" in (kvs.storage.sessions("cam")[-1].end_reason or "")


_ANSWER = """v=0\r
o=- 1 1 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
m=video 9 UDP/TLS/RTP/SAVPF {video_pt}\r
a=sendonly\r
a=rtpmap:{video_pt} {video}/90000\r
m=audio {audio_port} UDP/TLS/RTP/SAVPF 111\r
a={audio_dir}\r
a=rtpmap:111 {audio}/48000/2\r
"""


@pytest.mark.parametrize(
    ("video", "audio", "audio_port", "audio_dir", "problem"),
    [
        ("H264", "opus", 9, "sendonly", None),
        ("H264", "PCMU", 0, "sendonly", None),  # rejected audio section: video-only
        ("H264", "PCMU", 9, "inactive", None),  # video-only
        ("H264", "PCMU", 9, "sendonly", "audio codec PCMU"),
        ("VP8", "opus", 9, "sendonly", "video codec VP8"),
    ],
)
def test_answer_codec_check(
    video: str, audio: str, audio_port: int, audio_dir: str, problem: str | None
) -> None:
    sdp = _ANSWER.format(
        video_pt=102, video=video, audio=audio, audio_port=audio_port, audio_dir=audio_dir
    )
    found = answer_codec_problem(sdp)
    assert found is None if problem is None else problem in (found or "")


def test_answer_without_video_is_refused() -> None:
    sdp = _ANSWER.format(
        video_pt=102, video="H264", audio="opus", audio_port=9, audio_dir="sendonly"
    ).replace("m=video 9", "m=video 0")
    assert "no video" in (answer_codec_problem(sdp) or "")


async def test_page_lists_and_serves_recordings(kvs: LocalKvs) -> None:
    import aiohttp

    folder = kvs.storage.storage_dir / "cam-stream"
    folder.mkdir(parents=True)
    (folder / "20260101T000000.000Z.mkv").write_bytes(b"\x1a\x45\xdf\xa3 matroska")
    async with aiohttp.ClientSession(kvs.endpoint_url) as http:
        async with http.get("/_kvs/recordings") as response:
            listing = await response.json()
        [entry] = listing["recordings"]
        assert (entry["stream"], entry["name"]) == ("cam-stream", "20260101T000000.000Z.mkv")
        async with http.get(entry["url"]) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "video/x-matroska"
            assert await response.read() == b"\x1a\x45\xdf\xa3 matroska"
        async with http.get("/_kvs/recordings/cam-stream/..%2F..%2Fetc%2Fpasswd") as response:
            assert response.status == 404
