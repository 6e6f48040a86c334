"""Plain helpers for the test suite, imported by name (``from support import MS``).

Not in ``conftest.py``: pytest loads a conftest as a plugin, and importing one as a module
gives a second copy whose meaning depends on which ``conftest`` comes first on ``sys.path``.
This module is importable from every test folder because pytest's default ``prepend`` import
mode puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kvs_peer.channelcache import CACHE_DIR_ENV

if TYPE_CHECKING:
    import pytest

    from kvs_peer.emulator import LocalKvs

# One scaled millisecond: every duration a test waits for or asserts is a multiple of it, so
# ``KVS_PEER_TEST_TIMEOUT_FACTOR=3`` stretches them all on a slow machine without editing tests.
MS = 0.001 * float(os.environ.get("KVS_PEER_TEST_TIMEOUT_FACTOR", "1"))


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10_000 * MS, what: str = "the condition"
) -> None:
    """Poll ``predicate`` on the event loop until it is true.

    Raises:
        AssertionError: naming ``what``, when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def process_env(kvs: LocalKvs, **extra: str) -> dict[str, str]:
    """Environment of a child process (CLI, recorder, benchmark peer) pointed at ``kvs``.

    Starts from this process's environment without its ``AWS_`` and ``KVS_PEER_`` settings
    (the suite's own ``KVS_PEER_TEST_`` ones and the run's ``KVS_PEER_CACHE_DIR`` stay), so
    nothing of the developer's AWS setup (profiles, config files, instance metadata) leaks in,
    then adds what ``kvs-peer local`` hands out, then ``extra``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("KVS_PEER_TEST_") or not k.startswith(("AWS_", "KVS_PEER_"))
    }
    # The test run's channel cache (conftest sets it) rather than the developer's ~/.cache.
    if CACHE_DIR_ENV in os.environ:
        env[CACHE_DIR_ENV] = os.environ[CACHE_DIR_ENV]
    env.update(kvs.environment())
    env.update(
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    env.update(extra)
    return env


def credentials_in_environment(monkeypatch: pytest.MonkeyPatch, kvs: LocalKvs) -> None:
    """Make ``kvs``'s credentials what boto3's default chain finds first, as on a server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", kvs.credentials.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", kvs.credentials.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def write_signer_config(folder: Path, token: str) -> Path:
    """``folder/signer.toml``: ``token`` may sign VIEWER URLs of the channels ``cam-*``."""
    from kvs_peer.signer import hash_token

    path = folder / "signer.toml"
    path.write_text(
        f'[[tokens]]\nname = "v"\nsha256 = "{hash_token(token)}"\n'
        'channels = ["cam-*"]\nroles = ["VIEWER"]\n'
    )
    return path


# -- child processes ---------------------------------------------------------------------------

KVS_PEER = (sys.executable, "-m", "kvs_peer")
SMALL_TESTSRC = ("--source", "testsrc", "--width", "160", "--height", "120")
"""``kvs-peer master`` options for a small test pattern: cheap to encode on a 2-core runner."""


async def spawn(
    *argv: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """``argv`` (``*KVS_PEER, "viewer", ...`` or any program) with stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def finish(
    process: asyncio.subprocess.Process, timeout: float = 60_000 * MS
) -> tuple[int, str, str]:
    """Wait for ``process`` to end: its exit code, stdout and stderr (decoded).

    A process still running when the wait fails (``timeout``, cancelled) is killed, so a
    failed test leaves none behind.
    """
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        await kill(process)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL ``process`` unless it ended already, and reap it."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def interrupt(
    process: asyncio.subprocess.Process, timeout: float = 20_000 * MS
) -> tuple[int, str, str]:
    """Ctrl+C ``process`` (unless it ended already), then :func:`finish` it."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
    return await finish(process, timeout)


async def run_kvs_peer(
    *args: str, env: Mapping[str, str] | None, timeout: float = 60_000 * MS
) -> tuple[int, str, str]:
    """``kvs-peer ARGS`` to its end: exit code, stdout, stderr."""
    return await finish(await spawn(*KVS_PEER, *args, env=env), timeout)


async def read_until(
    process: asyncio.subprocess.Process,
    marker: str,
    timeout: float = 20_000 * MS,
    *,
    stderr: bool = False,
) -> str:
    """``process``'s stdout (or ``stderr``) up to the line holding ``marker``, as text.

    Raises:
        AssertionError: with what it printed, when the output ends before ``marker``.
    """
    stream = process.stderr if stderr else process.stdout
    assert stream is not None
    text = ""
    async with asyncio.timeout(timeout):
        while marker not in text:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"the process ended before printing {marker!r}: {text}")
            text += line.decode()
    return text


# -- what the command line says -----------------------------------------------------------------

# The exit codes users script against (kvs_peer.cli's EXIT_*), spelled out here so that
# changing one fails the tests instead of silently following along.
EXIT_ERROR, EXIT_USAGE, EXIT_NO_VIDEO = 1, 2, 3


def assert_one_error(code: int, err: str, expected_code: int, *phrases: str) -> str:
    """The exit code, no traceback, exactly one ``error:`` line holding every phrase."""
    assert "Traceback" not in err, err
    assert "never retrieved" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert code == expected_code, err
    return lines[0]
