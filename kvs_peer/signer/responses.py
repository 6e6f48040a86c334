"""JSON responses shared by the views and the middlewares."""

from __future__ import annotations

from aiohttp import web

from .auth import Refusal

__all__ = ["NO_STORE", "error_response"]

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
"""Signed URLs and TURN credentials must never be kept by a browser or proxy cache."""


def error_response(refusal: Refusal) -> web.Response:
    """``{"error": code, "message": text}`` with the refusal's status and headers."""
    return web.json_response(
        {"error": refusal.error, "message": refusal.message},
        status=refusal.status,
        headers={**NO_STORE, **refusal.headers()},
    )
