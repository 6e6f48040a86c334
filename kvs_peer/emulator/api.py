"""The emulator's control-plane HTTP: the REST operations and ``/v1/get-ice-server-config``.

Each call is SigV4-verified, then answered by the pure :class:`~.controlplane.ControlPlane`;
every response carries the emulator's ``Date`` (its clock, offset included) and a request id.
"""

from __future__ import annotations

import json
import logging
import uuid
from email.utils import format_datetime

from aiohttp import hdrs, web

from ..errors import SignatureError
from .controlplane import OPERATIONS, ApiResult
from .state import EmulatorState

__all__ = ["ControlPlaneHttp", "api_response"]

logger = logging.getLogger(__name__)


def api_response(result: ApiResult) -> web.Response:
    """A JSON response for ``result``, with ``x-amzn-ErrorType`` on errors (what botocore
    reads to raise the named exception class)."""
    headers = {}
    if result.error_type is not None:
        headers["x-amzn-ErrorType"] = result.error_type
    return web.json_response(result.body, status=result.status, headers=headers)


class ControlPlaneHttp:
    """Handlers of the control-plane routes.

    Args:
        state: the emulator's shared state.
    """

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        """Add ``POST`` routes for every operation and the header stamp (before start)."""
        for path in OPERATIONS:
            app.router.add_post(path, self.handle)
        app.on_response_prepare.append(self.stamp_headers)

    async def stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Stamp ``Date`` and ``x-amzn-RequestId`` on every response."""
        # The emulator's notion of "now" (with clock_offset), so clients can learn their skew
        # from it as the C SDK does (docs/protocol.md#control-plane).
        response.headers[hdrs.DATE] = format_datetime(self._state.now(), usegmt=True)
        response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))

    async def handle(self, request: web.Request) -> web.Response:
        """One REST call."""
        state = self._state
        body = await request.read()
        try:
            state.verify(request, body)
        except SignatureError as exc:
            # Both codes are modelled by botocore, so boto3 raises a named exception class.
            code = (
                "NotAuthorizedException"
                if request.path.startswith("/v1/")
                else "AccessDeniedException"
            )
            logger.info("refused %s: %s (%s)", request.path, exc.reason, exc)
            return api_response(ApiResult(403, {"Message": str(exc)}, code))
        result = state.control.handle(request.path, body, now=state.now().timestamp())
        logger.debug("%s -> %d %s", request.path, result.status, result.error_type or "")
        if result.error_type is None and request.path == "/deleteSignalingChannel":
            arn = json.loads(body)["ChannelARN"]
            state.execute(state.router.drop_channel(arn))
            state.notify()
        return api_response(result)
