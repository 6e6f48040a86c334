"""The storage sessions' folder: a temporary one goes when the emulator stops, unless it holds
recordings; a folder the user gave is never removed. (The ``kvs-peer local`` process case is
in tests/emulator/test_emulator_restart.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from kvs_peer.emulator import EmulatorConfig, LocalKvs


async def test_an_empty_temporary_folder_goes_with_the_emulator() -> None:
    async with LocalKvs() as kvs:
        folder = kvs.storage.storage_dir
        assert folder.is_dir() and folder.name.startswith("kvs-peer-storage-")
        (folder / "cam-stream").mkdir()  # a stream folder whose session recorded nothing
    assert not folder.exists()


async def test_a_temporary_folder_with_recordings_is_kept() -> None:
    async with LocalKvs() as kvs:
        folder = kvs.storage.storage_dir
        (folder / "cam-stream").mkdir()
        (folder / "empty-stream").mkdir()
        recording = folder / "cam-stream" / "20260101T000000.000Z.mkv"
        recording.write_bytes(b"\x1a\x45\xdf\xa3")
    try:
        assert recording.read_bytes() == b"\x1a\x45\xdf\xa3"
        assert sorted(p.name for p in folder.iterdir()) == ["cam-stream"]
    finally:
        shutil.rmtree(folder)


async def test_a_folder_the_user_gave_stays_even_empty(tmp_path: Path) -> None:
    given = tmp_path / "recordings"
    async with LocalKvs(EmulatorConfig(storage_dir=given)) as kvs:
        assert kvs.storage.storage_dir == given
        given.mkdir()
        (given / "cam-stream").mkdir()
    assert sorted(p.name for p in given.iterdir()) == ["cam-stream"]
