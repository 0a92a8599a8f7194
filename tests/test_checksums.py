"""GrowingFileHash: the SHA-256 of a file read while another writer creates it."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from khazna.checksums import READ_CHUNK, GrowingFileHash, file_sha256


def write_slowly(path: Path, parts: list[bytes], pause_s: float = 0.01) -> None:
    time.sleep(pause_s)  # the hash starts before the file exists
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)
            f.flush()
            time.sleep(pause_s)


def test_a_file_written_in_parts_is_hashed_as_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    parts = [os.urandom(n) for n in (1, 3 << 20, 70_000, 5 << 20, 17)]
    with GrowingFileHash(path, poll_s=0.001) as growing:
        writer = threading.Thread(target=write_slowly, args=(path, parts))
        writer.start()
        writer.join()
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    assert growing.sha256() == expected == file_sha256(path)


def test_a_file_changed_or_replaced_afterwards_gets_no_hash(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    with GrowingFileHash(path) as growing:
        write_slowly(path, [b"PAR1", b"rows"])
    assert growing.sha256() == hashlib.sha256(b"PAR1rows").hexdigest()
    with open(path, "ab") as f:  # more bytes than were read
        f.write(b"!")
    assert growing.sha256() is None

    with GrowingFileHash(path) as replaced:
        pass  # the old file was all read...
    other = tmp_path / "other"
    other.write_bytes(b"PAR1rows!")
    other.replace(path)  # ...and another took its name, same size
    assert replaced.sha256() is None


def test_a_file_that_never_appears_gets_no_hash(tmp_path: Path) -> None:
    with GrowingFileHash(tmp_path / "missing") as growing:
        pass
    assert growing.sha256() is None


def test_the_file_is_flushed_to_disk_in_steps_as_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "table.parquet"
    content = os.urandom(READ_CHUNK * 8 + 1000)
    path.write_bytes(content)  # all there: the reads are READ_CHUNK each, then the rest
    flushed_at: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed_at.append(os.lseek(fd, 0, os.SEEK_CUR))  # how far the hash has read
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with GrowingFileHash(path, flush_every=3 * READ_CHUNK) as growing:
        pass
    assert growing.sha256() == hashlib.sha256(content).hexdigest()
    assert flushed_at == [3 * READ_CHUNK, 6 * READ_CHUNK]
    flushed_at.clear()
    with GrowingFileHash(path) as unflushed:  # by default it only hashes
        pass
    assert unflushed.sha256() == growing.sha256() and flushed_at == []
