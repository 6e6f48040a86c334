"""The emulator's built-in web page: list the channels and watch one in a browser.

Routes added to :attr:`LocalKvs.app <kvs_peer.emulator.LocalKvs.app>`:

- ``GET /``: the page (``static/index.html``); ``/?channel=NAME`` starts playing at once.
- ``GET /_kvs/static/{name}``: its script and stylesheet.
- ``GET /_kvs/channels``: ``{"channels": [{"name", "arn", "master", "viewers", "createdAt"}]}``.
- ``GET /_kvs/viewer-url?channel=NAME&clientId=ID``: ``{"url", "channelArn", "clientId",
  "region", "expiresIn"}``, a ConnectAsViewer URL signed with the emulator's own credentials.
- ``GET /_kvs/recordings``: ``{"folder", "recordings": [{"stream", "name", "bytes", "url"}]}``,
  what storage sessions (WebRTC ingestion) recorded; ``GET /_kvs/recordings/{stream}/{name}``
  serves one file (Matroska) for a ``<video>`` to play.

The page needs neither an AWS SDK nor credentials: it asks the emulator for a signed URL and
speaks the signaling protocol itself (``static/kvs-viewer.js``). The JSON routes answer
loopback clients only, and only when the ``Host`` header names a loopback address (so a page
from another site cannot read them through DNS rebinding); they refuse with a JSON error
``{"error": code, "message": text}`` otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web

from ..errors import InvalidArgument
from ..rules import ID_RULE, MAX_ID_LENGTH
from ..signing import DEFAULT_EXPIRES, redact_url, validate_client_id, viewer_url

if TYPE_CHECKING:
    from .controlplane import Channel, ControlPlane
    from .server import LocalKvs

__all__ = ["PAGE_PREFIX", "WebPage"]

logger = logging.getLogger(__name__)

PAGE_PREFIX = "/_kvs"
"""Path prefix of the page's assets and JSON routes (never used by KVS itself)."""

STATIC_DIR = Path(__file__).with_name("static")
_ASSETS = {
    "kvs-viewer.js": "text/javascript",
    "page.js": "text/javascript",
    "page.css": "text/css",
}
# Signed URLs must not be kept by caches; nosniff keeps browsers from guessing types.
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status, headers=_NO_STORE)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class WebPage:
    """Serves the page and its JSON routes for one emulator.

    Args:
        kvs: the emulator (presence, clock, credentials).
        control: its control plane (channel registry and signaling endpoints).
    """

    def __init__(self, kvs: LocalKvs, control: ControlPlane) -> None:
        self._kvs = kvs
        self._control = control

    def add_routes(self, app: web.Application) -> None:
        """Add the page's routes to ``app`` (before it starts)."""
        app.router.add_get("/", self._index)
        app.router.add_get(f"{PAGE_PREFIX}/static/{{name}}", self._asset)
        app.router.add_get(f"{PAGE_PREFIX}/channels", self._channels)
        app.router.add_get(f"{PAGE_PREFIX}/viewer-url", self._viewer_url)
        app.router.add_get(f"{PAGE_PREFIX}/recordings", self._recordings)
        app.router.add_get(f"{PAGE_PREFIX}/recordings/{{stream}}/{{name}}", self._recording)

    # -- pages ---------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"},
        )

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = _ASSETS.get(name)
        if kind is None:
            raise web.HTTPNotFound(text=f"no asset {name[:100]!r}")
        return web.FileResponse(
            STATIC_DIR / name,
            headers={"Content-Type": f"{kind}; charset=utf-8", "Cache-Control": "no-cache"},
        )

    # -- JSON ----------------------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> web.Response | None:
        if not _is_loopback(request.remote):
            return _error(
                403,
                "loopback_only",
                "the emulator hands out signed URLs to this machine only: open the page on "
                "http://127.0.0.1 (or http://localhost) where the emulator runs",
            )
        advertised = urlsplit(self._kvs.endpoint_url).hostname
        host = request.url.host
        if not (_is_loopback(host) or (host is not None and host == advertised)):
            return _error(
                403,
                "host_not_allowed",
                f"Host {str(host)[:100]!r} is not this emulator: open the page through "
                "127.0.0.1 or localhost",
            )
        return None

    def _registry(self) -> Iterable[Channel]:
        # ControlPlane has no public listing besides handle("/listSignalingChannels"), which
        # would also consume failures injected with fail_next_api_calls() for the app under
        # test; the registry is read directly instead.
        return self._control.channels()

    async def _channels(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        channels = []
        for channel in sorted(self._registry(), key=lambda c: c.name):
            presence = self._kvs.connected(channel.arn)
            channels.append(
                {
                    "name": channel.name,
                    "arn": channel.arn,
                    "master": presence.master,
                    "viewers": len(presence.viewers),
                    "createdAt": channel.creation_time,
                }
            )
        return web.json_response({"channels": channels}, headers=_NO_STORE)

    async def _recordings(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        storage = self._kvs.storage
        recordings = [
            {
                "stream": path.parent.name,
                "name": path.name,
                "bytes": path.stat().st_size,
                "url": f"{PAGE_PREFIX}/recordings/{quote(path.parent.name)}/{quote(path.name)}",
            }
            for path in storage.recordings()
        ]
        return web.json_response(
            {"folder": str(storage.storage_dir), "recordings": recordings}, headers=_NO_STORE
        )

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        wanted = (request.match_info["stream"], request.match_info["name"])
        # Only files the listing shows: no path built from the request reaches the disk.
        found = next(
            (p for p in self._kvs.storage.recordings() if (p.parent.name, p.name) == wanted), None
        )
        if found is None:
            return _error(404, "recording_not_found", "no such recording: list /_kvs/recordings")
        return web.FileResponse(
            found, headers={"Content-Type": "video/x-matroska", "Cache-Control": "no-cache"}
        )

    async def _viewer_url(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        query = request.rel_url.query
        channel = query.get("channel")
        client_id = query.get("clientId")
        if not channel or not client_id:
            return _error(
                400,
                "invalid_argument",
                f"pass ?channel=NAME&clientId=ID (client id: {ID_RULE})",
            )
        try:
            validate_client_id(client_id)
        except InvalidArgument as exc:
            return _error(400, "invalid_argument", str(exc))
        found = next((c for c in self._registry() if channel in (c.name, c.arn)), None)
        if found is None:
            return _error(
                404,
                "channel_not_found",
                f"no channel {channel[:MAX_ID_LENGTH]!r} on this emulator: create it first "
                "(kvs-peer local --channel NAME, or CreateSignalingChannel)",
            )
        endpoints = self._control.endpoints
        assert endpoints is not None  # set by LocalKvs.start(), before any request
        # Signed for the host the browser used to load the page: the emulator checks the
        # signature against the Host header of the WebSocket upgrade, which will be the same.
        scheme = "wss" if request.secure else "ws"
        path = urlsplit(endpoints.viewer_wss).path
        url = viewer_url(
            f"{scheme}://{request.host}{path}",
            channel_arn=found.arn,
            client_id=client_id,
            region=self._kvs.region,
            credentials=self._kvs.credentials,
            now=self._kvs.now(),
        )
        logger.debug("page viewer URL for %s: %s", found.name, redact_url(url))
        return web.json_response(
            {
                "url": url,
                "channelArn": found.arn,
                "clientId": client_id,
                "region": self._kvs.region,
                "expiresIn": DEFAULT_EXPIRES,
            },
            headers=_NO_STORE,
        )
