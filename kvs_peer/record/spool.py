"""The recorder's local spool: segment files on disk until S3 has them.

Layout, one folder per channel::

    <dir>/.lock                               held by the one service using the spool
    <dir>/.writers                            shared by its worker processes while they run
    <dir>/<channel>/20250101T120000.000Z.mkv.part      being written
    <dir>/<channel>/20250101T120000.000Z.mkv           finished: to upload
    <dir>/<channel>/20250101T120000.000Z.mkv.uploaded  in S3, kept for ``max_age``

A file moves between states by ``rename``, which is atomic, so a crash at any moment leaves
each file in one state. A ``.part`` file found when the service starts was being written
when a process died; Matroska is written with flushed half-second clusters, so it is kept as
it is (it plays up to the crash) and finished like any other.

The names are the UTC time the segment started (ISO 8601 basic format, milliseconds), so
they sort in time order and become the S3 keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import InvalidState, MediaError

__all__ = [
    "SEGMENT_SUFFIX",
    "Segment",
    "SegmentState",
    "Spool",
    "holds_video",
    "segment_name",
]

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".mkv"
_PART = ".part"
_UPLOADED = ".uploaded"
_LOCK = ".lock"
_WRITERS = ".writers"


def segment_name(when: dt.datetime) -> str:
    """The file name (and S3 key tail) of a segment starting at ``when`` (made UTC)."""
    utc = when.astimezone(dt.UTC)
    return f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z{SEGMENT_SUFFIX}"


def holds_video(path: Path) -> bool:
    """Whether a (possibly truncated) segment file has at least one video packet."""
    import av  # only for files a crash left behind

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    return True
    except (av.FFmpegError, OSError, ValueError):
        return False
    return False


class SegmentState(Enum):
    """Where a segment file is in its life."""

    WRITING = "writing"
    FINISHED = "finished"
    UPLOADED = "uploaded"


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file in the spool."""

    channel: str
    name: str
    """Its final name, ``<UTC start>.mkv`` (also the last part of its S3 key)."""
    path: Path
    """Where it is now (with ``.part`` or ``.uploaded`` in those states)."""
    state: SegmentState
    size: int
    mtime: float


class Spool:
    """Segment files of every channel under one folder, and their limits.

    Only the service holding :meth:`lock` removes or renames finished files; worker processes
    only create ``.part`` files and rename them when they are complete.

    Args:
        directory: the spool folder (created if missing).
        max_bytes: size limit of everything in the spool.
        max_age: seconds an uploaded segment is kept after its upload; 0: deleted at once.
        clock: wall clock (seconds since the epoch), for ages.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self.dropped_segments = 0
        """Segments deleted before S3 had them (the byte limit forced it)."""
        self.dropped_bytes = 0

    # -- paths ----------------------------------------------------------------------------------

    def channel_dir(self, channel: str) -> Path:
        """The folder of ``channel``'s segments (created if missing).

        Raises:
            MediaError: it cannot be created.
        """
        path = self.directory / channel
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(
                f"cannot create the spool folder {path}: {exc.strerror or exc}; check "
                "output.dir and its permissions"
            ) from None
        return path

    def new_part_path(self, channel: str, when: dt.datetime | None = None) -> Path:
        """A fresh ``.part`` path for a segment of ``channel`` starting now (or ``when``).

        Two segments of a channel starting within the same millisecond (a quick restart) get
        names a millisecond apart, so no file or S3 object is ever overwritten.
        """
        folder = self.channel_dir(channel)
        moment = when or dt.datetime.now(dt.UTC)
        while True:
            name = segment_name(moment)
            if not any((folder / (name + extra)).exists() for extra in ("", _PART, _UPLOADED)):
                return folder / (name + _PART)
            moment += dt.timedelta(milliseconds=1)

    # -- lock -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the spool for this service (an advisory ``flock``, released at exit or death).

        Raises:
            InvalidState: another process holds it.
            MediaError: the folder cannot be created.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / _LOCK, "a+b")
        except OSError as exc:
            raise MediaError(
                f"cannot use the spool folder {self.directory}: {exc.strerror or exc}; check "
                "output.dir and its permissions"
            ) from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InvalidState(
                    f"another kvs-peer record uses the spool {self.directory}: give each "
                    "recorder its own output.dir"
                ) from None
            yield
        finally:
            handle.close()

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Held (shared) by a worker process while it writes segments.

        A worker outlives a supervisor killed outright by the second or two it takes to
        complete its files; a new supervisor waits for it (:meth:`wait_for_writers`) before
        it finishes ``.part`` files itself.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / _WRITERS, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            yield

    def wait_for_writers(self, timeout: float) -> bool:
        """Wait until no worker process of an earlier run writes into the spool.

        Returns:
            True when none does; False if some still did after ``timeout`` seconds.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        with open(self.directory / _WRITERS, "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True  # closing the file releases it for this run's workers
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(0.05)

    # -- states ---------------------------------------------------------------------------------

    def scan(self, channels: Iterable[str] | None = None) -> list[Segment]:
        """Every segment file (of ``channels``, or all), oldest first."""
        folders = (
            [self.directory / c for c in channels]
            if channels is not None
            else [p for p in self._folders()]
        )
        found: list[Segment] = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                segment = self._segment(folder.name, entry)
                if segment is not None:
                    found.append(segment)
        found.sort(key=lambda s: (s.name, s.channel))
        return found

    def _folders(self) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(self.directory) if e.is_dir()]
        except FileNotFoundError:
            return []

    @staticmethod
    def _segment(channel: str, entry: os.DirEntry[str]) -> Segment | None:
        name = entry.name
        if name.endswith(SEGMENT_SUFFIX + _PART):
            state, final = SegmentState.WRITING, name[: -len(_PART)]
        elif name.endswith(SEGMENT_SUFFIX + _UPLOADED):
            state, final = SegmentState.UPLOADED, name[: -len(_UPLOADED)]
        elif name.endswith(SEGMENT_SUFFIX) and not name.startswith("."):
            state, final = SegmentState.FINISHED, name
        else:
            return None
        try:
            info = entry.stat()
        except FileNotFoundError:
            return None
        return Segment(channel, final, Path(entry.path), state, info.st_size, info.st_mtime)

    def finish(self, path: Path) -> Path | None:
        """Mark a ``.part`` file complete (ready to upload); returns its new path.

        Returns None if there is no such file (already finished, or never written).
        """
        if path.name.endswith(_PART):
            target = path.with_name(path.name[: -len(_PART)])
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return None
            return target
        return path if path.exists() else None

    def recover(self, channels: Iterable[str] | None = None) -> list[Path]:
        """Finish the ``.part`` files left by processes that died (of ``channels``, or all).

        Call it only when no process writes those channels.
        """
        finished = []
        for segment in self.scan(channels):
            if segment.state is SegmentState.WRITING:
                if not holds_video(segment.path):
                    # Killed before its first cluster reached the disk: nothing to keep.
                    logger.warning(
                        "spool: %s/%s was being written when its process stopped and holds "
                        "no frame (%d bytes); removed",
                        segment.channel,
                        segment.name,
                        segment.size,
                    )
                    self._remove(segment)
                    continue
                path = self.finish(segment.path)
                if path is not None:
                    logger.warning(
                        "spool: %s/%s was being written when its process stopped; kept as it "
                        "is (%d bytes) for upload",
                        segment.channel,
                        segment.name,
                        segment.size,
                    )
                    finished.append(path)
        return finished

    def uploaded(self, segment: Segment) -> None:
        """S3 confirmed ``segment``: delete it, or keep it ``max_age`` seconds more."""
        try:
            if self.max_age <= 0:
                segment.path.unlink()
            else:
                target = segment.path.with_name(segment.name + _UPLOADED)
                os.replace(segment.path, target)
                now = self._clock()
                os.utime(target, (now, now))  # its age counts from the upload
        except FileNotFoundError:
            pass

    # -- limits ---------------------------------------------------------------------------------

    def enforce_limits(self, busy: Iterable[Path] = ()) -> list[Segment]:
        """Delete what the limits require; returns the segments deleted.

        First uploaded copies older than ``max_age``. Then, while the spool is over
        ``max_bytes``: uploaded copies, oldest first, then finished segments S3 does not have
        yet, oldest first, each logged as an error (that recording is lost). Files being
        written and files in ``busy`` (being uploaded) are never deleted.
        """
        busy_paths = set(busy)
        segments = self.scan()
        removed: list[Segment] = []
        now = self._clock()
        kept: list[Segment] = []
        for segment in segments:
            if (
                segment.state is SegmentState.UPLOADED
                and now - segment.mtime >= self.max_age
                and self._remove(segment)
            ):
                removed.append(segment)
            else:
                kept.append(segment)
        total = sum(s.size for s in kept)
        if total <= self.max_bytes:
            return removed
        candidates = [s for s in kept if s.state is SegmentState.UPLOADED] + [
            s for s in kept if s.state is SegmentState.FINISHED and s.path not in busy_paths
        ]
        for segment in candidates:
            if total <= self.max_bytes:
                break
            if not self._remove(segment):
                continue
            total -= segment.size
            removed.append(segment)
            if segment.state is SegmentState.FINISHED:
                self.dropped_segments += 1
                self.dropped_bytes += segment.size
                logger.error(
                    "spool over its limit (max_bytes %d): deleted %s/%s (%d bytes) BEFORE it "
                    "was uploaded; that recording is lost. S3 has not confirmed uploads for a "
                    "while: check the uploads, or raise output.max_bytes",
                    self.max_bytes,
                    segment.channel,
                    segment.name,
                    segment.size,
                )
        if total > self.max_bytes:
            logger.warning(
                "spool holds %d bytes, over max_bytes %d, in files being written or uploaded",
                total,
                self.max_bytes,
            )
        return removed

    @staticmethod
    def _remove(segment: Segment) -> bool:
        try:
            segment.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def size(self) -> int:
        """Bytes in the spool."""
        return sum(s.size for s in self.scan())
