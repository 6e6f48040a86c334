"""Camera URLs in logs and errors: passwords and query strings hidden."""

from __future__ import annotations

import pytest

from kvs_peer.media.redact import LIVE_SCHEMES, describe_url, redact_urls, url_scheme


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://admin@cam/live", "rtsp://admin@cam/live"),
        ("rtsp://cam/live?token=abc&x=1", "rtsp://cam/live?..."),
        ("http://cam/snap", "http://cam/snap"),
        ("rtsp://[::1:554/broken", "rtsp://..."),  # malformed: nothing but the scheme
    ],
)
def test_describe_url_hides_secrets(url: str, shown: str) -> None:
    assert describe_url(url) == shown


def test_redact_urls_rewrites_every_url_in_a_text() -> None:
    text = (
        "[Errno 104] Connection reset by peer: 'tcp://admin:s3cret@127.0.0.1:4000' "
        'then "rtsp://u:p@cam/x?sig=SECRET" failed'
    )
    redacted = redact_urls(text)
    assert "s3cret" not in redacted and "SECRET" not in redacted and ":p@" not in redacted
    assert redacted == (
        "[Errno 104] Connection reset by peer: 'tcp://admin:***@127.0.0.1:4000' "
        'then "rtsp://u:***@cam/x?..." failed'
    )
    assert redact_urls("no url here") == "no url here"


@pytest.mark.parametrize(
    ("spec", "scheme"),
    [
        ("rtsp://admin:s3cret@cam/live", "rtsp"),
        ("RTMP://relay/app/key", "rtmp"),
        ("file:///tmp/clip.mp4", "file"),
        ("/tmp/clip.mp4", ""),
        ("0", ""),
        ("testsrc", ""),
        ("://testsrc", ""),  # no scheme before "://": not a URL
    ],
)
def test_url_scheme_tells_urls_from_paths(spec: str, scheme: str) -> None:
    assert url_scheme(spec) == scheme


def test_live_schemes_are_streams_not_files() -> None:
    assert {"rtsp", "rtmp", "srt", "udp"} <= LIVE_SCHEMES
    assert not {"file", "http", "https"} & LIVE_SCHEMES
