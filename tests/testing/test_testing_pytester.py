"""The pytest plugin as users meet it: a test project in a temporary directory, run by pytest.

Each run is a subprocess (a fresh interpreter, the plugin loaded through its ``pytest11``
entry point only), in pytest-asyncio's default strict mode unless said otherwise.
"""

from __future__ import annotations

import json
import sys

import pytest

pytest_plugins = ["pytester"]

USER_CONFTEST = """
import pytest
from kvs_peer.emulator import EmulatorConfig

@pytest.fixture
def kvs_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(max_viewers=3)
"""

USER_TESTS = """
import pytest
from kvs_peer.emulator import LocalKvs
from kvs_peer.testing import KvsMasterFactory, KvsViewerFactory


@pytest.mark.asyncio
async def test_video_flows(
    kvs_emulator: LocalKvs,
    kvs_channel: str,
    kvs_master: KvsMasterFactory,
    kvs_viewer: KvsViewerFactory,
) -> None:
    await kvs_master(kvs_channel)
    viewer = await kvs_viewer(kvs_channel)
    await viewer.wait_frames(10, timeout=20)
    before = viewer.check.last_counter
    await viewer.wait_frames(5, timeout=20)
    assert viewer.check.last_counter > before
    viewer.assert_video(min_frames=15, size=(640, 480))
    assert kvs_emulator.config.max_viewers == 3  # the conftest override was used


@pytest.mark.asyncio
async def test_expects_the_wrong_size(
    kvs_channel: str, kvs_master: KvsMasterFactory, kvs_viewer: KvsViewerFactory
) -> None:
    await kvs_master(kvs_channel, width=320, height=240)
    viewer = await kvs_viewer(kvs_channel, client_id="size-checker")
    await viewer.wait_frames(5, timeout=20)
    viewer.assert_video(size=(1280, 720))


@pytest.mark.asyncio
async def test_master_never_comes(kvs_channel: str, kvs_viewer: KvsViewerFactory) -> None:
    viewer = await kvs_viewer(kvs_channel, client_id="lonely")
    await viewer.wait_frames(1, timeout=0.5)
"""


def test_user_project_passes_and_fails_with_the_facts(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_app=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_mode=strict", "-o", "timeout=60"
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: viewer size-checker: frames are 320x240, expected 1280x720 -- *",
            "*AssertionError: viewer lonely received 0 of 1 frames within 0.5 s "
            "(signaling up, peer connection *",
        ]
    )
    # The fixtures closed everything: no task or socket warnings after the run.
    result.stdout.no_fnmatch_line("*Task was destroyed*")
    result.stdout.no_fnmatch_line("*Unclosed*")


def test_auto_mode_and_an_emulator_override_serving_tls(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest_asyncio
        from kvs_peer.emulator import LocalKvs

        @pytest_asyncio.fixture
        async def kvs_emulator(kvs_emulator_config):
            async with LocalKvs(kvs_emulator_config, tls=True) as kvs:
                yield kvs
        """
    )
    pytester.makepyfile(
        test_auto="""
        async def test_stream(kvs_emulator, kvs_channel, kvs_master, kvs_viewer):
            assert kvs_emulator.endpoint_url.startswith("https://")
            await kvs_master(kvs_channel, width=160, height=120)
            viewer = await kvs_viewer(kvs_channel)
            await viewer.wait_frames(3, timeout=20)
            viewer.assert_video(size=(160, 120))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1)


def test_plugin_import_is_light(pytester: pytest.Pytester) -> None:
    code = (
        "import json, sys, kvs_peer.testing.plugin; "
        "print(json.dumps(sorted(m for m in ('aiortc', 'av', 'aiohttp', 'boto3', 'numpy', "
        "'websockets', 'kvs_peer.emulator', 'kvs_peer.master') if m in sys.modules)))"
    )
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stderr.str()
    assert json.loads(result.stdout.lines[-1]) == []


def test_missing_pytest_asyncio_fails_only_the_tests_that_need_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_unrelated():
            assert True

        def test_needs_the_emulator(kvs_emulator):
            pass
        """
    )
    # pytest-asyncio made unimportable, as in a project that never installed it.
    pytester.makepyfile(
        run="""
        import sys

        import pytest


        class NoPytestAsyncio:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "pytest_asyncio":
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None


        sys.meta_path.insert(0, NoPytestAsyncio())
        # --assert=plain: the assertion rewriter would find pytest_asyncio past our finder.
        args = ["-p", "no:asyncio", "-p", "no:cacheprovider", "--assert=plain", "test_plain.py"]
        sys.exit(pytest.main(args))
        """
    )
    result = pytester.run(sys.executable, "run.py")
    result.stdout.fnmatch_lines(
        [
            "*the kvs_emulator fixture needs pytest-asyncio: pip install pytest-asyncio*",
            "*1 passed, 1 error*",
        ]
    )
