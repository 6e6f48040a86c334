"""Authorization decisions and client addresses, with an explicit clock. Pure: no server."""

from __future__ import annotations

import ipaddress

import pytest

from kvs_peer.protocol import Role
from kvs_peer.signer import Authorizer, Principal, Refusal, hash_token, parse_config
from kvs_peer.signer.forwarded import client_address

CAM = "cam-token-000000000001"
VIEW = "view-token-00000000002"


def authorizer(**extra: object) -> Authorizer:
    return Authorizer.from_config(
        parse_config(
            {
                "tokens": [
                    {
                        "name": "cam",
                        "sha256": hash_token(CAM),
                        "channels": ["cam-*"],
                        "roles": ["MASTER"],
                        "rate_per_minute": 2,
                    },
                    {
                        "name": "view",
                        "sha256": hash_token(VIEW),
                        "channels": ["cam-*", "lobby"],
                        "roles": ["VIEWER"],
                    },
                ],
                **extra,
            }
        )
    )


def check(
    auth: Authorizer,
    header: str | None,
    channel: str = "cam-1",
    role: Role = Role.MASTER,
    *,
    address: str = "192.0.2.1",
    now: float = 0.0,
) -> Principal | Refusal:
    return auth.check(header, channel, role, address=address, now=now)


def refused(decision: Principal | Refusal, status: int, error: str) -> Refusal:
    assert isinstance(decision, Refusal), decision
    assert (decision.status, decision.error) == (status, error), decision
    return decision


def test_token_grants_its_channels_and_roles() -> None:
    auth = authorizer()
    assert check(auth, f"Bearer {CAM}") == Principal("cam")
    assert check(auth, f"bearer   {VIEW}", "lobby", Role.VIEWER) == Principal("view")


@pytest.mark.parametrize(
    ("header", "error", "hint"),
    [
        (None, "token_required", "MASTER access always needs a token"),
        (None, "token_required", "kvs-peer: env KVS_PEER_SIGNER_TOKEN or --token"),
        ("Bearer " + "x" * 22, "invalid_token", "not known"),
        (f"Basic {CAM}", "invalid_token", "Bearer <token>"),
        ("Bearer", "invalid_token", "Bearer <token>"),
        (f"Bearer {CAM} extra", "invalid_token", "Bearer <token>"),
        (f"Bearer {CAM}, Bearer {VIEW}", "invalid_token", "Bearer <token>"),
        (f"Bearer {CAM[:-1]}", "invalid_token", "not known"),
    ],
)
def test_unauthenticated(header: str | None, error: str, hint: str) -> None:
    refusal = refused(check(authorizer(), header), 401, error)
    assert hint in refusal.message
    headers = refusal.headers()
    assert headers["WWW-Authenticate"].startswith('Bearer realm="kvs-peer signer"')
    assert ('error="invalid_token"' in headers["WWW-Authenticate"]) is (error == "invalid_token")


def test_wrong_channel_or_role_is_forbidden_and_says_which() -> None:
    auth = authorizer()
    refusal = refused(check(auth, f"Bearer {CAM}", "lobby"), 403, "channel_not_allowed")
    assert "'cam'" in refusal.message and "'lobby'" in refusal.message
    refusal = refused(check(auth, f"Bearer {CAM}", role=Role.VIEWER), 403, "role_not_allowed")
    assert "VIEWER, only as MASTER" in refusal.message
    refused(check(auth, f"Bearer {VIEW}", "cam-1", Role.MASTER), 403, "role_not_allowed")


def test_token_rate_limit_refills_with_time() -> None:
    auth = authorizer()
    assert check(auth, f"Bearer {CAM}", now=100.0) == Principal("cam")
    assert check(auth, f"Bearer {CAM}", now=100.0) == Principal("cam")
    refusal = refused(check(auth, f"Bearer {CAM}", now=100.0), 429, "rate_limited")
    assert refusal.retry_after == 30  # 2 per minute: one token every 30 s
    assert refusal.headers()["Retry-After"] == "30"
    assert "2 requests per minute" in refusal.message
    refused(check(auth, f"Bearer {CAM}", now=129.0), 429, "rate_limited")
    assert check(auth, f"Bearer {CAM}", now=130.5) == Principal("cam")
    # Refused and forbidden requests of other tokens do not share the bucket.
    assert check(auth, f"Bearer {VIEW}", role=Role.VIEWER, now=130.5) == Principal("view")


def test_no_anonymous_access_by_default() -> None:
    refusal = refused(check(authorizer(), None, "lobby", Role.VIEWER), 401, "token_required")
    assert "no anonymous viewer access" in refusal.message


def test_anonymous_viewers_only_on_listed_channels_and_per_address() -> None:
    auth = authorizer(anonymous=[{"channels": ["lobby-*"], "rate_per_minute": 1}])
    anon = Principal("anonymous", anonymous=True)
    assert check(auth, None, "lobby-1", Role.VIEWER, address="192.0.2.1") == anon
    refused(check(auth, None, "lobby-1", Role.VIEWER, address="192.0.2.1"), 429, "rate_limited")
    assert check(auth, None, "lobby-2", Role.VIEWER, address="192.0.2.2") == anon
    refused(check(auth, None, "cam-1", Role.VIEWER, address="192.0.2.3"), 401, "token_required")
    # Never a MASTER, even on an anonymous channel.
    refused(check(auth, None, "lobby-1", Role.MASTER, address="192.0.2.4"), 401, "token_required")
    # A bad token is not silently downgraded to anonymous access.
    refused(
        check(auth, "Bearer nope-nope-nope-nope", "lobby-1", Role.VIEWER, address="192.0.2.5"),
        401,
        "invalid_token",
    )


def test_anonymous_buckets_are_bounded() -> None:
    config = parse_config({"anonymous": [{"channels": ["lobby"], "rate_per_minute": 1}]})
    auth = Authorizer(config.tokens, config.anonymous, max_addresses=2)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert isinstance(check(auth, None, "lobby", Role.VIEWER, address=address), Principal)
    # .1 was evicted by .3 (least recently used), so it starts again with a full bucket;
    # .3 is still tracked and limited.
    assert isinstance(check(auth, None, "lobby", Role.VIEWER, address="192.0.2.1"), Principal)
    refused(check(auth, None, "lobby", Role.VIEWER, address="192.0.2.3"), 429, "rate_limited")


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], (), "203.0.113.9"),  # not configured: ignored
        ("203.0.113.9", ["198.51.100.1"], PROXIES, "203.0.113.9"),  # peer is not a proxy
        ("10.0.0.5", [], PROXIES, "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1"], PROXIES, "198.51.100.1"),
        # A client-written first entry is skipped: read from the right, past trusted hops.
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.1.1.1"], PROXIES, "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.0.0.5", ["garbage, 198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.0.0.5", ["198.51.100.1, garbage"], PROXIES, "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1:4711"], PROXIES, "198.51.100.1"),
        ("10.0.0.5", ["[2001:db8::1]:4711"], PROXIES, "2001:db8::1"),
        ("::ffff:10.0.0.5", ["198.51.100.1"], PROXIES, "198.51.100.1"),
        ("127.0.0.1", ["10.2.2.2, 10.3.3.3"], PROXIES, "10.2.2.2"),  # all trusted
        (None, ["198.51.100.1"], PROXIES, "unknown"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: tuple, expected: str
) -> None:
    assert client_address(peer, forwarded, trusted) == expected
