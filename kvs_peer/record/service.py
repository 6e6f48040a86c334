"""The ``kvs-peer record`` supervisor: channels, shard, worker processes, spool and uploads.

::

    service = RecordService(config, config_path, shard=Shard(0, 3))
    plan = await service.plan()          # which channels, how many processes
    await service.run(plan, stop)        # until stop is set

The supervisor holds the spool's lock, finishes what dead processes left behind, starts one
worker process (``kvs-peer record --worker``) per group of channels and restarts any that
dies, uploads finished segments (threads) and enforces the spool's limits. Workers exit when
the supervisor's end of their stdin closes, so a supervisor killed outright takes its
workers with it; the next start uploads what the spool holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

from ..errors import AccessDenied, ChannelError, InvalidArgument
from ..metrics.figures import SERIES, Figure
from ..metrics.relay import load_figures
from .config import RecordConfig
from .metrics import RECORD_SERIES
from .shard import Shard, select
from .spool import SegmentState, Spool
from .upload import Uploader

__all__ = ["Plan", "RecordService", "resolve_channels", "split_channels"]

logger = logging.getLogger(__name__)

TICK = 0.25
"""Seconds between spool scans (uploads started, limits enforced, workers checked)."""
STOP_GRACE = 15.0
"""Seconds a worker has to complete its segments after SIGTERM before it is killed."""
_RESTART_MIN = 1.0
_RESTART_MAX = 30.0


@dataclass(frozen=True)
class Plan:
    """What this replica records and how the channels are spread over processes."""

    channels: tuple[str, ...]
    """This replica's channels, sorted."""
    groups: tuple[tuple[str, ...], ...]
    """The channels of each worker process."""
    shard: Shard | None
    total: int
    """Channels configured (after glob resolution) across all replicas."""

    def describe(self) -> str:
        """One line for the log: how many channels, processes, channels per process."""
        sizes = [len(g) for g in self.groups]
        low, high = min(sizes, default=0), max(sizes, default=0)
        per = str(low) if low == high else f"{low}-{high}"
        where = f" (shard {self.shard} of {self.total} channels)" if self.shard else ""
        processes = len(self.groups)
        return (
            f"{len(self.channels)} channel{'s' if len(self.channels) != 1 else ''}{where}, "
            f"{processes} worker process{'es' if processes != 1 else ''} of {per} channel"
            f"{'s' if per != '1' else ''} each"
        )

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``kvs-peer record --plan``)."""
        return {
            "shard": str(self.shard) if self.shard else None,
            "total": self.total,
            "channels": list(self.channels),
            "processes": [list(g) for g in self.groups],
        }


def split_channels(channels: list[str], processes: int) -> tuple[tuple[str, ...], ...]:
    """Deal ``channels`` round-robin over at most ``processes`` groups (none empty)."""
    count = max(1, min(processes, len(channels)))
    return tuple(tuple(channels[i::count]) for i in range(count) if channels[i::count])


def _glob_prefix(pattern: str) -> str:
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


async def resolve_channels(config: RecordConfig, session: boto3.Session | None = None) -> list[str]:
    """The configured channels: exact names as written, globs through ListSignalingChannels.

    Exact names are never matched as prefixes (``cam-1`` is not ``cam-10``). A glob lists the
    channels whose name begins with its literal start, then matches each whole name.

    Raises:
        AccessDenied: the credentials may not list channels.
        ChannelError: the control plane could not be reached or failed.
    """
    names = set(config.exact_channels)
    if not config.globs:
        return sorted(names)
    session = session or boto3.Session(profile_name=config.profile)
    region = config.region or os.environ.get("AWS_REGION") or session.region_name
    if not region:
        raise InvalidArgument(
            "no AWS region configured: set region in the config, AWS_REGION or ~/.aws/config"
        )

    def list_all() -> list[str]:
        client = session.client(
            "kinesisvideo", region_name=region, endpoint_url=config.endpoint_url
        )
        found: set[str] = set()
        for pattern in config.globs:
            prefix = _glob_prefix(pattern)
            kwargs: dict[str, Any] = {}
            if prefix:
                kwargs["ChannelNameCondition"] = {
                    "ComparisonOperator": "BEGINS_WITH",
                    "ComparisonValue": prefix,
                }
            for page in client.get_paginator("list_signaling_channels").paginate(**kwargs):
                for info in page.get("ChannelInfoList", []):
                    name = info.get("ChannelName", "")
                    if info.get("ChannelStatus") != "DELETING" and fnmatch.fnmatchcase(
                        name, pattern
                    ):
                        found.add(name)
        return sorted(found)

    try:
        listed = await asyncio.get_running_loop().run_in_executor(None, list_all)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDeniedException", "UnrecognizedClientException", "AccessDenied"):
            raise AccessDenied(
                f"listing channels for {', '.join(config.globs)} was refused ({code}): allow "
                "kinesisvideo:ListSignalingChannels, or list the channel names instead of globs"
            ) from exc
        raise ChannelError(f"ListSignalingChannels failed: {exc}", code=code) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise AccessDenied(
            "no AWS credentials found to list channels: configure them (environment, ~/.aws, "
            "a role)"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ChannelError(f"could not list channels: {exc}") from exc
    for pattern in config.globs:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in listed):
            logger.warning("channels: no channel matches %r", pattern)
    return sorted(names | set(listed))


@dataclass
class _Worker:
    group: tuple[str, ...]
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restart_at: float = 0.0
    delay: float = _RESTART_MIN
    restarts: int = 0
    reader: asyncio.Task[None] | None = None
    figures: list[Figure] = field(default_factory=list)
    """What the process reported last: its channels' viewer and recording figures."""


@dataclass
class ServiceStats:
    """What the supervisor has done so far (the uploader has its own :class:`UploadStats`)."""

    worker_restarts: int = 0
    recovered_segments: int = 0
    pending: int = 0
    """Finished segments waiting for upload at the last scan."""
    spool_bytes: int = 0
    oldest_pending: float | None = None
    """Modification time (epoch seconds) of the oldest segment waiting for upload."""
    workers_running: int = 0


class RecordService:
    """Runs ``kvs-peer record``: see the module docstring.

    Args:
        config: the recorder config.
        config_path: its file, handed to worker processes (they read it themselves).
        shard: this replica's shard, or None to record every channel.
        verbose: ``-v`` count passed on to workers.
        drain_timeout: seconds to keep uploading at stop before leaving the rest for the
            next start.
        session: boto3 session for AWS credentials (default: ``config.profile``).
    """

    def __init__(
        self,
        config: RecordConfig,
        config_path: Path,
        *,
        shard: Shard | None = None,
        verbose: int = 0,
        drain_timeout: float = 20.0,
        session: boto3.Session | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.shard = shard
        self.verbose = verbose
        self.drain_timeout = drain_timeout
        self._session = session or boto3.Session(profile_name=config.profile)
        self.spool = Spool(
            config.output.dir, max_bytes=config.output.max_bytes, max_age=config.output.max_age
        )
        self.uploader = Uploader(config.s3, self.spool, session=self._session)
        self.stats = ServiceStats()
        self._workers: list[_Worker] = []

    async def plan(self) -> Plan:
        """Resolve the channels, keep this shard's, and group them per process."""
        channels = await resolve_channels(self.config, self._session)
        mine = select(channels, self.shard) if self.shard else channels
        processes = self.config.processes or os.cpu_count() or 1
        return Plan(
            channels=tuple(mine),
            groups=split_channels(mine, processes),
            shard=self.shard,
            total=len(channels),
        )

    async def run(self, plan: Plan, stop: asyncio.Event) -> None:
        """Record ``plan``'s channels and upload until ``stop`` is set, then stop the
        workers, complete their segments and upload for up to ``drain_timeout`` seconds."""
        with self.spool.lock():
            if not await asyncio.to_thread(self.spool.wait_for_writers, STOP_GRACE):
                logger.error(
                    "worker processes of an earlier run still write into %s; their open "
                    "segments are uploaded as they are now",
                    self.spool.directory,
                )
            recovered = self.spool.recover()
            self.stats.recovered_segments += len(recovered)
            leftovers = [s for s in self.spool.scan() if s.state is SegmentState.FINISHED]
            if leftovers:
                logger.warning("spool: %d segment(s) from an earlier run to upload", len(leftovers))
            self._workers = [_Worker(group) for group in plan.groups]
            try:
                while not stop.is_set():
                    await self._tick()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), TICK)
            finally:
                await self._stop_workers()
                self.spool.recover()
                drained = await self.uploader.drain(self.drain_timeout)
                left = [s for s in self.spool.scan() if s.state is SegmentState.FINISHED]
                if not drained and left:
                    logger.warning(
                        "stopping with %d segment(s) not uploaded yet; they stay in %s and are "
                        "uploaded at the next start",
                        len(left),
                        self.spool.directory,
                    )
                await self.uploader.close()

    async def _tick(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            process = worker.process
            if process is not None and process.returncode is not None:
                ran = now - worker.started
                if ran > 60:
                    worker.delay = _RESTART_MIN
                logger.error(
                    "worker process for %s exited with %s; restarting it in %.0f s",
                    ", ".join(worker.group),
                    process.returncode,
                    worker.delay,
                )
                self.stats.recovered_segments += len(self.spool.recover(worker.group))
                worker.process = None
                worker.figures = []  # its series are gone until the new process reports
                worker.restart_at = now + worker.delay
                worker.delay = min(worker.delay * 2, _RESTART_MAX)
                worker.restarts += 1
                self.stats.worker_restarts += 1
            if worker.process is None and now >= worker.restart_at:
                worker.process = await self._spawn(worker.group)
                worker.started = now
                worker.reader = asyncio.create_task(self._read_figures(worker, worker.process))
        self.spool.enforce_limits(self.uploader.busy)
        segments = self.spool.scan()
        pending = [s for s in segments if s.state is SegmentState.FINISHED]
        self.stats.pending = len(pending)
        self.stats.oldest_pending = min((s.mtime for s in pending), default=None)
        self.stats.workers_running = sum(
            w.process is not None and w.process.returncode is None for w in self._workers
        )
        self.stats.spool_bytes = sum(s.size for s in segments)
        self.uploader.poll(pending)

    async def _spawn(self, group: tuple[str, ...]) -> asyncio.subprocess.Process:
        command = [
            sys.executable,
            "-m",
            "kvs_peer",
            "record",
            "--config",
            str(self.config_path),
            "--worker",
            ",".join(group),
        ]
        if self.verbose:
            command.append("-" + "v" * self.verbose)
        # stdin stays open for the worker's life: its end (our exit, even SIGKILL) stops it.
        # stdout brings its figures (kvs_peer.metrics.relay), for this process's /metrics.
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        logger.info("worker process %d records %s", process.pid, ", ".join(group))
        return process

    async def _read_figures(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        """Keep ``worker.figures`` at the latest sample ``process`` wrote, until its end."""
        assert process.stdout is not None
        catalog = {**SERIES, **RECORD_SERIES}
        while line := await process.stdout.readline():
            figures = load_figures(line, catalog)
            if figures is None:
                logger.info(
                    "worker process %d: %s", process.pid, line.decode(errors="replace").rstrip()
                )
            elif worker.process is process:
                worker.figures = figures

    def worker_figures(self) -> list[Figure]:
        """The latest figures every running worker process reported (per channel)."""
        return [f for worker in self._workers for f in worker.figures]

    async def _stop_workers(self) -> None:
        processes = [w.process for w in self._workers if w.process is not None]
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                logger.error("worker process %d did not stop in time: killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        readers = [w.reader for w in self._workers if w.reader is not None]
        # The readers end with their process's stdout; a grandchild holding it must not
        # hold up the stop.
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
