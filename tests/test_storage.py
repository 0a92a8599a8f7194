"""The blob store: content-addressed, whole or nothing, stored once."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from khazna.errors import TooLarge, Unprocessable
from khazna.storage import blobstore
from khazna.storage.blobstore import LocalBlobStore


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", tmp_path / "tmp")


def put(store: LocalBlobStore, *chunks: bytes, limit: int = 10**9):
    writer = store.writer(limit)
    for c in chunks:
        writer.write(c)
    return writer.commit()


def test_a_blob_is_named_by_its_sha256_and_placed_under_it(store: LocalBlobStore) -> None:
    blob = put(store, b"code,name\n", b"01,Tanger\n")
    digest = hashlib.sha256(b"code,name\n01,Tanger\n").hexdigest()
    assert (blob.sha256, blob.size, blob.created) == (digest, 20, True)
    path = store.root / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == b"code,name\n01,Tanger\n"
    assert list(store.iter_hashes()) == [digest]
    assert list(store.tmp_dir.iterdir()) == []


def test_identical_content_is_stored_once(store: LocalBlobStore) -> None:
    first = put(store, b"same bytes")
    second = put(store, b"same ", b"bytes")
    assert first.sha256 == second.sha256
    assert (first.created, second.created) == (True, False)
    assert len(list(store.iter_hashes())) == 1
    assert list(store.tmp_dir.iterdir()) == []


def test_crossing_the_size_limit_aborts_and_leaves_nothing(store: LocalBlobStore) -> None:
    writer = store.writer(10)
    writer.write(b"12345")
    with pytest.raises(TooLarge) as refused:
        writer.write(b"678901")
    assert refused.value.message == (
        "upload exceeds the hub's maximum upload size of 10 bytes (10 bytes)"
    )
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.iter_hashes()) == []


def test_an_announced_hash_that_does_not_match_stores_nothing(store: LocalBlobStore) -> None:
    writer = store.writer(100)
    writer.write(b"abc")
    with pytest.raises(Unprocessable) as refused:
        writer.commit(expected_sha256="0" * 64)
    assert hashlib.sha256(b"abc").hexdigest() in refused.value.message
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.iter_hashes()) == []


def test_ranges_read_exact_slices(store: LocalBlobStore) -> None:
    data = bytes(range(256)) * 10_000  # 2.56 MB, several read chunks
    blob = put(store, data)
    assert b"".join(store.read_range(blob.sha256, 0, 10)) == data[:10]
    assert (
        b"".join(store.read_range(blob.sha256, 1_500_000, 1_200_000)) == data[1_500_000:2_700_000]
    )
    assert b"".join(store.read_range(blob.sha256, len(data) - 3, 3)) == data[-3:]


def test_rehash_reveals_a_damaged_blob(store: LocalBlobStore) -> None:
    blob = put(store, b"original")
    assert store.rehash(blob.sha256) == blob.sha256
    store.path_of(blob.sha256).write_bytes(b"tampered")
    assert store.rehash(blob.sha256) == hashlib.sha256(b"tampered").hexdigest()


def test_only_hex_digests_name_blobs(store: LocalBlobStore) -> None:
    with pytest.raises(ValueError):
        store.path_of("../../etc/passwd")


def test_cleanup_removes_what_a_dead_writer_left_but_not_a_live_upload(
    store: LocalBlobStore,
) -> None:
    abandoned = store.tmp_dir / "upload-dead.part"
    abandoned.write_bytes(b"half of something")
    live = store.writer(100)
    live.write(b"still arriving")
    assert store.clear_stale_temporaries() == 1
    assert not abandoned.exists()
    assert len(list(store.tmp_dir.iterdir())) == 1
    blob = live.commit()
    assert store.rehash(blob.sha256) == hashlib.sha256(b"still arriving").hexdigest()


def test_a_placed_file_reaches_the_disk_before_it_gets_its_name(
    store: LocalBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A derived file (a table's Parquet, a COG) is written by a tool that does not flush it.
    # place() flushes it, then renames it, then flushes the folder: a crash leaves either no
    # name or a name with its content.
    made = tmp_path / "table.parquet"
    made.write_bytes(b"PAR1 derived PAR1")
    digest = hashlib.sha256(made.read_bytes()).hexdigest()
    target = store.root / digest[:2] / digest[2:4] / digest
    flushed: list[tuple[int, bool]] = []  # (inode, whether the name existed yet)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)  # the real flush; the test only watches the order
        flushed.append((os.fstat(fd).st_ino, target.exists()))

    monkeypatch.setattr(os, "fsync", fsync)
    inode = made.stat().st_ino
    blob = store.place(made, digest, made.stat().st_size)
    assert (blob.sha256, blob.size, blob.created) == (digest, 17, True)
    assert target.read_bytes() == b"PAR1 derived PAR1" and not made.exists()
    assert flushed == [(inode, False), (target.parent.stat().st_ino, True)]


def test_an_upload_is_flushed_to_disk_in_steps_while_it_arrives(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So that the fsync of commit finds little left: it took 0.8 s after a 465 MB upload.
    monkeypatch.setattr(blobstore, "FLUSH_STEP", 1000)
    flushed: list[int] = []  # the file's size on disk at each flush
    done = threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        flushed.append(os.fstat(fd).st_size)
        done.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    writer = store.writer(10**6)
    for size in (600, 600, 1000, 300, 2500):  # steps are passed at 1200, 2200 and 5000
        writer.write(b"x" * size)
        writer._file.flush()  # type: ignore[attr-defined]
        if writer.size in (1200, 2200, 5000):
            assert done.wait(10)
            done.clear()
    blob = writer.commit()
    assert flushed == [1200, 2200, 5000]
    assert (blob.size, store.rehash(blob.sha256)) == (5000, blob.sha256)
    # The flushing thread is gone, and with it its own descriptor.
    assert not [t for t in threading.enumerate() if t.name == "khazna-flush"]

    aborted = store.writer(10**6)
    aborted.write(b"y" * 1500)
    aborted.abort()  # does not wait for the flush, which has a descriptor of its own
    assert list(store.tmp_dir.iterdir()) == []
