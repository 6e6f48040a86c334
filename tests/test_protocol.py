"""Tests for kvs_peer.protocol: client frames, service events, the early-candidate buffer.

Expected client frames were produced by running the JS SDK's own expression,
``JSON.stringify({action, messagePayload: btoa(JSON.stringify(payload)), recipientClientId,
correlationId})``, in Node and pasted here.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from kvs_peer.errors import InvalidArgument
from kvs_peer.protocol import (
    MAX_PAYLOAD_CHARS,
    Action,
    CandidateBuffer,
    ClientMessage,
    GoAway,
    IceCandidate,
    MessageType,
    ReconnectIceServer,
    SdpAnswer,
    SdpOffer,
    StatusResponse,
    candidate_payload,
    decode_client_message,
    decode_message,
    decode_payload,
    encode_event,
    encode_message,
    encode_payload,
    sdp_payload,
)

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
BROWSER_CANDIDATE = (
    "candidate:0 2 UDP 2122252542 829d0025-f4fb-bb4c-8b33-39578c427ced.local 53963 typ host"
)
# btoa(JSON.stringify(...)) from Node for the payloads above.
OFFER_B64 = (
    "eyJ0eXBlIjoib2ZmZXIiLCJzZHAiOiJ2PTBcclxubz0tIDQ2MTE3MzE0MDA0MzAwNTEzMzYgMiBJTiBJUDQgMTI3Lj"
    "AuMC4xXHJcbnM9LVxyXG50PTAgMFxyXG5hPWdyb3VwOkJVTkRMRSAwXHJcbiJ9"
)
ANSWER_B64 = (
    "eyJ0eXBlIjoiYW5zd2VyIiwic2RwIjoidj0wXHJcbm89LSA0NjExNzMxNDAwNDMwMDUxMzM2IDIgSU4gSVA0IDEyNy"
    "4wLjAuMVxyXG5zPS1cclxudD0wIDBcclxuYT1ncm91cDpCVU5ETEUgMFxyXG4ifQ=="
)
CANDIDATE_B64 = (
    "eyJjYW5kaWRhdGUiOiJjYW5kaWRhdGU6MCAyIFVEUCAyMTIyMjUyNTQyIDgyOWQwMDI1LWY0ZmItYmI0Yy04YjMzLT"
    "M5NTc4YzQyN2NlZC5sb2NhbCA1Mzk2MyB0eXAgaG9zdCIsInNkcE1pZCI6IjAiLCJzZHBNTGluZUluZGV4IjowLCJ1"
    "c2VybmFtZUZyYWdtZW50IjoiNDQ0YmI5MDcifQ=="
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --------------------------------------------------------------------------------------------
# encode_message: byte-identical to the JS SDK


def test_encode_offer_from_viewer() -> None:
    frame = encode_message(Action.SDP_OFFER, sdp_payload("offer", SDP))
    assert frame == '{"action":"SDP_OFFER","messagePayload":"' + OFFER_B64 + '"}'


def test_encode_answer_with_recipient_and_correlation() -> None:
    frame = encode_message("SDP_ANSWER", sdp_payload("answer", SDP), "viewer-1", "1575158400000")
    assert frame == (
        '{"action":"SDP_ANSWER","messagePayload":"' + ANSWER_B64 + '",'
        '"recipientClientId":"viewer-1","correlationId":"1575158400000"}'
    )


def test_encode_browser_candidate() -> None:
    payload = candidate_payload(BROWSER_CANDIDATE, "0", 0, "444bb907")
    frame = encode_message(Action.ICE_CANDIDATE, payload, recipient_client_id="TestClientId")
    assert frame == (
        '{"action":"ICE_CANDIDATE","messagePayload":"' + CANDIDATE_B64 + '",'
        '"recipientClientId":"TestClientId"}'
    )


def test_encode_candidate_null_mid_and_index_correlation_only() -> None:
    payload = candidate_payload("candidate:1 1 udp 1 10.0.0.1 9 typ host", None, None)
    assert "usernameFragment" not in payload
    frame = encode_message("ICE_CANDIDATE", payload, correlation_id="c.1_x-Y")
    assert frame == (
        '{"action":"ICE_CANDIDATE","messagePayload":"eyJjYW5kaWRhdGUiOiJjYW5kaWRhdGU6MSAxIHVkcCAx'
        "IDEwLjAuMC4xIDkgdHlwIGhvc3QiLCJzZHBNaWQiOm51bGwsInNkcE1MaW5lSW5kZXgiOm51bGx9"
        '","correlationId":"c.1_x-Y"}'
    )


def test_encode_escapes_like_json_stringify() -> None:
    payload = {"candidate": 'q"b\\s\x01\x1f\x7f/\t', "sdpMid": "audio", "sdpMLineIndex": 1}
    frame = encode_message("ICE_CANDIDATE", payload, "a.b_c-D", "0")
    assert frame == (
        '{"action":"ICE_CANDIDATE","messagePayload":"eyJjYW5kaWRhdGUiOiJxXCJiXFxzXHUwMDAxXHUwMDFm'
        'fy9cdCIsInNkcE1pZCI6ImF1ZGlvIiwic2RwTUxpbmVJbmRleCI6MX0=","recipientClientId":"a.b_c-D",'
        '"correlationId":"0"}'
    )


def test_encoded_payload_survives_js_atob() -> None:
    # The JS SDK decodes with JSON.parse(atob(payload)); atob yields one character per byte
    # (Latin-1), so UTF-8 bytes for non-ASCII text arrive as mojibake ("Café" -> "CafÃ©").
    # JSON \\u escapes (ensure_ascii) keep the payload pure ASCII and readable by every peer.
    payload = sdp_payload("offer", "v=0\r\ns=Café ✓ 東京\r\n")
    encoded = encode_payload(payload)
    as_js_reads_it = json.loads(base64.b64decode(encoded).decode("latin-1"))
    assert as_js_reads_it == payload
    assert decode_payload(encoded) == payload


def test_payload_limit_exact() -> None:
    assert MAX_PAYLOAD_CHARS % 4 == 0
    overhead = len('{"candidate":""}')
    fits = {"candidate": "x" * (MAX_PAYLOAD_CHARS * 3 // 4 - overhead)}
    frame = json.loads(encode_message("ICE_CANDIDATE", fits))
    assert len(frame["messagePayload"]) == MAX_PAYLOAD_CHARS
    assert decode_payload(frame["messagePayload"]) == fits

    # One more JSON character is the smallest overflow (base64 grows in steps of 4).
    over = {"candidate": fits["candidate"] + "x"}
    with pytest.raises(InvalidArgument) as info:
        encode_message("ICE_CANDIDATE", over)
    message = str(info.value)
    assert f"{MAX_PAYLOAD_CHARS + 4} base64 characters" in message
    assert str(MAX_PAYLOAD_CHARS) in message
    assert isinstance(info.value, ValueError)


def test_payload_limit_sdp_hint() -> None:
    huge = sdp_payload("offer", "a=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\n" * 400)
    with pytest.raises(InvalidArgument, match="trickle"):
        encode_message(Action.SDP_OFFER, huge)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 257, "é", "a/b", "a:b", "id\n"], ids=repr)
def test_encode_bad_ids(bad: str) -> None:
    payload = sdp_payload("offer", SDP)
    with pytest.raises(InvalidArgument, match="recipient client id"):
        encode_message("SDP_OFFER", payload, recipient_client_id=bad)
    with pytest.raises(InvalidArgument, match="correlation id"):
        encode_message("SDP_OFFER", payload, correlation_id=bad)


def test_encode_id_length_limit() -> None:
    frame = json.loads(encode_message("SDP_OFFER", {"sdp": "x"}, "r" * 256, "c" * 256))
    assert frame["recipientClientId"] == "r" * 256
    assert frame["correlationId"] == "c" * 256


@pytest.mark.parametrize("action", ["", "sdp_offer", "SDP", "GO_AWAY", "STATUS_RESPONSE", None])
def test_encode_unknown_action(action: Any) -> None:
    with pytest.raises(InvalidArgument, match="unknown action") as info:
        encode_message(action, {"sdp": "x"})
    assert "SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE" in str(info.value)


# --------------------------------------------------------------------------------------------
# decode_message: valid events

KEY_STYLES: dict[str, Callable[[str], str]] = {
    "camel": lambda key: key,
    "pascal": lambda key: key[0].upper() + key[1:],
    "upper": str.upper,
    "lower": str.lower,
}


def _frame(style: str, **fields: Any) -> str:
    rename = KEY_STYLES[style]
    return json.dumps({rename(k): v for k, v in fields.items()})


VALID = [
    (
        {"messageType": "SDP_OFFER", "messagePayload": OFFER_B64, "senderClientId": "v1"},
        SdpOffer(sdp=SDP, sender_client_id="v1"),
    ),
    (
        {"messageType": "SDP_ANSWER", "messagePayload": ANSWER_B64},
        SdpAnswer(sdp=SDP, sender_client_id=None),
    ),
    (
        {
            "messagePayload": CANDIDATE_B64,
            "messageType": "ICE_CANDIDATE",
            "senderClientId": "538iuusigg83ukra6cswcf",
        },
        IceCandidate(
            candidate=BROWSER_CANDIDATE,
            sdp_mid="0",
            sdp_mline_index=0,
            username_fragment="444bb907",
            sender_client_id="538iuusigg83ukra6cswcf",
        ),
    ),
    (
        {
            "messageType": "STATUS_RESPONSE",
            "statusResponse": {
                "correlationId": "1575158400000",
                "errorType": "InvalidArgumentException",
                "statusCode": "400",
                "description": "recipient not connected",
                "success": False,
            },
        },
        StatusResponse(
            correlation_id="1575158400000",
            error_type="InvalidArgumentException",
            status_code="400",
            description="recipient not connected",
        ),
    ),
    ({"messageType": "GO_AWAY"}, GoAway()),
    ({"messageType": "RECONNECT_ICE_SERVER", "senderClientId": "x"}, ReconnectIceServer("x")),
]


@pytest.mark.parametrize("style", KEY_STYLES)
@pytest.mark.parametrize(("fields", "expected"), VALID, ids=lambda v: type(v).__name__)
def test_decode_every_event_type_any_key_case(
    style: str, fields: dict[str, Any], expected: Any
) -> None:
    assert decode_message(_frame(style, **fields)) == expected


def test_decode_real_wire_frame() -> None:
    # Compact, sorted keys, as logged from the real service (docs/protocol.md#service-frames).
    frame = (
        '{"messagePayload":"' + CANDIDATE_B64 + '","messageType":"ICE_CANDIDATE",'
        '"senderClientId":"538iuusigg83ukra6cswcf"}'
    )
    event = decode_message(frame)
    assert isinstance(event, IceCandidate)
    assert event.candidate == BROWSER_CANDIDATE
    assert decode_message(frame.encode("utf-8")) == event


def test_decode_mixed_key_case_in_one_frame() -> None:
    frame = json.dumps(
        {"MessageType": "SDP_OFFER", "messagepayload": OFFER_B64, "SENDERCLIENTID": "v9"}
    )
    assert decode_message(frame) == SdpOffer(SDP, "v9")


def test_decode_status_response_inner_pascal_case() -> None:
    frame = json.dumps(
        {
            "MessageType": "STATUS_RESPONSE",
            "StatusResponse": {"CorrelationId": "7", "ErrorType": "E", "StatusCode": "500"},
        }
    )
    assert decode_message(frame) == StatusResponse("7", "E", "500", None)


@pytest.mark.parametrize(("code", "expected"), [("400", "400"), (400, "400"), (None, None)])
def test_decode_status_code_string_or_int(code: Any, expected: str | None) -> None:
    status: dict[str, Any] = {"correlationId": "1"}
    if code is not None:
        status["statusCode"] = code
    event = decode_message(json.dumps({"messageType": "STATUS_RESPONSE", "statusResponse": status}))
    assert event == StatusResponse(correlation_id="1", status_code=expected)


@pytest.mark.parametrize(
    "status",
    [None, "x", [], {}, {"correlationId": 1}, {"statusCode": "400"}],
    ids=repr,
)
def test_decode_status_response_without_correlation_is_dropped(status: Any) -> None:
    frame = {"messageType": "STATUS_RESPONSE"}
    if status is not None:
        frame["statusResponse"] = status
    assert decode_message(json.dumps(frame)) is None


@pytest.mark.parametrize("sender", [None, "", 5, ["v1"]], ids=repr)
def test_decode_missing_or_empty_sender_means_master(sender: Any) -> None:
    fields: dict[str, Any] = {"messageType": "SDP_ANSWER", "messagePayload": ANSWER_B64}
    if sender is not None:
        fields["senderClientId"] = sender
    event = decode_message(json.dumps(fields))
    assert event == SdpAnswer(SDP, None)


@pytest.mark.parametrize("cls", [GoAway, ReconnectIceServer])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"messagePayload": _b64('{"reason":"maintenance"}')},
        {"messagePayload": "not base64!"},
        {"messagePayload": ""},
        {"statusResponse": {"correlationId": "x", "statusCode": "200"}},
        {"senderClientId": "svc"},
    ],
    ids=["bare", "payload", "junk-payload", "empty-payload", "status", "sender"],
)
def test_decode_go_away_and_reconnect_with_and_without_payload(
    cls: type, extra: dict[str, Any]
) -> None:
    message_type = "GO_AWAY" if cls is GoAway else "RECONNECT_ICE_SERVER"
    event = decode_message(json.dumps({"messageType": message_type, **extra}))
    assert event == cls(extra.get("senderClientId"))


def test_decode_candidate_details() -> None:
    def candidate(payload: str) -> Any:
        return decode_message(
            json.dumps({"messageType": "ICE_CANDIDATE", "messagePayload": _b64(payload)})
        )

    # null candidate = end of candidates
    assert candidate('{"candidate":null,"sdpMid":"0","sdpMLineIndex":0}') == IceCandidate(
        "", "0", 0
    )
    assert candidate('{"candidate":""}') == IceCandidate("")
    # C SDK payload: no usernameFragment
    assert candidate('{"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0}') == (
        IceCandidate("candidate:1", "0", 0, None)
    )
    # Wrong types are dropped field by field (bool is not an index)
    assert candidate(
        '{"candidate":"c","sdpMid":0,"sdpMLineIndex":true,"usernameFragment":1}'
    ) == IceCandidate("c")
    assert candidate('{"candidate":"c","sdpMLineIndex":"0"}') == IceCandidate("c")
    assert candidate('{"candidate":5}') is None
    assert candidate('{"candidate":["c"]}') is None


def test_decode_payload_from_js_btoa_with_latin1_text() -> None:
    # btoa(JSON.stringify({type:"offer", sdp:"v=0\r\ns=Café\r\n"})) from Node: btoa writes
    # U+00E9 as the single byte 0xE9 (not UTF-8), which a JS peer sends for any text in
    # U+0080..U+00FF. The JS SDK reads its own frames back with atob (Latin-1).
    frame = json.dumps(
        {
            "messageType": "SDP_OFFER",
            "messagePayload": "eyJ0eXBlIjoib2ZmZXIiLCJzZHAiOiJ2PTBcclxucz1DYWbpXHJcbiJ9",
            "senderClientId": "v1",
        }
    )
    assert decode_message(frame) == SdpOffer("v=0\r\ns=Café\r\n", "v1")


def test_decode_payload_from_js_buffer_fallback_utf8() -> None:
    # Text beyond U+00FF makes btoa throw; the JS SDK then uses Buffer (UTF-8).
    payload = _b64(json.dumps({"type": "answer", "sdp": "v=0\r\ns=東京\r\n"}, ensure_ascii=False))
    frame = json.dumps({"messageType": "SDP_ANSWER", "messagePayload": payload})
    assert decode_message(frame) == SdpAnswer("v=0\r\ns=東京\r\n")


# --------------------------------------------------------------------------------------------
# decode_message: junk is dropped, never raised


JUNK: list[tuple[str, str | bytes]] = [
    ("empty", ""),
    ("empty-bytes", b""),
    ("whitespace", " \r\n\t "),
    ("timeout", '{"message": "Endpoint request timed out", "connectionId":"x","requestId":"y"}'),
    ("forbidden", '{"message": "Forbidden", "connectionId":"x","requestId":"y"}'),
    ("not-json", "SDP_OFFER"),
    ("truncated", '{"messageType":"SDP_OFFER","messagePayload":"eyJ'),
    ("array", "[1,2,3]"),
    ("array-of-frame", json.dumps([{"messageType": "GO_AWAY"}])),
    ("number", "42"),
    ("string", '"GO_AWAY"'),
    ("null", "null"),
    ("true", "true"),
    ("nan", "NaN"),
    ("no-type", json.dumps({"messagePayload": OFFER_B64})),
    ("unknown-type", json.dumps({"messageType": "SDP_PRANSWER", "messagePayload": OFFER_B64})),
    ("type-lowercase", json.dumps({"messageType": "sdp_offer", "messagePayload": OFFER_B64})),
    ("type-number", json.dumps({"messageType": 1, "messagePayload": OFFER_B64})),
    ("type-list", json.dumps({"messageType": ["SDP_OFFER"], "messagePayload": OFFER_B64})),
    ("type-object", json.dumps({"messageType": {"a": 1}, "messagePayload": OFFER_B64})),
    ("no-payload", json.dumps({"messageType": "SDP_OFFER", "senderClientId": "v"})),
    ("empty-payload", json.dumps({"messageType": "SDP_OFFER", "messagePayload": ""})),
    ("payload-number", json.dumps({"messageType": "SDP_OFFER", "messagePayload": 5})),
    ("payload-object", json.dumps({"messageType": "SDP_OFFER", "messagePayload": {"sdp": SDP}})),
    ("bad-base64", json.dumps({"messageType": "SDP_OFFER", "messagePayload": "!!!notbase64"})),
    ("base64-of-text", json.dumps({"messageType": "SDP_OFFER", "messagePayload": _b64("hello")})),
    ("base64-of-list", json.dumps({"messageType": "ICE_CANDIDATE", "messagePayload": _b64("[]")})),
    ("base64-of-str", json.dumps({"messageType": "ICE_CANDIDATE", "messagePayload": _b64('"c"')})),
    ("base64-of-bytes", json.dumps({"messageType": "SDP_OFFER", "messagePayload": "/w=="})),
    ("non-ascii-b64", json.dumps({"messageType": "SDP_OFFER", "messagePayload": "ÿÿÿÿ"})),
    (
        "sdp-missing",
        json.dumps({"messageType": "SDP_OFFER", "messagePayload": _b64('{"type":"offer"}')}),
    ),
    (
        "sdp-empty",
        json.dumps({"messageType": "SDP_ANSWER", "messagePayload": _b64('{"sdp":""}')}),
    ),
    (
        "sdp-number",
        json.dumps({"messageType": "SDP_ANSWER", "messagePayload": _b64('{"sdp":1}')}),
    ),
    ("nesting", "[" * 100_000),
    ("nesting-object", '{"a":' * 100_000),
    ("nesting-closed", '{"messageType":' + "[" * 5000 + "]" * 5000 + "}"),
    (
        "nesting-in-payload",
        json.dumps({"messageType": "SDP_OFFER", "messagePayload": _b64("[" * 100_000)}),
    ),
    ("huge-int", '{"messageType":"GO_AWAY","x":' + "9" * 10_000 + "}"),
    (
        "huge-int-in-payload",
        json.dumps({"messageType": "SDP_OFFER", "messagePayload": _b64('{"sdp":' + "9" * 10_000)}),
    ),
    ("not-utf8", b'{"messageType":"GO_AWAY","x":"\xff\xfe"}'),
    ("latin1-bytes", "{'messageType': 'GO_AWAY'}".encode("latin-1")),
    ("lone-surrogate-payload", '{"messageType":"SDP_OFFER","messagePayload":"\\ud800"}'),
]


@pytest.mark.parametrize("text", [j[1] for j in JUNK], ids=[j[0] for j in JUNK])
def test_decode_junk_returns_none(text: str | bytes) -> None:
    assert decode_message(text) is None


@pytest.mark.parametrize("value", [None, 5, bytearray(b'{"messageType":"GO_AWAY"}'), ["x"]])
def test_decode_non_text_returns_none(value: Any) -> None:
    assert decode_message(value) is None


def test_decode_payload_direct() -> None:
    assert decode_payload(OFFER_B64) == {"type": "offer", "sdp": SDP}
    for bad in ("", None, 5, "x", _b64("[1]"), _b64("1"), _b64("null")):
        assert decode_payload(bad) is None  # type: ignore[arg-type]


def _seed_frames() -> list[str]:
    frames = [json.dumps(fields) for fields, _ in VALID]
    frames.append(
        '{\n\t"MessageType": "SDP_OFFER",\n\t"SenderClientId": "c",\n\t"MessagePayload": "'
        + OFFER_B64
        + '"\n}'
    )
    return frames


_RANDOM_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    "",
    "x",
    "SDP_OFFER",
    "GO_AWAY",
    [],
    [1, [2]],
    {},
    {"correlationId": None},
    {"sdp": 1},
    "\ud800",
    "é",
]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(
                [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"=", b"\x00"]
            )
        elif op == 2 and buf:
            del buf[min(pos, len(buf) - 1) : pos + rng.randrange(1, 8)]
        elif op == 3:
            del buf[pos:]
        elif op == 4:
            chunk = buf[pos : pos + rng.randrange(1, 16)]
            buf[pos:pos] = chunk * rng.randrange(1, 4)
        else:
            buf[pos:pos] = rng.choice([b"\xff", b"\xc3", b"\xe2\x82", "é".encode(), b"\\u00"])
    return bytes(buf)


def _mutate_structure(rng: random.Random, text: str) -> str:
    obj = json.loads(text)
    keys = list(obj)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and keys:
            obj[rng.choice(keys)] = rng.choice(_RANDOM_VALUES)
        elif op == 1 and keys:
            key = rng.choice(keys)
            obj[rng.choice([key.upper(), key.lower(), key.title()])] = obj.pop(key, None)
            keys = list(obj)
        elif op == 2:
            payload = decode_payload(obj.get("messagePayload", "")) or {}
            target = rng.choice(["sdp", "candidate", "sdpMid", "sdpMLineIndex", "type", "x"])
            payload[target] = rng.choice(_RANDOM_VALUES)
            raw = json.dumps(payload, ensure_ascii=rng.random() < 0.5)
            obj["messagePayload"] = base64.b64encode(raw.encode("utf-8", "surrogatepass")).decode()
        elif op == 3:
            obj["messageType"] = rng.choice([*MessageType, "", "X", None])
        else:
            obj[rng.choice(["statusResponse", "StatusResponse"])] = rng.choice(
                [*_RANDOM_VALUES, {"correlationId": "1", "statusCode": rng.choice(_RANDOM_VALUES)}]
            )
    return json.dumps(obj)


def test_fuzz_decoders_never_raise() -> None:
    rng = random.Random(0x4B5653)
    seeds = _seed_frames()
    client_seeds = [
        encode_message("SDP_OFFER", sdp_payload("offer", SDP), "v1", "1"),
        encode_message("ICE_CANDIDATE", candidate_payload(BROWSER_CANDIDATE, "0", 0, "u")),
    ]
    results: dict[str, int] = {"event": 0, "none": 0}
    for i in range(6000):
        seed = rng.choice(seeds)
        if i % 2:
            data: str | bytes = _mutate_structure(rng, seed)
        else:
            data = _mutate_bytes(rng, seed.encode("utf-8"))
            if rng.random() < 0.5:
                data = data.decode("utf-8", "replace")
        event = decode_message(data)
        assert event is None or isinstance(
            event,
            SdpOffer | SdpAnswer | IceCandidate | StatusResponse | GoAway | ReconnectIceServer,
        ), repr(data)
        results["none" if event is None else "event"] += 1

        client = _mutate_bytes(rng, rng.choice(client_seeds).encode("utf-8"))
        parsed = decode_client_message(client)
        assert isinstance(parsed, ClientMessage | str), repr(client)
    # The mutations must exercise both outcomes, or the loop proves little.
    assert results["event"] > 500 and results["none"] > 500, results


# --------------------------------------------------------------------------------------------
# decode_client_message (the emulator's side)


def test_decode_client_message_js_frame() -> None:
    frame = encode_message("SDP_ANSWER", sdp_payload("answer", SDP), "viewer-1", "42")
    assert decode_client_message(frame) == ClientMessage(
        Action.SDP_ANSWER, ANSWER_B64, "viewer-1", "42"
    )
    assert decode_client_message(frame.encode("utf-8")) == decode_client_message(frame)


def test_decode_client_message_c_frame() -> None:
    # The C SDK: PascalCase, pretty-printed, RecipientClientId always present (empty for a
    # viewer), plus an undocumented IceServerList.
    frame = (
        '{\n\t"action": "SDP_OFFER",\n\t"RecipientClientId": "",\n\t"MessagePayload": "'
        + OFFER_B64
        + '",\n\t"CorrelationId": "",\n\t"IceServerList": [{"Password": "p", "Ttl": 298, '
        '"Uris": ["turn:1.2.3.4:443?transport=udp"], "Username": "u"}]\n}'
    )
    assert decode_client_message(frame) == ClientMessage(Action.SDP_OFFER, OFFER_B64, None, None)


def test_decode_client_message_pascal_with_recipient() -> None:
    frame = json.dumps(
        {
            "Action": "ICE_CANDIDATE",
            "RecipientClientId": "ConsumerViewer",
            "MessagePayload": CANDIDATE_B64,
            "CorrelationId": "c1",
        }
    )
    assert decode_client_message(frame) == ClientMessage(
        Action.ICE_CANDIDATE, CANDIDATE_B64, "ConsumerViewer", "c1"
    )


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("", "not a JSON object"),
        ("[]", "not a JSON object"),
        (b"\xff", "not a JSON object"),
        ("{", "not a JSON object"),
        ('{"action":"GO_AWAY","messagePayload":"eA=="}', "unknown action"),
        ('{"messagePayload":"eA=="}', "unknown action"),
        ('{"action":"SDP_OFFER"}', "messagePayload is required"),
        ('{"action":"SDP_OFFER","messagePayload":""}', "messagePayload is required"),
        ('{"action":"SDP_OFFER","messagePayload":5}', "messagePayload is required"),
        ('{"action":"SDP_OFFER","messagePayload":"eA==","recipientClientId":"a b"}', "recipient"),
        (
            '{"action":"SDP_OFFER","messagePayload":"eA==","recipientClientId":"'
            + "r" * 257
            + '"}',
            "recipient",
        ),
        ('{"action":"SDP_OFFER","messagePayload":"eA==","correlationId":"a/b"}', "correlationId"),
    ],
)
def test_decode_client_message_errors_are_strings(frame: str | bytes, fragment: str) -> None:
    result = decode_client_message(frame)
    assert isinstance(result, str)
    assert fragment in result


# --------------------------------------------------------------------------------------------
# encode_event (the emulator's side)


def test_encode_event_sorted_compact() -> None:
    assert encode_event("SDP_ANSWER", message_payload=ANSWER_B64, sender_client_id="v1") == (
        '{"messagePayload":"' + ANSWER_B64 + '","messageType":"SDP_ANSWER","senderClientId":"v1"}'
    )


def test_encode_event_without_sender() -> None:
    assert encode_event(MessageType.SDP_OFFER, message_payload=OFFER_B64) == (
        '{"messagePayload":"' + OFFER_B64 + '","messageType":"SDP_OFFER"}'
    )
    assert encode_event("GO_AWAY") == '{"messageType":"GO_AWAY"}'


def test_encode_event_status_response_nested_keys_sorted() -> None:
    frame = encode_event(
        "STATUS_RESPONSE",
        status_response={
            "success": False,
            "statusCode": "400",
            "errorType": "InvalidArgumentException",
            "description": "d",
            "correlationId": "1",
        },
    )
    assert frame == (
        '{"messageType":"STATUS_RESPONSE","statusResponse":{"correlationId":"1",'
        '"description":"d","errorType":"InvalidArgumentException","statusCode":"400",'
        '"success":false}}'
    )
    assert decode_message(frame) == StatusResponse("1", "InvalidArgumentException", "400", "d")


def test_encode_event_round_trips_through_decode() -> None:
    for fields, expected in VALID:
        frame = encode_event(
            fields["messageType"],
            message_payload=fields.get("messagePayload"),
            sender_client_id=fields.get("senderClientId"),
            status_response=fields.get("statusResponse"),
        )
        assert decode_message(frame) == expected


def test_encode_event_unknown_type() -> None:
    # Every deliberate error is a KvsPeerError; a bare ValueError from the enum is not.
    with pytest.raises(InvalidArgument, match="SDP_PRANSWER"):
        encode_event("SDP_PRANSWER")


# --------------------------------------------------------------------------------------------
# CandidateBuffer


def _cand(sender: str | None, n: int) -> IceCandidate:
    return IceCandidate(f"candidate:{n} 1 udp 1 10.0.0.{n % 250} 9 typ host", "0", 0, None, sender)


def test_buffer_holds_until_sdp_then_releases_in_order() -> None:
    buffer = CandidateBuffer()
    early = [_cand("v1", n) for n in range(5)]
    for candidate in early:
        assert buffer.receive(candidate) == []
    offer = SdpOffer(SDP, "v1")
    assert buffer.receive(offer) == [offer, *early]
    late = _cand("v1", 99)
    assert buffer.receive(late) == [late]
    # A second SDP (renegotiation) releases nothing new.
    again = SdpOffer(SDP, "v1")
    assert buffer.receive(again) == [again]


def test_buffer_is_per_sender() -> None:
    buffer = CandidateBuffer()
    v1 = [_cand("v1", n) for n in range(3)]
    v2 = [_cand("v2", n) for n in range(3)]
    for a, b in zip(v1, v2, strict=True):
        assert buffer.receive(a) == []
        assert buffer.receive(b) == []
    offer1 = SdpOffer(SDP, "v1")
    assert buffer.receive(offer1) == [offer1, *v1]
    assert buffer.receive(_cand("v2", 50)) == []
    offer2 = SdpOffer(SDP, "v2")
    assert buffer.receive(offer2) == [offer2, *v2, _cand("v2", 50)]


def test_buffer_master_is_separate() -> None:
    buffer = CandidateBuffer()
    from_master = [_cand(None, n) for n in range(3)]
    named_master = _cand("MASTER", 7)  # a viewer may legally be called MASTER
    for candidate in [*from_master, named_master]:
        assert buffer.receive(candidate) == []
    answer = SdpAnswer(SDP, None)
    assert buffer.receive(answer) == [answer, *from_master]
    assert buffer.receive(_cand(None, 9)) == [_cand(None, 9)]
    offer = SdpOffer(SDP, "MASTER")
    assert buffer.receive(offer) == [offer, named_master]


def test_buffer_passes_other_events_through() -> None:
    buffer = CandidateBuffer()
    for event in (GoAway(), ReconnectIceServer("x"), StatusResponse("1")):
        assert buffer.receive(event) == [event]


def test_buffer_holds_end_of_candidates_too() -> None:
    buffer = CandidateBuffer()
    end = IceCandidate("", sender_client_id="v1")
    assert buffer.receive(end) == []
    offer = SdpOffer(SDP, "v1")
    assert buffer.receive(offer) == [offer, end]


def test_buffer_forget() -> None:
    buffer = CandidateBuffer()
    offer = SdpOffer(SDP, "v1")
    buffer.receive(offer)
    buffer.forget("v1")
    # A new session for the same id waits for its SDP again.
    held = _cand("v1", 1)
    assert buffer.receive(held) == []
    assert buffer.receive(offer) == [offer, held]

    # forget() also drops candidates that were still waiting.
    assert buffer.receive(_cand("v2", 1)) == []
    buffer.forget("v2")
    offer2 = SdpOffer(SDP, "v2")
    assert buffer.receive(offer2) == [offer2]

    buffer.forget("never-seen")  # harmless
    buffer.forget(None)


def test_buffer_clear() -> None:
    buffer = CandidateBuffer()
    buffer.receive(SdpAnswer(SDP, None))
    buffer.receive(_cand("v2", 1))
    buffer.clear()
    assert buffer.receive(_cand(None, 1)) == []
    answer = SdpAnswer(SDP, None)
    assert buffer.receive(answer) == [answer, _cand(None, 1)]
    offer = SdpOffer(SDP, "v2")
    assert buffer.receive(offer) == [offer]


def test_buffer_max_per_sender() -> None:
    buffer = CandidateBuffer(max_per_sender=3)
    sent = [_cand("v1", n) for n in range(10)]
    for candidate in sent:
        assert buffer.receive(candidate) == []
    offer = SdpOffer(SDP, "v1")
    released = buffer.receive(offer)[1:]
    assert len(released) == 3
    positions = [sent.index(c) for c in released]
    assert positions == sorted(positions)


def test_buffer_max_senders_evicts_least_recently_active() -> None:
    buffer = CandidateBuffer(max_senders=2)
    a, b, c = _cand("a", 1), _cand("b", 1), _cand("c", 1)
    buffer.receive(a)
    buffer.receive(b)
    a2 = _cand("a", 2)
    buffer.receive(a2)  # a is now more recent than b
    buffer.receive(c)  # evicts b
    offer_b = SdpOffer(SDP, "b")
    assert buffer.receive(offer_b) == [offer_b]
    offer_a = SdpOffer(SDP, "a")
    assert buffer.receive(offer_a) == [offer_a, a, a2]
    offer_c = SdpOffer(SDP, "c")
    assert buffer.receive(offer_c) == [offer_c, c]


def test_buffer_flood_stays_bounded() -> None:
    buffer = CandidateBuffer(max_senders=8, max_per_sender=4)
    senders = [f"s{n}" for n in range(500)]
    for sender in senders:
        for n in range(10):
            assert buffer.receive(_cand(sender, n)) == []
    released = {sender: buffer.receive(SdpOffer(SDP, sender))[1:] for sender in reversed(senders)}
    assert sum(len(held) for held in released.values()) == 8 * 4
    # The most recently active senders kept theirs.
    assert all(len(released[sender]) == 4 for sender in senders[-8:])
