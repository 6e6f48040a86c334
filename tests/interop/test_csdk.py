"""Interop with the official KVS WebRTC C SDK (v1.14.0 sample apps, prebuilt).

The samples are what most cameras in the field run. They talk to ``kvs-peer local --tls
--port 443 --turn`` exactly as to KVS (HTTPS/WSS on 443, SigV4 over ``host;user-agent;
x-amz-date``, TURN from GetIceServerConfig), and kvs-peer's own master and viewer run in this
process against the same emulator. What the C SDK saw is read from its log (see csdk.py).

Skipped locally when the samples, their runtime libraries, coturn or port 443 are missing;
``KVS_PEER_REQUIRE_CSDK=1`` (CI) turns those skips into failures.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import boto3
import numpy as np
import pytest
from csdk import (
    LOG_INFO,
    LOG_VERBOSE,
    MASTER,
    VIEWER,
    CsdkEnvironment,
    locate_samples,
    start_sample,
    unavailable,
)
from local_cli import LocalCli, can_bind_privileged_port, run_local
from support import MS, wait_until

from kvs_peer.access import AwsAccess
from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_REGION, DEFAULT_SECRET_ACCESS_KEY
from kvs_peer.errors import ChannelNotFound
from kvs_peer.master import Master
from kvs_peer.media import Recorder, TestPatternTrack, ToneTrack
from kvs_peer.protocol import Role
from kvs_peer.viewer import Viewer, new_client_id

pytestmark = pytest.mark.slow

PORT = 443
SET_UP = r"\[KVS Master\] Channel (\S+) set up done"
"""The master sample's line once its signaling client is connected."""
CONNECTED = r"New connection state 3\b"
"""RTC_PEER_CONNECTION_STATE_CONNECTED (ICE and DTLS done on the C SDK's side)."""
MASTER_REPLY = "This message is from the KVS Master"
VIEWER_GREETING = "This message is from the KVS Viewer"


def _channel(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def samples() -> Path:
    return locate_samples()


@pytest.fixture(scope="module")
def storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the emulator's storage sessions record (``--storage-dir``)."""
    return tmp_path_factory.mktemp("csdk-storage")


@pytest.fixture(scope="module")
def local(samples: Path, storage_dir: Path) -> Iterator[LocalCli]:
    """``kvs-peer local --tls --port 443 --turn --storage-dir DIR``, one per module (443 is
    held by one at once)."""
    if not can_bind_privileged_port(PORT):
        unavailable(f"port {PORT} needs root (or net.ipv4.ip_unprivileged_port_start <= {PORT})")
    if shutil.which("turnserver") is None:
        unavailable("coturn's turnserver is not installed: apt-get install coturn")
    # -vv: the emulator logs every control-plane call with its status (read by a test below).
    args = ["--tls", "--port", str(PORT), "--turn", "--storage-dir", str(storage_dir), "-vv"]
    with run_local(args) as cli:
        yield cli


@pytest.fixture
def csdk_env(local: LocalCli) -> CsdkEnvironment:
    return CsdkEnvironment(
        access_key_id=DEFAULT_ACCESS_KEY_ID,
        secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region=DEFAULT_REGION,
        ca_cert_path=local.ca_cert_path,
    )


@pytest.fixture
async def resolver(local: LocalCli) -> AsyncIterator[ChannelResolver]:
    """kvs-peer's control-plane client for the emulator (overrides tests/conftest.py)."""
    session = boto3.Session(
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        region_name=DEFAULT_REGION,
    )
    async with ChannelResolver(
        region=DEFAULT_REGION,
        endpoint_url=local.endpoint_url,
        session=session,
        verify=str(local.ca_cert_path),
    ) as r:
        yield r


@pytest.fixture
def tls(local: LocalCli) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(local.ca_cert_path))


def _assert_quiet(local: LocalCli, mark: int) -> None:
    """The emulator logged no warning or error since ``mark`` (e.g. about the C SDK's
    WebSocket subprotocol, or a message it could not route)."""
    noisy = [
        line
        for line in local.stderr[mark:]
        if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)
    ]
    assert not noisy, "the emulator complained:\n" + "\n".join(noisy)


def _decode(path: Path) -> tuple[list[np.ndarray], int, dict[str, str]]:
    """Luma planes of every video frame, the number of audio frames, and the codecs."""
    lumas: list[np.ndarray] = []
    audio_frames = 0
    with av.open(str(path)) as container:
        codecs = {s.type: s.codec_context.name for s in container.streams}
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                lumas.append(frame.to_ndarray(format="gray"))
            else:
                audio_frames += 1
    return lumas, audio_frames, codecs


def _assert_sample_media(path: Path) -> None:
    """``path`` holds the C SDK sample's media: 720p H.264 with a picture, and Opus."""
    lumas, audio_frames, codecs = _decode(path)
    assert codecs == {"video": "h264", "audio": "opus"}
    assert len(lumas) >= 40, f"only {len(lumas)} video frames decode from {path}"
    assert all(luma.shape == (720, 1280) for luma in lumas)
    # The sample is a real video: a recording of gray or green error frames would be flat.
    assert float(np.median([luma.std() for luma in lumas])) > 10
    assert audio_frames >= 80, f"only {audio_frames} Opus frames decode from {path}"


async def test_csdk_master_to_kvs_peer_viewer(
    samples: Path,
    local: LocalCli,
    csdk_env: CsdkEnvironment,
    resolver: ChannelResolver,
    tls: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """A C SDK camera streams H.264 + Opus to kvs-peer's viewer, which records both and
    talks on a data channel; the first frame comes within 1 s of the viewer's start."""
    channel = _channel("csdk-master")
    mark = len(local.stderr)
    async with start_sample(samples, MASTER, [channel], csdk_env, log_level=LOG_INFO) as master:
        await master.wait_for_line(SET_UP, 20_000 * MS)
        replies: list[str | bytes] = []
        recording = tmp_path / "csdk.mkv"
        access = AwsAccess(resolver, channel, Role.VIEWER, client_id=new_client_id("kvs-peer"))
        async with Viewer(
            access,
            audio=True,
            data_channel=True,
            on_message=replies.append,
            recorder=Recorder(recording, audio=True, fps=25, preset="ultrafast"),
            signaling={"ssl": tls},
        ) as viewer:
            try:
                ttff = await viewer.wait_first_frame(timeout=15_000 * MS)
            except TimeoutError:
                raise AssertionError(f"no frame from the C SDK master:\n{master.tail()}") from None
            await master.wait_for_line(CONNECTED, 5_000 * MS)
            await master.wait_for_line(r"New DataChannel has been opened kvs-peer", 5_000 * MS)
            await wait_until(
                lambda: viewer.channel is not None and viewer.channel.readyState == "open",
                5_000 * MS,
                f"the viewer's data channel to open:\n{master.tail()}",
            )
            await viewer.send("hello from kvs-peer")
            await master.wait_for_line(
                r"DataChannel String Message: hello from kvs-peer", 5_000 * MS
            )
            await wait_until(lambda: MASTER_REPLY in replies, 5_000 * MS, "the master's reply")
            # Two seconds of media: 50 video frames at 25 fps, 100 Opus frames of 20 ms.
            await wait_until(
                lambda: (
                    viewer.stats.frames_received >= 50 and viewer.stats.audio_frames_received >= 100
                ),
                10_000 * MS,
                f"two seconds of media (have {viewer.stats})",
            )
            stats = viewer.stats
    assert ttff <= 1000 * MS, f"first frame after {ttff * 1000:.0f} ms (want <= 1000 ms)"
    assert (stats.width, stats.height) == (1280, 720)

    _assert_sample_media(recording)
    _assert_quiet(local, mark)


async def test_kvs_peer_master_to_csdk_viewer(
    samples: Path,
    local: LocalCli,
    csdk_env: CsdkEnvironment,
    resolver: ChannelResolver,
    tls: ssl.SSLContext,
) -> None:
    """kvs-peer's master streams H.264 + Opus to the C SDK viewer, which logs the frames,
    connects (DTLS included) and opens its data channel."""
    channel = _channel("kvs-master")
    mark = len(local.stderr)
    messages: list[tuple[str, str | bytes]] = []
    access = AwsAccess(resolver, channel, Role.MASTER, create=True)
    async with Master(
        access,
        video=TestPatternTrack(320, 240, 15),
        audio=ToneTrack(440),
        on_message=lambda client_id, message: messages.append((client_id, message)),
        signaling={"ssl": tls},
    ) as master:
        async with start_sample(
            samples, VIEWER, [channel], csdk_env, log_level=LOG_VERBOSE
        ) as viewer:
            await viewer.wait_for_line(CONNECTED, 15_000 * MS)
            await viewer.wait_for_line(r"New DataChannel has been opened", 5_000 * MS)
            await wait_until(
                lambda: any(m == VIEWER_GREETING for _, m in messages),
                5_000 * MS,
                f"the C SDK viewer's data-channel greeting:\n{viewer.tail()}",
            )
            await wait_until(
                lambda: (
                    viewer.count(r"Video Frame received") >= 15
                    and viewer.count(r"Audio Frame received") >= 25
                ),
                10_000 * MS,
                f"a second of video and audio frames at the C SDK viewer:\n{viewer.tail()}",
            )
            assert master.stats.sessions_connected == 1
            assert master.stats.sessions_failed == 0
        # The C SDK closes DTLS when it quits: its seat is free again at once.
        await wait_until(lambda: not master.viewers, 3_000 * MS, "the master to drop the viewer")
    assert viewer.find(r"(?i)dtls.*(fail|error)") is None, viewer.tail()
    _assert_quiet(local, mark)


async def test_csdk_control_plane_creates_channel(
    samples: Path, local: LocalCli, csdk_env: CsdkEnvironment, resolver: ChannelResolver
) -> None:
    """On a channel that does not exist yet, the C SDK master describes it (not found),
    creates it, describes it again, gets its endpoints and ICE servers, and connects."""
    channel = _channel("csdk-new")
    # The emulator's log arrives through a pipe, maybe after this call returns: count this
    # describe in the expected sequence rather than racing it.
    mark = len(local.stderr)
    with pytest.raises(ChannelNotFound):
        await resolver.describe(channel)
    async with start_sample(samples, MASTER, [channel], csdk_env, log_level=LOG_INFO) as master:
        await master.wait_for_line(SET_UP, 20_000 * MS)
        await wait_until(
            lambda: any(f"master connected to {channel}" in line for line in local.stderr[mark:]),
            5_000 * MS,
            "the emulator to see the master's WebSocket",
        )
    calls = [
        (m.group(1), int(m.group(2)))
        for line in local.stderr[mark:]
        if (m := re.search(r"(/[\w/-]+) -> (\d{3})", line))
    ]
    assert calls[:6] == [
        ("/describeSignalingChannel", 404),  # ours, above
        ("/describeSignalingChannel", 404),
        ("/createSignalingChannel", 200),
        ("/describeSignalingChannel", 200),
        ("/getSignalingChannelEndpoint", 200),
        ("/v1/get-ice-server-config", 200),
    ], f"control-plane calls: {calls}\n{master.tail()}"
    _assert_quiet(local, mark)
    described = await resolver.describe(channel)
    assert described["ChannelStatus"] == "ACTIVE"
    # What the C SDK was given: TURN over UDP and TCP, with credentials that expire.
    resolved = await resolver.resolve(channel, Role.MASTER)
    uris = [uri for server in resolved.ice_servers for uri in server.urls]
    assert any(u.startswith("turn:") and u.endswith("transport=udp") for u in uris), uris
    assert any(u.startswith("turn:") and u.endswith("transport=tcp") for u in uris), uris
    # No port in the endpoints: the C SDK cannot parse one, and real KVS never sends one.
    assert re.fullmatch(r"https://127\.0\.0\.1", resolved.https_endpoint or ""), resolved
    assert re.fullmatch(r"wss://127\.0\.0\.1/[\w/]+", resolved.wss_endpoint), resolved


async def test_csdk_master_joins_storage_session(
    samples: Path, local: LocalCli, csdk_env: CsdkEnvironment, storage_dir: Path
) -> None:
    """The C SDK master in storage mode (second argument ``1``) on a channel linked to a
    stream: it joins the storage session, answers its offer and streams; the stored file
    decodes as H.264 video and Opus audio of the sample's size."""
    channel, stream = _channel("csdk-storage"), _channel("csdk-stream")
    kv = boto3.client(
        "kinesisvideo",
        region_name=DEFAULT_REGION,
        endpoint_url=local.endpoint_url,
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        verify=str(local.ca_cert_path),
    )

    def link() -> None:
        channel_arn = kv.create_signaling_channel(ChannelName=channel)["ChannelARN"]
        stream_arn = kv.create_stream(StreamName=stream, DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=channel_arn,
            MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
        )

    await asyncio.to_thread(link)
    mark = len(local.stderr)
    async with start_sample(
        samples, MASTER, [channel, "1"], csdk_env, log_level=LOG_INFO
    ) as master:
        await master.wait_for_line(r"Offer Received from JoinStorageSession", 20_000 * MS)
        # With a browser-like offer (one sha-256 fingerprint, trickle advertised) the C SDK
        # answers at once and connects; with aiortc's raw offer its DTLS check failed.
        await master.wait_for_line(CONNECTED, 10_000 * MS)
        await wait_until(
            lambda: any(f"recording to {storage_dir}/{stream}/" in x for x in local.stderr[mark:]),
            5_000 * MS,
            f"the storage session to record:\n{local.output()}",
        )
        await asyncio.sleep(3.0)  # about 75 video frames and 150 Opus frames at the sample's rate
    # The master left: its storage peer connection closes and the file is finished.
    await wait_until(
        lambda: any(
            re.search(rf"storage session of {channel} ended", x) for x in local.stderr[mark:]
        ),
        10_000 * MS,
        f"the storage session to end:\n{local.output()}",
    )
    assert master.find(r"(?i)allocateSrtp\(\): operation returned") is None, master.tail()
    recordings = sorted((storage_dir / stream).glob("*.mkv"))
    assert len(recordings) == 1, recordings
    _assert_sample_media(recordings[0])
    _assert_quiet(local, mark)
