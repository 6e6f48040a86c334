"""``kvs-peer record`` as a user runs it: settings from the environment, stopping, bad configs.

Real processes against the local emulator; S3 is an address nothing listens on (these tests
look at the spool, not the bucket).
"""

from __future__ import annotations

import asyncio
import fcntl
import signal
from pathlib import Path

import pytest
from record_support import RecorderProcess, mastered_channels, write_config
from support import EXIT_USAGE, MS, assert_one_error, process_env, run_kvs_peer, wait_until

pytestmark = pytest.mark.slow

NO_S3 = "http://127.0.0.1:9"
"""Nothing listens there: uploads fail and are retried, segments stay in the spool."""


def finished_segments(spool: Path, channel: str) -> list[Path]:
    return sorted((spool / channel).glob("*.mkv"))


def workers_writing(spool: Path) -> bool:
    """Whether a worker process holds the spool's writer lock (it is past its start-up)."""
    try:
        with open(spool / ".writers", "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def assert_clean_stop(code: int, log: str) -> None:
    assert "Fatal Python error" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert code == 0, log[-3000:]  # README: Ctrl+C / SIGTERM is exit code 0


async def test_endpoint_from_the_environment_reaches_the_workers(
    tmp_path: Path, kvs_emulator, kvs_master
) -> None:
    # The endpoint only in KVS_PEER_ENDPOINT_URL (as `kvs-peer local --env-file` hands it
    # out): neither the config file nor boto3's own variable names it.
    [channel] = await mastered_channels(kvs_emulator, kvs_master, "env", 1)
    config = write_config(
        tmp_path, kvs_emulator, channels=[channel], s3_url=NO_S3, segment_seconds=1,
        endpoint_in_file=False,
    )  # fmt: skip
    assert "endpoint_url" not in config.read_text().split("[s3]")[0]
    env = process_env(kvs_emulator)
    del env["AWS_ENDPOINT_URL_KINESIS_VIDEO"]
    assert env["KVS_PEER_ENDPOINT_URL"] == kvs_emulator.endpoint_url
    # Nothing uploads the segments (no S3): stop without waiting for that.
    recorder = RecorderProcess(config, env, "--drain-timeout", "0.1")
    await recorder.start()
    try:
        await wait_until(
            lambda: finished_segments(tmp_path / "spool", channel),
            20_000 * MS,
            "a recorded segment (the worker reached the emulator)",
        )
        recorder.signal_all(signal.SIGINT)  # Ctrl+C in a terminal: every process of the group
    finally:
        code = await recorder.stop()
    log = recorder.text()
    assert "amazonaws.com" not in log, log[-3000:]
    assert_clean_stop(code, log)


@pytest.mark.parametrize(
    "how",
    [
        "ctrl+c",  # SIGINT to the whole process group
        "sigint",  # SIGINT to the supervisor alone (kill -INT)
        "sigterm",  # systemd, Kubernetes
    ],
)
async def test_stopping_never_crashes_at_shutdown(tmp_path: Path, kvs_emulator, how: str) -> None:
    # The workers wait for their stdin (the supervisor's pipe) to end while they record: a
    # thread blocked reading it used to abort the interpreter at exit ("Fatal Python error:
    # _enter_buffered_busy"). Two workers, so two processes exit per stop.
    channels = [f"stop-{how.replace('+', '')}-{i}" for i in range(2)]
    for name in channels:
        kvs_emulator.create_channel(name)
    config = write_config(
        tmp_path, kvs_emulator, channels=channels, s3_url=NO_S3, segment_seconds=5, processes=2
    )
    recorder = RecorderProcess(config, process_env(kvs_emulator))
    await recorder.start()
    try:
        await wait_until(
            lambda: len(recorder.worker_pids()) == 2 and workers_writing(tmp_path / "spool"),
            20_000 * MS,
            "two worker processes recording",
        )
        await asyncio.sleep(500 * MS)  # both past start-up, not only the first
        if how == "ctrl+c":
            recorder.signal_all(signal.SIGINT)
        else:
            assert recorder.process is not None
            recorder.process.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        code = await recorder.wait_all_ended(30_000 * MS)
    finally:
        await recorder.stop()
    assert_clean_stop(code, recorder.text())


async def test_workers_stop_when_the_supervisor_dies(tmp_path: Path, kvs_emulator) -> None:
    # SIGKILL gives the supervisor no chance to stop its workers: the end of their stdin does.
    channel = "orphan-cam"
    kvs_emulator.create_channel(channel)
    config = write_config(
        tmp_path, kvs_emulator, channels=[channel], s3_url=NO_S3, segment_seconds=5
    )
    recorder = RecorderProcess(config, process_env(kvs_emulator))
    await recorder.start()
    assert recorder.process is not None
    try:
        await wait_until(
            lambda: recorder.worker_pids() and workers_writing(tmp_path / "spool"),
            20_000 * MS,
            "a worker process recording",
        )
        recorder.process.kill()  # the supervisor alone
        assert await recorder.wait_all_ended(20_000 * MS) == -signal.SIGKILL
        assert not workers_writing(tmp_path / "spool")
    finally:
        await recorder.stop()
    assert "Fatal Python error" not in recorder.text(), recorder.text()[-3000:]


async def test_a_bad_config_is_a_usage_error_as_for_master(tmp_path: Path, kvs_emulator) -> None:
    """``--config`` mistakes exit with the same code in ``master``, ``signer`` and ``record``."""
    unknown_key = tmp_path / "typo.toml"
    unknown_key.write_text('chanels = ["garage"]\n')
    missing = tmp_path / "missing.toml"
    env = process_env(kvs_emulator)
    runs = {
        (command, path.name): run_kvs_peer(command, "--config", str(path), env=env)
        for command in ("master", "signer", "record")
        for path in (unknown_key, missing)
    }
    results = dict(zip(runs, await asyncio.gather(*runs.values()), strict=True))
    for (command, name), (code, _, err) in results.items():
        phrase = "chanels" if name == "typo.toml" else "not found"
        line = assert_one_error(code, err, EXIT_USAGE, f"kvs-peer {command}: error:", phrase)
        assert name in line
    good = write_config(tmp_path, kvs_emulator, channels=["a"], s3_url=NO_S3, segment_seconds=5)
    code, _, err = await run_kvs_peer("record", "--config", str(good), "--shard", "3/3", env=env)
    assert_one_error(code, err, EXIT_USAGE, "shard index 3")


async def test_a_bad_endpoint_in_the_environment_is_named(tmp_path: Path, kvs_emulator) -> None:
    config = write_config(
        tmp_path, kvs_emulator, channels=["garage"], s3_url=NO_S3, segment_seconds=5,
        endpoint_in_file=False,
    )  # fmt: skip
    env = process_env(kvs_emulator, KVS_PEER_ENDPOINT_URL="127.0.0.1:4577")
    code, _, err = await run_kvs_peer("record", "--config", str(config), "--plan", env=env)
    assert_one_error(code, err, EXIT_USAGE, "KVS_PEER_ENDPOINT_URL", "http://")
