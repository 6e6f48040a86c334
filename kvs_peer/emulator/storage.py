"""Pure state of the emulator's WebRTC ingestion: streams, media storage links, join checks.

A :class:`StreamRegistry` holds the KVS streams (CreateStream/DescribeStream/DeleteStream,
enough for a channel to be linked to one) and each channel's media storage configuration
(UpdateMediaStorageConfiguration/DescribeMediaStorageConfiguration). The control plane resolves
channels and calls it; no I/O, no clock (``now`` is an argument).

Shapes and error codes follow botocore's ``kinesisvideo`` 2017-09-30 and
``kinesis-video-webrtc-storage`` 2018-05-10 models (docs/protocol.md#storage-sessions). Where KVS's
behaviour is not documented the choice is marked [inferred].
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..rules import (
    CHANNEL_ARN_RE,
    ID_CHARS,
    ID_RE,
    ID_RULE,
    MAX_ARN_LENGTH,
    MAX_DEVICE_NAME_LENGTH,
    MAX_TAGS,
    STREAM_ARN_RE,
)
from .apierror import ApiError, check_version, invalid, string_field

__all__ = [
    "MediaStorage",
    "Stream",
    "StreamRegistry",
    "answer_codec_problem",
    "check_join_body",
    "sent_kinds",
    "viewer_answer_problem",
]

logger = logging.getLogger(__name__)

_DEVICE_RE = re.compile(f"[{ID_CHARS}]{{1,{MAX_DEVICE_NAME_LENGTH}}}")
_MEDIA_TYPE_RE = re.compile(r"[\w\-.+]+/[\w\-.+]+(,[\w\-.+]+/[\w\-.+]+)*")
_STREAM_NOT_FOUND = "The requested stream is not found or not active."


def _is_stream_arn(arn: str) -> bool:
    return len(arn) <= MAX_ARN_LENGTH and STREAM_ARN_RE.fullmatch(arn) is not None


@dataclass
class Stream:
    """A KVS stream as the registry keeps it (media is recorded by the storage peer)."""

    name: str
    arn: str
    creation_time: float
    retention_hours: int
    version: str
    media_type: str | None = None
    device_name: str | None = None
    kms_key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The ``StreamInfo`` shape of DescribeStream."""
        info: dict[str, Any] = {
            "StreamName": self.name,
            "StreamARN": self.arn,
            "Version": self.version,
            "Status": "ACTIVE",
            "CreationTime": self.creation_time,
            "DataRetentionInHours": self.retention_hours,
            # [inferred] KVS uses its own key when none is given; any non-empty id will do.
            "KmsKeyId": self.kms_key_id or "arn:aws:kms:local:000000000000:alias/aws/kinesisvideo",
        }
        if self.media_type is not None:
            info["MediaType"] = self.media_type
        if self.device_name is not None:
            info["DeviceName"] = self.device_name
        return info


@dataclass(frozen=True, slots=True)
class MediaStorage:
    """A channel's media storage configuration."""

    status: str = "DISABLED"
    stream_arn: str | None = None

    @property
    def enabled(self) -> bool:
        """Ingestion is on: ENABLED with a stream (the JS SDK's test).

        See docs/protocol.md#storage-sessions.
        """
        return self.status == "ENABLED" and self.stream_arn is not None

    def shape(self) -> dict[str, Any]:
        """The ``MediaStorageConfiguration`` shape (``StreamARN`` left out when unset)."""
        shape: dict[str, Any] = {"Status": self.status}
        if self.stream_arn is not None:
            shape["StreamARN"] = self.stream_arn
        return shape


class StreamRegistry:
    """Streams and per-channel media storage configurations.

    Args:
        region: the emulated region (stream ARNs use it).
        account_id: 12-digit account in ARNs.
    """

    def __init__(self, *, region: str, account_id: str) -> None:
        self.region = region
        self.account_id = account_id
        self._streams: dict[str, Stream] = {}
        self._links: dict[str, MediaStorage] = {}
        self._versions = 0
        self._last_millis = 0

    # -- streams -------------------------------------------------------------------------------

    def streams(self) -> list[Stream]:
        """Every stream, in creation order."""
        return list(self._streams.values())

    def stream(self, arn: str) -> Stream | None:
        """The stream with this ARN, or None."""
        return self._streams.get(arn)

    def find_stream(self, name_or_arn: str) -> Stream | None:
        """The stream with this ARN or name, or None."""
        if name_or_arn in self._streams:
            return self._streams[name_or_arn]
        return next((s for s in self._streams.values() if s.name == name_or_arn), None)

    def _version(self, arn: str) -> str:
        self._versions += 1
        return hashlib.sha256(f"{arn}#{self._versions}".encode()).hexdigest()[:20]

    def create_stream(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        """CreateStream. Raises :class:`ApiError`."""
        name = string_field(body, "StreamName", required=True)
        assert name is not None
        if not ID_RE.fullmatch(name):
            raise invalid(f"StreamName {name[:300]!r} must be {ID_RULE}")
        retention = body.get("DataRetentionInHours", 0)
        if not isinstance(retention, int) or isinstance(retention, bool) or retention < 0:
            raise invalid("DataRetentionInHours must be an integer of 0 or more")
        device = string_field(body, "DeviceName")
        if device is not None and not _DEVICE_RE.fullmatch(device):
            raise invalid(
                f"DeviceName must be 1-{MAX_DEVICE_NAME_LENGTH} characters from {ID_CHARS}"
            )
        media_type = string_field(body, "MediaType")
        if media_type is not None and not _MEDIA_TYPE_RE.fullmatch(media_type):
            raise invalid("MediaType must look like video/h264 or video/h264,audio/aac")
        tags = body.get("Tags") or {}
        if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise invalid("Tags must be a map of strings")
        if len(tags) > MAX_TAGS:
            raise ApiError(400, "TagsPerResourceExceededLimitException", f"at most {MAX_TAGS} tags")
        if self.find_stream(name) is not None:
            raise ApiError(400, "ResourceInUseException", f"The stream {name} already exists.")
        millis = max(int(now * 1000), self._last_millis + 1)
        self._last_millis = millis
        arn = f"arn:aws:kinesisvideo:{self.region}:{self.account_id}:stream/{name}/{millis}"
        self._streams[arn] = Stream(
            name,
            arn,
            millis / 1000,
            retention,
            self._version(arn),
            media_type,
            device,
            string_field(body, "KmsKeyId"),
            dict(tags),
        )
        logger.info("created stream %s (retention %d h)", name, retention)
        return {"StreamARN": arn}

    def _stream_from(self, body: Mapping[str, Any], *, by_name: bool) -> Stream:
        arn = string_field(body, "StreamARN")
        name = string_field(body, "StreamName") if by_name else None
        if arn is None and name is None:
            raise invalid(
                "StreamName or StreamARN is required" if by_name else "StreamARN is required"
            )
        if arn is not None and not _is_stream_arn(arn):
            raise invalid(f"StreamARN {arn[:200]!r} is not a stream ARN")
        stream = self._streams.get(arn) if arn is not None else self.find_stream(name or "")
        if stream is None:
            raise ApiError(404, "ResourceNotFoundException", _STREAM_NOT_FOUND)
        if arn is not None and name is not None and stream.name != name:
            raise invalid("StreamName and StreamARN name different streams")
        return stream

    def describe_stream(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        """DescribeStream. Raises :class:`ApiError`."""
        return {"StreamInfo": self._stream_from(body, by_name=True).info()}

    def delete_stream(self, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        """DeleteStream. Raises :class:`ApiError`.

        [inferred] KVS does not document what happens to a channel linked to a deleted
        stream; here the link stays and JoinStorageSession then fails (not mapped).
        """
        stream = self._stream_from(body, by_name=False)
        check_version(body, stream.version, "stream", required=False)
        del self._streams[stream.arn]
        logger.info("deleted stream %s", stream.name)
        return {}

    # -- media storage -------------------------------------------------------------------------

    def media_storage(self, channel_arn: str) -> MediaStorage:
        """A channel's configuration (DISABLED without a stream until updated)."""
        return self._links.get(channel_arn, MediaStorage())

    def linked_stream(self, channel_arn: str) -> Stream | None:
        """The existing stream a channel stores into, or None (not enabled, stream gone)."""
        config = self.media_storage(channel_arn)
        if not config.enabled:
            return None
        assert config.stream_arn is not None
        return self._streams.get(config.stream_arn)

    def forget_channel(self, channel_arn: str) -> None:
        """The channel was deleted: its link goes with it."""
        self._links.pop(channel_arn, None)

    def update_media_storage(self, channel_arn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """UpdateMediaStorageConfiguration for an existing channel. Raises :class:`ApiError`."""
        config = body.get("MediaStorageConfiguration")
        if not isinstance(config, Mapping):
            raise invalid("MediaStorageConfiguration is required")
        status = config.get("Status")
        if status not in ("ENABLED", "DISABLED"):
            raise invalid("MediaStorageConfiguration.Status must be ENABLED or DISABLED")
        stream_arn = string_field(config, "StreamARN")
        if stream_arn is not None and not _is_stream_arn(stream_arn):
            raise invalid(f"StreamARN {stream_arn[:200]!r} is not a stream ARN")
        if status == "ENABLED":
            if stream_arn is None:
                raise invalid("StreamARN is required when Status is ENABLED")
            stream = self._streams.get(stream_arn)
            if stream is None:
                raise ApiError(404, "ResourceNotFoundException", _STREAM_NOT_FOUND)
            if stream.retention_hours == 0:
                # The model's documentation of NoDataRetentionException, word for word.
                raise ApiError(
                    400,
                    "NoDataRetentionException",
                    "The Stream data retention in hours is equal to zero.",
                )
            for other, link in self._links.items():
                if other != channel_arn and link.enabled and link.stream_arn == stream_arn:
                    # [inferred] one stream per channel; the model lists ResourceInUse.
                    raise ApiError(
                        400,
                        "ResourceInUseException",
                        f"stream {stream.name} already stores the media of another channel",
                    )
        self._links[channel_arn] = MediaStorage(status, stream_arn)
        logger.info("media storage of %s: %s %s", channel_arn, status, stream_arn or "")
        return {}


def check_join_body(body: Mapping[str, Any], *, viewer: bool) -> tuple[str, str | None]:
    """Validate a JoinStorageSession[AsViewer] body (camelCase ``channelArn``, ``clientId``).

    Returns:
        The channel ARN and the viewer's client id (None for the master's join).

    Raises:
        ApiError: InvalidArgumentException for a missing or malformed field.
    """
    arn = body.get("channelArn")
    if not isinstance(arn, str) or not arn:
        hint = " (camelCase: channelArn, not ChannelARN)" if "ChannelARN" in body else ""
        raise invalid(f"channelArn is required{hint}")
    if len(arn) > MAX_ARN_LENGTH or not CHANNEL_ARN_RE.fullmatch(arn):
        raise invalid(f"channelArn {arn[:200]!r} is not a signaling channel ARN")
    if not viewer:
        return arn, None
    client_id = body.get("clientId")
    if not isinstance(client_id, str) or not ID_RE.fullmatch(client_id):
        raise invalid(f"clientId is required: {ID_RULE}")
    return arn, client_id


def _media_sections(sdp: str) -> list[tuple[str, bool, list[str]]]:
    """(kind, active, codec names) of each m-line of an SDP."""
    sections: list[tuple[str, bool, list[str]]] = []
    for chunk in ("\n" + sdp.replace("\r\n", "\n")).split("\nm=")[1:]:
        lines = chunk.split("\n")
        fields = lines[0].split()
        if len(fields) < 4:
            continue
        kind, port, formats = fields[0], fields[1], fields[3:]
        rtpmap: dict[str, str] = {}
        inactive = False
        for line in lines[1:]:
            if line.startswith("a=rtpmap:"):
                pt, _, rest = line[len("a=rtpmap:") :].partition(" ")
                rtpmap[pt] = rest.split("/")[0].strip()
            elif line.strip() in ("a=inactive", "a=recvonly"):
                inactive = True
        codecs = [rtpmap.get(pt, pt) for pt in formats]
        sections.append((kind, port != "0" and not inactive, codecs))
    return sections


def sent_kinds(sdp: str) -> set[str]:
    """Media kinds an SDP's sender sends (sections neither rejected nor recvonly/inactive)."""
    return {kind for kind, active, _ in _media_sections(sdp) if active}


def answer_codec_problem(sdp: str) -> str | None:
    """Why the storage session cannot accept this answer, or None if it can.

    Video must be sent with H.264 and audio, when sent at all, with Opus
    (docs/protocol.md#storage-sessions: the API doc lists H.264/Opus; video-only is accepted
    as the 2026 SDKs do). Only the first codec of a section counts: it is the one the sender uses.
    """
    video = [s for s in _media_sections(sdp) if s[0] == "video" and s[1]]
    audio = [s for s in _media_sections(sdp) if s[0] == "audio" and s[1]]
    if not video:
        return "the answer sends no video; the storage session records H.264 video"
    for _, _, codecs in video:
        first = next((c for c in codecs if c.lower() not in ("rtx", "red", "ulpfec")), "")
        if first.lower() != "h264":
            return f"video codec {first or 'none'} is not accepted: send H.264"
    for _, _, codecs in audio:
        if not codecs or codecs[0].lower() != "opus":
            return f"audio codec {codecs[0] if codecs else 'none'} is not accepted: send Opus"
    return None


def viewer_answer_problem(sdp: str) -> str | None:
    """Why the storage session cannot accept a viewer's answer, or None if it can.

    "Viewers currently can't send any video tracks"; their audio is optional and Opus
    (docs/protocol.md#storage-sessions).
    """
    if "video" in sent_kinds(sdp):
        return "viewers cannot send video to the storage session: answer video recvonly"
    for kind, active, codecs in _media_sections(sdp):
        if kind == "audio" and active and (not codecs or codecs[0].lower() != "opus"):
            return f"audio codec {codecs[0] if codecs else 'none'} is not accepted: send Opus"
    return None
