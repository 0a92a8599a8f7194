"""What DuckDB's read-only views of the hub's files share.

DuckDB's wheel reads only local files by itself; the hub registers fsspec filesystems
(``register_filesystem``) for Parquet in S3, Parquet sealed with the operator's key, and a
CSV still arriving. Each answers reads of exact byte ranges and refuses writes; the first
two keep the ranges they were asked for, since DuckDB asks again for the same footer and
column chunks query after query and its own file cache does not cover a Python filesystem.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem  # type: ignore[import-untyped]

# Ranges kept per filesystem; one range at most a quarter of it.
READ_CACHE_BYTES = 256 * 1024 * 1024


class RangeCache:
    """Byte ranges as they were read, the least recently used out past ``capacity`` bytes."""

    def __init__(self, capacity: int = READ_CACHE_BYTES) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._ranges: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            if (hit := self._ranges.get(key)) is not None:
                self._ranges.move_to_end(key)
            return hit

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        with self._lock:
            if len(data) > self.capacity // 4 or key in self._ranges:
                return
            self._ranges[key] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, dropped = self._ranges.popitem(last=False)
                self._bytes -= len(dropped)


class _RangeFile(AbstractBufferedFile):  # type: ignore[misc]
    def _fetch_range(self, start: int, end: int) -> bytes:
        fs: ReadOnlyFileSystem = self.fs
        return fs.fetch(self.path, start, end)


class ReadOnlyFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Files opened for reading only, every read going to ``fetch`` with no read-ahead
    (DuckDB asks for exactly what it needs); ``info`` gives the size."""

    cachable = False  # one per store: fsspec's instance cache would share it across hubs
    read_block = 5 * 1024 * 1024  # what a buffered read asks ``fetch`` for at least
    refusal = "read-only"  # the message of the PermissionError a write gets

    def fetch(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file at ``path`` (its protocol stripped)."""
        raise NotImplementedError

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> _RangeFile:
        if mode != "rb":
            raise PermissionError(self.refusal)
        path = self._strip_protocol(path)
        size = self.info(path)["size"]
        return _RangeFile(
            self, path, mode, block_size=self.read_block, cache_type="none", size=size
        )
