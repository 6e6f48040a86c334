"""The README's recipes, run as written: the shell recipe in bash, the pytest snippet in a new
project, the Python API snippet against the emulator.

Each recipe is the code block after a ``<!-- recipe: NAME ... -->`` comment in README.md, so
editing a recipe in a way that breaks it fails here. The only change made to a recipe is the
port of the shell one (a free port instead of 4577, which another run may hold).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from support import MS, finish, spawn

from kvs_peer.emulator import LocalKvs

README = Path(__file__).resolve().parent.parent / "README.md"
RECIPE = re.compile(r"<!-- recipe: (\w+)[^>]*-->\n```\w*\n(.*?)\n```", re.DOTALL)


def recipe(name: str) -> str:
    found = {m[1]: m[2] for m in RECIPE.finditer(README.read_text(encoding="utf-8"))}
    assert name in found, f"README.md has no <!-- recipe: {name} --> block (has {sorted(found)})"
    return found[name] + "\n"


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: this venv's commands on PATH and no AWS settings of the test machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_"))}
    env.update(
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(
    *args: str, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str, str, int]:
    """Run ``args`` in a session of its own; returns (exit code, stdout, stderr, group id).

    After ``timeout`` the whole group is killed and the test fails with what it printed.
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    reads = [asyncio.ensure_future(proc.stdout.read()), asyncio.ensure_future(proc.stderr.read())]
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    out, err = [(await read).decode() for read in reads]
    assert not timed_out, f"{args[:3]} still running after {timeout:g} s\n{out}\n{err}"
    assert proc.returncode is not None
    return proc.returncode, out, err, proc.pid


async def group_exits(pgid: int, timeout: float) -> bool:
    """Wait until no process of group ``pgid`` is left; SIGKILL them after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                os.killpg(pgid, 0)
                await asyncio.sleep(0.05)
    except ProcessLookupError:
        return True
    except TimeoutError:
        os.killpg(pgid, signal.SIGKILL)
    return False


async def test_shell_recipe_runs_in_bash(tmp_path: Path) -> None:
    port = free_port()
    script = recipe("shell").replace("4577", str(port))
    assert f"--port {port}" in script
    code, out, err, pgid = await run(
        "bash", "-e", "-c", script, cwd=tmp_path, env=user_env(), timeout=60_000 * MS
    )
    # `kill %2 %1` ends the master and the emulator; both stop cleanly on SIGTERM.
    stopped = await group_exits(pgid, timeout=20_000 * MS)
    log = (tmp_path / "emulator.log").read_text() if (tmp_path / "emulator.log").exists() else ""
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}\nemulator.log: {log}"
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] and report["framesReceived"] >= 10, report
    assert stopped, "the emulator or the master did not stop on `kill`"
    assert f"listening on http://127.0.0.1:{port}" in log
    assert not (tmp_path / "kvs.env").exists(), "the emulator left its --env-file behind"


async def test_pytest_snippet_runs_in_a_new_project(tmp_path: Path) -> None:
    snippet = recipe("pytest")
    (tmp_path / "test_frontend.py").write_text(snippet)
    # The README's claim about unmarked tests in pytest-asyncio's default strict mode.
    marker = "@pytest.mark.asyncio"
    assert marker in snippet
    unmarked = re.sub(rf"^{re.escape(marker)}.*\n", "", snippet, flags=re.MULTILINE)
    (tmp_path / "test_unmarked.py").write_text(unmarked)
    _, out, err, _ = await run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rf",
        cwd=tmp_path,
        env=user_env(),
        timeout=90_000 * MS,
    )
    assert "test_frontend.py ." in out and "1 failed, 1 passed" in out, out + err
    assert "test_video_flows is an async def test that pytest-asyncio does not run in its " in out
    assert "mark it @pytest.mark.asyncio, or set asyncio_mode" in out, out


async def test_python_api_snippet_against_the_emulator(
    tmp_path: Path, kvs: LocalKvs, device_env: dict[str, str]
) -> None:
    kvs.create_channel("my-camera")
    (tmp_path / "app.py").write_text(recipe("python"))
    proc = await spawn(sys.executable, "app.py", cwd=tmp_path, env=device_env)
    code, out, err = await finish(proc, 60_000 * MS)
    assert code == 0, err
    assert out.splitlines() == ["received 640x480 video"], (out, err)


@pytest.mark.parametrize("name", ["shell", "pytest", "python"])
def test_every_recipe_is_marked(name: str) -> None:
    assert recipe(name).strip()
