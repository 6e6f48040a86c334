"""pytest fixtures for testing applications against kvs-peer, registered through ``pytest11``.

Installing kvs-peer is enough; nothing goes in ``conftest.py``::

    async def test_video_flows(kvs_channel, kvs_master, kvs_viewer):
        await kvs_master(kvs_channel)                  # streams the stamped test pattern
        viewer = await kvs_viewer(kvs_channel)
        await viewer.wait_frames(30)
        viewer.assert_video(min_frames=30, size=(640, 480))

Fixtures (function scope; the async ones are ``pytest_asyncio`` fixtures, so they work in
strict and auto mode):

- ``kvs_emulator_config``: the :class:`~kvs_peer.emulator.EmulatorConfig` of
  ``kvs_emulator``; override it in a conftest or test module to change the emulator's knobs.
- ``kvs_emulator``: a running :class:`~kvs_peer.emulator.LocalKvs` on 127.0.0.1 (free port).
- ``kvs_resolver``: a :class:`~kvs_peer.channel.ChannelResolver` for ``kvs_emulator``.
- ``kvs_channel``: the name of a fresh channel on ``kvs_emulator`` (unique per test).
- ``kvs_master``: :class:`KvsMasterFactory`, starts masters; closed at teardown.
- ``kvs_viewer``: :class:`KvsViewerFactory`, starts :class:`CheckedViewer`\\ s; closed at
  teardown.

This module loads in every pytest run wherever kvs-peer is installed, so it imports only
pytest at load time; aiortc, PyAV and the emulator are imported by the fixtures that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from kvs_peer.errors import InvalidArgument
from kvs_peer.rules import ID_CHARS

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from kvs_peer.access import ChannelAccess
    from kvs_peer.channel import ChannelResolver
    from kvs_peer.emulator import EmulatorConfig, LocalKvs
    from kvs_peer.master import Master
    from kvs_peer.testing.video import VideoCheck
    from kvs_peer.viewer import Viewer, ViewerStats

__all__ = ["CheckedViewer", "KvsMasterFactory", "KvsViewerFactory"]

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised by a subprocess test
    # The optional-import idiom: mypy types the name as the module, None is checked below.
    pytest_asyncio = None  # type: ignore[assignment]


def _async_fixture(func: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture``, or a fixture that says how to get it when it is missing.

    A plain import error would break every pytest run of a project that merely has kvs-peer
    installed; only tests that use these fixtures need pytest-asyncio.
    """
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(func)

    def unavailable(*args: Any, **kwargs: Any) -> None:
        pytest.fail(
            f"the {func.__name__} fixture needs pytest-asyncio: pip install pytest-asyncio",
            pytrace=False,
        )

    # Not functools.wraps: pytest would follow __wrapped__ and see the async function again.
    unavailable.__name__ = unavailable.__qualname__ = func.__name__
    unavailable.__doc__ = func.__doc__
    unavailable.__signature__ = inspect.signature(func)
    return pytest.fixture(unavailable)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    """Fail an ``async def`` test that uses these fixtures but that no plugin runs, saying why.

    In pytest-asyncio's default strict mode an unmarked ``async def`` test is left to pytest,
    whose message says to install an async plugin: misleading when pytest-asyncio is installed.
    """
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return
    if not any(name.startswith("kvs_") for name in pyfuncitem.fixturenames):
        return
    if any(pyfuncitem.get_closest_marker(name) for name in ("asyncio", "anyio", "trio")):
        return
    pytest.fail(
        f"{pyfuncitem.name} is an async def test that pytest-asyncio does not run in its "
        'strict mode: mark it @pytest.mark.asyncio, or set asyncio_mode = "auto" under '
        "[tool.pytest.ini_options] in pyproject.toml",
        pytrace=False,
    )


class KvsMasterFactory(Protocol):
    """Type of the ``kvs_master`` fixture."""

    async def __call__(
        self,
        channel: str,
        *,
        source: str | MediaStreamTrack | None = "testsrc",
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        audio: str | MediaStreamTrack | None = None,
        loopback_candidates: bool = True,
        timeout: float = 10.0,
        **options: Any,
    ) -> Master:
        """Start a master on ``channel`` and wait until the emulator sees it connected.

        Args:
            channel: channel name (e.g. ``kvs_channel``).
            source: ``"testsrc"`` (the stamped test pattern, 640x480 at 30 fps unless given),
                any spec of :func:`kvs_peer.media.open_video_source` (file, camera, URL), a
                video track, or None for no video.
            width: video width (test pattern, cameras; rescales files).
            height: video height.
            fps: frame rate (test pattern, cameras).
            audio: ``"tone"``, a media file, an audio track, or None.
            loopback_candidates: also offer 127.0.0.1 ICE candidates, so peers connect on
                machines (CI containers) whose only interface is loopback.
            timeout: seconds to wait for the master to connect to signaling.
            **options: more :class:`~kvs_peer.master.Master` arguments (``max_viewers``,
                ``bitrate``, ``gop``, ``on_message``...).

        Returns:
            The running master; it is closed at teardown.
        """
        ...


class KvsViewerFactory(Protocol):
    """Type of the ``kvs_viewer`` fixture."""

    async def __call__(
        self,
        channel: str,
        *,
        client_id: str | None = None,
        loopback_candidates: bool = True,
        **options: Any,
    ) -> CheckedViewer:
        """Start a viewer on ``channel`` whose frames are checked as they arrive.

        Args:
            channel: channel name.
            client_id: the viewer's client id; a fresh one by default.
            loopback_candidates: as for ``kvs_master``.
            **options: more :class:`~kvs_peer.viewer.Viewer` arguments (``audio``,
                ``data_channel``, ``on_frame``, ``recorder``...).

        Returns:
            A started :class:`CheckedViewer`; it is closed at teardown.
        """
        ...


class CheckedViewer:
    """A running :class:`~kvs_peer.viewer.Viewer` that feeds every frame to a VideoCheck.

    Args:
        access: channel access with role VIEWER.
        on_frame: also called with each frame (sync or async), after the check saw it.
        **options: more :class:`~kvs_peer.viewer.Viewer` arguments.
    """

    def __init__(
        self,
        access: ChannelAccess,
        *,
        on_frame: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> None:
        from kvs_peer.testing.video import VideoCheck
        from kvs_peer.viewer import Viewer

        self.check: VideoCheck = VideoCheck()
        """Facts about every frame received so far."""
        self._user_on_frame = on_frame
        self._arrived = asyncio.Event()
        self.viewer: Viewer = Viewer(access, on_frame=self._on_frame, **options)
        """The underlying viewer."""

    def _on_frame(self, frame: Any) -> Any:
        self.check.add(frame)
        self._arrived.set()
        if self._user_on_frame is not None:
            return self._user_on_frame(frame)
        return None

    @property
    def client_id(self) -> str:
        """This viewer's client id."""
        return self.viewer.client_id

    @property
    def stats(self) -> ViewerStats:
        """The viewer's counters (frames received, time to first frame, fps...)."""
        return self.viewer.stats

    async def start(self) -> None:
        """Connect to signaling and send the offer."""
        await self.viewer.start()

    async def close(self) -> None:
        """Close the viewer. Idempotent."""
        await self.viewer.close()

    async def wait_frames(self, count: int = 1, *, timeout: float = 30.0) -> VideoCheck:
        """Wait until ``count`` more frames have arrived (counted from this call).

        Returns:
            :attr:`check`, for chaining (``(await v.wait_frames(30)).summary()``).

        Raises:
            AssertionError: fewer frames arrived within ``timeout`` seconds; the message
                tells how many did and what the viewer knows.
            InvalidArgument: ``count`` is less than 1.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        if count < 1:
            raise InvalidArgument(
                f"wait_frames(count={count!r}): count is the frames to wait for from now, "
                "at least 1"
            )
        target = self.check.frames + count
        try:
            async with asyncio.timeout(timeout):
                while self.check.frames < target:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            got = count - (target - self.check.frames)
            raise AssertionError(
                f"viewer {self.client_id} received {got} of {count} frames within {timeout:g} s "
                f"({self._describe()}) -- {self.check.summary()}"
            ) from None
        return self.check

    def assert_video(
        self,
        *,
        min_frames: int = 1,
        max_gap_s: float | None = 2.0,
        size: tuple[int, int] | None = None,
        min_stamped_ratio: float = 0.9,
    ) -> None:
        """Assert the video flowed: see :meth:`~kvs_peer.testing.video.VideoCheck.assert_ok`.

        Checks that ``min_frames`` arrived, stamped frame counters only went forward and
        advanced, no freeze was longer than ``max_gap_s`` and frames were ``size``
        (width, height). The test pattern of ``kvs_master`` carries the stamps.

        Raises:
            AssertionError: with every problem found and the facts.
        """
        __tracebackhide__ = True
        try:
            self.check.assert_ok(
                min_frames=min_frames,
                max_gap_s=max_gap_s,
                size=size,
                min_stamped_ratio=min_stamped_ratio,
            )
        except AssertionError as exc:
            raise AssertionError(f"viewer {self.client_id}: {exc}") from None

    def _describe(self) -> str:
        viewer = self.viewer
        pc = viewer.pc
        signaling = "up" if viewer.signaling.connected else "down"
        peer = pc.connectionState if pc is not None else "none"
        offers = self.stats.offers_sent
        return f"signaling {signaling}, peer connection {peer}, offers sent {offers}"


# -- fixtures ----------------------------------------------------------------------------------


def _trusting(kvs: LocalKvs, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a signaling TLS context trusting ``kvs`` when it serves TLS."""
    context = kvs.ssl_context()
    if context is not None:
        options["signaling"] = {"ssl": context, **dict(options.get("signaling") or {})}
    return options


@contextlib.contextmanager
def _fixture_hint(kvs: LocalKvs, channel: str) -> Iterator[None]:
    """Say how to get a channel in a test, rather than the command line's --create-channel."""
    from kvs_peer.errors import ChannelNotFound

    try:
        yield
    except ChannelNotFound:
        known = ", ".join(repr(name) for name in kvs.channel_names()) or "none"
        raise ChannelNotFound(
            channel,
            f"signaling channel {channel!r} not found on kvs_emulator (channels: {known}): "
            f"use the kvs_channel fixture's name, or call kvs_emulator.create_channel("
            f"{channel!r}) first",
        ) from None


@pytest.fixture
def kvs_emulator_config() -> EmulatorConfig:
    """Settings of ``kvs_emulator``; override this fixture to change them."""
    from kvs_peer.emulator import EmulatorConfig

    return EmulatorConfig()


@_async_fixture
async def kvs_emulator(kvs_emulator_config: EmulatorConfig) -> AsyncIterator[LocalKvs]:
    """A running local KVS emulator on 127.0.0.1 with a free port."""
    from kvs_peer.emulator import LocalKvs

    async with LocalKvs(kvs_emulator_config) as emulator:
        yield emulator


@_async_fixture
async def kvs_resolver(kvs_emulator: LocalKvs) -> AsyncIterator[ChannelResolver]:
    """A channel resolver using ``kvs_emulator`` and its credentials (none from the env)."""
    async with kvs_emulator.resolver() as resolver:
        yield resolver


@pytest.fixture
def kvs_channel(kvs_emulator: LocalKvs, request: pytest.FixtureRequest) -> str:
    """Name of a new channel on ``kvs_emulator``: the test's name plus a random suffix."""
    base = re.sub(f"[^{ID_CHARS}]+", "-", request.node.name).strip("-")[:100] or "test"
    name = f"{base}-{uuid.uuid4().hex[:8]}"
    kvs_emulator.create_channel(name)
    return name


@_async_fixture
async def kvs_master(
    kvs_emulator: LocalKvs, kvs_resolver: ChannelResolver
) -> AsyncIterator[KvsMasterFactory]:
    """Factory of masters streaming to ``kvs_emulator``: ``await kvs_master(channel)``."""
    from aiortc import MediaStreamTrack

    from kvs_peer.access import AwsAccess
    from kvs_peer.errors import InvalidArgument
    from kvs_peer.master import Master
    from kvs_peer.media import open_audio_source, open_video_source
    from kvs_peer.protocol import Role

    masters: list[Master] = []

    def track(value: object, kind: str, examples: str) -> MediaStreamTrack | None:
        if value is None or (isinstance(value, MediaStreamTrack) and value.kind == kind):
            return value
        raise InvalidArgument(
            f"{kind} must be {examples}, a {kind} MediaStreamTrack or None, got {value!r}"
        )

    async def start(
        channel: str,
        *,
        source: str | MediaStreamTrack | None = "testsrc",
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        audio: str | MediaStreamTrack | None = None,
        loopback_candidates: bool = True,
        timeout: float = 10.0,
        **options: Any,
    ) -> Master:
        video: MediaStreamTrack | None
        if isinstance(source, str):
            # Files and URLs block while opening; the pattern is quick either way.
            video = await asyncio.to_thread(
                open_video_source, source, width=width, height=height, fps=fps
            )
        else:
            video = track(source, "video", "'testsrc', a file, camera or URL")
        if isinstance(audio, str):
            sound = await asyncio.to_thread(open_audio_source, audio)
        else:
            sound = track(audio, "audio", "'tone', a file or URL")
        master = Master(
            AwsAccess(kvs_resolver, channel, Role.MASTER),
            video=video,
            audio=sound,
            loopback_candidates=loopback_candidates,
            **_trusting(kvs_emulator, options),
        )
        masters.append(master)
        with _fixture_hint(kvs_emulator, channel):
            await master.start()
        async with asyncio.timeout(timeout):
            await kvs_emulator.wait_connected(channel, master=True)
        return master

    yield start
    while masters:
        await masters.pop().close()


@_async_fixture
async def kvs_viewer(
    kvs_emulator: LocalKvs, kvs_resolver: ChannelResolver
) -> AsyncIterator[KvsViewerFactory]:
    """Factory of checked viewers: ``viewer = await kvs_viewer(channel)``."""
    from kvs_peer.access import AwsAccess
    from kvs_peer.protocol import Role
    from kvs_peer.viewer import new_client_id

    viewers: list[CheckedViewer] = []

    async def start(
        channel: str,
        *,
        client_id: str | None = None,
        loopback_candidates: bool = True,
        **options: Any,
    ) -> CheckedViewer:
        access = AwsAccess(
            kvs_resolver, channel, Role.VIEWER, client_id=client_id or new_client_id("kvs-test")
        )
        viewer = CheckedViewer(
            access, loopback_candidates=loopback_candidates, **_trusting(kvs_emulator, options)
        )
        viewers.append(viewer)
        with _fixture_hint(kvs_emulator, channel):
            await viewer.start()
        return viewer

    yield start
    while viewers:
        await viewers.pop().close()
