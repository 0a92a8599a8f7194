"""SHA-256 of files, the hub's one notion of identity for bytes (server and client alike)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from io import BufferedReader
from pathlib import Path

READ_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    # file_digest reads into one reused buffer, without holding the GIL while it hashes.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class GrowingFileHash:
    """SHA-256 of a file another writer is creating, read in a thread as it grows.

    For a writer that only appends (DuckDB's Parquet writer), the hash is ready moments
    after the file is, instead of costing a read of the whole file then. Use as a context
    around the writing; ``sha256()`` afterwards gives the hash, or None when the file is not
    exactly what was read: it did not appear, was replaced or changed since. The caller
    then hashes the file itself.

    With ``flush_every`` (bytes), the thread also flushes the file to disk each time it has
    read that much more, so that the fsync the finished file gets (before it is stored) has
    little left to write: the disk works while the writer does, not after.
    """

    def __init__(self, path: Path, poll_s: float = 0.02, flush_every: int = 0) -> None:
        self.path = path
        self._poll_s = poll_s
        self._flush_every = flush_every
        self._written = threading.Event()  # the writer is done
        self._hash = hashlib.sha256()
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) once read
        self._thread = threading.Thread(target=self._follow, name="khazna-hash", daemon=True)

    def __enter__(self) -> GrowingFileHash:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._written.set()
        self._thread.join()

    def sha256(self) -> str | None:
        """The file's hash if it is still what was read (same file, size and mtime)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if self._seen != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return self._hash.hexdigest()

    def _follow(self) -> None:
        with contextlib.suppress(OSError):
            f = self._open()
            if f is None:
                return
            with f:
                buffer = bytearray(READ_CHUNK)
                view = memoryview(buffer)
                read = flushed = 0
                while True:
                    # Read after seeing "done": what was written before is then all there.
                    done = self._written.is_set()
                    n = f.readinto(buffer)
                    if n:
                        self._hash.update(view[:n])
                        read += n
                        if self._flush_every and read - flushed >= self._flush_every:
                            os.fdatasync(f.fileno())
                            flushed = read
                    elif done:
                        break
                    else:
                        self._written.wait(self._poll_s)
                st = os.fstat(f.fileno())
                if st.st_size == read:
                    self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _open(self) -> BufferedReader | None:
        while True:
            done = self._written.is_set()
            try:
                return open(self.path, "rb")
            except FileNotFoundError:
                if done:
                    return None
                self._written.wait(self._poll_s)
