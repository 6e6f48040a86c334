"""The official KVS WebRTC JS SDK bundle, pinned by version and sha256, cached locally.

Only ``dist/kvs-webrtc.min.js`` of the npm package is used (one 32 KB file instead of the 558
packages ``npm install`` pulls in). It is taken from the registry tarball over plain HTTPS; if
that fails and npm is installed, ``npm pack`` is tried, since it honours the machine's npm
configuration (mirrors, proxies, CA files). The file is checked against :data:`SDK_SHA256`
before it is cached (in tests/browser/vendor/) or served, and a cached copy is checked
again on every use.

Prefetch (e.g. in CI before the tests)::

    .venv/bin/python tests/js_sdk.py
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "SDK_PACKAGE",
    "SDK_SHA256",
    "SDK_VERSION",
    "SdkUnavailable",
    "ensure_sdk",
    "extract_bundle",
    "tarball_url",
]

SDK_PACKAGE = "amazon-kinesis-video-streams-webrtc"
SDK_VERSION = "2.9.0"
SDK_MEMBER = "package/dist/kvs-webrtc.min.js"
# sha256 of dist/kvs-webrtc.min.js in the 2.9.0 npm tarball (31,787 bytes; the tarball itself
# is 0be2455b9c39d815956207da5a70775f78ca5a4d9896e5b4146a352c9018899d).
SDK_SHA256 = "779d2518ade088267639634dde220626e1f44732d4f780f4d8829d1d5618badf"
VENDOR_DIR = Path(__file__).resolve().parent / "browser" / "vendor"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
_MAX_TARBALL = 5 * 1024 * 1024


class SdkUnavailable(Exception):
    """The SDK bundle could not be fetched or failed its checksum."""


def tarball_url(registry: str | None = None) -> str:
    """The registry tarball URL of the pinned version (``npm_config_registry`` is honoured)."""
    base = registry or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY
    base = base.rstrip("/")
    return f"{base}/{SDK_PACKAGE}/-/{SDK_PACKAGE}-{SDK_VERSION}.tgz"


def extract_bundle(tarball: bytes, expected_sha256: str = SDK_SHA256) -> bytes:
    """Take ``dist/kvs-webrtc.min.js`` out of an npm tarball and verify its sha256.

    Raises:
        SdkUnavailable: not a gzip tarball, no bundle inside, or the checksum differs.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            member = archive.extractfile(SDK_MEMBER)
            if member is None:
                raise KeyError(SDK_MEMBER)
            data = member.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SdkUnavailable(f"the downloaded {SDK_PACKAGE} tarball is unreadable: {exc}") from exc
    except KeyError:
        raise SdkUnavailable(
            f"the {SDK_PACKAGE}@{SDK_VERSION} tarball has no {SDK_MEMBER}"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise SdkUnavailable(
            f"{SDK_MEMBER} of {SDK_PACKAGE}@{SDK_VERSION} has sha256 {actual}, expected "
            f"{expected_sha256}: the registry served different content; do not use it"
        )
    return data


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read(_MAX_TARBALL + 1)
    if len(data) > _MAX_TARBALL:
        raise SdkUnavailable(f"{url} is larger than {_MAX_TARBALL} bytes")
    return data


def _npm_pack(timeout: float) -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise SdkUnavailable("npm is not installed")
    with tempfile.TemporaryDirectory(prefix="kvs-sdk-") as tmp:
        subprocess.run(
            [
                npm,
                "pack",
                f"{SDK_PACKAGE}@{SDK_VERSION}",
                "--pack-destination",
                tmp,
                "--loglevel=error",
                # npm's default retries take about a minute to give up on an offline machine.
                "--fetch-retries=1",
                "--fetch-retry-mintimeout=1000",
                "--fetch-retry-maxtimeout=5000",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=tmp,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SdkUnavailable(f"npm pack produced {len(tarballs)} tarballs")
        return tarballs[0].read_bytes()


def _fetch_tarball(timeout: float) -> bytes:
    url = tarball_url()
    try:
        return _download(url, timeout)
    except (OSError, SdkUnavailable) as http_error:
        try:
            return _npm_pack(timeout)
        except (subprocess.SubprocessError, OSError, SdkUnavailable) as npm_error:
            stderr = getattr(npm_error, "stderr", None)
            lines = stderr.decode(errors="replace").splitlines() if stderr else []
            # npm's "npm error FetchError: request to ... failed, reason: ..." says it best.
            reason = next((line for line in lines if "Error" in line), str(npm_error))
            raise SdkUnavailable(
                f"cannot fetch {SDK_PACKAGE}@{SDK_VERSION}: GET {url} failed ({http_error}); "
                f"npm pack failed ({reason})"
            ) from None


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def ensure_sdk(
    directory: Path = VENDOR_DIR,
    *,
    fetch: Callable[[float], bytes] | None = _fetch_tarball,
    expected_sha256: str = SDK_SHA256,
    timeout: float = 30.0,
) -> Path:
    """Return the path of the verified SDK bundle, fetching it once if needed.

    Args:
        directory: cache directory (``tests/browser/vendor``, gitignored).
        fetch: ``fetch(timeout) -> tarball bytes``; the registry by default; None: never
            fetch (what the test suite does: CI runs this script before the tests).
        expected_sha256: checksum of the bundle.
        timeout: seconds for the download.

    Raises:
        SdkUnavailable: the fetch failed or the content does not match the checksum.
    """
    path = directory / f"kvs-webrtc-{SDK_VERSION}.min.js"
    if _sha256_of(path) == expected_sha256:
        return path
    if fetch is None:
        raise SdkUnavailable(
            f"the KVS JS SDK {SDK_VERSION} bundle is not in {directory}: fetch it once with "
            "`python3 tests/js_sdk.py` (from the npm registry; tests never download)"
        )
    data = extract_bundle(fetch(timeout), expected_sha256)
    directory.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: concurrent test runs never see a half-written bundle.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kvs-webrtc-", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    try:
        print(ensure_sdk())
    except SdkUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
