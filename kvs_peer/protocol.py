"""KVS signaling messages: encode, decode, and hold early ICE candidates. No I/O.

Client -> service frames (docs/protocol.md#client-frames)::

    {"action":"SDP_OFFER","messagePayload":"<base64>","recipientClientId":"v1","correlationId":"1"}

Service -> client frames (docs/protocol.md#service-frames)::

    {"messagePayload":"...","messageType":"SDP_ANSWER","senderClientId":"..."}

Decoding follows the real service and SDKs: key casing is ignored, empty or unparsable frames
and junk such as ``{"message": "Endpoint request timed out"}`` are dropped (``None``), GO_AWAY
and RECONNECT_ICE_SERVER need no payload, and a missing ``senderClientId`` means "from the
master". Decoders never raise on network input.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument, ServiceError
from .rules import (
    ICE_SERVER_TTL,
    ID_RE,
    ID_RULE,
    MAX_ICE_SERVER_TTL,
    MAX_PAYLOAD_CHARS,
    MIN_ICE_SERVER_TTL,
)

__all__ = [
    "MAX_CANDIDATES_PER_PEER",
    "MAX_PAYLOAD_CHARS",
    "Action",
    "CandidateBuffer",
    "ClientMessage",
    "Event",
    "GoAway",
    "IceCandidate",
    "IceServer",
    "MessageType",
    "ReconnectIceServer",
    "Role",
    "SdpAnswer",
    "SdpOffer",
    "StatusResponse",
    "candidate_payload",
    "decode_client_message",
    "decode_message",
    "decode_payload",
    "encode_event",
    "encode_message",
    "encode_payload",
    "sdp_payload",
]


class Role(enum.StrEnum):
    """Which side of a signaling channel a peer connects as."""

    MASTER = "MASTER"
    VIEWER = "VIEWER"

    @classmethod
    def parse(cls, value: str) -> Role:
        """Accept ``master``/``MASTER``/``viewer``...; raise InvalidArgument otherwise.

        ASCII only: Unicode case mapping would turn ``ma\u017fter`` (long s) or ``v\u0131ewer``
        (dotless i) into a valid role.
        """
        text = str(value)
        try:
            if not text.isascii():
                raise ValueError(text)
            return cls(text.upper())
        except ValueError:
            raise InvalidArgument(f"invalid role {value!r}: use MASTER or VIEWER") from None


class Action(enum.StrEnum):
    """What a client may send."""

    SDP_OFFER = "SDP_OFFER"
    SDP_ANSWER = "SDP_ANSWER"
    ICE_CANDIDATE = "ICE_CANDIDATE"


class MessageType(enum.StrEnum):
    """What the service may send."""

    SDP_OFFER = "SDP_OFFER"
    SDP_ANSWER = "SDP_ANSWER"
    ICE_CANDIDATE = "ICE_CANDIDATE"
    STATUS_RESPONSE = "STATUS_RESPONSE"
    GO_AWAY = "GO_AWAY"
    RECONNECT_ICE_SERVER = "RECONNECT_ICE_SERVER"


# ---------------------------------------------------------------------------------------------
# Payloads


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _escape_non_ascii(match: re.Match[str]) -> str:
    return "".join(f"\\u{unit:04x}" for unit in _utf16_units(match.group()))


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def encode_payload(obj: Mapping[str, Any]) -> str:
    """Base64 of compact JSON, exactly ``btoa(JSON.stringify(obj))`` in the JS SDK.

    Identical for ASCII content (every SDP and candidate). Non-ASCII characters are sent as
    JSON ``\\uXXXX`` escapes so that JS peers, which decode with ``atob`` (Latin-1), read
    them back intact; DEL stays raw as in ``JSON.stringify``.
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    text = _NON_ASCII.sub(_escape_non_ascii, text)
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def decode_payload(payload: str) -> dict[str, Any] | None:
    """Decode a base64 JSON object payload; None when it is not one."""
    if not isinstance(payload, str) or not payload:
        return None
    try:
        raw = base64.b64decode(payload, validate=True)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # The JS SDK's btoa() writes U+0080..U+00FF as single Latin-1 bytes.
            text = raw.decode("latin-1")
        obj = json.loads(text)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def sdp_payload(type_: str, sdp: str) -> dict[str, str]:
    """The payload of an SDP_OFFER/SDP_ANSWER: ``RTCSessionDescription.toJSON()``."""
    return {"type": type_, "sdp": sdp}


def candidate_payload(
    candidate: str,
    sdp_mid: str | None,
    sdp_mline_index: int | None,
    username_fragment: str | None = None,
) -> dict[str, Any]:
    """The payload of an ICE_CANDIDATE: ``RTCIceCandidate.toJSON()``."""
    payload: dict[str, Any] = {
        "candidate": candidate,
        "sdpMid": sdp_mid,
        "sdpMLineIndex": sdp_mline_index,
    }
    if username_fragment is not None:
        payload["usernameFragment"] = username_fragment
    return payload


# ---------------------------------------------------------------------------------------------
# Client -> service


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise InvalidArgument(f"invalid {what} {value!r}: use {ID_RULE}")


def encode_message(
    action: Action | str,
    payload: Mapping[str, Any],
    recipient_client_id: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """Encode one client frame exactly as the JS SDK's ``SignalingClient`` does.

    Args:
        action: ``SDP_OFFER``, ``SDP_ANSWER`` or ``ICE_CANDIDATE``.
        payload: the JSON object to send (see :func:`sdp_payload`, :func:`candidate_payload`).
        recipient_client_id: the viewer to deliver to; required when sending as master.
        correlation_id: ask the service to report a failure with a STATUS_RESPONSE.

    Raises:
        InvalidArgument: unknown action, bad id, or a payload over the 10K limit.
    """
    try:
        action = Action(action)
    except ValueError:
        raise InvalidArgument(
            f"unknown action {action!r}: use one of {', '.join(a.value for a in Action)}"
        ) from None
    if recipient_client_id is not None:
        _check_id(recipient_client_id, "recipient client id")
    if correlation_id is not None:
        _check_id(correlation_id, "correlation id")
    encoded = encode_payload(payload)
    if len(encoded) > MAX_PAYLOAD_CHARS:
        hint = (
            " (an SDP with every candidate inlined is the usual cause: trickle candidates, "
            "use fewer ICE servers or network interfaces, or drop unused codecs)"
            if action is not Action.ICE_CANDIDATE
            else ""
        )
        raise InvalidArgument(
            f"{action} payload is {len(encoded)} base64 characters, over the KVS limit of "
            f"{MAX_PAYLOAD_CHARS}{hint}"
        )
    message: dict[str, str] = {"action": action.value, "messagePayload": encoded}
    if recipient_client_id is not None:
        message["recipientClientId"] = recipient_client_id
    if correlation_id is not None:
        message["correlationId"] = correlation_id
    return json.dumps(message, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A client frame as the service sees it (used by the emulator)."""

    action: Action
    message_payload: str
    recipient_client_id: str | None = None
    correlation_id: str | None = None


def _lower_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items() if isinstance(k, str)}


def _parse_object(text: str | bytes) -> dict[str, Any] | None:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return _lower_keys(obj) if isinstance(obj, dict) else None


def _opt_str(value: Any) -> str | None:
    # Empty strings count as absent (C clients always send RecipientClientId).
    return value if isinstance(value, str) and value else None


def decode_client_message(text: str | bytes) -> ClientMessage | str:
    """Parse a client frame, accepting camelCase (JS) and PascalCase (C) keys.

    Returns:
        A :class:`ClientMessage`, or a human-readable reason the frame is invalid (the
        emulator turns it into a STATUS_RESPONSE when a correlation id is present).
    """
    obj = _parse_object(text)
    if obj is None:
        return "message is not a JSON object"
    try:
        action = Action(obj.get("action", ""))
    except ValueError:
        return f"unknown action {str(obj.get('action'))[:64]!r}"
    payload = obj.get("messagepayload")
    if not isinstance(payload, str) or not payload:
        return "messagePayload is required"
    recipient = _opt_str(obj.get("recipientclientid"))
    correlation = _opt_str(obj.get("correlationid"))
    if recipient is not None and not ID_RE.fullmatch(recipient):
        return "recipientClientId is malformed"
    if correlation is not None and not ID_RE.fullmatch(correlation):
        return "correlationId is malformed"
    return ClientMessage(action, payload, recipient, correlation)


# ---------------------------------------------------------------------------------------------
# Service -> client


@dataclass(frozen=True, slots=True)
class SdpOffer:
    """An offer; ``sender_client_id`` is None when it comes from the master."""

    sdp: str
    sender_client_id: str | None = None


@dataclass(frozen=True, slots=True)
class SdpAnswer:
    """An answer; ``sender_client_id`` is None when it comes from the master."""

    sdp: str
    sender_client_id: str | None = None


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled remote candidate. ``candidate == ""`` means end of candidates."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None
    sender_client_id: str | None = None


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """The service's report that a message sent with ``correlation_id`` failed."""

    correlation_id: str
    error_type: str | None = None
    status_code: str | None = None
    description: str | None = None
    sender_client_id: str | None = None

    def error(self) -> ServiceError:
        """This report as an exception, to raise or log."""
        return ServiceError(
            correlation_id=self.correlation_id,
            error_type=self.error_type,
            status_code=self.status_code,
            description=self.description,
        )


@dataclass(frozen=True, slots=True)
class GoAway:
    """The service will close this connection soon (1 minute grace): reconnect."""

    sender_client_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReconnectIceServer:
    """TURN servers are rotating: fetch a new ICE configuration."""

    sender_client_id: str | None = None


Event = SdpOffer | SdpAnswer | IceCandidate | StatusResponse | GoAway | ReconnectIceServer


def _decode_status(obj: Any, sender: str | None) -> StatusResponse | None:
    if not isinstance(obj, dict):
        return None
    status = _lower_keys(obj)
    correlation = status.get("correlationid")
    if not isinstance(correlation, str):
        return None
    code = status.get("statuscode")
    return StatusResponse(
        correlation_id=correlation,
        error_type=_opt_str(status.get("errortype")),
        status_code=str(code) if isinstance(code, str | int) else None,
        description=_opt_str(status.get("description")),
        sender_client_id=sender,
    )


def decode_message(text: str | bytes) -> Event | None:
    """Decode one service frame into an event, or None for anything to ignore.

    Never raises on network input.
    """
    obj = _parse_object(text)
    if obj is None:
        return None
    sender = _opt_str(obj.get("senderclientid"))
    try:
        message_type = MessageType(obj.get("messagetype", ""))
    except ValueError:
        return None
    if message_type is MessageType.GO_AWAY:
        return GoAway(sender)
    if message_type is MessageType.RECONNECT_ICE_SERVER:
        return ReconnectIceServer(sender)
    if message_type is MessageType.STATUS_RESPONSE:
        return _decode_status(obj.get("statusresponse"), sender)
    payload = decode_payload(obj.get("messagepayload"))  # type: ignore[arg-type]
    if payload is None:
        return None
    if message_type in (MessageType.SDP_OFFER, MessageType.SDP_ANSWER):
        sdp = payload.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            return None
        cls = SdpOffer if message_type is MessageType.SDP_OFFER else SdpAnswer
        return cls(sdp=sdp, sender_client_id=sender)
    # ICE_CANDIDATE
    candidate = payload.get("candidate")
    if candidate is None:
        candidate = ""  # null candidate = end of candidates
    if not isinstance(candidate, str):
        return None
    mid = payload.get("sdpMid")
    index = payload.get("sdpMLineIndex")
    ufrag = payload.get("usernameFragment")
    return IceCandidate(
        candidate=candidate,
        sdp_mid=mid if isinstance(mid, str) else None,
        sdp_mline_index=index if isinstance(index, int) and not isinstance(index, bool) else None,
        username_fragment=ufrag if isinstance(ufrag, str) else None,
        sender_client_id=sender,
    )


def encode_event(
    message_type: MessageType | str,
    *,
    message_payload: str | None = None,
    sender_client_id: str | None = None,
    status_response: Mapping[str, Any] | None = None,
) -> str:
    """Encode a service frame as the real service does: compact JSON, keys sorted.

    ``sender_client_id`` is omitted for master-originated messages.
    """
    try:
        kind = MessageType(message_type)
    except ValueError:
        raise InvalidArgument(f"unknown message type {message_type!r}") from None
    message: dict[str, Any] = {"messageType": kind.value}
    if message_payload is not None:
        message["messagePayload"] = message_payload
    if sender_client_id is not None:
        message["senderClientId"] = sender_client_id
    if status_response is not None:
        message["statusResponse"] = dict(status_response)
    return json.dumps(message, separators=(",", ":"), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# ICE configuration


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN or TURN server (docs/protocol.md#ice-configuration).

    The same server in both of its spellings: an entry of ``RTCConfiguration.iceServers``
    (``urls``, ``username``, ``credential``: :meth:`from_json`, :meth:`to_json`) and an entry of
    GetIceServerConfig's ``IceServerList`` (``Uris``, ``Username``, ``Password``, ``Ttl``:
    :meth:`from_value`). Peers use the first, the emulator serves the second.
    """

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None
    ttl: int | None = None
    """Seconds the credentials stay valid; None when unknown (STUN, browser form). The
    emulator serves None as :data:`~kvs_peer.rules.ICE_SERVER_TTL`, and mints the
    credentials itself when ``username``/``credential`` are None."""

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> IceServer | None:
        """Parse the browser form (``urls`` may be one string); None when it has no URL."""
        urls = entry.get("urls")
        urls = (
            (urls,) if isinstance(urls, str) else tuple(u for u in urls or () if isinstance(u, str))
        )
        if not urls:
            return None
        return cls(urls, entry.get("username"), entry.get("credential"))

    def to_json(self) -> dict[str, Any]:
        """The browser form: ``{"urls": [...], "username": ..., "credential": ...}``."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out

    @classmethod
    def from_value(cls, value: IceServer | Mapping[str, Any]) -> IceServer:
        """Accept an IceServer or a GetIceServerConfig entry ``{Uris, Username, Password, Ttl}``.

        Raises:
            InvalidArgument: no ``Uris``, or a ``Ttl`` outside the model's range.
        """
        if isinstance(value, IceServer):
            return value
        if not isinstance(value, Mapping) or not value.get("Uris"):
            raise InvalidArgument(
                f"ice server {value!r} must be a mapping with a non-empty 'Uris' list"
            )
        uris = value["Uris"]
        uris = (uris,) if isinstance(uris, str) else tuple(uris)
        ttl = int(value.get("Ttl", ICE_SERVER_TTL))
        if not MIN_ICE_SERVER_TTL <= ttl <= MAX_ICE_SERVER_TTL:
            raise InvalidArgument(
                f"ice server Ttl {ttl} must be from {MIN_ICE_SERVER_TTL} to "
                f"{MAX_ICE_SERVER_TTL} seconds"
            )
        return cls(uris, value.get("Username"), value.get("Password"), ttl)


# ---------------------------------------------------------------------------------------------
# Early candidates

MAX_CANDIDATES_PER_PEER = 200
"""Candidates taken from one remote peer per session, whether they came before its SDP or
after (a real peer sends a few dozen; KVS itself allows :data:`~kvs_peer.rules.ICE_RATE` ICE
messages per second)."""


@dataclass
class CandidateBuffer:
    """Holds ICE candidates that arrive before their sender's SDP (docs/protocol.md#receiving).

    Feed every decoded event to :meth:`receive`; it returns the events to act on now, in
    order. Bounded so a hostile peer cannot grow memory without limit: per sender by the same
    cap the session applies (a candidate held here is counted once, by the session), and in
    total by ``max_held``.
    """

    max_senders: int = 64
    max_per_sender: int = MAX_CANDIDATES_PER_PEER
    max_held: int = 1024
    """Candidates held for all senders together; the least recently active sender's go first."""
    max_known: int = 4096
    """Senders remembered as having sent an SDP; the oldest are forgotten beyond this."""
    _seen_sdp: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _held: OrderedDict[str, list[IceCandidate]] = field(default_factory=OrderedDict)
    _total: int = 0

    @staticmethod
    def _key(sender: str | None) -> str:
        return sender if sender is not None else "\0master"

    def receive(self, event: Event) -> list[Event]:
        """Return the events ready for the application after ``event``."""
        if isinstance(event, SdpOffer | SdpAnswer):
            key = self._key(event.sender_client_id)
            self._seen_sdp[key] = None
            self._seen_sdp.move_to_end(key)
            while len(self._seen_sdp) > self.max_known:
                self._seen_sdp.popitem(last=False)
            return [event, *self._release(key)]
        if isinstance(event, IceCandidate):
            key = self._key(event.sender_client_id)
            if key in self._seen_sdp:
                return [event]
            held = self._held.setdefault(key, [])
            self._held.move_to_end(key)
            if len(held) < self.max_per_sender:
                held.append(event)
                self._total += 1
            while len(self._held) > self.max_senders or self._total > self.max_held:
                self._release(next(iter(self._held)))
            return []
        return [event]

    def _release(self, key: str) -> list[IceCandidate]:
        held = self._held.pop(key, [])
        self._total -= len(held)
        return held

    def forget(self, sender: str | None) -> None:
        """Drop state for one sender (its session ended): its next candidates wait again."""
        key = self._key(sender)
        self._seen_sdp.pop(key, None)
        self._release(key)

    def clear(self) -> None:
        """Drop all state (for example after a signaling reconnect)."""
        self._seen_sdp.clear()
        self._held.clear()
        self._total = 0
