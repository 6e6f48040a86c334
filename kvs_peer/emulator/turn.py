"""A TURN server for the local emulator: Debian's coturn (``turnserver``) as a child process.

Real KVS always returns TURN servers from GetIceServerConfig, and some clients (the C SDK)
drop a viewer's offer without them. :class:`TurnServer` runs coturn next to the emulator with
TURN REST authentication (``use-auth-secret``): it accepts any username
``"{unix expiry}:{anything}"`` whose password is base64(HMAC-SHA1(secret, username)), which is
what the emulator's control plane mints (:class:`~kvs_peer.protocol.IceServer`
without credentials). The server itself never mints credentials: one implementation.

::

    async with TurnServer(secret, host="127.0.0.1", port=0) as turn:
        print(turn.uris)  # ('turn:127.0.0.1:PORT?transport=udp', '...?transport=tcp')
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidArgument, InvalidState, TurnServerError
from ..protocol import IceServer
from ..rules import ICE_SERVER_TTL

__all__ = ["DEFAULT_TURN_PORT", "TurnServer", "find_turnserver"]

logger = logging.getLogger(__name__)

DEFAULT_TURN_PORT = 3478

_INSTALL_HINT = "install coturn (Debian/Ubuntu: sudo apt-get install coturn)"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_STUN_MAGIC = 0x2112A442
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = b"\x01\x01"


def find_turnserver(executable: str | None = None) -> str:
    """Path of coturn's ``turnserver`` (``executable`` may be a name on PATH or a path).

    Raises:
        TurnServerError: it is not installed.
    """
    name = executable or "turnserver"
    path = shutil.which(name)
    if path is None:
        raise TurnServerError(
            f"coturn's {name!r} was not found on PATH, so the emulator cannot run a TURN "
            f"server: {_INSTALL_HINT}, or leave out --turn (turn=False)"
        )
    return path


class TurnServer:
    """coturn on ``host:port`` (UDP and TCP), for as long as the ``async with`` block runs.

    Only plain TURN over UDP and TCP is served (no TLS/DTLS listeners, no CLI, no config file
    but its own). Peers on loopback addresses are relayed only when the server itself listens
    on loopback: a TURN server on a real interface must not open the host's local services to
    whoever holds credentials.

    coturn starts in its own session (a Ctrl+C in the terminal reaches only the emulator, which
    stops it in order) and, on Linux, with a parent-death signal, so it dies with a crashed or
    killed emulator instead of staying behind.

    Args:
        secret: the TURN REST shared secret (the emulator's ``turn_secret``). It is written to a
            private config file, never put on the command line where ``ps`` shows it.
        host: address to listen and relay on; a wildcard (``0.0.0.0``/``::``) lets coturn use
            every interface.
        port: UDP and TCP port; 0 picks one free for both.
        advertised_host: host written into the ``turn:`` URIs; defaults to ``host``
            (``127.0.0.1`` for a wildcard).
        realm: the TURN realm.
        executable: ``turnserver`` name or path.
        start_timeout: seconds coturn may take to answer a STUN binding request.
        stop_timeout: seconds between SIGTERM and SIGKILL when stopping.
        ttl: credential lifetime announced with the URIs.

    Raises:
        TurnServerError: ``turnserver`` is not installed (raised here, before anything runs).
        InvalidArgument: a bad port or an empty secret.
    """

    def __init__(
        self,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_TURN_PORT,
        advertised_host: str | None = None,
        realm: str = "kvs-peer",
        executable: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 3.0,
        ttl: int = ICE_SERVER_TTL,
    ) -> None:
        if not secret:
            raise InvalidArgument("the TURN secret must be non-empty")
        if not 0 <= port <= 65535:
            raise InvalidArgument(
                f"TURN port {port} must be from 1 to 65535, or 0 for any free one"
            )
        self.executable = find_turnserver(executable)
        self.host = host
        self.realm = realm
        self.ttl = ttl
        self._secret = secret
        self._wildcard = host in ("", "0.0.0.0", "::")
        self._probe_host = ("::1" if host == "::" else "127.0.0.1") if self._wildcard else host
        self._bind_host = ("::" if host == "::" else "0.0.0.0") if self._wildcard else host
        self._advertised = advertised_host or self._probe_host
        self._requested_port = port
        self._port = 0
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._tmpdir: Path | None = None
        self.startup_seconds: float | None = None
        """Seconds from spawning coturn to its first STUN answer (after :meth:`start`)."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn coturn and wait until it answers on UDP and accepts TCP. Idempotent.

        Raises:
            InvalidArgument: the port is in use.
            TurnServerError: coturn exited or did not answer within ``start_timeout``.
        """
        if self._process is not None:
            return
        port = self._requested_port or _free_port(self._bind_host)
        _check_port_free(self._bind_host, port)
        self._tmpdir = Path(tempfile.mkdtemp(prefix="kvs-peer-turn-"))
        config = self._tmpdir / "turnserver.conf"
        # A private file: the secret must not show in `ps` output.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"static-auth-secret={self._secret}\n")
        log_path = self._tmpdir / "turnserver.log"
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._arguments(config, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            self._remove_files()
            raise TurnServerError(
                f"cannot run {self.executable}: {exc.strerror}; {_INSTALL_HINT}"
            ) from None
        finally:
            os.close(log)  # the child has its own copy
        self._process = process
        self._port = port
        try:
            await self._wait_ready(process, port, log_path)
        except BaseException:
            await self.close()
            raise
        self.startup_seconds = time.monotonic() - started
        # coturn read its config at start: the secret need not stay on disk, not even after
        # a crash of this process (which leaves the rest of the folder behind).
        config.unlink(missing_ok=True)
        logger.info(
            "TURN server (coturn, pid %d) on %s:%d udp+tcp, ready in %.0f ms",
            process.pid,
            self.host or "*",
            port,
            self.startup_seconds * 1000,
        )

    async def close(self) -> None:
        """Stop coturn (SIGTERM, then SIGKILL after ``stop_timeout``) and delete its files.

        Idempotent.
        """
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self._stop_timeout)
            except TimeoutError:
                logger.warning("coturn (pid %d) ignored SIGTERM; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process is not None:
            logger.info("TURN server (coturn, pid %d) stopped", process.pid)
        self._remove_files()

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what clients need ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The UDP/TCP port coturn listens on (after :meth:`start`)."""
        self._require_started()
        return self._port

    @property
    def pid(self) -> int:
        """coturn's process id (after :meth:`start`)."""
        self._require_started()
        assert self._process is not None
        return self._process.pid

    @property
    def uris(self) -> tuple[str, str]:
        """``turn:HOST:PORT?transport=udp`` and ``...?transport=tcp``, UDP first as KVS lists it."""
        self._require_started()
        host = f"[{self._advertised}]" if ":" in self._advertised else self._advertised
        return (
            f"turn:{host}:{self._port}?transport=udp",
            f"turn:{host}:{self._port}?transport=tcp",
        )

    def ice_server(self) -> IceServer:
        """The GetIceServerConfig entry for this server; the control plane mints credentials."""
        return IceServer(self.uris, ttl=self.ttl)

    def _require_started(self) -> None:
        if self._process is None:
            raise InvalidState("the TURN server is not running: use 'async with TurnServer(...)'")

    # -- internals -----------------------------------------------------------------------------

    def _arguments(self, config: Path, port: int) -> list[str]:
        assert self._tmpdir is not None
        args = [
            self.executable,
            "-c",
            str(config),
            "--listening-port",
            str(port),
            "--realm",
            self.realm,
            "--use-auth-secret",
            "--fingerprint",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            # One listener address would otherwise still probe for NAT behaviour discovery.
            "--no-rfc5780",
            "--no-multicast-peers",
            # No dynamic secrets: the static one is all there is.
            "--no-auth-pings",
            # Everything coturn writes stays in this temporary folder, not /var.
            "--db",
            str(self._tmpdir / "turndb"),
            "--pidfile",
            str(self._tmpdir / "turnserver.pid"),
            "--log-file",
            "stdout",
        ]
        if not self._wildcard:
            args += ["--listening-ip", self.host, "--relay-ip", self.host]
            if ipaddress.ip_address(self.host).is_loopback:
                # Both relayed ends of a local session are loopback addresses.
                args.append("--allow-loopback-peers")
        return args

    async def _wait_ready(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not await _stun_answers(self._probe_host, port, timeout=0.1):
            if process.returncode is not None:
                raise TurnServerError(
                    f"coturn exited with code {process.returncode} while starting on "
                    f"{self._probe_host}:{port}: {_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise TurnServerError(
                    f"coturn did not answer on {self._probe_host}:{port} within "
                    f"{self._start_timeout:g} s (is the port taken?): {_tail(log)}"
                )
            await asyncio.sleep(0.02)
        # The UDP listener answers first; the TCP one is set up in the same start-up pass.
        while True:
            try:
                _, writer = await asyncio.open_connection(self._probe_host, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise TurnServerError(
                        f"coturn answers on UDP {port} but does not accept TCP connections"
                    ) from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def _remove_files(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux).

    The kernel sends it when the *thread* that forked exits: asyncio forks on the event loop's
    thread, whose end means the emulator is gone anyway.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Loaded before the fork: the child must not import or allocate between fork and exec.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


async def _stun_answers(host: str, port: int, *, timeout: float) -> bool:
    """True when a STUN binding request to ``host:port`` over UDP gets a success response."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transaction = os.urandom(12)
    request = struct.pack("!HHI", _BINDING_REQUEST, 0, _STUN_MAGIC) + transaction
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            # Connected, so a closed port fails fast with ECONNREFUSED (ICMP unreachable).
            sock.connect((host, port))
            await loop.sock_sendall(sock, request)
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(sock, 2048)
                    if data[:2] == _BINDING_SUCCESS and data[8:20] == transaction:
                        return True
        except (OSError, TimeoutError):
            return False


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise TurnServerError(f"found no port free for both UDP and TCP on {host}")


def _check_port_free(host: str, port: int) -> None:
    # coturn retries a taken port forever instead of exiting; and a STUN probe would then
    # be answered by whatever holds the port. Check first, with a clear message.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # A TCP port in TIME_WAIT (a TURN server just stopped) is still usable.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise InvalidArgument(
                    f"cannot run the TURN server on {host}:{port} ({name}): {exc.strerror}; "
                    "pick another --turn-port (0 picks a free one)"
                ) from None


def _tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no log"
    # coturn prints "socket: Protocol not supported" for SCTP probes: not a cause.
    kept = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and "Protocol not supported" not in line
    ]
    return " | ".join(kept[-lines:]) or "no output"
