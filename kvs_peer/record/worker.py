"""One recording process: a viewer per channel writing segments into the spool.

Each channel runs a :class:`~kvs_peer.viewer.Viewer` whose recorder names its files after the
UTC time they start. A segment is renamed from ``.part`` to ``.mkv`` as soon as the next one
has started (or the recorder has closed): the supervisor uploads only renamed files. When
video stops for a whole segment length (the master left), the open segment is closed, so it
is uploaded instead of waiting for the master to come back. A viewer that stops (signaling
gave up, the recording failed) is started again with backoff; the process only ends when
asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from ..access import AwsAccess, ChannelAccess, SignerAccess
from ..channel import ChannelResolver
from ..errors import InvalidArgument, KvsPeerError
from ..media.recorder import Recorder
from ..protocol import Role
from ..viewer import Viewer
from .config import RecordConfig
from .spool import Spool

__all__ = ["ChannelRecording", "SpoolRecorder", "record_channels", "recorder_client_id"]

logger = logging.getLogger(__name__)

_POLL = 0.25
"""Seconds between checks for finished segments and stalled video."""
_RESTART_MIN = 1.0
_RESTART_MAX = 60.0
_HEALTHY = 60.0
"""A viewer that ran this long restarts after the shortest delay again."""


def recorder_client_id(channel: str, host: str | None = None) -> str:
    """A viewer client id for ``channel`` that stays the same across restarts on one host.

    KVS counts a viewer id it still remembers against the channel's ``rules.MAX_VIEWERS``, so a
    recorder restarting in a loop must not bring a new id each time.
    """
    digest = hashlib.sha256(f"{host or socket.gethostname()}/{channel}".encode()).hexdigest()
    return f"kvs-peer-record-{digest[:16]}"


class SpoolRecorder(Recorder):
    """A :class:`~kvs_peer.media.recorder.Recorder` writing ``<UTC start>.mkv.part`` files
    into a channel's spool folder (Matroska: a crash leaves a playable file)."""

    def __init__(
        self, spool: Spool, channel: str, *, segment_seconds: float, audio: bool = False
    ) -> None:
        self._spool = spool
        self._channel = channel
        super().__init__(
            spool.channel_dir(channel) / "segment.mkv",
            container="matroska",
            segment_seconds=segment_seconds,
            audio=audio,
        )

    def segment_path(self, index: int) -> Path:
        """A new spool path named after the current UTC time.

        The recorder asks for a segment's path when it opens that segment (and once in
        ``start()``, to check that the folder takes new files), so the name is the time the
        segment's first frame was written.
        """
        return self._spool.new_part_path(self._channel)


class ChannelRecording:
    """Records one channel until stopped, restarting its viewer when it stops.

    Args:
        channel: the channel name.
        access: makes the channel access of a new viewer (role VIEWER).
        spool: where segments go.
        segment_seconds: segment length.
        audio: also record audio.
        loopback_candidates: also offer 127.0.0.1 ICE candidates.
    """

    def __init__(
        self,
        channel: str,
        access: Callable[[], ChannelAccess],
        spool: Spool,
        *,
        segment_seconds: float,
        audio: bool = False,
        loopback_candidates: bool = False,
    ) -> None:
        self.channel = channel
        self._access = access
        self._spool = spool
        self._segment_seconds = segment_seconds
        self._audio = audio
        self._loopback = loopback_candidates
        self.restarts = 0
        self.segments_finished = 0
        self.viewer: Viewer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set; failures are logged and the viewer restarted."""
        delay = _RESTART_MIN
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._run_once(stop)
                reason = "the viewer stopped"
            except KvsPeerError as exc:
                reason = str(exc)
            if stop.is_set():
                return
            if time.monotonic() - started > _HEALTHY:
                delay = _RESTART_MIN
            self.restarts += 1
            logger.error("channel %s: %s; recording again in %.0f s", self.channel, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, _RESTART_MAX)

    def _new_recorder(self) -> SpoolRecorder:
        recorder = SpoolRecorder(
            self._spool, self.channel, segment_seconds=self._segment_seconds, audio=self._audio
        )
        recorder.start()
        return recorder

    async def _run_once(self, stop: asyncio.Event) -> None:
        recorders: list[SpoolRecorder] = [self._new_recorder()]
        viewer = Viewer(
            self._access(),
            audio=self._audio,
            recorder=recorders[0],
            loopback_candidates=self._loopback,
        )
        self.viewer = viewer
        stopping = asyncio.ensure_future(stop.wait())
        closed: asyncio.Future[None] | None = None
        try:
            await viewer.start()
            closed = asyncio.ensure_future(viewer.wait_closed())
            while True:
                done, _ = await asyncio.wait({closed, stopping}, timeout=_POLL)
                self._finish(recorders[-1], closed=False)
                if closed in done:
                    closed.result()  # raises why the viewer stopped
                    return
                if stopping in done:
                    return
                if self._stalled(viewer, recorders[-1]):
                    recorders.append(await self._rotate(viewer, recorders[-1]))
        finally:
            for future in (stopping, closed):
                if future is not None:
                    future.cancel()
            try:
                await viewer.close()  # closes the current recorder: its last file is complete
            finally:
                for recorder in recorders:
                    self._finish(recorder, closed=True)

    def _stalled(self, viewer: Viewer, recorder: SpoolRecorder) -> bool:
        last = viewer.stats.last_frame_at
        return (
            bool(recorder.files)
            and last is not None
            and time.monotonic() - last > self._segment_seconds
        )

    async def _rotate(self, viewer: Viewer, old: SpoolRecorder) -> SpoolRecorder:
        logger.info(
            "channel %s: no video for %.0f s: closing the segment so it can be uploaded",
            self.channel,
            self._segment_seconds,
        )
        new = self._new_recorder()
        viewer.recorder = new  # the next frame starts a new segment
        try:
            await old.close()
        except KvsPeerError as exc:
            logger.error("channel %s: %s", self.channel, exc)
        self._finish(old, closed=True)
        return new

    def _finish(self, recorder: SpoolRecorder, *, closed: bool) -> None:
        """Rename the recorder's complete files to ``.mkv`` (all but the open one)."""
        files = recorder.files
        complete = files if closed else files[:-1]
        for path in complete:
            if self._spool.finish(path) is not None and path.name.endswith(".part"):
                self.segments_finished += 1
                logger.info("channel %s: segment %s complete", self.channel, path.name[:-5])


def _signer_token(config: RecordConfig) -> str | None:
    if config.token_file is not None:
        try:
            return config.token_file.read_text().strip()
        except OSError as exc:
            raise InvalidArgument(
                f"token_file {str(config.token_file)!r}: {exc.strerror or exc}"
            ) from None
    return os.environ.get("KVS_PEER_SIGNER_TOKEN")


async def record_channels(
    config: RecordConfig,
    channels: list[str],
    stop: asyncio.Event,
    *,
    session: object | None = None,
    report: Callable[[str], None] | None = None,
) -> None:
    """Record ``channels`` into the config's spool until ``stop`` is set.

    Args:
        config: the recorder config.
        channels: exact channel names (already resolved and sharded).
        stop: set it to stop; every open segment is then completed.
        session: a boto3 ``Session`` for AWS credentials (default: from ``config.profile``).
        report: called with a line of the channels' figures every
            :data:`~kvs_peer.record.metrics.REPORT_INTERVAL` seconds (see
            :func:`~kvs_peer.record.metrics.report_figures`).
    """
    spool = Spool(config.output.dir, max_bytes=config.output.max_bytes)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(spool.writer_lock())
        if config.signer_url is not None:
            token = _signer_token(config)
            signer_url = config.signer_url

            def factory(channel: str) -> Callable[[], ChannelAccess]:
                return lambda: SignerAccess(
                    signer_url,
                    channel,
                    Role.VIEWER,
                    client_id=recorder_client_id(channel),
                    token=token,
                )

        else:
            import boto3

            boto_session = session or boto3.Session(profile_name=config.profile)
            resolver = await stack.enter_async_context(
                ChannelResolver(
                    region=config.region,
                    endpoint_url=config.endpoint_url,
                    session=boto_session,  # type: ignore[arg-type]
                )
            )

            def factory(channel: str) -> Callable[[], ChannelAccess]:
                return lambda: AwsAccess(
                    resolver, channel, Role.VIEWER, client_id=recorder_client_id(channel)
                )

        recordings = [
            ChannelRecording(
                channel,
                factory(channel),
                spool,
                segment_seconds=config.output.segment_seconds,
                audio=config.output.audio,
                loopback_candidates=config.loopback_candidates,
            )
            for channel in channels
        ]
        work = [r.run(stop) for r in recordings]
        if report is not None:
            from .metrics import ChannelRecordingSource, report_figures

            sources = [ChannelRecordingSource(r) for r in recordings]
            work.append(report_figures(sources, report, stop))
        await asyncio.gather(*work)
