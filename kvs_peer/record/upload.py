"""Upload finished segments to S3 with boto3 (in threads), retried until S3 confirms them.

A segment counts as uploaded only when a ``HeadObject`` after the upload reports the local
file's size; only then is the local file released (deleted, or kept as a copy). While S3
fails (network, credentials, outage), every upload waits: a shared backoff from 0.5 s
doubling to ``max_retry_interval`` (with jitter), reset by the first success, so a recovered
S3 is used again within that interval and nothing is uploaded out of order in between.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from .config import S3Config
from .spool import Segment, SegmentState, Spool

__all__ = ["UploadStats", "Uploader"]

logger = logging.getLogger(__name__)

_FIRST_RETRY = 0.5
_CONTENT_TYPE = "video/x-matroska"
# One PUT up to this size; above it a multipart upload (sequential parts: our own threads
# already upload several segments at once).
_TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024, use_threads=False)


@dataclass(slots=True)
class UploadStats:
    """Upload counters since the service started."""

    segments: int = 0
    """Segments S3 confirmed."""
    bytes: int = 0
    failures: int = 0
    """Upload attempts that failed (each is retried)."""
    last_error: str | None = None
    by_channel: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Channel -> (segments, bytes) S3 confirmed."""


class _Unconfirmed(Exception):
    """S3 answered, but does not hold the object as sent."""


class Uploader:
    """Uploads a spool's finished segments, oldest first, ``threads`` at a time.

    Call :meth:`poll` regularly (it starts uploads and returns at once), and :meth:`close`
    at the end.

    Args:
        config: bucket, prefix, storage class, endpoint, threads, retry interval.
        spool: the spool whose segments are released after upload.
        session: the boto3 session credentials come from (default chain when None).
        clock: monotonic clock, for the backoff.
    """

    def __init__(
        self,
        config: S3Config,
        spool: Spool,
        *,
        session: boto3.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.spool = spool
        self._session = session or boto3.Session()
        self._clock = clock
        self._client: Any = None
        self._executor = ThreadPoolExecutor(config.upload_threads, thread_name_prefix="kvs-peer-s3")
        self._tasks: dict[Path, asyncio.Task[None]] = {}
        self._failures = 0
        self._retry_at = 0.0
        self.stats = UploadStats()

    @property
    def busy(self) -> set[Path]:
        """Local files being uploaded now."""
        return set(self._tasks)

    def key(self, segment: Segment) -> str:
        """The S3 key of ``segment``."""
        return self.config.key(segment.channel, segment.name)

    def poll(self, segments: Iterable[Segment]) -> int:
        """Start uploading finished segments (oldest first) while threads are free.

        Returns:
            How many uploads were started.
        """
        if self._clock() < self._retry_at:
            return 0
        free = self.config.upload_threads - len(self._tasks)
        started = 0
        for segment in segments:
            if free <= 0:
                break
            if segment.state is not SegmentState.FINISHED or segment.path in self._tasks:
                continue
            task = asyncio.get_running_loop().create_task(self._upload(segment))
            self._tasks[segment.path] = task
            task.add_done_callback(functools.partial(self._forget, segment.path))
            free -= 1
            started += 1
            if self._failures:
                break  # S3 was failing: one upload probes it before the others follow
        return started

    async def wait_idle(self) -> None:
        """Wait for the uploads in progress."""
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def drain(self, timeout: float) -> bool:
        """Upload everything finished in the spool, for at most ``timeout`` seconds.

        Returns:
            True if nothing is left to upload.
        """
        deadline = self._clock() + timeout
        while True:
            pending = [s for s in self.spool.scan() if s.state is SegmentState.FINISHED]
            if not pending and not self._tasks:
                return True
            if self._clock() >= deadline:
                return False
            self.poll(pending)
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop starting uploads; those in progress finish in their threads."""
        for task in list(self._tasks.values()):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one upload -------------------------------------------------------------------------

    def _forget(self, path: Path, task: asyncio.Task[None]) -> None:
        self._tasks.pop(path, None)

    async def _upload(self, segment: Segment) -> None:
        loop = asyncio.get_running_loop()
        key = self.key(segment)
        try:
            size = await loop.run_in_executor(self._executor, self._put, segment, key)
        except FileNotFoundError:
            return  # deleted meanwhile (the spool's byte limit): nothing left to upload
        except Exception as exc:
            self._failed(segment, key, exc)
            return
        self._failures = 0
        self._retry_at = 0.0
        self.stats.segments += 1
        self.stats.bytes += size
        segments, sent = self.stats.by_channel.get(segment.channel, (0, 0))
        self.stats.by_channel[segment.channel] = (segments + 1, sent + size)
        self.spool.uploaded(segment)
        logger.info(
            "uploaded %s (%d bytes) to s3://%s/%s", segment.name, size, self.config.bucket, key
        )

    def _put(self, segment: Segment, key: str) -> int:
        client = self._s3()
        size = segment.path.stat().st_size
        extra: dict[str, str] = {"ContentType": _CONTENT_TYPE}
        if self.config.storage_class:
            extra["StorageClass"] = self.config.storage_class
        client.upload_file(
            str(segment.path), self.config.bucket, key, ExtraArgs=extra, Config=_TRANSFER
        )
        head = client.head_object(Bucket=self.config.bucket, Key=key)
        if head.get("ContentLength") != size:
            raise _Unconfirmed(
                f"S3 holds {head.get('ContentLength')} bytes for {key}, the file has {size}"
            )
        return size

    def _s3(self) -> Any:
        # Created on first use in a worker thread; botocore clients are thread-safe.
        if self._client is None:
            options: dict[str, Any] = {
                "connect_timeout": 5,
                "read_timeout": 60,
                # A few quick retries inside botocore; the backoff here handles outages.
                "retries": {"max_attempts": 2, "mode": "standard"},
                "user_agent_extra": "kvs-peer-record",
            }
            if self.config.endpoint_url:
                # S3-compatible servers on an address (MinIO, test servers) have no
                # bucket subdomains.
                options["s3"] = {"addressing_style": "path"}
            self._client = self._session.client(
                "s3",
                region_name=self.config.region,
                endpoint_url=self.config.endpoint_url,
                config=botocore.config.Config(**options),
            )
        return self._client

    def _failed(self, segment: Segment, key: str, exc: BaseException) -> None:
        self._failures += 1
        self.stats.failures += 1
        delay = min(self.config.max_retry_interval, _FIRST_RETRY * 2 ** min(self._failures - 1, 30))
        delay *= random.uniform(0.5, 1.0)
        self._retry_at = self._clock() + delay
        reason = _describe(exc, self.config)
        self.stats.last_error = reason
        logger.warning(
            "upload of %s/%s to s3://%s/%s failed (%s); kept in the spool, retrying in %.1f s",
            segment.channel,
            segment.name,
            self.config.bucket,
            key,
            reason,
            delay,
        )


def _describe(exc: BaseException, config: S3Config) -> str:
    """A short reason, with what to do for the failures a person must fix."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        if code == "NoSuchBucket":
            return f"bucket {config.bucket!r} does not exist: create it or fix s3.bucket"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"S3 refused the credentials ({code}): allow s3:PutObject and s3:GetObject "
                f"on arn:aws:s3:::{config.bucket}/*"
            )
        return f"S3 error {code}"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found for S3 (environment, ~/.aws, or a role)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | ConnectionError):
        return f"S3 unreachable: {exc}"
    return f"{type(exc).__name__}: {exc}"
