"""Pure tests of the emulator's routing core (docs/protocol.md#routing): no sockets."""

from __future__ import annotations

import json

import pytest

from kvs_peer.emulator.routing import (
    Accepted,
    Close,
    Deliver,
    Rejected,
    Role,
    Router,
    RouterConfig,
    Takeover,
)
from kvs_peer.protocol import encode_message, encode_payload, sdp_payload
from kvs_peer.rules import CONNECT_RATE, ICE_RATE, SDP_RATE

ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/demo/1700000000000"
OTHER = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/other/1700000000001"
TTL = 30.0


def make_router(**overrides: object) -> Router:
    return Router(RouterConfig(**overrides), message_ttl={ARN: TTL, OTHER: TTL}.get)  # type: ignore[arg-type]


def accept(router: Router, client_id: str | None = None, now: float = 0.0) -> Accepted:
    result = router.connect(ARN, client_id, now=now)
    assert isinstance(result, Accepted), result
    return result


def offer(sdp: str = "v=0 offer", **kw: str) -> str:
    return encode_message("SDP_OFFER", sdp_payload("offer", sdp), **kw)


def answer(recipient: str | None, sdp: str = "v=0 answer", **kw: str) -> str:
    return encode_message("SDP_ANSWER", sdp_payload("answer", sdp), recipient, **kw)


def candidate(recipient: str | None = None, n: int = 0) -> str:
    payload = {"candidate": f"candidate:{n} 1 udp 1 127.0.0.1 {5000 + n} typ host"}
    return encode_message("ICE_CANDIDATE", payload, recipient)


def status_of(action: Deliver) -> dict[str, object]:
    event = json.loads(action.text)
    assert event["messageType"] == "STATUS_RESPONSE"
    assert "senderClientId" not in event
    return event["statusResponse"]


# -- identity rules (4.2) ----------------------------------------------------------------------


def test_newest_master_wins_and_old_one_stays_silent() -> None:
    router = make_router()
    old = accept(router).conn_id
    new = accept(router, now=1.0)
    assert new.role is Role.MASTER and new.actions == ()  # silent: the old socket is not closed
    viewer = accept(router, "v1").conn_id
    actions = router.receive(viewer, offer(), now=2.0)
    assert [a.conn_id for a in actions] == [new.conn_id]
    # The replaced master's messages go nowhere.
    assert router.receive(old, answer("v1"), now=3.0) == []
    assert router.receive(new.conn_id, answer("v1"), now=3.0)[0].conn_id == viewer


@pytest.mark.parametrize(
    ("policy", "code"), [(Takeover.CLOSE_NORMAL, 1000), (Takeover.CLOSE_GOING_AWAY, 1001)]
)
def test_takeover_can_close_the_old_master(policy: Takeover, code: int) -> None:
    router = make_router(takeover=policy)
    old = accept(router).conn_id
    new = accept(router, now=1.0)
    assert new.actions == (Close(old, code, "replaced by a newer connection"),)
    assert router.presence(ARN).master


def test_newest_viewer_with_same_client_id_wins() -> None:
    router = make_router()
    master = accept(router).conn_id
    first = accept(router, "v1").conn_id
    second = accept(router, "v1", now=1.0).conn_id
    assert router.presence(ARN).viewers == ("v1",)
    assert router.receive(master, answer("v1"), now=2.0) == [
        Deliver(second, router.receive(master, answer("v1"), now=2.0)[0].text)
    ]
    assert router.receive(first, offer(), now=2.0) == []
    # The old connection closing later must not evict the new one.
    router.disconnect(first, now=3.0)
    assert router.presence(ARN).viewers == ("v1",)


def test_viewer_cap_refuses_a_new_id_but_admits_a_known_one() -> None:
    router = make_router(max_viewers=2)
    accept(router, "a")
    b_conn = accept(router, "b").conn_id
    refused = router.connect(ARN, "c", now=0.0)
    assert isinstance(refused, Rejected)
    assert (refused.status, refused.error_type) == (400, "ClientLimitExceededException")
    assert "2 viewers" in refused.message
    accept(router, "a", now=1.0)  # replacing an existing id does not need a slot
    assert router.presence(ARN).viewers == ("b", "a")
    router.disconnect(b_conn, now=2.0)
    accept(router, "c", now=2.0)


def test_unknown_channel_is_404_and_forced_failures_come_first() -> None:
    router = make_router()
    missing = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/nope/1"
    refused = router.connect(missing, None, now=0.0)
    assert isinstance(refused, Rejected) and refused.status == 404
    assert refused.error_type == "ResourceNotFoundException"
    router.fail_next_connects(ARN, 403, 2)
    router.fail_next_connects(ARN, 400)
    statuses = [router.connect(ARN, None, now=0.0) for _ in range(3)]
    assert [(r.status, r.error_type) for r in statuses if isinstance(r, Rejected)] == [
        (403, "AccessDeniedException"),
        (403, "AccessDeniedException"),
        (400, "ClientLimitExceededException"),
    ]
    accept(router)


# -- routing and stamping (2.1, 3.1) -----------------------------------------------------------


def test_viewer_message_is_stamped_and_master_message_is_not() -> None:
    router = make_router()
    master = accept(router).conn_id
    viewer = accept(router, "viewer-1").conn_id
    sent = offer()
    payload = json.loads(sent)["messagePayload"]
    # A viewer's recipientClientId is ignored: it always reaches the master.
    (to_master,) = router.receive(viewer, offer(recipient_client_id="someone-else"), now=1.0)
    assert to_master == Deliver(
        master,
        '{"messagePayload":"' + payload + '","messageType":"SDP_OFFER",'
        '"senderClientId":"viewer-1"}',
    )
    (to_viewer,) = router.receive(master, answer("viewer-1"), now=1.0)
    assert to_viewer.conn_id == viewer
    event = json.loads(to_viewer.text)
    assert set(event) == {"messagePayload", "messageType"}
    assert event["messageType"] == "SDP_ANSWER"
    assert to_viewer.text == json.dumps(event, separators=(",", ":"), sort_keys=True)


def test_master_message_needs_a_recipient() -> None:
    router = make_router()
    master = accept(router).conn_id
    accept(router, "v1")
    assert router.receive(master, candidate(None), now=1.0) == []
    (reply,) = router.receive(master, answer(None, correlation_id="c-1"), now=1.0)
    assert reply.conn_id == master
    assert status_of(reply) == {
        "correlationId": "c-1",
        "description": "recipientClientId is required when sending as master",
        "errorType": "InvalidArgumentException",
        "statusCode": "400",
        "success": False,
    }


def test_status_response_only_when_a_correlation_id_was_sent() -> None:
    router = make_router()
    viewer = accept(router, "v1").conn_id
    bad = {"action": "SDP_PRANSWER", "messagePayload": encode_payload({"x": 1})}
    assert router.receive(viewer, json.dumps(bad), now=0.0) == []
    (reply,) = router.receive(viewer, json.dumps({**bad, "correlationId": "42"}), now=0.0)
    assert status_of(reply)["correlationId"] == "42"
    assert "SDP_PRANSWER" in str(status_of(reply)["description"])
    # Success is silent, with or without a correlation id (3.2): the offer waits in the queue.
    assert router.receive(viewer, offer(correlation_id="43"), now=0.0) == []


def test_both_key_casings_are_accepted() -> None:
    router = make_router()
    master = accept(router).conn_id
    viewer = accept(router, "ConsumerViewer").conn_id
    payload = encode_payload(sdp_payload("offer", "v=0"))
    # The C SDK: PascalCase, pretty-printed, RecipientClientId always present.
    c_style = (
        '{\n\t"action": "SDP_OFFER",\n\t"RecipientClientId": "ignored",\n'
        f'\t"MessagePayload": "{payload}",\n\t"CorrelationId": "7"\n}}'
    )
    (delivered,) = router.receive(viewer, c_style, now=0.0)
    assert delivered.conn_id == master
    assert json.loads(delivered.text)["senderClientId"] == "ConsumerViewer"
    c_answer = json.dumps(
        {"action": "SDP_ANSWER", "RecipientClientId": "ConsumerViewer", "MessagePayload": payload}
    )
    assert [a.conn_id for a in router.receive(master, c_answer, now=0.0)] == [viewer]


def test_payload_over_the_limit_fails() -> None:
    router = make_router(payload_limit=100)
    master = accept(router).conn_id
    viewer = accept(router, "v1").conn_id
    ok = json.dumps({"action": "ICE_CANDIDATE", "messagePayload": "A" * 100})
    assert [a.conn_id for a in router.receive(viewer, ok, now=0.0)] == [master]
    big = json.dumps({"action": "ICE_CANDIDATE", "messagePayload": "A" * 101, "correlationId": "x"})
    (reply,) = router.receive(viewer, big, now=0.0)
    assert reply.conn_id == viewer
    assert status_of(reply)["errorType"] == "InvalidArgumentException"
    assert "101" in str(status_of(reply)["description"])


# -- offline recipients (4.4) ------------------------------------------------------------------


def test_offer_before_master_connects_is_delivered_within_ttl() -> None:
    router = make_router()
    viewer = accept(router, "v1").conn_id
    assert router.receive(viewer, offer(), now=0.0) == []
    assert router.receive(viewer, candidate(n=1), now=0.5) == []
    master = accept(router, now=TTL - 1)
    types = [json.loads(a.text)["messageType"] for a in master.actions]
    assert types == ["SDP_OFFER", "ICE_CANDIDATE"]
    assert all(isinstance(a, Deliver) and a.conn_id == master.conn_id for a in master.actions)
    # Delivered once only.
    router.disconnect(master.conn_id, now=TTL)
    assert accept(router, now=TTL).actions == ()


def test_queued_messages_expire_after_ttl() -> None:
    router = make_router()
    viewer = accept(router, "v1").conn_id
    router.receive(viewer, offer(), now=0.0)
    assert router.next_deadline() is not None and router.next_deadline() <= TTL
    assert accept(router, now=TTL + 0.1).actions == ()


def test_tick_drops_expired_queue_entries() -> None:
    router = make_router(idle_timeout=None, max_connection_duration=None)
    master = accept(router).conn_id
    router.receive(master, answer("late-viewer"), now=0.0)
    assert router.next_deadline() == TTL
    assert router.tick(now=TTL) == []
    assert router.next_deadline() is None
    assert accept(router, "late-viewer", now=TTL).actions == ()


def test_undelivered_offer_and_answer_are_overwritten_but_candidates_are_not() -> None:
    router = make_router()
    master = accept(router).conn_id
    for n, sdp in enumerate(["first", "second"]):
        router.receive(master, encode_message("SDP_OFFER", sdp_payload("offer", sdp), "v1"), now=n)
        router.receive(master, candidate("v1", n), now=n)
    viewer = accept(router, "v1", now=2.0)
    texts = [json.loads(a.text) for a in viewer.actions]
    assert [t["messageType"] for t in texts] == ["ICE_CANDIDATE", "SDP_OFFER", "ICE_CANDIDATE"]
    assert texts[1]["messagePayload"] == encode_payload(sdp_payload("offer", "second"))


def test_offers_of_different_viewers_to_an_absent_master_are_all_kept() -> None:
    router = make_router()
    for client_id in ("a", "b"):
        router.receive(accept(router, client_id).conn_id, offer(), now=0.0)
    master = accept(router, now=1.0)
    senders = [json.loads(a.text)["senderClientId"] for a in master.actions]
    assert senders == ["a", "b"]


# -- hostile input -----------------------------------------------------------------------------

HOSTILE: list[str | bytes] = [
    "",
    " ",
    "not json",
    "[]",
    "null",
    "42",
    '"string"',
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    b"\xff\xfe\x00binary",
    b'{"action":"SDP_OFFER","messagePayload":"eA==","correlationId":"b"}',
    "{" + '"action": "SDP_OFFER", "messagePayload": "' + "A" * 5_000_000 + '"}',
    '{"action": 5, "messagePayload": "eA=="}',
    '{"action": "SDP_OFFER", "messagePayload": {"nested": [1, 2, {"x": null}]}}',
    '{"action": "SDP_OFFER", "messagePayload": "eA==", "correlationId": {"x": 1}}',
    '{"action": "SDP_OFFER", "messagePayload": "eA==", "correlationId": "bad id!"}',
    '{"action": "ICE_CANDIDATE", "messagePayload": "eA==", "recipientClientId": 17}',
    '{"ACTION": "SDP_ANSWER", "messagepayload": "", "correlationid": "c"}',
    '{"message": "Endpoint request timed out", "connectionId": "x", "requestId": "y"}',
    "\ud800",
]
ROUTABLE_FROM_VIEWER = (HOSTILE[14], HOSTILE[16])


@pytest.mark.parametrize("frame", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("client_id", [None, "v1"], ids=["from-master", "from-viewer"])
def test_hostile_frames_never_raise_and_routing_continues(
    frame: str | bytes, client_id: str | None
) -> None:
    router = make_router(payload_limit=10_000)
    master = accept(router).conn_id
    viewer = accept(router, "v1").conn_id
    sender = viewer if client_id else master
    actions = router.receive(sender, frame, now=0.0)
    for action in actions:
        assert isinstance(action, Deliver)
        event = json.loads(action.text)
        if action.conn_id == sender:
            assert event["messageType"] == "STATUS_RESPONSE"
        else:
            # Lenient like the service: a non-string optional field counts as absent, so a
            # viewer's frame with a junk recipientClientId/correlationId is still routable.
            assert client_id is not None and frame in ROUTABLE_FROM_VIEWER
            assert event["messagePayload"] == "eA=="
    assert [a.conn_id for a in router.receive(viewer, offer(), now=0.1)] == [master]
    assert [a.conn_id for a in router.receive(master, answer("v1"), now=0.1)] == [viewer]


def test_binary_frame_with_correlation_id_is_reported() -> None:
    router = make_router()
    viewer = accept(router, "v1").conn_id
    (reply,) = router.receive(viewer, HOSTILE[10], now=0.0)
    assert status_of(reply)["correlationId"] == "b"
    assert "binary" in str(status_of(reply)["description"])


def test_messages_from_unknown_or_closed_connections_are_ignored() -> None:
    router = make_router()
    assert router.receive(999, offer(), now=0.0) == []
    viewer = accept(router, "v1").conn_id
    router.disconnect(viewer, now=1.0)
    assert router.receive(viewer, offer(), now=1.0) == []
    assert router.disconnect(viewer, now=1.0) == []


# -- lifecycle ---------------------------------------------------------------------------------


def test_idle_timeout_counts_pings_and_messages() -> None:
    router = make_router(idle_timeout=10.0, max_connection_duration=None)
    master = accept(router).conn_id
    viewer = accept(router, "v1").conn_id
    router.activity(master, now=8.0)  # a ping
    router.receive(viewer, offer(), now=5.0)
    assert router.next_deadline() == 15.0
    assert router.tick(now=14.9) == []
    assert router.tick(now=15.0) == [Close(viewer, 1001, "Going away")]
    assert router.tick(now=18.0) == [Close(master, 1001, "Going away")]
    assert router.presence(ARN).master is False and router.presence(ARN).viewers == ()
    assert router.tick(now=100.0) == []  # each close is issued once


def test_max_connection_duration_closes_with_1001() -> None:
    router = make_router(idle_timeout=None, max_connection_duration=60.0)
    master = accept(router, now=0.0).conn_id
    router.activity(master, now=59.0)
    assert router.tick(now=59.0) == []
    assert router.tick(now=60.0) == [Close(master, 1001, "Going away")]
    # A message for the closing master now waits in the queue for the next master.
    viewer = accept(router, "v1", now=60.0).conn_id
    assert router.receive(viewer, offer(), now=60.5) == []
    assert len(accept(router, now=61.0).actions) == 1


def test_go_away_reaches_targets_and_closes_after_grace() -> None:
    router = make_router(go_away_grace=5.0, idle_timeout=None, max_connection_duration=None)
    master = accept(router).conn_id
    v1 = accept(router, "v1").conn_id
    v2 = accept(router, "v2").conn_id
    only_v1 = router.go_away(ARN, client_id="v1", now=1.0)
    assert only_v1 == [Deliver(v1, '{"messageType":"GO_AWAY"}')]
    everyone = router.go_away(ARN, now=2.0)
    assert sorted(a.conn_id for a in everyone) == sorted([master, v1, v2])
    assert router.tick(now=5.9) == []
    assert router.tick(now=6.0) == [Close(v1, 1001, "Going away")]
    assert sorted(a.conn_id for a in router.tick(now=7.0)) == sorted([master, v2])
    assert router.go_away(ARN, master=True, now=8.0) == []  # nobody left


def test_inject_targets_master_viewer_or_everyone() -> None:
    router = make_router()
    master = accept(router).conn_id
    v1 = accept(router, "v1").conn_id
    assert router.inject(ARN, "", master=True) == [Deliver(master, "")]
    assert router.inject(ARN, "x", client_id="v1") == [Deliver(v1, "x")]
    assert router.inject(ARN, "x", client_id="nobody") == []
    assert {a.conn_id for a in router.inject(ARN, "x")} == {master, v1}
    assert router.inject(OTHER, "x") == []


def test_drop_channel_closes_its_connections_only() -> None:
    router = make_router()
    master = accept(router).conn_id
    other = router.connect(OTHER, None, now=0.0)
    assert isinstance(other, Accepted)
    assert router.drop_channel(ARN) == [Close(master, 1001, "Going away")]
    assert router.presence(OTHER).master


# -- rate limits (4.1) -------------------------------------------------------------------------


def test_rate_limits_are_off_by_default() -> None:
    router = make_router()
    master = accept(router).conn_id
    viewer = accept(router, "v1").conn_id
    for i in range(50):
        assert router.receive(viewer, candidate(n=i), now=0.0)[0].conn_id == master
        assert router.receive(viewer, offer(), now=0.0)[0].conn_id == master
    for i in range(10):
        accept(router, f"x{i}" if i < 8 else None, now=0.0)


def test_rate_limits_when_enabled() -> None:
    router = make_router(rate_limits=True)
    master = accept(router).conn_id
    viewer = accept(router, "v1").conn_id
    for i in range(SDP_RATE):
        assert router.receive(viewer, offer(correlation_id=f"s{i}"), now=0.5)[0].conn_id == master
    (throttled,) = router.receive(viewer, offer(correlation_id="late"), now=0.6)
    assert status_of(throttled)["errorType"] == "ClientLimitExceededException"
    assert router.receive(viewer, offer(), now=1.6)[0].conn_id == master  # window moved on
    for i in range(ICE_RATE):
        assert router.receive(viewer, candidate(n=i), now=2.0)[0].conn_id == master
    assert router.receive(viewer, candidate(n=99), now=2.0) == []
    # Connects: two already happened at t=0; one more fits in that second.
    accept(router, "v2", now=0.9)
    refused = router.connect(ARN, "v3", now=0.95)
    assert isinstance(refused, Rejected) and refused.status == 400
    assert f"{CONNECT_RATE} connects" in refused.message
    accept(router, "v3", now=2.0)
