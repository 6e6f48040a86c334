"""The README's recipes and docs/testing.md's, run as written: the shell recipes in bash, the
emulator recipes in order with the Python API snippet after them, the pytest snippets in a new
project; and every ``kvs-peer`` command line of the docs against the real argument parser.

Each recipe is the code block after a ``<!-- recipe: NAME ... -->`` comment, so editing a
recipe in a way that breaks it fails here. The only change made to a recipe is its port (a
free port instead of 4577, which another run may hold).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MS

from kvs_peer.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "testing.md"
RECIPE = re.compile(r"<!-- recipe: (\w+)[^>]*-->\n```\w*\n(.*?)\n```", re.DOTALL)


def recipe(name: str, doc: Path = README) -> str:
    found = {m[1]: m[2] for m in RECIPE.finditer(doc.read_text(encoding="utf-8"))}
    assert name in found, f"{doc.name} has no <!-- recipe: {name} --> block (has {sorted(found)})"
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


def viewer_report(out: str) -> dict[str, object]:
    """The JSON object ``kvs-peer viewer --json`` printed among other lines of ``out``."""
    reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    reports = [r for r in reports if "framesReceived" in r]
    assert len(reports) == 1, out
    return reports[0]


def test_the_quickstart_is_two_commands_and_ci_runs_the_second_verbatim() -> None:
    # A fresh machine with Python and nothing else: each command makes its own venv, and
    # neither depends on an activated one.
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = [block.strip() for _, block in FENCE.findall(quickstart)]
    assert len(blocks) == 2, blocks
    demo, suite = blocks
    for command in blocks:
        assert "\n" not in command and command.startswith("python3 -m venv .venv && "), command
    assert demo.endswith("kvs-peer demo") and suite.endswith("pytest")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert suite in ci_lines, f".ci/run does not run the README's test command {suite!r}"


async def test_shell_recipe_runs_in_bash(tmp_path: Path) -> None:
    port = free_port()
    script = recipe("shell").replace("4577", str(port))
    assert f"--port {port}" in script
    code, out, err, pgid = await run(
        "bash", "-c", script, cwd=tmp_path, env=user_env(), timeout=60_000 * MS
    )
    # The script's EXIT trap stops the master and the emulator, which end cleanly on SIGTERM.
    stopped = await group_exits(pgid, timeout=20_000 * MS)
    log = (tmp_path / "emulator.log").read_text() if (tmp_path / "emulator.log").exists() else ""
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}\nemulator.log: {log}"
    report = viewer_report(out)
    assert report["ok"] and report["framesReceived"] >= 10, report
    assert stopped, "the emulator or the master did not stop when the script ended"
    assert f"http://127.0.0.1:{port}" in log
    assert not (tmp_path / "kvs.env").exists(), "the emulator left its --env-file behind"


async def test_shell_recipe_stops_at_a_failing_step(tmp_path: Path) -> None:
    # The emulator cannot listen on a port that is taken: the script must stop there with an
    # error, not go on to a master and a viewer pointed at nothing.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = recipe("shell").replace("4577", str(port))
        started = time.monotonic()
        code, out, err, pgid = await run(
            "bash", "-c", script, cwd=tmp_path, env=user_env(), timeout=60_000 * MS
        )
    assert code != 0, f"the script went on after the emulator failed\n{out}\n{err}"
    assert out == "" and not (tmp_path / "master.log").exists(), "the script went on: " + out
    assert time.monotonic() - started < 30_000 * MS
    assert await group_exits(pgid, timeout=20_000 * MS), "a process of the script was left"


async def run_guide_steps(name: str, port_in_doc: str, tmp_path: Path) -> tuple[str, int]:
    """Run a docs/testing.md shell recipe in bash on a free port, check that it succeeded and
    that its ``kill %2 %1`` stopped what it started; returns its stdout and the port."""
    port = free_port()
    script = recipe(name, GUIDE).replace(port_in_doc, str(port))
    code, out, err, pgid = await run(
        "bash", "-c", script, cwd=tmp_path, env=user_env(), timeout=60_000 * MS
    )
    stopped = await group_exits(pgid, timeout=20_000 * MS)
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert stopped, "`kill %2 %1` did not stop the master and the emulator"
    return out, port


async def test_guide_shell_steps_run_in_bash(tmp_path: Path) -> None:
    out, port = await run_guide_steps("guide_shell", "4577", tmp_path)
    assert f"export KVS_PEER_ENDPOINT_URL=http://127.0.0.1:{port}" in out  # cat kvs.env
    report = viewer_report(out)
    assert report["ok"] and report["framesReceived"] >= 10, report
    channels = json.loads(out.strip().splitlines()[-1])["channels"]  # the curl line
    assert [(c["name"], c["master"]) for c in channels] == [("demo", True)], channels


async def test_guide_tls_steps_run_in_bash(tmp_path: Path) -> None:
    out, port = await run_guide_steps("guide_tls", "4578", tmp_path)
    log = (tmp_path / "emulator.log").read_text()
    assert f"https://127.0.0.1:{port}" in log, log  # it really served TLS
    report = viewer_report(out)
    assert report["ok"] and report["framesReceived"] >= 10, report


async def wait_listening(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    """Wait until something accepts connections on ``port``, failing if ``process`` ends."""
    async with asyncio.timeout(30_000 * MS):
        while True:
            assert process.returncode is None, f"the emulator ended: {log.read_text()}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def test_local_recipes_then_the_python_api_in_order(tmp_path: Path) -> None:
    """The emulator in one terminal; in another the exports, master and viewer, then app.py."""
    port = free_port()
    (tmp_path / "app.py").write_text(recipe("python"))
    log = tmp_path / "local.log"
    with log.open("wb") as output:
        emulator = await asyncio.create_subprocess_exec(
            *("bash", "-c", recipe("local").replace("4577", str(port))),
            cwd=tmp_path,
            env=user_env(),
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        await wait_listening(port, emulator, log)
        second_terminal = recipe("local_client").replace("4577", str(port)) + "python app.py\n"
        code, out, err, _ = await run(
            "bash", "-c", second_terminal, cwd=tmp_path, env=user_env(), timeout=90_000 * MS
        )
    finally:
        os.killpg(emulator.pid, signal.SIGINT)  # Ctrl+C in its terminal
        stopped = await group_exits(emulator.pid, timeout=20_000 * MS)
        await emulator.wait()
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}\nemulator: {log.read_text()}"
    report = viewer_report(out)
    assert report["ok"] and report["framesReceived"] >= 10, report
    assert out.splitlines()[-1] == "received 640x480 video", (out, err)
    assert stopped and emulator.returncode == 0, log.read_text()


CUSTOM_CHECK = """
import pytest


@pytest.mark.asyncio
async def test_the_conftest_overrides_took_effect(kvs_emulator) -> None:
    assert kvs_emulator.config.max_viewers == 3 and kvs_emulator.config.rate_limits
    assert kvs_emulator.ssl_context() is not None
    assert kvs_emulator.endpoint_url.startswith("https://")
"""


async def test_pytest_snippets_run_in_a_new_project(tmp_path: Path) -> None:
    snippet = recipe("pytest")
    # Names differ across folders: pytest's default import mode wants unique basenames.
    (tmp_path / "readme").mkdir()
    (tmp_path / "readme" / "test_frontend.py").write_text(snippet)
    # The README's claim about unmarked tests in pytest-asyncio's default strict mode.
    marker = "@pytest.mark.asyncio"
    assert marker in snippet
    unmarked = re.sub(rf"^{re.escape(marker)}.*\n", "", snippet, flags=re.MULTILINE)
    (tmp_path / "readme" / "test_unmarked.py").write_text(unmarked)
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "test_guide.py").write_text(recipe("guide_test", GUIDE))
    # The guide's conftest.py (TLS emulator, 3 viewers, rate limits) under the guide's test.
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "conftest.py").write_text(recipe("guide_conftest", GUIDE))
    (tmp_path / "custom" / "test_custom.py").write_text(recipe("guide_test", GUIDE))
    (tmp_path / "custom" / "test_custom_check.py").write_text(CUSTOM_CHECK)
    _, out, err, _ = await run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rf",
        cwd=tmp_path,
        env=user_env(),
        timeout=120_000 * MS,
    )
    for passing in ["readme/test_frontend.py", "guide/test_guide.py", "custom/test_custom.py"]:
        assert f"{passing} ." in out, out + err
    assert "custom/test_custom_check.py ." in out, out + err
    assert "1 failed, 4 passed" in out, out + err
    assert "test_video_flows is an async def test that pytest-asyncio does not run in its " in out
    assert "mark it @pytest.mark.asyncio, or set asyncio_mode" in out, out


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("shell", README),
        ("pytest", README),
        ("python", README),
        ("local", README),
        ("local_client", README),
        ("guide_test", GUIDE),
        ("guide_conftest", GUIDE),
        ("guide_shell", GUIDE),
        ("guide_tls", GUIDE),
    ],
)
def test_every_recipe_is_marked(name: str, doc: Path) -> None:
    assert recipe(name, doc).strip()


# -- every command line of the docs against the real parser ----------------------------------

# The docs whose command lines are checked: README.md, CONTRIBUTING.md and the guides under
# docs/ (protocol.md, the wire protocol, is checked by its own tests).
DOCS = [
    README,
    ROOT / "CONTRIBUTING.md",
    *(path for path in sorted((ROOT / "docs").glob("*.md")) if path.name != "protocol.md"),
    ROOT / "examples" / "browser" / "README.md",
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`(kvs-peer [^`]+)`")
# Shell words that end a command, and words after which a command starts.
ENDS = {"|", "&", ";", "&&", "||", ">", ">>", "<", "2>", "&>", "(", ")"}
PREFIXES = {"sudo", "exec", "time", "nohup", "then", "do", "!"}


def shell_commands(block: str) -> Iterator[list[str]]:
    """The argument lists of the ``kvs-peer`` commands in a shell block, without the name."""
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:  # a quote spanning lines, e.g. in an ExecStart= of an ini block
            continue
        for index, word in enumerate(words):
            before = words[index - 1] if index else ";"
            at_start = before in ENDS or before in PREFIXES or re.fullmatch(r"\w+=\S*", before)
            if at_start and (word == "kvs-peer" or word.endswith("/kvs-peer")):
                end = next((i for i in range(index + 1, len(words)) if words[i] in ENDS), None)
                yield words[index + 1 : end]


def parse_error(args: list[str]) -> str | None:
    """What the real parser says about ``kvs-peer ARGS``, or None when it takes them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_options(span: str) -> list[str]:
    """Options of an inline synopsis (``kvs-peer viewer --channel C [--record F]``, where
    ``master|signer`` means either command) that its command does not have."""
    words = span.split()[1:]
    parsers = [build_parser()]
    for word in words:
        if word.startswith(("-", "[")):
            break
        names = word.split("|")
        if not all(name in subcommands(parsers[0]) for name in names):
            break
        parsers = [subcommands(parsers[0])[name] for name in names]
    options = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", span)
    return [
        f"{parser.prog} {option}"
        for parser in parsers
        for option in options
        if option not in parser._option_string_actions
    ]


# Guides made of commands: finding fewer than five means the parsing broke.
WITH_COMMANDS = ("raspberry-pi.md", "media.md", "signer.md", "deploy.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_command_line_takes_its_options(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    problems = []
    checked = 0
    for language, block in FENCE.findall(text):
        if language not in {"", "sh", "bash", "shell", "console", "ini"}:
            continue
        for args in shell_commands(block):
            checked += 1
            if "[" in " ".join(args):  # a synopsis with optional parts: names only
                problems += unknown_options("kvs-peer " + " ".join(args))
            elif error := parse_error(args):
                problems.append(f"kvs-peer {shlex.join(args)}: {error}")
    for span in INLINE.findall(text):
        checked += 1
        problems += unknown_options(span)
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)
    if doc in {README, GUIDE, *(ROOT / "docs" / name for name in WITH_COMMANDS)}:
        assert checked >= 5, f"{doc.name}: only {checked} command lines found: the parsing broke"


def test_the_command_line_check_finds_wrong_options() -> None:
    block = "rpicam-vid -o - | kvs-peer master --channel c --source - --no-such 1 &\n"
    [args] = shell_commands(block)
    assert args == ["master", "--channel", "c", "--source", "-", "--no-such", "1"]
    assert "unrecognized arguments: --no-such" in (parse_error(args) or "")
    assert parse_error(["viewer", "--channel", "c", "--duration", "0"])  # not a duration
    assert unknown_options("kvs-peer master|viewer --record F") == ["kvs-peer master --record"]
    assert list(shell_commands("pip install kvs-peer  # kvs-peer --bad\n")) == []
