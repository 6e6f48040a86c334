"""The pure H.264 helpers of passthrough, on real streams made by PyAV's libx264."""

from __future__ import annotations

import fractions
import io
import random

import av
import numpy as np
import pytest

from kvs_peer.media.h264 import (
    AccessUnit,
    AccessUnitAssembler,
    AnnexBSplitter,
    H264Profile,
    NalType,
    ParameterSetCache,
    can_decode,
    nal_type,
    parse_avcc,
    parse_sps,
    profile_of,
    split_annexb,
    split_length_prefixed,
)
from kvs_peer.media.passthrough import VideoRoute, _choose_payload_type, offered_h264


def encode(
    profile: str, size: tuple[int, int] = (320, 240), frames: int = 8, fmt: str = "h264", **opts
) -> tuple[bytes, bytes]:
    """A libx264 stream in ``profile``; returns the muxed bytes and the stream's extradata."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        preset = "ultrafast" if profile == "baseline" else "veryfast"
        stream.codec_context.options = {"preset": preset, "profile": profile, **opts}
        rng = np.random.default_rng(1)
        for index in range(frames):
            data = rng.integers(0, 255, (height * 3 // 2, width), np.uint8)
            frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
            frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        extradata = bytes(stream.codec_context.extradata or b"")
    return buffer.getvalue(), extradata


@pytest.mark.parametrize(
    ("profile", "size", "expected", "kind"),
    [
        ("baseline", (320, 240), "42c00d", H264Profile.CONSTRAINED_BASELINE),
        ("main", (1280, 720), "4d401f", H264Profile.MAIN),
        ("high", (1920, 1080), "640028", H264Profile.HIGH),
        ("high", (1918, 1078), "640028", H264Profile.HIGH),  # cropped: not a multiple of 16
    ],
)
def test_sps_gives_profile_level_id_and_size(profile, size, expected, kind) -> None:
    stream, _ = encode(profile, size, frames=1)
    sps_nal = next(n for n in split_annexb(stream) if nal_type(n) == NalType.SPS)
    sps = parse_sps(sps_nal)
    assert sps.profile_level_id == expected
    assert sps.profile is kind
    assert (sps.width, sps.height) == size
    assert expected in sps.describe()


def test_parse_sps_rejects_what_is_not_an_sps() -> None:
    with pytest.raises(ValueError, match="not an SPS"):
        parse_sps(b"\x68\xce\x38\x80")  # a PPS
    with pytest.raises(ValueError, match="past the end"):
        parse_sps(b"\x67\x64\x00")  # truncated


def test_start_codes_split_across_every_chunk_boundary() -> None:
    stream, _ = encode("high", frames=6)
    expected = split_annexb(stream)
    assert [nal_type(n) for n in expected[:3]] == [NalType.SPS, NalType.PPS, NalType.SEI]
    rng = random.Random(7)
    for chunk_size in (1, 2, 3, 4, 5, 1000, None):
        splitter = AnnexBSplitter()
        got, offset = [], 0
        while offset < len(stream):
            size = chunk_size or rng.randint(1, 300)
            got += splitter.feed(stream[offset : offset + size])
            offset += size
        got += splitter.flush()
        assert got == expected, chunk_size


def test_three_and_four_byte_start_codes_and_leading_garbage() -> None:
    data = (
        b"\xff\xfe"
        + b"\x00\x00\x01\x09\xf0"
        + b"\x00\x00\x00\x01\x67\x42"
        + b"\x00\x00\x01\x65\x88"
    )
    splitter = AnnexBSplitter()
    nals = splitter.feed(data) + splitter.flush()
    assert nals == [b"\x09\xf0", b"\x67\x42", b"\x65\x88"]
    assert splitter.skipped_bytes == 2


def test_access_units_one_per_picture_with_several_slices() -> None:
    # tune=zerolatency makes x264 cut every picture into slices (one per thread).
    stream, _ = encode("baseline", frames=8, tune="zerolatency", threads="4")
    nals = split_annexb(stream)
    assembler = AccessUnitAssembler()
    units = assembler.push_all(nals)
    units.append(assembler.flush())
    assert len(units) == 8
    assert units[0].is_idr and not any(u.is_idr for u in units[1:])
    assert any(sum(nal_type(n) == NalType.SLICE for n in u.nals) > 1 for u in units[1:])
    assert b"".join(u.annexb() for u in units).count(b"\x00\x00\x00\x01") == len(nals)


def test_access_unit_delimiters_start_units() -> None:
    aud, sps, pps = b"\x09\xf0", b"\x67\x42", b"\x68\xce"
    idr, slice_ = b"\x65\x88\x80", b"\x41\x9a\x80"  # first_mb_in_slice 0 (first bit 1)
    assembler = AccessUnitAssembler()
    units = assembler.push_all([aud, sps, pps, idr, aud, slice_, aud, slice_])
    units.append(assembler.flush())
    assert [u.nals for u in units] == [(aud, sps, pps, idr), (aud, slice_), (aud, slice_)]


def test_parameter_sets_are_inserted_before_idrs_that_lack_them() -> None:
    stream, _ = encode("main", frames=12, g="4")
    nals = split_annexb(stream)
    sps = next(n for n in nals if nal_type(n) == NalType.SPS)
    pps = next(n for n in nals if nal_type(n) == NalType.PPS)
    # As a camera that sends them once: only the first IDR has them.
    stripped = nals[:2] + [n for n in nals[2:] if nal_type(n) not in (NalType.SPS, NalType.PPS)]
    assembler = AccessUnitAssembler()
    units = [*assembler.push_all(stripped), assembler.flush()]
    cache = ParameterSetCache()
    completed = [cache.complete(u) for u in units]
    idrs = [u for u in completed if u.is_idr]
    assert len(idrs) >= 3 and len(completed) == 12
    for unit in idrs:
        assert unit.nals[:2] == (sps, pps)
    assert cache.inserted == len(idrs) - 1
    assert cache.sps is not None and cache.sps.profile_level_id.startswith("4d")
    # Every IDR now decodes on its own, as a late joiner's decoder sees it.
    for unit in idrs[1:]:
        assert decode_alone(unit), "IDR with inserted SPS/PPS"
    # Without the cache, the same IDR gives a fresh decoder nothing.
    assert not decode_alone(next(u for u in units[1:] if u.is_idr))


def decode_alone(unit: AccessUnit) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    try:
        return decoder.decode(av.Packet(unit.annexb())) + decoder.decode(None)
    except av.FFmpegError:
        return []


def test_mp4_extradata_and_length_prefixed_samples() -> None:
    data, _ = encode("high", frames=3, fmt="mp4")
    with av.open(io.BytesIO(data)) as container:
        length_size, sps_list, pps_list = parse_avcc(
            bytes(container.streams.video[0].codec_context.extradata)
        )
        assert length_size == 4 and len(sps_list) == 1 and len(pps_list) == 1
        assert parse_sps(sps_list[0]).profile_level_id.startswith("64")
        packet = next(p for p in container.demux(video=0) if p.size)
        nals = split_length_prefixed(bytes(packet), length_size)
    assert AccessUnit(tuple(nals)).is_idr
    with pytest.raises(ValueError, match="not an avcC"):
        parse_avcc(b"\x00\x00\x00\x01\x67")
    with pytest.raises(ValueError, match="truncated"):
        split_length_prefixed(b"\x00\x00\x00\x09\x65", 4)


@pytest.mark.parametrize(
    ("offered", "stream", "ok"),
    [
        ("42e01f", "42c028", True),  # Constrained Baseline at a higher level: levels ignored
        ("42001f", "42c01e", True),  # a Baseline decoder takes Constrained Baseline
        ("42e01f", "4d4028", False),
        ("4d001f", "42c01f", True),
        ("4d001f", "640028", False),
        ("64001f", "4d4028", True),
        ("64001f", "640028", True),
        ("640c1f", "640028", False),  # Constrained High cannot take High
        ("f4001f", "640028", True),  # Debian's Chromium offers High 4:4:4 and no High
        ("f4001f", "42001f", False),  # ...which does not take Baseline (FMO, ASO)
        ("6e001f", "640028", False),  # High 10 is not a WebRTC profile
    ],
)
def test_profile_matching(offered: str, stream: str, ok: bool) -> None:
    assert can_decode(offered, stream) is ok
    assert profile_of("zzzzzz") is None


CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 112 113",
        "a=mid:0",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=rtcp-fb:102 nack pli",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "a=rtpmap:104 H264/90000",
        "a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=640c1f",
        "a=rtpmap:105 rtx/90000",
        "a=fmtp:105 apt=104",
        "a=rtpmap:112 H264/90000",
        "a=rtcp-fb:112 nack pli",
        "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        "a=rtpmap:113 rtx/90000",
        "a=fmtp:113 apt=112",
        "",
    ]
)


def test_offer_and_answer_rewritten_for_the_streams_profile() -> None:
    assert [o.payload_type for o in offered_h264(CHROME_OFFER)] == [102, 104, 112]
    chosen = _choose_payload_type(CHROME_OFFER, "640028")
    assert chosen is not None and chosen.payload_type == 112
    assert _choose_payload_type(CHROME_OFFER, "42c01f").payload_type == 102
    route = VideoRoute(None, True, 112, "640028")  # type: ignore[arg-type]
    offer = route.offer(CHROME_OFFER)
    assert "m=video 9 UDP/TLS/RTP/SAVPF 96 97 112 113\r\n" in offer
    assert "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f" in (
        offer
    )
    for gone in ("a=rtpmap:102", "a=fmtp:103", "a=rtcp-fb:102", "a=rtpmap:104", "a=fmtp:105"):
        assert gone not in offer
    answer = "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    assert route.answer(answer).endswith("profile-level-id=640028")
    # No H.264 with packetization-mode 1 in a profile that takes the stream: none.
    assert _choose_payload_type(CHROME_OFFER.replace("64001f", "4d001f"), "640028") is None
