"""The signer over HTTP on 127.0.0.1, in front of the real local KVS emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import yarl
from signer_helpers import (
    MASTER_TOKEN,
    OTHER_TOKEN,
    UNKNOWN_TOKEN,
    VIEWER_TOKEN,
    signer_stack,
    standard_tokens,
    token,
)

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs
from kvs_peer.errors import ChannelNotFound
from kvs_peer.signing import verify_presigned_url

# -- authorization matrix ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bearer", "channel", "role", "status", "error"),
    [
        (None, "cam-1", "VIEWER", 401, "token_required"),
        (None, "cam-1", "MASTER", 401, "token_required"),
        (UNKNOWN_TOKEN, "cam-1", "VIEWER", 401, "invalid_token"),
        (OTHER_TOKEN, "cam-1", "VIEWER", 403, "channel_not_allowed"),  # token for other-*
        (VIEWER_TOKEN, "cam-1", "MASTER", 403, "role_not_allowed"),  # viewer token as master
        (MASTER_TOKEN, "cam-1", "VIEWER", 403, "role_not_allowed"),
        (MASTER_TOKEN, "cam-1", "MASTER", 200, None),
        (VIEWER_TOKEN, "cam-1", "VIEWER", 200, None),
    ],
)
async def test_authorization_matrix(
    bearer: str | None, channel: str, role: str, status: int, error: str | None
) -> None:
    async with signer_stack() as stack:
        response = await stack.get_url(channel, role, bearer=bearer)
        assert response.status == status, response.body
        if error is None:
            assert response.body["role"] == role
            assert response.body["url"].startswith("ws://")
            return
        assert response.body["error"] == error
        assert response.body["message"]
        assert "url" not in response.body
        assert response.headers["Cache-Control"] == "no-store"
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_refusals_make_no_control_plane_calls() -> None:
    async with signer_stack() as stack:
        await stack.get_url("cam-1", "MASTER")
        await stack.get_url("cam-1", "MASTER", bearer=VIEWER_TOKEN)
        await stack.get_url("cam-1", "MASTER", bearer=UNKNOWN_TOKEN)
        assert stack.resolver.calls == {}


async def test_anonymous_viewer_allowed_only_where_configured() -> None:
    config = {"tokens": standard_tokens(), "anonymous": [{"channels": ["lobby-*"]}]}
    async with signer_stack(config, channels=("cam-1", "lobby-1")) as stack:
        allowed = await stack.get_url("lobby-1", "VIEWER")
        assert allowed.status == 200, allowed.body
        assert allowed.body["clientId"].startswith("viewer-")
        denied = await stack.get_url("cam-1", "VIEWER")
        assert (denied.status, denied.body["error"]) == (401, "token_required")
        master = await stack.get_url("lobby-1", "MASTER")
        assert (master.status, master.body["error"]) == (401, "token_required")
        assert "MASTER access always needs a token" in master.body["message"]


async def test_anonymous_master_denied_even_with_catch_all_rule() -> None:
    async with signer_stack({"anonymous": [{"channels": ["*"]}]}) as stack:
        response = await stack.get_url("cam-1", "MASTER")
        assert (response.status, response.body["error"]) == (401, "token_required")


async def test_rate_limit_gives_429_with_retry_after() -> None:
    config = {
        "tokens": [token("slow", VIEWER_TOKEN, ["cam-*"], ["VIEWER"], rate_per_minute=2)],
    }
    async with signer_stack(config) as stack:
        assert (await stack.get_url(bearer=VIEWER_TOKEN)).status == 200
        assert (await stack.get_url(bearer=VIEWER_TOKEN)).status == 200
        limited = await stack.get_url(bearer=VIEWER_TOKEN)
        assert limited.status == 429
        assert limited.body["error"] == "rate_limited"
        assert 28 <= int(limited.headers["Retry-After"]) <= 30
        assert "retry after" in limited.body["message"]


async def test_anonymous_rate_limit_per_forwarded_address_only_from_trusted_proxy() -> None:
    anonymous = [{"channels": ["cam-*"], "rate_per_minute": 1}]
    one = {"X-Forwarded-For": "198.51.100.1"}
    two = {"X-Forwarded-For": "198.51.100.2"}
    trusted = {"anonymous": anonymous, "trusted_proxies": ["127.0.0.1"]}
    async with signer_stack(trusted) as stack:
        assert (await stack.get_url(headers=one)).status == 200
        assert (await stack.get_url(headers=one)).status == 429
        assert (await stack.get_url(headers=two)).status == 200
    async with signer_stack({"anonymous": anonymous}) as stack:
        # Without trusted_proxies the header is the client's word: every request is 127.0.0.1.
        assert (await stack.get_url(headers=one)).status == 200
        assert (await stack.get_url(headers=two)).status == 429


# -- input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error", "hint"),
    [
        ({"role": "VIEWER"}, "missing_channel", "channel=NAME"),
        ({"channel": "", "role": "VIEWER"}, "missing_channel", "channel=NAME"),
        ({"channel": "cam 1", "role": "VIEWER"}, "invalid_channel", "1-256 characters"),
        ({"channel": "cam-1/../x", "role": "VIEWER"}, "invalid_channel", "1-256 characters"),
        ({"channel": "c" * 257, "role": "VIEWER"}, "invalid_channel", "1-256 characters"),
        ({"channel": "cam-1"}, "missing_role", "role=MASTER or role=VIEWER"),
        ({"channel": "cam-1", "role": "ADMIN"}, "invalid_role", "use MASTER or VIEWER"),
        # Unicode case mapping: long s and dotless i upper-case to S and I.
        ({"channel": "cam-1", "role": "ma\u017fter"}, "invalid_role", "use MASTER or VIEWER"),
        ({"channel": "cam-1", "role": "v\u0131ewer"}, "invalid_role", "use MASTER or VIEWER"),
        (
            {"channel": "cam-1", "role": "VIEWER", "clientId": "a b"},
            "invalid_client_id",
            "leave clientId out",
        ),
        (
            {"channel": "cam-1", "role": "VIEWER", "clientId": "AWS_me"},
            "invalid_client_id",
            "reserves ids starting with 'AWS_'",
        ),
        (
            {"channel": "cam-1", "role": "MASTER", "clientId": "m1"},
            "invalid_client_id",
            "drop clientId",
        ),
    ],
)
async def test_bad_input_is_400_with_a_hint(params: dict[str, str], error: str, hint: str) -> None:
    async with signer_stack() as stack:
        response = await stack.request(
            "GET",
            "/kinesis-video-url",
            params=params,
            headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
        )
        assert response.status == 400
        assert response.body["error"] == error
        assert hint in response.body["message"]
        assert stack.resolver.calls == {}


async def test_repeated_parameter_is_refused() -> None:
    async with signer_stack() as stack:
        response = await stack.request(
            "GET",
            "/kinesis-video-url?channel=cam-1&channel=cam-2&role=VIEWER",
            headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
        )
        assert (response.status, response.body["error"]) == (400, "duplicate_parameter")


async def test_unknown_channel_is_404_and_never_created() -> None:
    async with signer_stack() as stack:
        response = await stack.get_url("cam-404", "VIEWER", bearer=VIEWER_TOKEN)
        assert (response.status, response.body["error"]) == (404, "channel_not_found")
        assert "'cam-404'" in response.body["message"]
        assert "CreateSignalingChannel" not in stack.resolver.calls
        # Exact names: an existing channel whose name starts with the asked one does not count.
        response = await stack.get_url("cam", "VIEWER", bearer=VIEWER_TOKEN)
        assert response.status == 403  # "cam" does not match cam-*: refused before AWS


async def test_only_tokens_allowed_to_create_create_channels() -> None:
    config = {
        "tokens": [
            token("camera", MASTER_TOKEN, ["cam-*"], ["MASTER"], create_channels=True),
            token("viewer-app", VIEWER_TOKEN, ["cam-*"], ["VIEWER"]),
        ],
        "anonymous": [{"channels": ["*"], "rate_per_minute": 1000}],
    }
    async with signer_stack(config) as stack:
        # Anonymous viewers (issue 10: 20 of 20 random names were created) and tokens
        # without the permission get a 404 and create nothing.
        names = [f"cam-{uuid.uuid4().hex[:12]}" for _ in range(20)]
        for name in names:
            response = await stack.get_url(name, "VIEWER")
            assert (response.status, response.body["error"]) == (404, "channel_not_found")
            assert "only for tokens allowed to" in response.body["message"]
        refused = await stack.get_url(names[0], "VIEWER", bearer=VIEWER_TOKEN)
        assert (refused.status, refused.body["error"]) == (404, "channel_not_found")
        assert "CreateSignalingChannel" not in stack.resolver.calls
        for name in names:
            with pytest.raises(ChannelNotFound):
                stack.kvs.channel_arn(name)
        # The token allowed to create does, within its channels only.
        created = await stack.get_url("cam-new", "MASTER", bearer=MASTER_TOKEN)
        assert created.status == 200, created.body
        assert stack.resolver.calls["CreateSignalingChannel"] == 1
        assert stack.kvs.channel_arn("cam-new") == created.body["channelARN"]
        outside = await stack.get_url("lobby-new", "MASTER", bearer=MASTER_TOKEN)
        assert (outside.status, outside.body["error"]) == (403, "channel_not_allowed")
        # Once it exists, viewers join it.
        joined = await stack.get_url("cam-new", "VIEWER")
        assert joined.status == 200, joined.body


async def test_unknown_path_and_method_are_json() -> None:
    async with signer_stack() as stack:
        response = await stack.request("GET", "/nope")
        assert (response.status, response.body["error"]) == (404, "not_found")
        response = await stack.request("POST", "/kinesis-video-url")
        assert (response.status, response.body["error"]) == (405, "method_not_allowed")
        health = await stack.request("GET", "/healthz")
        assert (health.status, health.body) == (200, {"status": "ok"})


# -- response -----------------------------------------------------------------------------------


TURN = {"Uris": ["turn:192.0.2.10:3478?transport=udp"], "Ttl": 300}


async def test_viewer_response_contract() -> None:
    async with signer_stack(emulator=EmulatorConfig(ice_servers=[TURN])) as stack:
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        response = await stack.get_url("cam-1", "VIEWER", bearer=VIEWER_TOKEN, client_id="v-42")
        assert response.status == 200, response.body
        body = response.body
        assert response.headers["Cache-Control"] == "no-store"
        assert body["role"] == "VIEWER"
        assert body["clientId"] == "v-42"
        assert body["region"] == stack.kvs.region
        assert body["channelARN"] == stack.kvs.channel_arn("cam-1")
        # The URL verifies against the emulator's secret and carries channel and client id.
        verified = verify_presigned_url(
            body["url"],
            secrets={stack.kvs.credentials.access_key: stack.kvs.credentials.secret_key},
        )
        assert verified.params["X-Amz-ChannelARN"] == body["channelARN"]
        assert verified.params["X-Amz-ClientId"] == "v-42"
        assert verified.params["X-Amz-Expires"] == "299"
        expires_at = dt.datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
        assert body["expiresAt"].endswith("Z")
        assert expires_at == verified.expires_at
        assert before + dt.timedelta(seconds=297) <= expires_at
        assert expires_at <= before + dt.timedelta(seconds=301)
        ice_expires_at = dt.datetime.fromisoformat(body["iceExpiresAt"].replace("Z", "+00:00"))
        # TTL 300 s minus the resolver's 30 s refresh margin.
        assert before + dt.timedelta(seconds=268) <= ice_expires_at
        assert ice_expires_at <= before + dt.timedelta(seconds=272)
        configuration = body["configuration"]
        assert configuration["iceTransportPolicy"] == "all"
        [server] = configuration["iceServers"]
        assert server["urls"] == TURN["Uris"]
        assert server["username"] and server["credential"]


async def test_viewer_without_client_id_gets_a_fresh_valid_one() -> None:
    async with signer_stack() as stack:
        first = await stack.get_url(bearer=VIEWER_TOKEN)
        second = await stack.get_url(bearer=VIEWER_TOKEN)
        ids = {first.body["clientId"], second.body["clientId"]}
        assert len(ids) == 2
        for body in (first.body, second.body):
            query = parse_qs(urlsplit(body["url"]).query)
            assert query["X-Amz-ClientId"] == [body["clientId"]]


async def test_master_response_has_no_client_id() -> None:
    async with signer_stack({"tokens": standard_tokens(), "url_expires": 60}) as stack:
        response = await stack.get_url("cam-1", "MASTER", bearer=MASTER_TOKEN)
        assert response.status == 200
        assert response.body["clientId"] is None
        query = parse_qs(urlsplit(response.body["url"]).query)
        assert "X-Amz-ClientId" not in query
        assert query["X-Amz-Expires"] == ["60"]
        assert "/master" in urlsplit(response.body["url"]).path


# -- caching ------------------------------------------------------------------------------------


async def test_concurrent_requests_share_one_control_plane_round_trip() -> None:
    async with signer_stack(emulator=EmulatorConfig(ice_servers=[TURN])) as stack:
        responses = await asyncio.gather(
            *(stack.get_url(bearer=VIEWER_TOKEN, client_id=f"v{i}") for i in range(20))
        )
        assert [r.status for r in responses] == [200] * 20
        assert stack.resolver.calls == {
            "DescribeSignalingChannel": 1,
            "GetSignalingChannelEndpoint": 1,
            "GetIceServerConfig": 1,
        }
        # Every URL is signed for its own viewer.
        assert len({r.body["url"] for r in responses}) == 20
        # A MASTER needs its own endpoint; the channel's TURN servers are reused.
        assert (await stack.get_url("cam-1", "MASTER", bearer=MASTER_TOKEN)).status == 200
        assert stack.resolver.calls == {
            "DescribeSignalingChannel": 2,
            "GetSignalingChannelEndpoint": 2,
            "GetIceServerConfig": 1,
        }


# -- AWS failures -------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_control_plane_is_503_without_internals() -> None:
    def unreachable(kvs: LocalKvs) -> ChannelResolver:
        session = boto3.Session(
            aws_access_key_id=kvs.credentials.access_key,
            aws_secret_access_key=kvs.credentials.secret_key,
            region_name=kvs.region,
        )
        return ChannelResolver(
            region=kvs.region,
            endpoint_url=f"http://127.0.0.1:{_closed_port()}",
            session=session,
            timeout=2.0,
        )

    async with signer_stack(resolver=unreachable) as stack:
        response = await stack.get_url(bearer=VIEWER_TOKEN)
        assert response.status == 503
        assert response.body["error"] == "aws_unavailable"
        assert "Retry-After" in response.headers
        assert "127.0.0.1" not in response.body["message"]


async def test_rejected_signer_credentials_are_502_without_internals() -> None:
    def wrong_secret(kvs: LocalKvs) -> ChannelResolver:
        session = boto3.Session(
            aws_access_key_id=kvs.credentials.access_key,
            aws_secret_access_key="not-the-secret",
            region_name=kvs.region,
        )
        return ChannelResolver(region=kvs.region, endpoint_url=kvs.endpoint_url, session=session)

    async with signer_stack(resolver=wrong_secret) as stack:
        response = await stack.get_url(bearer=VIEWER_TOKEN)
        assert response.status == 502
        assert response.body["error"] == "aws_access_denied"
        assert "IAM policy" in response.body["message"]
        assert "signature" not in response.body["message"].lower()


# -- CORS ---------------------------------------------------------------------------------------

APP = "https://app.example.com"


def _preflight(origin: str, method: str = "GET", headers: str = "authorization") -> dict:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_preflight_and_response_headers() -> None:
    async with signer_stack({"tokens": standard_tokens(), "cors_origins": [APP]}) as stack:
        ok = await stack.request("OPTIONS", "/kinesis-video-url", headers=_preflight(APP))
        assert ok.status == 204
        assert ok.headers["Access-Control-Allow-Origin"] == APP
        assert ok.headers["Access-Control-Allow-Headers"] == "Authorization"
        assert "GET" in ok.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in ok.headers

        evil = await stack.request(
            "OPTIONS", "/kinesis-video-url", headers=_preflight("https://evil.example")
        )
        assert (evil.status, evil.body["error"]) == (403, "cors_origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in evil.headers

        post = await stack.request("OPTIONS", "/kinesis-video-url", headers=_preflight(APP, "POST"))
        assert (post.status, post.body["error"]) == (403, "cors_request_not_allowed")
        extra = await stack.request(
            "OPTIONS", "/kinesis-video-url", headers=_preflight(APP, headers="authorization, x-y")
        )
        assert extra.status == 403

        # Actual requests: the listed origin may read answers, errors included.
        granted = await stack.get_url(bearer=VIEWER_TOKEN, headers={"Origin": APP})
        assert granted.status == 200
        assert granted.headers["Access-Control-Allow-Origin"] == APP
        assert "Origin" in granted.headers["Vary"]
        refused = await stack.get_url(headers={"Origin": APP})
        assert refused.status == 401
        assert refused.headers["Access-Control-Allow-Origin"] == APP
        other = await stack.get_url(bearer=VIEWER_TOKEN, headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_no_cors_headers_when_no_origins_configured() -> None:
    async with signer_stack() as stack:
        preflight = await stack.request("OPTIONS", "/kinesis-video-url", headers=_preflight(APP))
        assert preflight.status == 403
        response = await stack.get_url(bearer=VIEWER_TOKEN, headers={"Origin": APP})
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers


# -- logs ---------------------------------------------------------------------------------------


async def test_logs_never_contain_secrets(caplog: pytest.LogCaptureFixture) -> None:
    # Our loggers at DEBUG; third-party ones (botocore prints response bodies at DEBUG) at
    # INFO, as the CLI configures them.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="kvs_peer")
    config = {
        "tokens": standard_tokens(),
        "anonymous": [{"channels": ["cam-*"]}],
        "cors_origins": [APP],
    }
    async with signer_stack(config, emulator=EmulatorConfig(ice_servers=[TURN])) as stack:
        granted = await stack.get_url(bearer=VIEWER_TOKEN, client_id="v-log")
        master = await stack.get_url("cam-1", "MASTER", bearer=MASTER_TOKEN)
        await stack.get_url("cam-1", "MASTER", bearer=UNKNOWN_TOKEN)
        await stack.get_url("cam-1", "MASTER", bearer=VIEWER_TOKEN)
        await stack.get_url("cam-1", "VIEWER")
        await stack.get_url("cam-404", "VIEWER", bearer=VIEWER_TOKEN)
        await stack.request("OPTIONS", "/kinesis-video-url", headers=_preflight(APP))
    assert granted.status == 200 and master.status == 200
    text = caplog.text
    # The log is not empty: it says who got what.
    assert "granted VIEWER v-log on 'cam-1' to 'viewer-app'" in text
    assert "granted MASTER - on 'cam-1' to 'camera'" in text
    assert "invalid_token" in text
    secrets = [MASTER_TOKEN, VIEWER_TOKEN, UNKNOWN_TOKEN, stack.kvs.credentials.secret_key]
    for body in (granted.body, master.body):
        query = parse_qs(urlsplit(body["url"]).query)
        secrets += [body["url"], query["X-Amz-Signature"][0]]
        secrets += [s["credential"] for s in body["configuration"]["iceServers"]]
    for secret in secrets:
        assert secret not in text


# -- static page --------------------------------------------------------------------------------


async def test_static_dir_serves_the_page_next_to_the_api(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<title>viewer</title>")
    (web / "viewer.js").write_text("console.log(1)")
    (tmp_path / "signer.toml").write_text("secret")
    (web / "signer.toml").write_text("secret")
    (web / ".env").write_text("secret")
    (web / "notes.js").symlink_to(tmp_path / "signer.toml")
    config = {"tokens": standard_tokens(), "static_dir": str(web)}
    async with signer_stack(config) as stack:
        index = await stack.request("GET", "/")
        assert (index.status, index.body) == (200, "<title>viewer</title>")
        script = await stack.request("GET", "/viewer.js")
        assert script.status == 200 and "console.log" in script.body
        api = await stack.get_url(bearer=VIEWER_TOKEN)
        assert api.status == 200
        missing = await stack.request("GET", "/nothing.js")
        assert (missing.status, missing.body["error"]) == (404, "not_found")
        # Only web assets inside the folder: never a config, a dotfile or a link outside.
        for path in ("/signer.toml", "/.env", "/notes.js"):
            hidden = await stack.request("GET", path)
            assert hidden.status == 404, path
        for path in ("/%2e%2e/signer.toml", "/..%2fsigner.toml"):
            outside = await stack.http.get(yarl.URL(stack.url + path, encoded=True))
            assert outside.status in (403, 404)
            assert "secret" not in await outside.text()
