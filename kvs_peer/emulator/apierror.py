"""The error every emulated KVS REST operation raises, and the body checks they share.

Pure: the control plane (:mod:`.controlplane`) and the storage registry (:mod:`.storage`)
raise :class:`ApiError`; the HTTP layer turns it into a status, ``x-amzn-ErrorType`` and a
message, which botocore maps to a named exception class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ApiError", "check_version", "invalid", "string_field"]


class ApiError(Exception):
    """An API error: HTTP ``status``, ``code`` (``x-amzn-ErrorType``) and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    """An ``InvalidArgumentException`` (400)."""
    return ApiError(400, "InvalidArgumentException", message)


def string_field(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    """``body[key]`` as a non-empty string, or None when absent (and not ``required``).

    Raises:
        ApiError: InvalidArgumentException when missing but required, or not a string.
    """
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise invalid(f"{key} must be a non-empty string")
    return value


def check_version(body: Mapping[str, Any], current: str, what: str, *, required: bool) -> None:
    """Check the ``CurrentVersion`` of an update or delete against the resource's version.

    Args:
        body: the request body.
        current: the resource's version now.
        what: ``channel`` or ``stream``, for the message.
        required: whether the operation requires ``CurrentVersion``.

    Raises:
        ApiError: ``VersionMismatchException`` (or InvalidArgumentException when missing).
    """
    version = string_field(body, "CurrentVersion", required=required)
    if version is not None and version != current:
        raise ApiError(
            400,
            "VersionMismatchException",
            f"CurrentVersion {version[:64]!r} does not match the {what} version "
            f"{current}; describe the {what} again",
        )
