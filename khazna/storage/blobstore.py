"""Content-addressed blob storage.

A blob is named by the SHA-256 of its bytes. Bytes are streamed to a temporary file,
hashed on the way, fsynced, and only then renamed into place, so a reader never sees a
partial blob and identical content is stored once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from khazna.checksums import READ_CHUNK, file_sha256
from khazna.errors import StorageFailure, TooLarge, Unprocessable


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when identical content was already stored


def human_bytes(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.4g} {unit}"
        n = n / 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"upload exceeds the hub's maximum upload size of {human_bytes(limit)} ({limit} bytes)",
        limit=limit,
    )


def check_sha256(sha256: str) -> str:
    """A blob name: 64 lower-case hex digits, nothing that could walk a path or a key."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class BlobWriter(Protocol):
    """Receives one blob's bytes; ``commit`` makes it visible, ``abort`` leaves no trace."""

    size: int

    def write(self, chunk: bytes) -> None: ...

    def commit(self, expected_sha256: str | None = None) -> StoredBlob: ...

    # Under a name the caller vouches for: an encrypting wrapper names ciphertext by the
    # SHA-256 of its plaintext.
    def commit_as(self, name: str) -> StoredBlob: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """Local disk (LocalBlobStore) or an S3 bucket (khazna.storage.s3.S3BlobStore)."""

    # An fsspec filesystem DuckDB reads ``url_of`` through; None for plain local paths.
    filesystem: Any

    # hashed=False: the writer skips hashing, for callers that name blobs with commit_as.
    def writer(self, max_bytes: int, *, hashed: bool = True) -> BlobWriter: ...

    def link_file(self, path: Path, sha256: str, size: int) -> StoredBlob: ...

    def place(self, tmp_path: Path, sha256: str, size: int) -> StoredBlob: ...

    def local_file(self, sha256: str, work_dir: Path) -> Path: ...

    def url_of(self, sha256: str) -> str: ...

    def clear_stale_temporaries(self) -> int: ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]: ...

    def rehash(self, sha256: str) -> str: ...

    def iter_hashes(self) -> Iterator[str]: ...


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# An upload is flushed to disk in steps of this size while it arrives (see _StepFlush).
FLUSH_STEP = 32 << 20


class _StepFlush:
    """Flushes a file that is being written to disk, in a thread of its own, each time
    ``step`` more bytes were written: the fsync that completes the file then finds little
    left to write. For a 465 MB upload here, it took 0.8-0.9 s after the last byte.

    The thread works on a duplicate of the file descriptor, closed by the thread itself, so
    the writer may close its file at any time; ``stop`` waits for a flush under way.
    """

    def __init__(self, fd: int, step: int | None = None) -> None:
        self._fd = fd
        self._step = FLUSH_STEP if step is None else step
        self._asked = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def wrote(self, size: int) -> None:
        """``size`` bytes of the file are written (all of them so far)."""
        if size - self._asked < self._step or self._stopping:
            return
        self._asked = size
        if self._thread is None:
            fd = os.dup(self._fd)
            self._thread = threading.Thread(
                target=self._run, args=(fd,), name="khazna-flush", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def stop(self, wait: bool = True) -> None:
        self._stopping = True
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()

    def _run(self, fd: int) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                os.fdatasync(fd)
        except OSError:
            return  # the final fsync reports what went wrong
        finally:
            os.close(fd)


class LocalFileWriter:
    """Streams into ``tmp_dir`` and renames into the blob tree on commit."""

    def __init__(self, store: LocalBlobStore, max_bytes: int, hashed: bool = True) -> None:
        self._store = store
        self._max = max_bytes
        # Not hashed when the caller names the blob itself (commit_as) and hashes elsewhere.
        self._hash = hashlib.sha256() if hashed else None
        self.size = 0
        self._path = store.tmp_dir / f"upload-{uuid.uuid4().hex}.part"
        try:
            self._file = open(self._path, "xb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise StorageFailure(f"cannot open a temporary file for the upload: {exc}") from exc
        # Held while writing, so clear_stale_temporaries (in any process) leaves it alone.
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._done = False
        # Told of each chunk once it is in the file (for readers of the file as it grows).
        self.on_write: Callable[[int], None] | None = None
        self._flush = _StepFlush(self._file.fileno())

    @property
    def temp_path(self) -> Path:
        """Where the upload is being written (until commit renames it into the store)."""
        return self._path

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self._max:
            self.abort()
            raise too_large(self._max)
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            raise StorageFailure(f"could not write the upload to storage: {exc}") from exc
        if self._hash is not None:
            self._hash.update(chunk)
        self.size += len(chunk)
        self._flush.wrote(self.size)
        if self.on_write is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.abort()
                raise StorageFailure(f"could not write the upload to storage: {exc}") from exc
            self.on_write(len(chunk))

    def commit(self, expected_sha256: str | None = None) -> StoredBlob:
        if self._hash is None:
            raise RuntimeError("a writer made with hashed=False commits with commit_as")
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            self.abort()
            raise Unprocessable(
                f"content SHA-256 is {digest}, but the client announced {expected_sha256}"
            )
        return self.commit_as(digest)

    def commit_as(self, name: str) -> StoredBlob:
        check_sha256(name)
        try:
            self._file.flush()
            self._flush.stop()
            os.fsync(self._file.fileno())
            self._file.close()
            stored = self._store.place(self._path, name, self.size)
        except OSError as exc:
            self.abort()
            raise StorageFailure(f"could not store the upload: {exc}") from exc
        self._done = True
        return stored

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._flush.stop(wait=False)  # its own descriptor: the file may close meanwhile
        with contextlib.suppress(OSError):
            self._file.close()
        self._path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs under ``root/ab/cd/abcd...``; temporary files under ``tmp_dir``."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        root.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    filesystem = None  # DuckDB reads local files itself

    def path_of(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def url_of(self, sha256: str) -> str:
        return str(self.path_of(sha256))

    def local_file(self, sha256: str, work_dir: Path) -> Path:
        """The blob itself: it is a local file already, no copy needed."""
        return self.path_of(sha256)

    def writer(self, max_bytes: int, *, hashed: bool = True) -> LocalFileWriter:
        return LocalFileWriter(self, max_bytes, hashed)

    def place(self, tmp_path: Path, sha256: str, size: int) -> StoredBlob:
        """Move a complete file into place under its hash.

        The file is flushed to disk first (a no-op for an upload, which its writer flushed):
        files that tools wrote, such as a table's Parquet, are not, and a crash must not
        leave a name whose content never reached the disk.
        """
        target = self.path_of(sha256)
        if target.exists():
            tmp_path.unlink(missing_ok=True)
            return StoredBlob(sha256, size, created=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)
        return StoredBlob(sha256, size, created=True)

    def clear_stale_temporaries(self) -> int:
        """Remove temporary files no writer holds (left by a killed process); returns how many."""
        removed = 0
        for part in self.tmp_dir.glob("upload-*.part"):
            try:
                with open(part, "rb") as f:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    part.unlink()
                    removed += 1
            except (BlockingIOError, FileNotFoundError):
                continue  # being written, or already gone
        return removed

    def link_file(self, path: Path, sha256: str, size: int) -> StoredBlob:
        """Store a finished, fsynced local file whose hash is known; the file stays."""
        target = self.path_of(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Same file system (both under the hub folder): a hard link costs no copy.
            os.link(path, target)
        except FileExistsError:
            return StoredBlob(sha256, size, created=False)
        _fsync(target.parent)
        return StoredBlob(sha256, size, created=True)

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path_of(sha256).stat().st_size

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        with open(self.path_of(sha256), "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(READ_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    def rehash(self, sha256: str) -> str:
        return file_sha256(self.path_of(sha256))

    def iter_hashes(self) -> Iterator[str]:
        for p in sorted(self.root.glob("??/??/*")):
            if p.is_file():
                yield p.name
