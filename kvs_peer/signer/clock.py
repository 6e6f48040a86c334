"""Tell a wrong clock on the signer apart from an IAM refusal. Pure.

AWS refuses a request signed more than 5 minutes away from its own time with the same 4xx
codes as a missing permission (``InvalidSignatureException``, ``AccessDeniedException``...),
so the code alone would send the operator to the IAM policy. The refusal still says what
happened: its message (``Signature expired: ... is now earlier than ...``, ``Signature not
yet current``) and its ``Date`` header, which gives the offset.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from typing import Any

import botocore.exceptions

from ..errors import AccessDenied

__all__ = ["MIN_SKEW", "clock_skew"]

MIN_SKEW = 240.0
"""Offsets this large are reported even when the message does not mention the time: SigV4
allows 5 minutes, and a ``Date`` header is only exact to the second."""

# AWS's wording (JSON services and S3-style) and the local emulator's.
_SKEW_MESSAGE = re.compile(
    r"signature expired|signature not yet current|request ?time ?too ?skewed|"
    r"ahead of server time|clock skew",
    re.IGNORECASE,
)


def _server_offset(headers: Mapping[str, Any], now: float) -> float | None:
    date = headers.get("date") or headers.get("Date")
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(date)).timestamp() - now
    except (TypeError, ValueError):
        return None


def clock_skew(exc: BaseException, now: float) -> float | None:
    """AWS time minus the signer's time, when ``exc`` is a refusal caused by the clock.

    Args:
        exc: a control-plane error (an :class:`~kvs_peer.errors.AccessDenied` whose cause is
            botocore's ``ClientError``).
        now: the signer's ``time.time()`` when the answer arrived.

    Returns:
        The offset in seconds (positive: the signer is behind), ``0.0`` when the message blames
        the time but no ``Date`` header came back, or None when the clock is not the cause.
    """
    if not isinstance(exc, AccessDenied):
        return None
    cause = exc.__cause__
    if not isinstance(cause, botocore.exceptions.ClientError):
        return None
    response = cause.response
    message = str(response.get("Error", {}).get("Message", ""))
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    offset = _server_offset(headers, now)
    if _SKEW_MESSAGE.search(message):
        return 0.0 if offset is None else offset
    if offset is not None and abs(offset) >= MIN_SKEW:
        return offset
    return None
