"""Media URLs: which sources are URLs, and the URLs without their secrets for logs and errors.

Camera URLs carry passwords (``rtsp://admin:secret@cam/stream``) and sometimes tokens in the
query string. FFmpeg repeats the URL in its error texts, so errors are redacted as well.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["LIVE_SCHEMES", "describe_url", "redact_urls", "url_scheme"]

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp"})
"""URL schemes of live streams: read as they come (never paced), newest frames kept."""

_URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
# A scheme, then anything up to whitespace or a quote (FFmpeg quotes URLs in its messages).
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def describe_url(url: str) -> str:
    """``url`` without its password and query string, for logs and error messages.

    A spec that is no URL (``testsrc``, a path, a camera index) has neither and is returned as
    it is.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port or IPv6 address: show only the scheme
        return url.split("://", 1)[0] + "://..."
    netloc = parts.hostname or ""
    if port:
        netloc = f"{netloc}:{port}"
    if parts.username:
        netloc = (
            f"{parts.username}:***@{netloc}" if parts.password else f"{parts.username}@{netloc}"
        )
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def redact_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`describe_url`."""
    return _URL_IN_TEXT.sub(lambda match: describe_url(match.group(0)), text)


def url_scheme(spec: str) -> str:
    """The lower-case scheme of a source spec that is a URL (``scheme://...``), else ``""``.

    A path, a camera index or ``testsrc`` has none; ``file://`` URLs give ``"file"``.
    """
    return urlsplit(spec).scheme.lower() if _URL_PATTERN.match(spec) else ""
