"""Shared test configuration.

Fixtures and hooks only; plain helpers such as the scaled time unit ``MS`` live in
``tests/support.py`` and are imported from there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable

import pytest
from support import process_env

from kvs_peer.channel import ChannelResolver
from kvs_peer.emulator import EmulatorConfig, LocalKvs

# Tests never look for credentials on an instance metadata service (a network call).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# CLI subprocesses keep their channel cache in a folder of the test run, not in ~/.cache.
os.environ.setdefault(
    "KVS_PEER_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"kvs-peer-tests-{os.getpid()}")
)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Override in a test module to change the emulator's knobs."""
    return EmulatorConfig()


@pytest.fixture
async def kvs(emulator_config: EmulatorConfig) -> AsyncIterator[LocalKvs]:
    """A local KVS emulator on 127.0.0.1 with a free port."""
    async with LocalKvs(emulator_config) as emulator:
        yield emulator


def make_resolver(kvs: LocalKvs, **kwargs: object) -> ChannelResolver:
    """A resolver pointed at ``kvs`` with its credentials (none from the environment)."""
    return kvs.resolver(**kwargs)


@pytest.fixture
def resolver_factory(kvs: LocalKvs) -> Callable[..., ChannelResolver]:
    """``resolver_factory(**kwargs)`` -> a ChannelResolver for the emulator (close it)."""
    return lambda **kwargs: make_resolver(kvs, **kwargs)


@pytest.fixture
async def resolver(kvs: LocalKvs) -> AsyncIterator[ChannelResolver]:
    async with make_resolver(kvs) as r:
        yield r


@pytest.fixture
def device_env(kvs: LocalKvs) -> dict[str, str]:
    """Environment of a device process pointed at ``kvs`` (no other AWS settings leak in)."""
    return process_env(kvs)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures tests recorded with ``record_property("measurement", text)`` (times to first
    frame...), listed once after the run: printed by the tests, they would land in the middle
    of pytest's progress line."""
    lines = [
        f"{value}  ({report.nodeid.rpartition('::')[2]})"
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "call"
        for name, value in report.user_properties
        if name == "measurement"
    ]
    if lines:
        terminalreporter.section("measurements")
        for line in lines:
            terminalreporter.write_line(line)
