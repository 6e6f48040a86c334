"""The SDK fetcher: pinned checksum, cache reuse and repair, clear errors. No network."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from js_sdk import (
    SDK_MEMBER,
    SDK_PACKAGE,
    SDK_SHA256,
    SDK_VERSION,
    SdkUnavailable,
    ensure_sdk,
    tarball_url,
)

BUNDLE = b"window.KVSWebRTC = {};\n"
BUNDLE_SHA256 = hashlib.sha256(BUNDLE).hexdigest()


def make_tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Registry:
    """Serves one tarball and counts the fetches."""

    def __init__(self, tarball: bytes | Exception) -> None:
        self.tarball = tarball
        self.fetches = 0

    def __call__(self, timeout: float) -> bytes:
        self.fetches += 1
        if isinstance(self.tarball, Exception):
            raise self.tarball
        return self.tarball


def test_fetches_once_then_uses_the_verified_cache(tmp_path: Path) -> None:
    registry = Registry(make_tarball({SDK_MEMBER: BUNDLE, "package/README.md": b"readme"}))
    path = ensure_sdk(tmp_path, fetch=registry, expected_sha256=BUNDLE_SHA256)
    assert path.read_bytes() == BUNDLE
    assert path.name == f"kvs-webrtc-{SDK_VERSION}.min.js"
    assert ensure_sdk(tmp_path, fetch=registry, expected_sha256=BUNDLE_SHA256) == path
    assert registry.fetches == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_a_corrupted_cache_is_fetched_again(tmp_path: Path) -> None:
    registry = Registry(make_tarball({SDK_MEMBER: BUNDLE}))
    path = ensure_sdk(tmp_path, fetch=registry, expected_sha256=BUNDLE_SHA256)
    path.write_bytes(b"tampered")
    assert ensure_sdk(tmp_path, fetch=registry, expected_sha256=BUNDLE_SHA256).read_bytes() == (
        BUNDLE
    )
    assert registry.fetches == 2


def test_wrong_content_is_refused_and_not_cached(tmp_path: Path) -> None:
    registry = Registry(make_tarball({SDK_MEMBER: b"something else"}))
    with pytest.raises(SdkUnavailable, match=f"expected {BUNDLE_SHA256}"):
        ensure_sdk(tmp_path, fetch=registry, expected_sha256=BUNDLE_SHA256)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("tarball", "message"),
    [
        (make_tarball({"package/README.md": b"no bundle"}), "has no package/dist/kvs-webrtc"),
        (b"<html>proxy error</html>", "tarball is unreadable"),
    ],
    ids=["bundle-missing", "not-a-tarball"],
)
def test_bad_tarballs_get_a_clear_error(tmp_path: Path, tarball: bytes, message: str) -> None:
    with pytest.raises(SdkUnavailable, match=message):
        ensure_sdk(tmp_path, fetch=Registry(tarball), expected_sha256=BUNDLE_SHA256)


def test_fetch_failures_propagate_without_touching_the_cache(tmp_path: Path) -> None:
    registry = Registry(SdkUnavailable("cannot fetch: offline"))
    with pytest.raises(SdkUnavailable, match="offline"):
        ensure_sdk(tmp_path / "vendor", fetch=registry, expected_sha256=BUNDLE_SHA256)
    assert not (tmp_path / "vendor").exists()


def test_pinned_release_and_registry_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (SDK_PACKAGE, SDK_VERSION) == ("amazon-kinesis-video-streams-webrtc", "2.9.0")
    assert len(SDK_SHA256) == 64 and SDK_SHA256.startswith("779d2518")
    monkeypatch.delenv("npm_config_registry", raising=False)
    assert tarball_url() == (
        "https://registry.npmjs.org/amazon-kinesis-video-streams-webrtc/-/"
        "amazon-kinesis-video-streams-webrtc-2.9.0.tgz"
    )
    monkeypatch.setenv("npm_config_registry", "https://npm.example.internal/")
    assert tarball_url().startswith("https://npm.example.internal/amazon-kinesis-video-streams")


def test_the_suite_never_fetches_a_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(SdkUnavailable, match=r"python3 tests/js_sdk\.py"):
        ensure_sdk(tmp_path, fetch=None, expected_sha256=BUNDLE_SHA256)
    assert list(tmp_path.iterdir()) == []
