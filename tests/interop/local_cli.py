"""``kvs-peer local`` run as a separate process, as a user runs it for a device to talk to.

The C SDK interop tests need the emulator on port 443 (the C SDK cannot parse a port in the
endpoints it is given), which one process at a time can hold: :func:`run_local` retries
while another test (or another emulator) has the port, and the tests share one emulator per
module.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support import MS

ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98", re.IGNORECASE)
READY_TIMEOUT = 20_000 * MS
"""Seconds ``kvs-peer local`` may take to print its endpoint (imports, certificate, coturn)."""
BUSY_RETRY_FOR = 60_000 * MS
"""Seconds to keep retrying while the port is held by someone else."""


def can_bind_privileged_port(port: int) -> bool:
    """Whether this process may listen on ``port`` (root, or an unprivileged-port sysctl)."""
    if port >= 1024 or os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError, ValueError):
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
        return port >= start
    return False


@dataclass
class LocalCli:
    """A running ``kvs-peer local``: what it printed, and how to reach it."""

    process: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _follow(self) -> None:
        for stream, sink in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            thread = threading.Thread(target=_collect, args=(stream, sink), daemon=True)
            thread.start()
            self._threads.append(thread)

    def printed(self, pattern: str) -> re.Match[str] | None:
        regex = re.compile(pattern)
        for line in list(self.stdout):
            match = regex.search(line)
            if match:
                return match
        return None

    @property
    def endpoint_url(self) -> str:
        match = self.printed(r"listening on (\S+)")
        assert match is not None, "kvs-peer local printed no endpoint"
        return match.group(1)

    @property
    def ca_cert_path(self) -> Path:
        match = self.printed(r"TLS CA certificate.*?: (\S+)")
        assert match is not None, "kvs-peer local printed no CA certificate (was --tls given?)"
        return Path(match.group(1))

    def output(self) -> str:
        """Everything it printed, for assertion messages."""
        return "\n".join(f"  | {line}" for line in [*self.stdout, *self.stderr][-80:])

    def stop(self, grace: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for thread in self._threads:
            thread.join(2.0)
        return self.process.returncode


def _collect(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line.rstrip("\n"))


class PortBusy(Exception):
    """The port stayed in use for :data:`BUSY_RETRY_FOR` seconds."""


def _start_once(args: Sequence[str], env: dict[str, str]) -> LocalCli:
    process = subprocess.Popen(
        [sys.executable, "-m", "kvs_peer", "local", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    cli = LocalCli(process)
    cli._follow()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if cli.printed(r"Press Ctrl\+C"):
            return cli
        if process.poll() is not None:
            for thread in cli._threads:
                thread.join(2.0)
            if ADDRESS_IN_USE.search("\n".join(cli.stderr + cli.stdout)):
                raise PortBusy(cli.output())
            raise AssertionError(
                f"kvs-peer local {' '.join(args)} exited ({process.returncode}):\n{cli.output()}"
            )
        time.sleep(0.05)
    cli.stop()
    raise AssertionError(f"kvs-peer local {' '.join(args)} was not ready:\n{cli.output()}")


@contextlib.contextmanager
def run_local(args: Sequence[str]) -> Iterator[LocalCli]:
    """Run ``kvs-peer local ARGS`` until the block ends (SIGINT, then SIGKILL).

    Retries for :data:`BUSY_RETRY_FOR` seconds while the port is in use.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    deadline = time.monotonic() + BUSY_RETRY_FOR
    while True:
        try:
            cli = _start_once(args, env)
            break
        except PortBusy as exc:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"kvs-peer local {' '.join(args)}: port still in use after "
                    f"{BUSY_RETRY_FOR:g} s:\n{exc}"
                ) from None
            time.sleep(1.0)
    try:
        yield cli
    finally:
        cli.stop()
