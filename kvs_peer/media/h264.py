"""H.264 bitstream handling for passthrough: NAL units, SPS, parameter sets, access units.

Pure code (no I/O, no PyAV): what a master needs to forward a camera's H.264 without
decoding it.

- :class:`AnnexBSplitter` cuts an Annex-B byte stream (3- or 4-byte start codes) into NAL
  units, across the chunk boundaries of a pipe.
- :func:`parse_sps` reads profile, constraint flags and level (the SDP ``profile-level-id``)
  and the picture size from a sequence parameter set.
- :class:`AccessUnitAssembler` groups NAL units into access units (one per picture, which is
  one RTP frame): an AUD, SPS, PPS or SEI after a slice, or a slice with
  ``first_mb_in_slice == 0`` after a slice, starts the next one.
- :class:`ParameterSetCache` keeps the latest SPS and PPS and puts them in front of every IDR
  that lacks them: cameras send them once, or only now and then, and a viewer that joins
  later cannot decode without them.
- :func:`parse_avcc` and :func:`split_length_prefixed` turn MP4/Matroska style H.264 (avcC
  extradata, length-prefixed NAL units) into the same NAL units.
- :func:`profile_of` and :func:`can_decode` implement the profile matching of RFC 6184 /
  WebRTC: which offered ``profile-level-id`` can take which stream.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "START_CODE",
    "AccessUnit",
    "AccessUnitAssembler",
    "AnnexBSplitter",
    "H264Profile",
    "NalType",
    "ParameterSetCache",
    "Sps",
    "can_decode",
    "first_mb_in_slice",
    "nal_type",
    "parse_avcc",
    "parse_sps",
    "profile_of",
    "split_annexb",
    "split_length_prefixed",
]

START_CODE = b"\x00\x00\x00\x01"


class NalType(enum.IntEnum):
    """The NAL unit types passthrough cares about (ITU-T H.264 table 7-1)."""

    SLICE = 1
    SLICE_A = 2
    SLICE_B = 3
    SLICE_C = 4
    IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9
    END_OF_SEQUENCE = 10
    END_OF_STREAM = 11
    FILLER = 12


_VCL = frozenset({NalType.SLICE, NalType.SLICE_A, NalType.IDR})
# NAL units that, after a slice, can only belong to the next access unit (7.4.1.2.3).
_STARTS_NEXT = frozenset({NalType.AUD, NalType.SPS, NalType.PPS, NalType.SEI, 14, 15, 16, 17, 18})


def nal_type(nal: bytes) -> int:
    """The ``nal_unit_type`` of a NAL unit (without start code)."""
    return nal[0] & 0x1F


class AnnexBSplitter:
    """Cuts an Annex-B byte stream into NAL units, fed in chunks of any size.

    A NAL unit is complete only when the next start code arrives, so the last one stays
    buffered until :meth:`flush` (end of stream). Bytes before the first start code are
    skipped (a pipe joined mid-stream) and counted in :attr:`skipped_bytes`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start: int | None = None  # where the current NAL's payload starts
        self._scan = 0  # where to look for the next start code
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the NAL units they completed, in order."""
        buffer = self._buffer
        buffer += data
        nals: list[bytes] = []
        while True:
            found = buffer.find(b"\x00\x00\x01", self._scan)
            if found < 0:
                # A start code may straddle this chunk and the next: look at the tail again.
                self._scan = max(self._scan, len(buffer) - 2)
                break
            if self._start is None:
                self.skipped_bytes += len(bytes(buffer[:found]).rstrip(b"\x00"))
            else:
                nal = _strip_trailing_zeros(buffer, self._start, found)
                if nal:
                    nals.append(nal)
            self._start = found + 3
            self._scan = self._start
        if self._start is not None and self._start > 65536:
            # Drop what has been handed out, so the buffer stays about one NAL long.
            del buffer[: self._start]
            self._scan -= self._start
            self._start = 0
        elif self._start is None:
            keep = buffer[-2:]
            self.skipped_bytes += len(buffer) - len(keep)
            buffer[:] = keep
            self._scan = 0
        return nals

    def flush(self) -> list[bytes]:
        """End of stream: the last NAL unit, if any; the splitter is then empty."""
        nals = []
        if self._start is not None:
            nal = _strip_trailing_zeros(self._buffer, self._start, len(self._buffer))
            if nal:
                nals.append(nal)
        self._buffer = bytearray()
        self._start = None
        self._scan = 0
        return nals


def _strip_trailing_zeros(buffer: bytearray, start: int, end: int) -> bytes:
    # A 4-byte start code's leading zero (and trailing_zero_8bits) is not part of the NAL.
    while end > start and buffer[end - 1] == 0:
        end -= 1
    return bytes(buffer[start:end])


def split_annexb(data: bytes) -> list[bytes]:
    """All NAL units of a complete Annex-B buffer (an access unit, a file)."""
    splitter = AnnexBSplitter()
    return splitter.feed(data) + splitter.flush()


def split_length_prefixed(data: bytes, length_size: int = 4) -> list[bytes]:
    """NAL units of an MP4/Matroska (AVCC) sample: each prefixed by its big-endian length.

    Raises:
        ValueError: a length points past the end of ``data``.
    """
    nals = []
    offset = 0
    while offset + length_size <= len(data):
        length = int.from_bytes(data[offset : offset + length_size], "big")
        offset += length_size
        if offset + length > len(data):
            raise ValueError(
                f"AVCC sample truncated: NAL of {length} bytes at offset {offset}, "
                f"{len(data) - offset} left"
            )
        if length:
            nals.append(bytes(data[offset : offset + length]))
        offset += length
    return nals


def parse_avcc(extradata: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """Read an ``avcC`` box (ISO/IEC 14496-15): NAL length size, SPS list, PPS list.

    Raises:
        ValueError: not an avcC record (Annex-B extradata starts with a start code instead).
    """
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("not an avcC record (configurationVersion is not 1)")
    length_size = (extradata[4] & 0x03) + 1
    offset = 5
    sets: list[list[bytes]] = []
    for count_mask in (0x1F, 0xFF):
        if offset >= len(extradata):
            raise ValueError("avcC record truncated")
        count = extradata[offset] & count_mask
        offset += 1
        found = []
        for _ in range(count):
            length = int.from_bytes(extradata[offset : offset + 2], "big")
            offset += 2
            if offset + length > len(extradata):
                raise ValueError("avcC record truncated")
            found.append(bytes(extradata[offset : offset + length]))
            offset += length
        sets.append(found)
    return length_size, sets[0], sets[1]


def _rbsp(nal: bytes, limit: int | None = None) -> bytes:
    """The payload after the NAL header without emulation-prevention bytes (00 00 03)."""
    data = nal[1:] if limit is None else nal[1 : 1 + limit]
    if b"\x00\x00\x03" not in data:
        return bytes(data)
    out = bytearray()
    zeros = 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _Bits:
    """Exp-Golomb bit reader over an RBSP."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            index = self._pos >> 3
            if index >= len(self._data):
                raise ValueError("H.264 syntax element runs past the end of the NAL unit")
            value = (value << 1) | ((self._data[index] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("malformed Exp-Golomb code in an H.264 NAL unit")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def first_mb_in_slice(nal: bytes) -> int:
    """``first_mb_in_slice`` of a slice NAL unit (0 for the first slice of a picture).

    Raises:
        ValueError: the NAL unit is too short to hold it.
    """
    return _Bits(_rbsp(nal, 8)).ue()


# profile_idc values whose SPS carries chroma format, bit depths and scaling lists.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class H264Profile(enum.Enum):
    """The profiles WebRTC negotiates (RFC 6184, as libwebrtc classifies them)."""

    CONSTRAINED_BASELINE = "Constrained Baseline"
    BASELINE = "Baseline"
    MAIN = "Main"
    CONSTRAINED_HIGH = "Constrained High"
    HIGH = "High"
    PREDICTIVE_HIGH_444 = "High 4:4:4 Predictive"


# (profile_idc, constraint-byte pattern, profile): "x" is any bit. libwebrtc's table.
_PROFILE_PATTERNS = (
    (0x42, "x1xx0000", H264Profile.CONSTRAINED_BASELINE),
    (0x4D, "1xxx0000", H264Profile.CONSTRAINED_BASELINE),
    (0x58, "11xx0000", H264Profile.CONSTRAINED_BASELINE),
    (0x42, "x0xx0000", H264Profile.BASELINE),
    (0x58, "10xx0000", H264Profile.BASELINE),
    (0x4D, "0x0x0000", H264Profile.MAIN),
    (0x64, "00000000", H264Profile.HIGH),
    (0x64, "00001100", H264Profile.CONSTRAINED_HIGH),
    (0xF4, "00000000", H264Profile.PREDICTIVE_HIGH_444),
)

# Which stream profiles a decoder of each offered profile takes (a subset relation: a
# Constrained Baseline stream is also valid Main and High, and so on).
_DECODES = {
    H264Profile.CONSTRAINED_BASELINE: {H264Profile.CONSTRAINED_BASELINE},
    H264Profile.BASELINE: {H264Profile.CONSTRAINED_BASELINE, H264Profile.BASELINE},
    H264Profile.MAIN: {H264Profile.CONSTRAINED_BASELINE, H264Profile.MAIN},
    H264Profile.CONSTRAINED_HIGH: {H264Profile.CONSTRAINED_BASELINE, H264Profile.CONSTRAINED_HIGH},
    H264Profile.HIGH: {
        H264Profile.CONSTRAINED_BASELINE,
        H264Profile.MAIN,
        H264Profile.CONSTRAINED_HIGH,
        H264Profile.HIGH,
    },
    # Debian's Chromium offers this one (f4001f) and no plain High: its decoder takes High
    # too (ITU-T H.264 A.2.11: High 4:4:4 Predictive decoders decode High streams).
    H264Profile.PREDICTIVE_HIGH_444: {
        H264Profile.CONSTRAINED_BASELINE,
        H264Profile.MAIN,
        H264Profile.CONSTRAINED_HIGH,
        H264Profile.HIGH,
        H264Profile.PREDICTIVE_HIGH_444,
    },
}


def profile_of(profile_level_id: str) -> H264Profile | None:
    """The profile a ``profile-level-id`` (6 hex digits) names, or None if WebRTC has none."""
    try:
        value = int(profile_level_id, 16)
    except ValueError:
        return None
    if len(profile_level_id) != 6:
        return None
    idc, constraints = value >> 16, (value >> 8) & 0xFF
    bits = f"{constraints:08b}"
    for pattern_idc, pattern, profile in _PROFILE_PATTERNS:
        if idc == pattern_idc and all(p in ("x", b) for p, b in zip(pattern, bits, strict=True)):
            return profile
    return None


def can_decode(offered: str, stream: str) -> bool:
    """Whether a receiver that offered ``profile-level-id=offered`` can take ``stream``'s profile.

    Levels are not compared: WebRTC peers declare ``level-asymmetry-allowed=1`` and decoders
    in practice take higher levels (Chromium plays level 4.0 with 3.1 negotiated; tested).
    """
    offered_profile, stream_profile = profile_of(offered), profile_of(stream)
    if offered_profile is None or stream_profile is None:
        return False
    return stream_profile in _DECODES[offered_profile]


@dataclass(frozen=True, slots=True)
class Sps:
    """What passthrough needs from a sequence parameter set.

    Attributes:
        profile_idc: 66 Baseline, 77 Main, 100 High, ...
        constraint_flags: the byte of constraint_set0..5 flags.
        level_idc: 31 for level 3.1, 40 for 4.0, ...
        sps_id: seq_parameter_set_id.
        width: picture width in pixels, after cropping.
        height: picture height in pixels, after cropping.
    """

    profile_idc: int
    constraint_flags: int
    level_idc: int
    sps_id: int
    width: int
    height: int

    @property
    def profile_level_id(self) -> str:
        """The SDP ``profile-level-id`` of this stream (e.g. ``640028``)."""
        return f"{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"

    @property
    def profile(self) -> H264Profile | None:
        """The WebRTC profile, or None (e.g. High 10 or 4:2:2: no browser takes those)."""
        return profile_of(self.profile_level_id)

    def describe(self) -> str:
        """E.g. ``High 4.0 (640028), 1920x1080``."""
        name = self.profile.value if self.profile else f"profile_idc {self.profile_idc}"
        level = f"{self.level_idc // 10}.{self.level_idc % 10}"
        return f"{name} {level} ({self.profile_level_id}), {self.width}x{self.height}"


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last, next_scale = 8, 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def parse_sps(nal: bytes) -> Sps:
    """Parse a sequence parameter set NAL unit (with its 1-byte header, no start code).

    Raises:
        ValueError: not an SPS, or truncated/malformed.
    """
    if not nal or nal_type(nal) != NalType.SPS:
        raise ValueError("not an SPS NAL unit")
    bits = _Bits(_rbsp(nal))
    profile_idc, constraints, level_idc = bits.u(8), bits.u(8), bits.u(8)
    sps_id = bits.ue()
    chroma_format_idc = 1
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            bits.u(1)  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.u(1):
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    sub_width, sub_height = {0: (1, 1), 1: (2, 2), 2: (2, 1)}.get(chroma_format_idc, (1, 1))
    crop_x = sub_width
    crop_y = sub_height * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return Sps(profile_idc, constraints, level_idc, sps_id, width, height)


def _pps_ids(nal: bytes) -> tuple[int, int]:
    bits = _Bits(_rbsp(nal, 8))
    return bits.ue(), bits.ue()  # pic_parameter_set_id, seq_parameter_set_id


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """The NAL units of one picture, in order.

    Attributes:
        nals: the NAL units, without start codes.
    """

    nals: tuple[bytes, ...]

    @property
    def is_idr(self) -> bool:
        """Whether a decoder can start here (an IDR slice; parameter sets permitting)."""
        return any(nal_type(n) == NalType.IDR for n in self.nals)

    @property
    def has_picture(self) -> bool:
        """Whether it holds a coded slice (parameter sets alone do not)."""
        return any(nal_type(n) in _VCL for n in self.nals)

    def annexb(self) -> bytes:
        """The access unit as Annex-B bytes, each NAL unit after a 4-byte start code."""
        return START_CODE + START_CODE.join(self.nals)


class AccessUnitAssembler:
    """Groups NAL units into access units (one RTP frame each).

    An access unit ends when, after one of its slices, comes an AUD, SPS, PPS or SEI (or the
    reserved types 14-18), or a slice whose ``first_mb_in_slice`` is 0 (the next picture).
    Streams with arbitrary slice order are not told apart (no WebRTC encoder makes them).
    """

    def __init__(self) -> None:
        self._nals: list[bytes] = []
        self._has_slice = False

    def push(self, nal: bytes) -> AccessUnit | None:
        """Add one NAL unit; return the access unit it completed, if any."""
        kind = nal_type(nal)
        done = None
        if self._nals and (
            (kind == NalType.AUD)
            or (self._has_slice and kind in _STARTS_NEXT)
            or (self._has_slice and kind in _VCL and _starts_picture(nal))
        ):
            done = AccessUnit(tuple(self._nals))
            self._nals = []
            self._has_slice = False
        self._nals.append(nal)
        if kind in _VCL:
            self._has_slice = True
        return done

    def push_all(self, nals: Iterable[bytes]) -> list[AccessUnit]:
        """Add NAL units; return the access units they completed."""
        units = []
        for nal in nals:
            unit = self.push(nal)
            if unit is not None:
                units.append(unit)
        return units

    def flush(self) -> AccessUnit | None:
        """End of stream (or of a container packet): the pending access unit, if any."""
        if not self._nals:
            return None
        unit = AccessUnit(tuple(self._nals))
        self._nals = []
        self._has_slice = False
        return unit


def _starts_picture(nal: bytes) -> bool:
    try:
        return first_mb_in_slice(nal) == 0
    except ValueError:
        return True


class ParameterSetCache:
    """Keeps the latest SPS and PPS and inserts them before every IDR that lacks them.

    Attributes:
        sps: the latest parsed SPS, or None before the first.
        inserted: IDRs that got parameter sets from the cache.
    """

    def __init__(self) -> None:
        self._sps: dict[int, bytes] = {}
        self._pps: dict[int, bytes] = {}
        self.sps: Sps | None = None
        self.inserted = 0

    @property
    def ready(self) -> bool:
        """Whether an SPS and a PPS have been seen (an IDR can be made decodable)."""
        return bool(self._sps and self._pps)

    def learn(self, nals: Iterable[bytes]) -> None:
        """Remember any SPS/PPS among ``nals`` (e.g. from a container's extradata)."""
        for nal in nals:
            kind = nal_type(nal)
            if kind == NalType.SPS:
                try:
                    sps = parse_sps(nal)
                except ValueError:
                    continue  # an SPS we cannot read is still forwarded as it came
                self._sps[sps.sps_id] = nal
                self.sps = sps
            elif kind == NalType.PPS:
                try:
                    pps_id, _ = _pps_ids(nal)
                except ValueError:
                    continue
                self._pps[pps_id] = nal

    def complete(self, unit: AccessUnit) -> AccessUnit:
        """``unit``, learning its parameter sets, with the cached ones inserted if it is an
        IDR that lacks an SPS or PPS."""
        self.learn(unit.nals)
        if not unit.is_idr or not self.ready:
            return unit
        kinds = {nal_type(n) for n in unit.nals}
        if NalType.SPS in kinds and NalType.PPS in kinds:
            return unit
        # After an AUD (which must come first), before everything else.
        at = 1 if nal_type(unit.nals[0]) == NalType.AUD else 0
        insert: list[bytes] = []
        if NalType.SPS not in kinds:
            insert += self._sps.values()
        if NalType.PPS not in kinds:
            insert += self._pps.values()
        self.inserted += 1
        return AccessUnit((*unit.nals[:at], *insert, *unit.nals[at:]))


def join_annexb(nals: Sequence[bytes]) -> bytes:
    """NAL units as one Annex-B buffer (4-byte start codes)."""
    return START_CODE + START_CODE.join(nals)
