"""Tests for kvs_peer.signing: SigV4 presign vectors, an independent oracle, verification.

The oracle below is a from-scratch SigV4 query presign written from the steps in
docs/protocol.md#the-signed-wss-url (the JS SDK's ``SigV4RequestSigner``) with only
hashlib/hmac, so presign_url (botocore underneath) is checked against something that shares no
code with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import random
import re
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials
from multidict import CIMultiDict

from kvs_peer.errors import InvalidArgument, KvsPeerError, SignatureError
from kvs_peer.signing import (
    CHANNEL_ARN_PARAM,
    CLIENT_ID_PARAM,
    DEFAULT_EXPIRES,
    canonical_netloc,
    master_url,
    normalize_endpoint,
    presign_url,
    redact_url,
    validate_channel_arn,
    validate_channel_name,
    validate_client_id,
    verify_presigned_url,
    verify_signed_request,
    viewer_url,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sigv4.json").read_text("utf-8"))
DATE = dt.datetime.fromisoformat(VECTORS["date"].replace("Z", "+00:00"))
REGION = VECTORS["region"]
AKID = VECTORS["access_key"]
SECRET = VECTORS["secret_key"]
TOKEN = VECTORS["session_token"]
ARN = VECTORS["channel_arn"]
SECRETS = {AKID: SECRET}
VIEWER_ENDPOINT = "wss://v-1a2b3c4d.kinesisvideo.us-west-2.amazonaws.com"
HEX64 = re.compile(r"[0-9a-f]{64}")


def creds(token: str | None = TOKEN) -> Credentials:
    return Credentials(AKID, SECRET, token)


# --------------------------------------------------------------------------------------------
# Oracle: SigV4 query presign by hand (docs/protocol.md#the-signed-wss-url, steps 1-9)

_UNRESERVED = frozenset((string.ascii_letters + string.digits + "-_.~").encode())


def _uri_encode(value: str) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8"))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def oracle_presign(
    endpoint: str,
    *,
    region: str,
    access_key: str,
    secret_key: str,
    token: str | None,
    query: dict[str, str],
    expires: int,
    service: str,
    when: dt.datetime,
) -> str:
    scheme, rest = endpoint.split("://", 1)
    host, slash, tail = rest.partition("/")
    path = f"/{tail}" if slash else "/"
    amz_date = when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    params = dict(query)
    params.update(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": "host",
        }
    )
    if token:
        params["X-Amz-Security-Token"] = token
    canonical_query = "&".join(f"{k}={_uri_encode(v)}" for k, v in sorted(params.items()))
    canonical_request = "\n".join(
        ["GET", path, canonical_query, f"host:{host}\n", "host", hashlib.sha256(b"").hexdigest()]
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    params["X-Amz-Signature"] = hmac.new(
        key, string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    query_string = "&".join(f"{k}={_uri_encode(v)}" for k, v in sorted(params.items()))
    return f"{scheme}://{host}{path}?{query_string}"


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _replace_param(url: str, name: str, raw_value: str | None) -> str:
    """Rewrite one query parameter in place (raw_value None removes it)."""
    base, query = url.split("?", 1)
    out = []
    for pair in query.split("&"):
        key = pair.split("=", 1)[0]
        if key != name:
            out.append(pair)
        elif raw_value is not None:
            out.append(f"{key}={raw_value}")
    return f"{base}?{'&'.join(out)}"


# --------------------------------------------------------------------------------------------
# Known vectors


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_js_sdk_vectors_byte_for_byte(vector: dict[str, Any]) -> None:
    url = presign_url(
        vector["endpoint"],
        region=REGION,
        credentials=creds(TOKEN if vector["with_token"] else None),
        query=vector["query"],
        expires=vector["expires"],
        service=vector["service"],
        now=DATE,
    )
    assert url == vector["url"]


@pytest.mark.parametrize("vector", VECTORS["role_vectors"], ids=lambda v: v["name"])
def test_role_vectors_byte_for_byte(vector: dict[str, Any]) -> None:
    credentials = creds(TOKEN if vector["with_token"] else None)
    if vector["role"] == "VIEWER":
        url = viewer_url(
            vector["endpoint"],
            channel_arn=ARN,
            client_id=vector["client_id"],
            region=REGION,
            credentials=credentials,
            now=DATE,
        )
    else:
        url = master_url(
            vector["endpoint"], channel_arn=ARN, region=REGION, credentials=credentials, now=DATE
        )
    assert url == vector["url"]


@pytest.mark.parametrize(
    "vector", VECTORS["vectors"] + VECTORS["role_vectors"], ids=lambda v: v["name"]
)
def test_oracle_reproduces_every_vector(vector: dict[str, Any]) -> None:
    # Establishes that the oracle used for the randomized comparison is itself right.
    query = vector.get("query") or {CHANNEL_ARN_PARAM: ARN}
    if vector.get("client_id"):
        query = {**query, CLIENT_ID_PARAM: vector["client_id"]}
    url = oracle_presign(
        vector["endpoint"],
        region=REGION,
        access_key=AKID,
        secret_key=SECRET,
        token=TOKEN if vector["with_token"] else None,
        query=query,
        expires=vector.get("expires", 299),
        service=vector.get("service", "kinesisvideo"),
        when=DATE,
    )
    assert url == vector["url"]


def test_default_expiry_is_the_js_value() -> None:
    assert DEFAULT_EXPIRES == 299
    url = viewer_url(
        VIEWER_ENDPOINT,
        channel_arn=ARN,
        client_id="v",
        region=REGION,
        credentials=creds(),
        now=DATE,
    )
    assert _query(url)["X-Amz-Expires"] == "299"


def test_now_in_another_timezone_signs_the_same_instant() -> None:
    tz = dt.timezone(dt.timedelta(hours=-7, minutes=-30))
    local = DATE.astimezone(tz)
    assert local.tzinfo is tz
    vector = VECTORS["vectors"][0]
    url = presign_url(
        vector["endpoint"], region=REGION, credentials=creds(), query=vector["query"], now=local
    )
    assert url == vector["url"]


def test_default_now_is_the_current_time() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    url = master_url(VIEWER_ENDPOINT, channel_arn=ARN, region=REGION, credentials=creds())
    after = dt.datetime.now(dt.UTC)
    signed = dt.datetime.strptime(_query(url)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.UTC
    )
    assert before <= signed <= after
    assert verify_presigned_url(url, secrets=SECRETS).signed_at == signed


# --------------------------------------------------------------------------------------------
# Randomized comparison with the oracle

_B64 = string.ascii_letters + string.digits + "+/"
_ID_CHARS = string.ascii_letters + string.digits + "_.-"
_PATH_CHARS = string.ascii_letters + string.digits + "-_~"
_REGIONS = ["us-west-2", "eu-central-1", "ap-southeast-1", "us-gov-west-1", "cn-north-1"]


@dataclasses.dataclass
class _PlainCreds:
    access_key: str
    secret_key: str
    token: str | None


def _random_case(rng: random.Random) -> dict[str, Any]:
    region = rng.choice(_REGIONS)
    token = None
    if rng.random() < 0.7:
        body = "".join(rng.choice(_B64) for _ in range(rng.randrange(4, 600)))
        token = body + rng.choice(["", "=", "=="])
    scheme = rng.choice(["wss", "ws"])
    host = rng.choice(
        [
            f"v-{rng.getrandbits(32):08x}.kinesisvideo.{region}.amazonaws.com",
            "127.0.0.1",
            "localhost",
            f"emulator-{rng.randrange(100)}.local",
        ]
    )
    if rng.random() < 0.5:
        host += f":{rng.choice([443, 80, 8443, rng.randrange(1, 65536)])}"
    # Paths stick to plain segments: for '.', '..', '//' or '%XX' botocore normalises and
    # re-encodes the path (AWS style) while the JS SDK signs it raw; KVS endpoints have none.
    path = ""
    if rng.random() < 0.5:
        segments = [
            "".join(rng.choice(_PATH_CHARS) for _ in range(rng.randrange(1, 9)))
            for _ in range(rng.randrange(1, 4))
        ]
        path = "/" + "/".join(segments) + rng.choice(["", "/"])
    query = {
        CHANNEL_ARN_PARAM: (
            f"arn:aws:kinesisvideo:{region}:{rng.randrange(10**12):012d}:channel/"
            + "".join(rng.choice(_ID_CHARS) for _ in range(rng.randrange(1, 40)))
            + f"/{rng.randrange(10**13)}"
        )
    }
    if rng.random() < 0.6:
        query[CLIENT_ID_PARAM] = "".join(rng.choice(_ID_CHARS) for _ in range(rng.randrange(1, 40)))
    if rng.random() < 0.3:
        # Unknown-but-signed parameters (the C SDK's X-Amz-Role), with awkward characters.
        query["X-Amz-Role"] = "".join(
            rng.choice(string.printable.strip() + "é ✓") for _ in range(rng.randrange(0, 20))
        )
    offset = dt.timedelta(minutes=rng.randrange(-12 * 60, 14 * 60 + 1, 15))
    when = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=rng.randrange(40 * 365 * 86400)
    )
    return {
        "endpoint": f"{scheme}://{host}{path}",
        "region": region,
        "access_key": rng.choice(["AKIA", "ASIA"])
        + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        "secret_key": "".join(rng.choice(_B64) for _ in range(40)),
        "token": token,
        "query": query,
        "expires": rng.choice([DEFAULT_EXPIRES, 1, 604_800, rng.randrange(1, 604_801)]),
        "service": rng.choice(["kinesisvideo", "kinesisvideo", "firehose"]),
        "when": when.astimezone(dt.timezone(offset)),
    }


def _without_default_port(endpoint: str) -> str:
    scheme, rest = endpoint.split("://", 1)
    host, slash, tail = rest.partition("/")
    default = {"wss": ":443", "ws": ":80"}[scheme]
    if host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}{slash}{tail}"


def test_presign_matches_oracle_for_random_inputs() -> None:
    rng = random.Random(20191201)
    for _ in range(1000):
        case = _random_case(rng)
        credentials = rng.choice(
            [
                Credentials(case["access_key"], case["secret_key"], case["token"]),
                SimpleNamespace(
                    access_key=case["access_key"],
                    secret_key=case["secret_key"],
                    token=case["token"],
                ),
                _PlainCreds(case["access_key"], case["secret_key"], case["token"]),
            ]
        )
        url = presign_url(
            case["endpoint"],
            region=case["region"],
            credentials=credentials,
            query=case["query"],
            expires=case["expires"],
            service=case["service"],
            now=case["when"],
        )
        # kvs-peer drops a default port (wss 443, ws 80) where the JS SDK signs it verbatim.
        expected = dict(case, endpoint=_without_default_port(case["endpoint"]))
        assert url == oracle_presign(**expected), case

        verified = verify_presigned_url(
            url,
            secrets={case["access_key"]: case["secret_key"]},
            region=case["region"],
            service=case["service"],
            now=case["when"],
        )
        assert verified.access_key == case["access_key"]
        assert verified.session_token == case["token"]
        for key, value in case["query"].items():
            assert verified.params[key] == value


# --------------------------------------------------------------------------------------------
# Credentials


def test_plain_object_credentials() -> None:
    vector = VECTORS["vectors"][0]
    plain = SimpleNamespace(access_key=AKID, secret_key=SECRET, token=TOKEN)
    url = presign_url(
        vector["endpoint"], region=REGION, credentials=plain, query=vector["query"], now=DATE
    )
    assert url == vector["url"]


@pytest.mark.parametrize(
    "plain",
    [
        SimpleNamespace(access_key=AKID, secret_key=SECRET, token=None),
        SimpleNamespace(access_key=AKID, secret_key=SECRET, token=""),
        SimpleNamespace(access_key=AKID, secret_key=SECRET),
    ],
    ids=["none-token", "empty-token", "no-token-attribute"],
)
def test_missing_or_empty_token_is_left_out(plain: SimpleNamespace) -> None:
    url = presign_url(
        "wss://kvs.awsamazon.com",
        region=REGION,
        credentials=plain,
        query={"X-Amz-TestParam": "test-param-value"},
        now=DATE,
    )
    assert url == VECTORS["vectors"][1]["url"]


def test_refreshable_credentials_are_frozen_and_refreshed() -> None:
    calls: list[int] = []

    def refresh() -> dict[str, str]:
        calls.append(1)
        return {
            "access_key": "ASIAROTATEDKEY000001",
            "secret_key": "rotated-secret",
            "token": "rotated+token/==",
            "expiry_time": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(),
        }

    expired = RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": AKID,
            "secret_key": SECRET,
            "token": TOKEN,
            "expiry_time": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat(),
        },
        refresh_using=refresh,
        method="test",
    )
    url = presign_url(
        VIEWER_ENDPOINT, region=REGION, credentials=expired, query={"a": "b"}, now=DATE
    )
    assert calls, "expired refreshable credentials were not refreshed before signing"
    assert url == oracle_presign(
        VIEWER_ENDPOINT,
        region=REGION,
        access_key="ASIAROTATEDKEY000001",
        secret_key="rotated-secret",
        token="rotated+token/==",
        query={"a": "b"},
        expires=299,
        service="kinesisvideo",
        when=DATE,
    )


def test_refreshable_credentials_still_valid_match_vector() -> None:
    fresh = RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": AKID,
            "secret_key": SECRET,
            "token": TOKEN,
            "expiry_time": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(),
        },
        refresh_using=lambda: pytest.fail("refreshed credentials that were still valid"),
        method="test",
    )
    vector = VECTORS["vectors"][0]
    url = presign_url(
        vector["endpoint"], region=REGION, credentials=fresh, query=vector["query"], now=DATE
    )
    assert url == vector["url"]


@pytest.mark.parametrize(
    "bad",
    [
        Credentials(AKID, ""),
        SimpleNamespace(access_key="", secret_key=SECRET, token=None),
        SimpleNamespace(access_key=AKID, secret_key=None, token=None),
        SimpleNamespace(access_key=AKID),
        None,
        object(),
    ],
    ids=["empty-secret", "empty-key", "none-secret", "no-secret-attr", "none", "object"],
)
def test_unusable_credentials(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="access key and secret key") as info:
        presign_url(VIEWER_ENDPOINT, region=REGION, credentials=bad, query={}, now=DATE)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KvsPeerError)


# --------------------------------------------------------------------------------------------
# Bad inputs to presign


@pytest.mark.parametrize(
    ("endpoint", "hint"),
    [
        ("https://kvs.awsamazon.com", "wss://"),
        ("http://kvs.awsamazon.com", "wss://"),
        ("kvs.awsamazon.com", "wss://"),
        ("", "wss://"),
        ("wss://kvs.awsamazon.com?a=b", "query"),
        ("wss://kvs.awsamazon.com/path?X-Amz-ChannelARN=x", "query"),
        ("wss://kvs.awsamazon.com/?", "query"),
        ("wss://kvs.awsamazon.com#frag", "fragment"),
        ("wss://", "no host"),
        ("wss:///path", "no host"),
        ("ws://", "no host"),
        # Port but no host name: nothing to connect to, and botocore would sign "None:443".
        ("wss://:443", "no host"),
    ],
)
def test_bad_endpoint(endpoint: str, hint: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(hint)):
        presign_url(endpoint, region=REGION, credentials=creds(), query={}, now=DATE)


def test_endpoint_not_a_string() -> None:
    with pytest.raises(InvalidArgument, match="must be a string"):
        presign_url(b"wss://x", region=REGION, credentials=creds(), query={}, now=DATE)  # type: ignore[arg-type]


@pytest.mark.parametrize("region", ["", None, "us-west-2/evil", "us west 2"])
def test_bad_region(region: Any) -> None:
    # A region with '/' or a space yields a credential scope that no verifier (not even
    # verify_presigned_url) can parse; the docstring promises InvalidArgument for a bad region.
    with pytest.raises(InvalidArgument, match="region"):
        presign_url(VIEWER_ENDPOINT, region=region, credentials=creds(), query={}, now=DATE)


@pytest.mark.parametrize("expires", [0, -1, 604_801, 1.5, "299", None, True])
def test_bad_expires(expires: Any) -> None:
    # True is an int subclass: accepting it signs "X-Amz-Expires=True", which no server takes.
    with pytest.raises(InvalidArgument, match="expires"):
        presign_url(
            VIEWER_ENDPOINT, region=REGION, credentials=creds(), query={}, expires=expires, now=DATE
        )


@pytest.mark.parametrize("expires", [1, 604_800])
def test_expires_bounds_accepted(expires: int) -> None:
    url = presign_url(
        VIEWER_ENDPOINT, region=REGION, credentials=creds(), query={}, expires=expires, now=DATE
    )
    assert _query(url)["X-Amz-Expires"] == str(expires)


def test_naive_now() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        presign_url(
            VIEWER_ENDPOINT,
            region=REGION,
            credentials=creds(),
            query={},
            now=dt.datetime(2019, 12, 1),
        )


def test_query_may_not_carry_auth_params() -> None:
    # Today these are silently overridden after botocore signed the caller's value, so the
    # URL never verifies; a clear error is the only useful outcome.
    for name in (
        "X-Amz-Signature",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Amz-Algorithm",
        "X-Amz-SignedHeaders",
    ):
        with pytest.raises(InvalidArgument, match=name):
            presign_url(
                VIEWER_ENDPOINT, region=REGION, credentials=creds(), query={name: "x"}, now=DATE
            )


# --------------------------------------------------------------------------------------------
# Client ids, channel names and ARNs

BAD_IDS = [
    "",
    "x" * 257,
    "AWS_x",
    "aws_x",
    "aWs_viewer",
    "has space",
    " lead",
    "trail\n",
    "tab\t",
    "ünïcode",
    "٣",  # Arabic-Indic digit: str.isdigit() but not [0-9]
    "a/b",
    "a:b",
    "a+b",
    None,
    42,
]


@pytest.mark.parametrize("client_id", BAD_IDS, ids=repr)
def test_invalid_client_id(client_id: Any) -> None:
    with pytest.raises(InvalidArgument, match="client id") as info:
        validate_client_id(client_id)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidArgument, match="client id"):
        viewer_url(
            VIEWER_ENDPOINT,
            channel_arn=ARN,
            client_id=client_id,
            region=REGION,
            credentials=creds(),
            now=DATE,
        )


def test_reserved_prefix_message_explains() -> None:
    with pytest.raises(InvalidArgument, match="AWS_"):
        validate_client_id("Aws_viewer")


@pytest.mark.parametrize(
    "client_id", ["a", "x" * 256, "AWS", "AWSx", "my_AWS_id", "A-b.c_9", "..."], ids=repr
)
def test_valid_client_id(client_id: str) -> None:
    assert validate_client_id(client_id) == client_id
    url = viewer_url(
        VIEWER_ENDPOINT,
        channel_arn=ARN,
        client_id=client_id,
        region=REGION,
        credentials=creds(),
        now=DATE,
    )
    assert _query(url)[CLIENT_ID_PARAM] == client_id


@pytest.mark.parametrize("name", ["", "x" * 257, "a b", "a/b", "ü", None])
def test_invalid_channel_name(name: Any) -> None:
    with pytest.raises(InvalidArgument, match="channel name"):
        validate_channel_name(name)


@pytest.mark.parametrize("name", ["a", "x" * 256, "my-channel_1.0"])
def test_valid_channel_name(name: str) -> None:
    assert validate_channel_name(name) == name


BAD_ARNS = [
    "",
    "testChannel",
    "arn:aws:kinesisvideo:us-west-2:123456789012:stream/testChannel/1234567890",
    "arn:aws:kinesis:us-west-2:123456789012:channel/testChannel/1234567890",
    "arn:aws:kinesisvideo:us-west-2:123456789012:channel/testChannel",
    "arn:aws:kinesisvideo:us-west-2:123456789012:channel/testChannel/abc",
    "arn:aws:kinesisvideo:us-west-2:acct:channel/testChannel/1234567890",
    "arn:aws:kinesisvideo:US-WEST-2:123456789012:channel/testChannel/1234567890",
    "arn:aws:kinesisvideo:us-west-2:123456789012:channel/test Channel/1234567890",
    " arn:aws:kinesisvideo:us-west-2:123456789012:channel/testChannel/1234567890",
    "arn:aws:kinesisvideo:us-west-2:123456789012:channel/testChannel/1234567890\n",
    "arn:aws:kinesisvideo:us-west-2:123456789012:channel/" + "x" * 1000 + "/1",
    None,
]


@pytest.mark.parametrize("arn", BAD_ARNS, ids=lambda a: repr(a)[:60])
def test_invalid_channel_arn(arn: Any) -> None:
    with pytest.raises(InvalidArgument, match="channel ARN") as info:
        validate_channel_arn(arn)
    assert "arn:aws:kinesisvideo:REGION" in str(info.value)
    with pytest.raises(InvalidArgument, match="channel ARN"):
        master_url(VIEWER_ENDPOINT, channel_arn=arn, region=REGION, credentials=creds(), now=DATE)
    with pytest.raises(InvalidArgument, match="channel ARN"):
        viewer_url(
            VIEWER_ENDPOINT,
            channel_arn=arn,
            client_id="v",
            region=REGION,
            credentials=creds(),
            now=DATE,
        )


@pytest.mark.parametrize(
    "arn",
    [
        ARN,
        "arn:aws-cn:kinesisvideo:cn-north-1:123456789012:channel/x/1",
        "arn:aws-us-gov:kinesisvideo:us-gov-west-1:123456789012:channel/a.b-c_d/1700000000000",
    ],
)
def test_valid_channel_arn(arn: str) -> None:
    assert validate_channel_arn(arn) == arn


# --------------------------------------------------------------------------------------------
# verify_presigned_url


def _viewer(
    *,
    endpoint: str = VIEWER_ENDPOINT,
    client_id: str = "TestClientId",
    token: str | None = TOKEN,
    when: dt.datetime = DATE,
    expires: int = DEFAULT_EXPIRES,
) -> str:
    return viewer_url(
        endpoint,
        channel_arn=ARN,
        client_id=client_id,
        region=REGION,
        credentials=creds(token),
        expires=expires,
        now=when,
    )


def _refused(url: str, reason: str, **kwargs: Any) -> SignatureError:
    kwargs.setdefault("secrets", SECRETS)
    kwargs.setdefault("now", DATE)
    with pytest.raises(SignatureError) as info:
        verify_presigned_url(url, **kwargs)
    error = info.value
    assert error.reason == reason, str(error)
    message = str(error)
    # Safe to return to the client: no signature (expected or given), secret or token.
    assert not HEX64.search(message), message
    assert SECRET not in message
    assert TOKEN not in message
    return error


def test_verify_round_trip() -> None:
    url = _viewer()
    verified = verify_presigned_url(url, secrets=SECRETS, region=REGION, now=DATE)
    assert verified.access_key == AKID
    assert verified.region == REGION
    assert verified.service == "kinesisvideo"
    assert verified.signed_at == DATE
    assert verified.expires_at == DATE + dt.timedelta(seconds=299)
    assert verified.session_token == TOKEN
    assert verified.params[CHANNEL_ARN_PARAM] == ARN
    assert verified.params[CLIENT_ID_PARAM] == "TestClientId"
    assert "X-Amz-Signature" not in verified.params
    assert verified.params["X-Amz-Expires"] == "299"


def test_verify_master_without_token() -> None:
    url = master_url(
        VIEWER_ENDPOINT, channel_arn=ARN, region=REGION, credentials=creds(None), now=DATE
    )
    verified = verify_presigned_url(url, secrets=SECRETS, now=DATE)
    assert verified.session_token is None
    assert CLIENT_ID_PARAM not in verified.params


def test_verify_accepts_the_js_and_derived_vectors() -> None:
    for vector in VECTORS["vectors"] + VECTORS["role_vectors"]:
        verified = verify_presigned_url(
            vector["url"],
            secrets=SECRETS,
            service=vector.get("service", "kinesisvideo"),
            now=DATE,
        )
        assert verified.access_key == AKID


def test_verify_with_callable_secrets() -> None:
    seen: list[str] = []

    def lookup(key: str) -> str | None:
        seen.append(key)
        return SECRETS.get(key)

    assert verify_presigned_url(_viewer(), secrets=lookup, now=DATE).access_key == AKID
    assert seen == [AKID]
    _refused(_viewer(), "unknown-key", secrets=lambda key: None)


def test_verify_tampered_signature() -> None:
    url = _viewer()
    signature = _query(url)["X-Amz-Signature"]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    error = _refused(_replace_param(url, "X-Amz-Signature", flipped), "mismatch")
    assert "does not match" in str(error)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (CLIENT_ID_PARAM, "OtherClientId"),
        (
            CHANNEL_ARN_PARAM,
            "arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A123456789012%3Achannel%2Fx%2F1",
        ),
        ("X-Amz-Security-Token", "OtherToken"),
        ("X-Amz-Expires", "300"),
    ],
)
def test_verify_tampered_param(name: str, raw: str) -> None:
    url = _replace_param(_viewer(), name, raw)
    error = _refused(url, "mismatch")
    # Not even the signature that would be right for the tampered URL leaks.
    params = _query(url)
    query = {k: v for k, v in params.items() if k in (CHANNEL_ARN_PARAM, CLIENT_ID_PARAM)}
    right = oracle_presign(
        VIEWER_ENDPOINT,
        region=REGION,
        access_key=AKID,
        secret_key=SECRET,
        token=params["X-Amz-Security-Token"],
        query=query,
        expires=int(params["X-Amz-Expires"]),
        service="kinesisvideo",
        when=DATE,
    )
    assert _query(right)["X-Amz-Signature"] not in str(error)


def test_verify_dropped_client_id_fails() -> None:
    _refused(_replace_param(_viewer(), CLIENT_ID_PARAM, None), "mismatch")


def test_verify_wrong_secret() -> None:
    _refused(_viewer(), "mismatch", secrets={AKID: "NotTheSecret"})


def test_verify_unknown_key() -> None:
    error = _refused(_viewer(), "unknown-key", secrets={"AKIAOTHER": SECRET})
    assert "unknown key" in str(error)


def test_verify_wrong_region() -> None:
    error = _refused(_viewer(), "scope", region="eu-west-1")
    assert "us-west-2" in str(error) and "eu-west-1" in str(error)


def test_verify_wrong_service() -> None:
    error = _refused(_viewer(), "scope", service="firehose")
    assert "kinesisvideo" in str(error)


def test_verify_expiry_boundary() -> None:
    url = _viewer()
    at_limit = DATE + dt.timedelta(seconds=299)
    assert verify_presigned_url(url, secrets=SECRETS, now=at_limit).expires_at == at_limit
    error = _refused(url, "expired", now=at_limit + dt.timedelta(seconds=1))
    assert "299" in str(error)


def test_verify_long_expiry_like_the_c_sdk() -> None:
    url = _viewer(expires=604_800)
    later = DATE + dt.timedelta(days=6)
    assert verify_presigned_url(url, secrets=SECRETS, now=later).access_key == AKID
    _refused(url, "expired", now=DATE + dt.timedelta(days=7, seconds=1))


def test_verify_clock_skew() -> None:
    url = _viewer()
    # Signed 300 s ahead of the server: still inside the window.
    assert verify_presigned_url(url, secrets=SECRETS, now=DATE - dt.timedelta(seconds=300))
    error = _refused(url, "skew", now=DATE - dt.timedelta(seconds=301))
    assert "clock" in str(error)
    assert verify_presigned_url(
        url, secrets=SECRETS, now=DATE - dt.timedelta(seconds=3600), max_skew=3600
    )
    _refused(url, "skew", now=DATE - dt.timedelta(seconds=31), max_skew=30)


def test_verify_naive_now() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        verify_presigned_url(_viewer(), secrets=SECRETS, now=dt.datetime(2019, 12, 1))


@pytest.mark.parametrize(
    "name",
    [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ],
)
def test_verify_missing_param(name: str) -> None:
    error = _refused(_replace_param(_viewer(), name, None), "malformed")
    assert name in str(error)
    error = _refused(_replace_param(_viewer(), name, ""), "malformed")
    assert name in str(error)


def test_verify_no_query_at_all() -> None:
    _refused(VIEWER_ENDPOINT + "/", "malformed")


@pytest.mark.parametrize("name", [CLIENT_ID_PARAM, "X-Amz-Signature", "X-Amz-Date"])
def test_verify_duplicate_param(name: str) -> None:
    url = _viewer()
    raw = url.split(f"{name}=", 1)[1].split("&", 1)[0]
    error = _refused(f"{url}&{name}={raw}", "malformed")
    assert name in str(error)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("host%3Bx-amz-date", "x-amz-date is missing"),
        ("content-type%3Bhost", "content-type is missing"),
        ("x-amz-date", "must include host"),
        ("Host", "lowercase"),
        ("host%3B", "lowercase"),
        ("x-amz-date%3Bhost", "sorted"),
        ("host%3Bhost", "repeats"),
    ],
)
def test_verify_bad_or_unsent_signed_headers(value: str, hint: str) -> None:
    error = _refused(_replace_param(_viewer(), "X-Amz-SignedHeaders", value), "malformed")
    assert hint in str(error)


def test_verify_unsupported_algorithm() -> None:
    error = _refused(
        _replace_param(_viewer(), "X-Amz-Algorithm", "AWS4-HMAC-SHA512"), "unsupported"
    )
    assert "AWS4-HMAC-SHA256" in str(error)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("X-Amz-Date", "2019-12-01T00%3A00%3A00Z"),
        ("X-Amz-Date", "20191301T000000Z"),
        ("X-Amz-Expires", "abc"),
        ("X-Amz-Expires", "0"),
        ("X-Amz-Expires", "604801"),
        ("X-Amz-Credential", "AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Fkinesisvideo"),
        ("X-Amz-Credential", "AKIA4F7WJQR7FMMWMNXI"),
        ("X-Amz-Credential", "%2F20191201%2Fus-west-2%2Fkinesisvideo%2Faws4_request"),
    ],
)
def test_verify_malformed_values(name: str, raw: str) -> None:
    error = _refused(_replace_param(_viewer(), name, raw), "malformed")
    assert AKID not in str(error)


def test_verify_scope_date_mismatch() -> None:
    url = _replace_param(_viewer(), "X-Amz-Date", "20191202T000000Z")
    error = _refused(url, "scope", now=DATE + dt.timedelta(days=1))
    assert "date" in str(error)


def test_verify_host_header_differs_from_url_host() -> None:
    # A server that rebuilds the URL from its bind address must pass the Host header it got.
    url = _viewer(endpoint="ws://127.0.0.1:8443")
    as_seen = url.replace("ws://127.0.0.1:8443", "ws://0.0.0.0:8443", 1)
    assert verify_presigned_url(as_seen, secrets=SECRETS, host="127.0.0.1:8443", now=DATE)
    _refused(as_seen, "mismatch")
    _refused(url, "mismatch", host="127.0.0.1:8444")
    _refused(url, "mismatch", host="127.0.0.1")


def test_verify_path_is_signed() -> None:
    url = _viewer(endpoint="wss://kvs.example.com/a/b")
    assert verify_presigned_url(url, secrets=SECRETS, now=DATE)
    _refused(url.replace("/a/b?", "/a/c?", 1), "mismatch")


def test_verify_https_and_wss_urls_are_equivalent() -> None:
    # The emulator may see the request as https:// (TLS terminated in front of it).
    url = _viewer(endpoint="wss://kvs.example.com:8443")
    assert verify_presigned_url(url.replace("wss://", "https://", 1), secrets=SECRETS, now=DATE)


def test_verify_uppercase_host_round_trip() -> None:
    # presign_url keeps the host's case in the URL but botocore signs it lowercased, so the
    # URL it returns does not verify against itself. HTTP hosts are case-insensitive, and every
    # WebSocket client sends the lowercased host (websockets, browsers).
    url = _viewer(endpoint="wss://KVS.Example.com:8443")
    verified = verify_presigned_url(url, secrets=SECRETS, now=DATE)
    assert verified.access_key == AKID
    assert verify_presigned_url(url, secrets=SECRETS, host="kvs.example.com:8443", now=DATE)


def test_unknown_signed_params_are_covered() -> None:
    url = presign_url(
        VIEWER_ENDPOINT,
        region=REGION,
        credentials=creds(),
        query={CHANNEL_ARN_PARAM: ARN, "X-Amz-Role": "MASTER", "X-Amz-ChannelName": "demo"},
        now=DATE,
    )
    verified = verify_presigned_url(url, secrets=SECRETS, now=DATE)
    assert verified.params["X-Amz-Role"] == "MASTER"
    assert verified.params["X-Amz-ChannelName"] == "demo"
    _refused(_replace_param(url, "X-Amz-Role", "VIEWER"), "mismatch")
    _refused(_replace_param(url, "X-Amz-ChannelName", None), "mismatch")
    _refused(url + "&X-Amz-Extra=1", "mismatch")


def test_verify_percent_encoding_is_canonicalised() -> None:
    # Lowercase hex in the received URL decodes to the same values: still valid.
    url = _viewer()
    lowered = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), url)
    assert lowered != url
    assert verify_presigned_url(lowered, secrets=SECRETS, now=DATE)


def test_verify_token_with_base64_characters() -> None:
    token = "IQoJb3JpZ2luX2VjE+/abc=="
    url = _viewer(token=token)
    assert "X-Amz-Security-Token=IQoJb3JpZ2luX2VjE%2B%2Fabc%3D%3D" in url
    assert verify_presigned_url(url, secrets=SECRETS, now=DATE).session_token == token


# --------------------------------------------------------------------------------------------
# verify_signed_request (control plane, Authorization header)

CONTROL_URL = "https://127.0.0.1:1234/describeSignalingChannel"
BODY = json.dumps({"ChannelName": "demo-channel"}).encode()


def _signed_post(
    *,
    url: str = CONTROL_URL,
    body: bytes = BODY,
    token: str | None = "tok+/=",
    region: str = REGION,
) -> tuple[dict[str, str], dt.datetime]:
    """Sign like boto3 does and return the headers as a server would receive them."""
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/x-amz-json-1.1"}
    )
    SigV4Auth(Credentials(AKID, SECRET, token), "kinesisvideo", region).add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = urlsplit(url).netloc
    headers["User-Agent"] = "Boto3/1.x"  # unsigned, added by the HTTP layer
    signed_at = dt.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return headers, signed_at


def _refused_request(headers: dict[str, str], reason: str, **kwargs: Any) -> SignatureError:
    kwargs.setdefault("secrets", SECRETS)
    body = kwargs.pop("body", BODY)
    url = kwargs.pop("url", CONTROL_URL)
    with pytest.raises(SignatureError) as info:
        verify_signed_request("POST", url, headers, body, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert not HEX64.search(str(info.value))
    return info.value


def test_signed_request_round_trip() -> None:
    headers, signed_at = _signed_post()
    assert "x-amz-security-token" in headers["Authorization"]
    verified = verify_signed_request(
        "POST", CONTROL_URL, headers, BODY, secrets=SECRETS, region=REGION
    )
    assert verified.access_key == AKID
    assert verified.region == REGION
    assert verified.service == "kinesisvideo"
    assert verified.signed_at == signed_at
    assert verified.expires_at is None
    assert verified.session_token == "tok+/="
    assert verified.params == {}


def test_signed_request_header_names_any_case() -> None:
    headers, _ = _signed_post()
    lowered = {k.lower(): v for k, v in headers.items()}
    upper = {k.upper(): v for k, v in headers.items()}
    for variant in (lowered, upper):
        assert verify_signed_request("post", CONTROL_URL, variant, BODY, secrets=SECRETS)


def test_signed_request_with_query() -> None:
    url = "https://127.0.0.1:1234/v1/get-ice-server-config?b=2&a=x%2By"
    headers, _ = _signed_post(url=url)
    verified = verify_signed_request("POST", url, headers, BODY, secrets=SECRETS)
    assert verified.params == {"a": "x+y", "b": "2"}
    _refused_request(headers, "mismatch", url=url.replace("b=2", "b=3"))


def test_signed_request_tampered_body() -> None:
    headers, _ = _signed_post()
    _refused_request(headers, "mismatch", body=BODY.replace(b"demo", b"evil"))
    _refused_request(headers, "mismatch", body=BODY + b" ")


def test_signed_request_tampered_signed_header() -> None:
    headers, _ = _signed_post()
    headers["Content-Type"] = "application/json"
    _refused_request(headers, "mismatch")


def test_signed_request_tolerates_unsigned_token_header() -> None:
    # The C SDK adds x-amz-security-token after signing; unsigned headers do not take part.
    headers, _ = _signed_post(token=None)
    assert "x-amz-security-token" not in headers["Authorization"]
    headers["x-amz-security-token"] = "added-after-signing"
    verified = verify_signed_request("POST", CONTROL_URL, headers, BODY, secrets=SECRETS)
    assert verified.session_token == "added-after-signing"


def test_signed_request_missing_authorization() -> None:
    headers, _ = _signed_post()
    del headers["Authorization"]
    error = _refused_request(headers, "malformed")
    assert "Authorization" in str(error)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=x",
        "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=" + "0" * 64,
    ],
)
def test_signed_request_malformed_authorization(value: str) -> None:
    headers, _ = _signed_post()
    headers["Authorization"] = value
    _refused_request(headers, "malformed")


def test_signed_request_missing_signed_header() -> None:
    headers, _ = _signed_post()
    del headers["Host"]
    error = _refused_request(headers, "malformed")
    assert "host" in str(error)


def test_signed_request_missing_date() -> None:
    headers, _ = _signed_post()
    del headers["X-Amz-Date"]
    _refused_request(headers, "malformed")


def test_signed_request_scope_and_keys() -> None:
    headers, _ = _signed_post()
    _refused_request(headers, "scope", region="eu-west-1")
    _refused_request(headers, "scope", service="firehose")
    _refused_request(headers, "unknown-key", secrets={})
    _refused_request(headers, "mismatch", secrets={AKID: "wrong"})


def test_signed_request_clock_skew() -> None:
    headers, signed_at = _signed_post()
    ok = verify_signed_request(
        "POST", CONTROL_URL, headers, BODY, secrets=SECRETS, now=signed_at + dt.timedelta(minutes=5)
    )
    assert ok.access_key == AKID
    _refused_request(headers, "skew", now=signed_at + dt.timedelta(minutes=5, seconds=1))
    _refused_request(headers, "skew", now=signed_at - dt.timedelta(minutes=5, seconds=1))


# --------------------------------------------------------------------------------------------
# redact_url


def test_redact_hides_secrets_and_keeps_the_rest() -> None:
    token = "IQoJb3JpZ2luX2VjE+/abc=="
    url = _viewer(token=token)
    params = _query(url)
    redacted = redact_url(url)
    shown = _query(redacted)
    for name in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token"):
        assert shown[name] == "REDACTED"
    for secret in (params["X-Amz-Signature"], AKID, token, "IQoJb3JpZ2luX2VjE"):
        assert secret not in redacted
    kept = (CHANNEL_ARN_PARAM, CLIENT_ID_PARAM, "X-Amz-Date", "X-Amz-Expires", "X-Amz-Algorithm")
    for name in (*kept, "X-Amz-SignedHeaders"):
        assert shown[name] == params[name]
    assert redacted.startswith(VIEWER_ENDPOINT + "/?")
    # Still readable: the encoded ARN is shown exactly as in the URL.
    assert "X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2" in redacted


def test_redact_url_without_query_is_unchanged() -> None:
    assert redact_url(VIEWER_ENDPOINT) == VIEWER_ENDPOINT
    assert redact_url("wss://host/path") == "wss://host/path"


def test_redact_url_hides_a_password_in_the_url() -> None:
    redacted = redact_url("https://ops:pa55word@signer.example:8443/v1?X-Amz-Signature=abc&x=1")
    assert redacted == "https://ops:REDACTED@signer.example:8443/v1?X-Amz-Signature=REDACTED&x=1"
    assert (
        redact_url("https://ops:pa55word@signer.example") == "https://ops:REDACTED@signer.example"
    )
    assert redact_url("https://ops@signer.example") == "https://ops@signer.example"  # no secret


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://user:pa55word@v-1.kinesisvideo.us-west-2.amazonaws.com",  # not a WebSocket
        "wss://v-1.kinesisvideo.us-west-2.amazonaws.com/?X-Amz-Signature=pa55word",  # a query
        "wss://user:pa55word@v-1.kinesisvideo.us-west-2.amazonaws.com",  # user info
        "wss://user:pa55word@v-1.kinesisvideo.us-west-2.amazonaws.com:99999",  # both
    ],
)
def test_endpoint_errors_never_show_secrets(endpoint: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        master_url(endpoint, channel_arn=ARN, region=REGION, credentials=creds(), now=DATE)
    message = str(caught.value)
    assert "pa55word" not in message and "REDACTED" in message
    assert "v-1.kinesisvideo.us-west-2.amazonaws.com" in message  # still says which endpoint


def test_a_verified_request_keeps_the_token_out_of_its_repr() -> None:
    verified = verify_presigned_url(_viewer(), secrets=SECRETS, now=DATE)
    assert verified.session_token == TOKEN and verified.params["X-Amz-Security-Token"] == TOKEN
    for shown in (repr(verified), str(verified)):
        assert TOKEN not in shown and "X-Amz-Security-Token" not in shown
        assert AKID in shown and "VerifiedRequest(" in shown


def test_redact_vectors() -> None:
    for vector in VECTORS["vectors"] + VECTORS["role_vectors"]:
        redacted = redact_url(vector["url"])
        assert not HEX64.search(redacted)
        assert TOKEN not in redacted
        assert AKID not in redacted


def test_verify_rejects_a_non_hex_signature_cleanly() -> None:
    import datetime as _dt

    from botocore.credentials import Credentials as _Credentials

    from kvs_peer.errors import SignatureError as _SignatureError
    from kvs_peer.signing import verify_presigned_url as _verify
    from kvs_peer.signing import viewer_url as _viewer_url

    now = _dt.datetime(2024, 1, 1, tzinfo=_dt.UTC)
    url = _viewer_url(
        "wss://h.example.com",
        channel_arn="arn:aws:kinesisvideo:us-east-1:123456789012:channel/c/1",
        client_id="v",
        region="us-east-1",
        credentials=_Credentials("AK", "SK"),
        now=now,
    )
    bad = url.split("X-Amz-Signature=")[0] + "X-Amz-Signature=%C3%A9&X-Amz-SignedHeaders=host"
    with pytest.raises(_SignatureError) as info:
        _verify(bad, secrets={"AK": "SK"}, now=now)
    assert info.value.reason == "malformed"


# --------------------------------------------------------------------------------------------
# Exactly the headers SignedHeaders names, from any client
#
# spec_* below is a second, header-capable SigV4 written from the AWS IAM guide ("Create a
# signed AWS API request") with hashlib/hmac only: the verifier must accept what it signs,
# including headers botocore would never sign (user-agent, as the C SDK does).

C_SDK_USER_AGENT = "AWS-WEBRTC-KVS-AGENT/1.14.0/1.5.4"
AMZ_DATE = DATE.strftime("%Y%m%dT%H%M%SZ")


def _spec_path(raw_path: str) -> str:
    # Non-S3 services: each segment of the (already encoded) path is URI-encoded again.
    return "/".join(_uri_encode(segment) for segment in (raw_path or "/").split("/"))


def _spec_query(raw_query: str, *, drop: str | None = None) -> str:
    pairs = []
    for item in filter(None, raw_query.split("&")):
        key, _, value = item.partition("=")
        key, value = unquote(key), unquote(value)
        if key != drop:
            pairs.append((_uri_encode(key), _uri_encode(value)))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _spec_signature(
    *,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    signed: list[str],
    payload_hash: str,
    amz_date: str = AMZ_DATE,
    region: str = REGION,
    service: str = "kinesisvideo",
    secret_key: str = SECRET,
    drop_param: str | None = None,
) -> str:
    parts = urlsplit(url)
    canonical_headers = ""
    for name in sorted(signed):
        values = [v for k, v in headers if k.lower() == name]
        canonical_headers += f"{name}:{','.join(re.sub(' +', ' ', v.strip()) for v in values)}\n"
    canonical_request = "\n".join(
        [
            method,
            _spec_path(parts.path),
            _spec_query(parts.query, drop=drop_param),
            canonical_headers,
            ";".join(sorted(signed)),
            payload_hash,
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def spec_sign(
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    signed: list[str],
    *,
    payload_hash: str | None = None,
) -> list[tuple[str, str]]:
    """Sign with an Authorization header; returns ``headers`` plus it, as sent."""
    signature = _spec_signature(
        method=method,
        url=url,
        headers=headers,
        signed=signed,
        payload_hash=payload_hash or hashlib.sha256(body).hexdigest(),
    )
    credential = f"{AKID}/{AMZ_DATE[:8]}/{REGION}/kinesisvideo/aws4_request"
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={credential}, "
        f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature}"
    )
    return [*headers, ("Authorization", authorization)]


def spec_presign(url: str, headers: list[tuple[str, str]], signed: list[str], **kw: Any) -> str:
    """Presign a GET ``url`` (it already carries its role parameters) over ``signed``."""
    auth = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{AKID}/{AMZ_DATE[:8]}/{REGION}/kinesisvideo/aws4_request",
        "X-Amz-Date": AMZ_DATE,
        "X-Amz-Expires": "299",
        "X-Amz-SignedHeaders": ";".join(sorted(signed)),
    }
    url += "&" + "&".join(f"{k}={_uri_encode(v)}" for k, v in auth.items())
    signature = _spec_signature(
        method="GET",
        url=url,
        headers=headers,
        signed=signed,
        payload_hash=kw.pop("payload_hash", hashlib.sha256(b"").hexdigest()),
        **kw,
    )
    return f"{url}&X-Amz-Signature={signature}"


def _verify_post(
    headers: Any, body: bytes = BODY, url: str = "https://127.0.0.1/describeSignalingChannel"
) -> Any:
    return verify_signed_request("POST", url, headers, body, secrets=SECRETS, now=DATE)


def _refused_post(
    headers: Any,
    reason: str,
    body: bytes = BODY,
    url: str = "https://127.0.0.1/describeSignalingChannel",
) -> str:
    with pytest.raises(SignatureError) as info:
        _verify_post(headers, body, url)
    assert info.value.reason == reason, str(info.value)
    message = str(info.value)
    assert not HEX64.search(message) and SECRET not in message
    return message


C_SDK_URL = "https://127.0.0.1/createSignalingChannel"
C_SDK_BODY = b'{"ChannelName":"c-sdk","ChannelType":"SINGLE_MASTER"}'


def _c_sdk_request() -> list[tuple[str, str]]:
    """A control-plane call as the KVS C SDK 1.14 sends it (docs/protocol.md#control-plane)."""
    headers = [
        ("Host", "127.0.0.1"),
        ("User-Agent", C_SDK_USER_AGENT),
        ("X-Amz-Date", AMZ_DATE),
        ("Content-Type", "application/json"),
    ]
    signed = spec_sign("POST", C_SDK_URL, headers, C_SDK_BODY, ["host", "user-agent", "x-amz-date"])
    # The C SDK adds its session token after signing, unsigned.
    return [*signed, ("x-amz-security-token", "c-sdk-token")]


def test_c_sdk_shaped_request_is_accepted() -> None:
    headers = _c_sdk_request()
    authorization = dict(headers)["Authorization"]
    assert "SignedHeaders=host;user-agent;x-amz-date," in authorization
    verified = _verify_post(headers, C_SDK_BODY, C_SDK_URL)
    assert verified.access_key == AKID
    assert verified.session_token == "c-sdk-token"
    # botocore as a signer leaves user-agent out: recomputing its way cannot match the C SDK.
    request = AWSRequest(method="POST", url=C_SDK_URL, data=C_SDK_BODY, headers=dict(headers))
    request.context["timestamp"] = AMZ_DATE
    auth = SigV4Auth(Credentials(AKID, SECRET), "kinesisvideo", REGION)
    assert "user-agent" not in auth.signed_headers(auth.headers_to_sign(request))
    botocore_way = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    assert botocore_way not in authorization


def test_c_sdk_shaped_request_tampered() -> None:
    headers = _c_sdk_request()
    changed = [(k, "curl/8.0" if k == "User-Agent" else v) for k, v in headers]
    assert "does not match" in _refused_post(changed, "mismatch", C_SDK_BODY, C_SDK_URL)
    dropped = [(k, v) for k, v in headers if k != "User-Agent"]
    message = _refused_post(dropped, "malformed", C_SDK_BODY, C_SDK_URL)
    assert "user-agent is missing" in message
    _refused_post(headers, "mismatch", C_SDK_BODY + b" ", C_SDK_URL)
    # An unsigned header changes nothing: Content-Type is not in SignedHeaders.
    retyped = [(k, "text/plain" if k == "Content-Type" else v) for k, v in headers]
    assert _verify_post(retyped, C_SDK_BODY, C_SDK_URL)


# Headers as a client would send them: odd casing, repeated and untrimmed whitespace, a header
# sent twice (values joined with ',' in received order).
EXTRA_HEADERS = [
    ("HOST", "127.0.0.1"),
    ("user-AGENT", "  my-client/1.0   (linux;  x86_64)  "),
    ("X-Amz-Date", AMZ_DATE),
    ("content-type", "application/x-amz-json-1.1"),
    ("X-AMZ-Security-Token", "tok+/="),
    ("X-Custom", "one  two"),
    ("x-custom", " three"),
]
EXTRA_SIGNED = [
    "content-type",
    "host",
    "user-agent",
    "x-amz-date",
    "x-amz-security-token",
    "x-custom",
]


def test_spec_signed_extra_headers_are_accepted() -> None:
    headers = spec_sign("POST", CONTROL_URL, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    url = CONTROL_URL
    assert _verify_post(headers, url=url).session_token == "tok+/="
    # Through a case-insensitive multidict (what aiohttp hands the emulator) too.
    assert _verify_post(CIMultiDict(headers), url=url)
    # Whitespace is canonicalized: a proxy re-spacing a value changes nothing.
    respaced = [(k, " ".join(v.split()) if k == "user-AGENT" else v) for k, v in headers]
    assert _verify_post(respaced, url=url)


@pytest.mark.parametrize(
    ("change", "reason", "hint"),
    [
        (
            lambda h: [(k, "my-client/2.0" if k == "user-AGENT" else v) for k, v in h],
            "mismatch",
            "",
        ),
        (lambda h: [(k, "two one" if v == "one  two" else v) for k, v in h], "mismatch", ""),
        # Repeated values are ordered: swapping them is a different request.
        (lambda h: [h[0], h[1], h[2], h[3], h[4], h[6], h[5], h[7]], "mismatch", ""),
        (lambda h: [(k, v) for k, v in h if k != "x-custom"], "mismatch", ""),
        (lambda h: [(k, v) for k, v in h if k.lower() != "x-custom"], "malformed", "x-custom"),
        (lambda h: [(k, v) for k, v in h if k != "content-type"], "malformed", "content-type"),
        (lambda h: [(k, v) for k, v in h if k != "HOST"], "malformed", "host"),
        (lambda h: [*h, ("Host", "127.0.0.1")], "malformed", "more than one Host"),
    ],
)
def test_spec_signed_extra_headers_tampered(change: Any, reason: str, hint: str) -> None:
    headers = spec_sign("POST", CONTROL_URL, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    assert hint in _refused_post(change(headers), reason, url=CONTROL_URL)


def test_spec_signed_wrong_body_or_query() -> None:
    url = CONTROL_URL + "?b=2&a=x+y&a=1&empty="
    headers = spec_sign("POST", url, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    assert _verify_post(headers, url=url).params["a"] in ("x+y", "1")
    _refused_post(headers, "mismatch", url=url.replace("b=2", "b=3"))
    _refused_post(headers, "mismatch", url=url.replace("x+y", "x%20y"))
    _refused_post(headers, "mismatch", BODY + b"\n", url=url)
    _refused_post(headers, "mismatch", b"", url=url)


def test_spec_signed_double_encoded_path() -> None:
    url = "https://127.0.0.1/my%20path/x"
    headers = spec_sign("POST", url, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    assert _verify_post(headers, url=url)
    _refused_post(headers, "mismatch", url="https://127.0.0.1/my%2520path/x")


class _SignsEverything(SigV4Auth):
    """botocore as a signer that also signs user-agent (it leaves it out by default)."""

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        for name, value in request.headers.items():
            if name.lower() == "user-agent":
                headers["user-agent"] = value
        return headers


@pytest.mark.parametrize("signer", [SigV4Auth, _SignsEverything])
def test_botocore_signed_extra_headers_are_accepted(signer: type[SigV4Auth]) -> None:
    request = AWSRequest(
        method="POST",
        url=CONTROL_URL,
        data=BODY,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-CuStOm-Header": "  a   b  c ",
            "User-Agent": "Boto3/1.44 md/Botocore#1.44",
        },
    )
    signer(Credentials(AKID, SECRET, "tok+/="), "kinesisvideo", REGION).add_auth(request)
    headers = [*request.headers.items(), ("Host", "127.0.0.1:1234")]
    authorization = request.headers["Authorization"]
    assert "x-custom-header" in authorization and "x-amz-security-token" in authorization
    assert ("user-agent" in authorization) is (signer is _SignsEverything)
    signed_at = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    now = signed_at.replace(tzinfo=dt.UTC)
    verify = verify_signed_request
    assert verify("POST", CONTROL_URL, headers, BODY, secrets=SECRETS, now=now)
    retyped = [(k, "Boto3/2" if k == "User-Agent" else v) for k, v in headers]
    if signer is _SignsEverything:
        with pytest.raises(SignatureError, match="does not match"):
            verify("POST", CONTROL_URL, retyped, BODY, secrets=SECRETS, now=now)
    else:
        assert verify("POST", CONTROL_URL, retyped, BODY, secrets=SECRETS, now=now)
    with pytest.raises(SignatureError, match="x-custom-header is missing"):
        verify("POST", CONTROL_URL, headers[:1] + headers[2:], BODY, secrets=SECRETS, now=now)


def test_content_sha256_header_is_the_payload_hash_when_signed() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    base = [*EXTRA_HEADERS, ("X-Amz-Content-Sha256", digest)]
    headers = spec_sign("POST", CONTROL_URL, base, BODY, [*EXTRA_SIGNED, "x-amz-content-sha256"])
    assert _verify_post(headers)
    message = _refused_post(headers, "mismatch", b"{}")
    assert "x-amz-content-sha256" in message
    # UNSIGNED-PAYLOAD is for presigned URLs only.
    unsigned = [*EXTRA_HEADERS, ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")]
    headers = spec_sign(
        "POST",
        CONTROL_URL,
        unsigned,
        BODY,
        [*EXTRA_SIGNED, "x-amz-content-sha256"],
        payload_hash="UNSIGNED-PAYLOAD",
    )
    assert "presigned" in _refused_post(headers, "unsupported")
    # Not signed: the header is ignored and the body's own hash is used.
    headers = spec_sign("POST", CONTROL_URL, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    assert _verify_post([*headers, ("x-amz-content-sha256", "0" * 64)])


@pytest.mark.parametrize(
    ("signed", "hint"),
    [
        ("Host;x-amz-date", "lowercase"),
        ("x-amz-date;host", "sorted"),
        ("content-type;x-amz-date", "must include host"),
        ("host;;x-amz-date", "lowercase"),
    ],
)
def test_signed_headers_list_must_be_canonical(signed: str, hint: str) -> None:
    headers = spec_sign("POST", CONTROL_URL, EXTRA_HEADERS, BODY, EXTRA_SIGNED)
    bad = [
        (k, re.sub(r"SignedHeaders=[^,]+", f"SignedHeaders={signed}", v))
        if k == "Authorization"
        else (k, v)
        for k, v in headers
    ]
    assert hint in _refused_post(bad, "malformed")


VIEWER_BASE = f"wss://127.0.0.1:8443/signaling/viewer?{CHANNEL_ARN_PARAM}={_uri_encode(ARN)}"


def test_presigned_url_with_extra_signed_headers() -> None:
    headers = [("Host", "127.0.0.1:8443"), ("User-Agent", "  cam/1.0  "), ("Origin", "x")]
    url = spec_presign(f"{VIEWER_BASE}&{CLIENT_ID_PARAM}=v1", headers, ["host", "user-agent"])
    received = [*headers, ("Upgrade", "websocket")]
    verified = verify_presigned_url(url, secrets=SECRETS, headers=received, now=DATE)
    assert verified.params[CLIENT_ID_PARAM] == "v1"
    changed = [(k, "cam/2.0" if k == "User-Agent" else v) for k, v in received]
    _refused(url, "mismatch", headers=changed)
    error = _refused(url, "malformed", headers=[("Host", "127.0.0.1:8443")])
    assert "user-agent is missing" in str(error)
    # Without headers the URL's host stands for Host, and nothing else is known.
    assert "user-agent" in str(_refused(url, "malformed"))


def test_presigned_url_may_sign_unsigned_payload() -> None:
    headers = [("Host", "127.0.0.1:8443")]
    url = spec_presign(VIEWER_BASE, headers, ["host"], payload_hash="UNSIGNED-PAYLOAD")
    assert verify_presigned_url(url, secrets=SECRETS, headers=headers, now=DATE)
    url = spec_presign(VIEWER_BASE, headers, ["host"], payload_hash="f" * 64)
    _refused(url, "mismatch", headers=headers)


# --------------------------------------------------------------------------------------------
# Default ports: one spelling for signing, verifying and connecting


@pytest.mark.parametrize(
    ("scheme", "netloc", "expected"),
    [
        ("wss", "127.0.0.1:443", "127.0.0.1"),
        ("https", "Example.COM:443", "example.com"),
        ("ws", "localhost:80", "localhost"),
        ("http", "localhost:80", "localhost"),
        ("WSS", "h:443", "h"),
        ("ws", "127.0.0.1:443", "127.0.0.1:443"),
        ("wss", "127.0.0.1:80", "127.0.0.1:80"),
        ("wss", "h:8443", "h:8443"),
        ("wss", "[::1]:443", "[::1]"),
        ("ws", "[::1]:8080", "[::1]:8080"),
        ("wss", "h", "h"),
        ("ftp", "h:443", "h:443"),
    ],
)
def test_canonical_netloc(scheme: str, netloc: str, expected: str) -> None:
    assert canonical_netloc(scheme, netloc) == expected
    assert (
        normalize_endpoint(f"{scheme}://{netloc}/p?q=1") == f"{scheme.lower()}://{expected}/p?q=1"
    )


@pytest.mark.parametrize(
    ("netloc", "hint"),
    [
        ("", "no host"),
        (":443", "no host"),
        ("h:x", "port"),
        ("h:70000", "port"),
        ("u@h", "user info"),
    ],
)
def test_canonical_netloc_bad_input(netloc: str, hint: str) -> None:
    with pytest.raises(InvalidArgument, match=hint):
        canonical_netloc("wss", netloc)


@pytest.mark.parametrize(("scheme", "port"), [("wss", 443), ("ws", 80)])
def test_presign_with_and_without_default_port_is_identical(scheme: str, port: int) -> None:
    plain = _viewer(endpoint=f"{scheme}://127.0.0.1/signaling/viewer")
    explicit = _viewer(endpoint=f"{scheme}://127.0.0.1:{port}/signaling/viewer")
    assert explicit == plain
    assert plain.startswith(f"{scheme}://127.0.0.1/signaling/viewer?")
    other = {"wss": 80, "ws": 443}[scheme]
    assert f":{other}/" in _viewer(endpoint=f"{scheme}://127.0.0.1:{other}/signaling/viewer")
    # Verified identically whichever way the URL and the Host header spell the host.
    for url in (plain, plain.replace("127.0.0.1/", f"127.0.0.1:{port}/", 1)):
        for host in ("127.0.0.1", f"127.0.0.1:{port}"):
            headers = [("Host", host)]
            assert verify_presigned_url(url, secrets=SECRETS, headers=headers, now=DATE)
            assert verify_presigned_url(url, secrets=SECRETS, host=host, now=DATE)
    _refused(plain, "mismatch", headers=[("Host", "127.0.0.1:8443")])


def test_signature_over_an_explicit_default_port_still_verifies() -> None:
    # A signer handed "wss://127.0.0.1:443" that signed the port verbatim (the JS SDK, or
    # kvs-peer before issue 9), while its WebSocket library sent "Host: 127.0.0.1".
    headers = [("Host", "127.0.0.1:443")]
    url = spec_presign(
        f"wss://127.0.0.1:443/signaling/master?{CHANNEL_ARN_PARAM}={_uri_encode(ARN)}",
        headers,
        ["host"],
    )
    for host in ("127.0.0.1", "127.0.0.1:443"):
        assert verify_presigned_url(url, secrets=SECRETS, headers=[("Host", host)], now=DATE)
    _refused(url, "mismatch", headers=[("Host", "127.0.0.1:4443")])
    _refused(url.replace("wss://", "ws://", 1), "mismatch", headers=[("Host", "127.0.0.1")])


@pytest.mark.parametrize(
    ("url", "signed_host", "sent_host", "ok"),
    [
        ("https://127.0.0.1/x", "127.0.0.1:443", "127.0.0.1", True),
        ("https://127.0.0.1/x", "127.0.0.1", "127.0.0.1:443", True),
        ("http://127.0.0.1/x", "127.0.0.1:80", "127.0.0.1", True),
        ("https://127.0.0.1/x", "127.0.0.1:80", "127.0.0.1", False),
        ("https://127.0.0.1/x", "127.0.0.1:8443", "127.0.0.1", False),
        ("http://127.0.0.1/x", "127.0.0.1:443", "127.0.0.1", False),
    ],
)
def test_header_auth_default_port(url: str, signed_host: str, sent_host: str, ok: bool) -> None:
    signed = spec_sign(
        "POST", url, [("Host", signed_host), ("X-Amz-Date", AMZ_DATE)], BODY, ["host", "x-amz-date"]
    )
    sent = [("Host", sent_host) if k == "Host" else (k, v) for k, v in signed]
    if ok:
        assert _verify_post(sent, url=url)
    else:
        _refused_post(sent, "mismatch", url=url)
