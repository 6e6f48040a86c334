"""Run the official KVS WebRTC C SDK sample apps (prebuilt) against kvs-peer.

Plain helpers imported by name (like ``from support import MS``); the fixtures live in the
test module.

The samples come prebuilt in ``../shared/interop/kvs-c-sdk`` beside the repository (its
README says what they are and how they run; ``KVS_PEER_CSDK_DIR`` overrides the folder).
Locally the tests skip when that folder or the samples' runtime libraries are missing; with
``KVS_PEER_REQUIRE_CSDK=1`` (set by ``.ci/run``) they fail instead.

Two things the samples need that are easy to get wrong:

- They read ``./h264SampleFrames`` and ``./opusSampleFrames`` relative to their working
  directory, and cache control-plane answers in ``./.SignalingCache_v1`` there. Each process
  gets a fresh temporary folder with links to the frames, so no run sees another's cache.
- They log through stdio, which a pipe would buffer by 4 KB blocks: ``stdbuf -oL`` makes
  every line arrive as it is written, so tests can wait for a line with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
from support import MS

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRE_CSDK = os.environ.get("KVS_PEER_REQUIRE_CSDK") == "1"
MASTER = "kvsWebrtcClientMaster"
VIEWER = "kvsWebrtcClientViewer"
RUNTIME_PACKAGES = "libsrtp2-1 libusrsctp2 libnss3 libcap2"
"""Debian packages of the samples' shared libraries (the README's apt-get line)."""

BUNDLED_LIBRARIES = ("libkvs", "libwebsockets")
"""Libraries shipped in the samples' own ``lib/`` (found through their run path)."""
FRAME_FOLDERS = ("h264SampleFrames", "opusSampleFrames")
STOP_GRACE = 3.0
"""Seconds a sample gets to exit after SIGINT before SIGKILL (it joins media threads)."""

LOG_VERBOSE, LOG_DEBUG, LOG_INFO, LOG_WARN = 1, 2, 3, 4
"""Values of ``AWS_KVS_LOG_LEVEL``: frame-received lines appear only at ``LOG_VERBOSE``."""


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail when CI requires the C SDK tests to run."""
    if REQUIRE_CSDK:
        pytest.fail(f"{reason} (KVS_PEER_REQUIRE_CSDK=1: C SDK tests must run)", pytrace=False)
    pytest.skip(reason)


def csdk_dir() -> Path:
    """The prebuilt samples' folder (``KVS_PEER_CSDK_DIR`` or ``../shared/interop/kvs-c-sdk``)."""
    override = os.environ.get("KVS_PEER_CSDK_DIR")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "interop" / "kvs-c-sdk"


def missing_libraries(binary: Path) -> list[str]:
    """Shared libraries ``ldd`` cannot resolve for ``binary`` (empty when all are found)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return ["ldd (libc-bin) itself"]
    result = subprocess.run(
        [ldd, str(binary)], capture_output=True, text=True, timeout=30_000 * MS, check=False
    )
    missing = [
        line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line
    ]
    if result.returncode != 0 and not missing:
        missing.append(f"ldd failed: {result.stderr.strip()[:200]}")
    return missing


def locate_samples() -> Path:
    """The samples' folder after checking binaries, frames and libraries (or skip/fail)."""
    root = csdk_dir()
    binaries = [root / "bin" / name for name in (MASTER, VIEWER)]
    if not all(os.access(b, os.X_OK) for b in binaries):
        unavailable(
            f"the prebuilt KVS C SDK samples are not in {root} (expected bin/{MASTER} and "
            f"bin/{VIEWER}; set KVS_PEER_CSDK_DIR to their folder)"
        )
    for folder in FRAME_FOLDERS:
        if not (root / "frames" / folder).is_dir():
            unavailable(f"{root / 'frames' / folder} is missing: the samples stream from it")
    for binary in binaries:
        missing = missing_libraries(binary)
        bundled = [name for name in missing if name.startswith(BUNDLED_LIBRARIES)]
        if bundled:
            unavailable(
                f"{binary.name} cannot load {', '.join(bundled)}, which belong in {root / 'lib'} "
                "(rebuild with its build.sh)"
            )
        if missing:
            unavailable(
                f"{binary.name} cannot load {', '.join(missing)}: "
                f"apt-get install {RUNTIME_PACKAGES}"
            )
    return root


@dataclass(frozen=True, slots=True)
class CsdkEnvironment:
    """What a sample needs to reach an endpoint (the README's environment variables)."""

    access_key_id: str
    secret_access_key: str
    region: str
    ca_cert_path: Path
    control_plane_url: str = "https://127.0.0.1"

    def variables(self, log_level: int) -> dict[str, str]:
        """The process environment: nothing AWS-related leaks in from ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KVS_"))}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key_id,
            AWS_SECRET_ACCESS_KEY=self.secret_access_key,
            AWS_DEFAULT_REGION=self.region,
            AWS_KVS_CACERT_PATH=str(self.ca_cert_path),
            KVS_CONTROL_PLANE_URL=self.control_plane_url,
            AWS_KVS_LOG_LEVEL=str(log_level),
        )
        return env


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class CsdkProcess:
    """One running sample app; its log lines are collected as they are written.

    Use :func:`start_sample` (an async context manager) to get one.
    """

    name: str
    process: asyncio.subprocess.Process
    workdir: Path
    started_at: float
    lines: list[str] = field(default_factory=list)
    """Every line printed so far (stdout and stderr merged, colour codes removed)."""
    _reader: asyncio.Task[None] | None = None
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    def _start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"csdk-{self.name}-log")

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while True:
            raw = await self.process.stdout.readline()
            if not raw:
                break
            self.lines.append(_ANSI.sub("", raw.decode(errors="replace").rstrip("\r\n")))
            self._new_line.set()
        self._new_line.set()

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def find(self, pattern: str, start: int = 0) -> re.Match[str] | None:
        """The first log line (from index ``start``) matching ``pattern``, or None."""
        regex = re.compile(pattern)
        for line in self.lines[start:]:
            match = regex.search(line)
            if match:
                return match
        return None

    def count(self, pattern: str) -> int:
        """How many log lines match ``pattern``."""
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    async def wait_for_line(self, pattern: str, timeout: float, *, start: int = 0) -> re.Match[str]:
        """Wait for a log line matching ``pattern``.

        Raises:
            AssertionError: with the log's tail, on timeout or when the process exits first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.lines):
                match = regex.search(self.lines[index])
                index += 1
                if match:
                    return match
            if self._reader is not None and self._reader.done():
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before logging "
                    f"{pattern!r}:\n{self.tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name} logged no line matching {pattern!r} in {timeout:g} s:\n"
                    f"{self.tail()}"
                )
            self._new_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), remaining)

    def tail(self, n: int = 60) -> str:
        """The last ``n`` log lines, for assertion messages."""
        return "\n".join(f"  | {line[:400]}" for line in self.lines[-n:])

    async def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGINT, then SIGKILL after ``grace`` seconds; returns the exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2000 * MS)
        assert self.process.returncode is not None
        return self.process.returncode


def make_workdir(root: Path) -> Path:
    """A fresh folder holding links to the sample frames (and nothing cached)."""
    workdir = Path(tempfile.mkdtemp(prefix="kvs-csdk-"))
    for folder in FRAME_FOLDERS:
        (workdir / folder).symlink_to(root / "frames" / folder, target_is_directory=True)
    return workdir


@contextlib.asynccontextmanager
async def start_sample(
    root: Path,
    program: str,
    args: Sequence[str],
    env: CsdkEnvironment,
    *,
    log_level: int = LOG_INFO,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[CsdkProcess]:
    """Run ``bin/<program> args...`` in a fresh working folder; stopped and removed on exit.

    Args:
        root: the samples' folder (from :func:`locate_samples`).
        program: :data:`MASTER` or :data:`VIEWER`.
        args: the sample's arguments (channel name first).
        env: endpoint and credentials.
        log_level: ``AWS_KVS_LOG_LEVEL`` (1 verbose ... 5 error).
        extra_env: more variables (e.g. ``DEBUG_LOG_SDP=TRUE``).
    """
    workdir = make_workdir(root)
    variables = env.variables(log_level)
    variables.update(extra_env or {})
    command = [str(root / "bin" / program), *args]
    stdbuf = shutil.which("stdbuf")
    if stdbuf is not None:
        command = [stdbuf, "-oL", "-eL", *command]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=workdir,
        env=variables,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl+C on the test run reaches pytest, not the sample
    )
    sample = CsdkProcess(program, process, workdir, time.monotonic())
    sample._start_reader()
    try:
        yield sample
    finally:
        await sample.stop()
        shutil.rmtree(workdir, ignore_errors=True)
