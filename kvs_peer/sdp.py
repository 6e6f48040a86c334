"""Rewrite the SDPs kvs-peer sends so every KVS peer can read them.

aiortc writes three ``a=fingerprint`` lines per media section (sha-256, sha-384, sha-512) and
no ``a=ice-options``. Browsers send one sha-256 fingerprint and advertise trickle ICE; the
KVS C SDK (most cameras) depends on both:

- it keeps only the *last* ``a=fingerprint`` it reads and treats it as sha-256, so with
  aiortc's order it checks our certificate against the sha-512 digest and its DTLS fails;
- without ``a=ice-options:trickle`` a C SDK master holds its answer until its own candidate
  gathering ends (up to 10 s), although kvs-peer applies trickled candidates at any time.

aiortc itself verifies a remote's certificate with whichever supported algorithms the remote
listed, so keeping only sha-256 costs aiortc peers nothing. The rewrite is applied to the
text kvs-peer sends; the peer connection keeps its own description.
"""

from __future__ import annotations

from .errors import InvalidArgument

__all__ = ["FINGERPRINT_ALGORITHM", "TRICKLE_LINE", "for_kvs_peers"]

FINGERPRINT_ALGORITHM = "sha-256"
"""The one fingerprint algorithm every WebRTC peer supports (RFC 8122, RFC 8827)."""

TRICKLE_LINE = "a=ice-options:trickle"
"""Session-level trickle advertisement (RFC 8840). The C SDK compares the value with
``trickle`` exactly, so no other ICE option may share the line."""

_FINGERPRINT = "a=fingerprint:"


def _fingerprint_algorithm(line: str) -> str:
    return line[len(_FINGERPRINT) :].split(" ", 1)[0].strip().lower()


def for_kvs_peers(sdp: str, *, trickle: bool = True) -> str:
    """Make a local SDP (offer or answer) readable by every KVS peer.

    Keeps only the sha-256 ``a=fingerprint`` line wherever fingerprints appear, and adds one
    session-level ``a=ice-options:trickle`` (before the first ``m=`` line) when ``trickle``
    is set and the SDP does not already advertise trickle. Idempotent; line endings become
    CRLF as RFC 8866 requires.

    Args:
        sdp: the SDP aiortc produced (``pc.localDescription.sdp``).
        trickle: advertise trickle ICE: set it only where the sender applies candidates that
            arrive after the SDP (both kvs-peer roles do).

    Raises:
        InvalidArgument: ``sdp`` is not an SDP (no ``v=0`` first line), has no media section,
            or a section lists fingerprints but none of sha-256 (a peer would then be
            left with no fingerprint it can check).
    """
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise InvalidArgument("not an SDP: it must start with 'v=0'")
    first_media = next((i for i, line in enumerate(lines) if line.startswith("m=")), None)
    if first_media is None:
        raise InvalidArgument("the SDP has no media section (m= line) to negotiate")

    # One section is the session part or one m= block; fingerprints are checked per section
    # because a peer may read either level.
    out: list[str] = []
    section: list[str] = []

    def flush() -> None:
        prints = [line for line in section if line.startswith(_FINGERPRINT)]
        if prints and not any(_fingerprint_algorithm(p) == FINGERPRINT_ALGORITHM for p in prints):
            algorithms = ", ".join(sorted({_fingerprint_algorithm(p) for p in prints}))
            raise InvalidArgument(
                f"the SDP has fingerprints ({algorithms}) but no {FINGERPRINT_ALGORITHM} one, "
                "which some peers (the KVS C SDK) need"
            )
        kept_sha256 = False
        for line in section:
            if line.startswith(_FINGERPRINT):
                if _fingerprint_algorithm(line) != FINGERPRINT_ALGORITHM or kept_sha256:
                    continue
                kept_sha256 = True
            out.append(line)
        section.clear()

    session_trickle = any(line.strip() == TRICKLE_LINE for line in lines[:first_media])
    for index, line in enumerate(lines):
        if line.startswith("m="):
            flush()
            if index == first_media and trickle and not session_trickle:
                out.append(TRICKLE_LINE)
        section.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"
