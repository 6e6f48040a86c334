"""Shared parts of the recorder tests: moto's S3 server, a TCP proxy to cut it off, configs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import MS

BUCKET = "recordings"
PREFIX = "site-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    """moto's server (``moto_server``) in a child process: S3 over real HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        moto_server = Path(sys.executable).with_name("moto_server")
        if not moto_server.exists():
            pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
        self.process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20_000 * MS
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=self.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def objects(self, bucket: str = BUCKET) -> dict[str, int]:
        """Key -> size of every object in ``bucket``."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found


class TcpProxy:
    """Forwards a local port to ``target``; :meth:`cut` makes the port refuse connections
    (and drops those open), :meth:`restore` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort() if dst.is_closing() else dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


def write_config(
    folder: Path,
    kvs: Any,
    *,
    channels: list[str],
    s3_url: str,
    segment_seconds: float,
    processes: int = 1,
    endpoint_in_file: bool = True,
) -> Path:
    """``folder/recorder.toml`` for channels of ``kvs``; the spool is ``folder/spool``.

    Without ``endpoint_in_file`` the file names no control-plane endpoint: the recorder must
    take it from the environment.
    """
    path = folder / "recorder.toml"
    spool = folder / "spool"
    endpoint = f'endpoint_url = "{kvs.endpoint_url}"' if endpoint_in_file else ""
    listed = ", ".join(f'"{c}"' for c in channels)
    path.write_text(
        f"""
{endpoint}
channels = [{listed}]
processes = {processes}
loopback_candidates = true

[output]
dir = "{spool}"
segment_seconds = {segment_seconds}

[s3]
bucket = "{BUCKET}"
prefix = "{PREFIX}"
endpoint_url = "{s3_url}"
max_retry_interval = 2
"""
    )
    return path


async def mastered_channels(kvs: Any, kvs_master: Any, prefix: str, count: int) -> list[str]:
    """``count`` new channels of ``kvs``, each with a 320x240 15 fps master on it."""
    names = [f"{prefix}-{i}-{os.getpid()}-{time.monotonic_ns() % 100000}" for i in range(count)]
    for name in names:
        kvs.create_channel(name)
        await kvs_master(name, width=320, height=240, fps=15)
    return names


class RecorderProcess:
    """``kvs-peer record`` in its own process group (so a test can SIGKILL all of it)."""

    def __init__(self, config: Path, env: dict[str, str], *args: str) -> None:
        self.config = config
        self.env = env
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kvs_peer",
            "record",
            "--config",
            str(self.config),
            "-v",
            *self.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stderr is not None
        self._reader = asyncio.ensure_future(self._read(self.process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.stderr += line

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to the supervisor and its workers, as a terminal's Ctrl+C does."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def worker_pids(self) -> list[int]:
        """The worker processes the supervisor said it started (its ``-v`` log)."""
        return [int(pid) for pid in re.findall(r"worker process (\d+) records", self.text())]

    async def wait_all_ended(self, timeout: float) -> int:
        """Wait until the supervisor and every process holding its stderr pipe (its workers)
        have ended; returns the supervisor's exit code.

        Reaped by asyncio alone: a signal sent meanwhile (``stop()``) would let ``subprocess``
        reap the process first, and asyncio then reports exit code 255.
        """
        assert self.process is not None
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
            return await self.process.wait()

    def kill_all(self) -> None:
        """SIGKILL the supervisor and its workers at once: a crash, nothing finalized."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            self.kill_all()  # nothing of it survives a test
            await self._reader
        return code

    def text(self) -> str:
        return self.stderr.decode(errors="replace")
