"""Early ingest: convert a CSV upload to Parquet while its bytes are still arriving.

A one-shot upload of a large CSV is written to a temporary file, then stored, then
ingested by a job. Here the ingest starts as soon as the file's head is on disk, and
runs beside the upload: DuckDB reads the temporary file through ``ArrivingFileSystem``,
whose reads wait until the upload has written the bytes they ask for. When the job for
that content comes, it takes the finished result instead of converting again
(``Tables.run_ingest``). Over a network the conversion is then mostly done when the
last byte arrives.

The result is the one ``ingest`` gives on the stored file, not an approximation: the same
function reads the same bytes, in the same order, with the same options; the Python side
reads only the head (on disk before the start) until DuckDB has read the whole file, and
waits for the rest where it would read further (``Arriving.wait``). Anything unusual
(the upload fails, a non-UTF-8 file, an error of any kind) only loses the head start: the
job then converts the stored file as it would have anyway.

At most ``slots`` run at once in a process (each holds a DuckDB with the ingest memory
limit); an upload that finds them taken is ingested by its job, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from khazna.storage.readonly import ReadOnlyFileSystem
from khazna.tables import ingest as ingesting

log = logging.getLogger(__name__)

PROTOCOL = "khazna-arriving"
# Ingest starts once this much has arrived: well past what the Python side reads of the
# head (64 KiB to check the text, 4 MiB for line ends, the header row, at most one line
# of 8 MiB) and the sniffer's sample. Smaller uploads are quick to ingest anyway.
START_BYTES = 24 << 20
READ_BLOCK = 4 << 20
# A result nobody claims (its job ran in another process, or the version was refused)
# is dropped after this long.
UNCLAIMED_S = 600.0


class UploadGone(OSError):
    """The upload will not complete: the early ingest stops."""


class Arrival:
    """How many bytes of one upload are on disk; readers wait on it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._written = 0
        self._complete = False
        self._failed: str | None = None
        self._cond = threading.Condition()

    @property
    def written(self) -> int:
        return self._written

    def advance(self, n: int) -> None:
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def complete(self) -> None:
        with self._cond:
            if self._written != self.size:
                self._failed = f"{self._written} bytes arrived, {self.size} were announced"
            else:
                self._complete = True
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            if not self._complete:
                self._failed = why
            self._cond.notify_all()

    def wait_for(self, end: int) -> None:
        """Until bytes [0, end) are on disk; UploadGone if they never will be."""
        end = min(end, self.size)
        with self._cond:
            while self._written < end and self._failed is None:
                self._cond.wait()
            if self._written < end:
                raise UploadGone(f"the upload stopped: {self._failed}")

    def wait_complete(self) -> None:
        with self._cond:
            while not self._complete and self._failed is None:
                self._cond.wait()
            if not self._complete:
                raise UploadGone(f"the upload stopped: {self._failed}")


class ArrivingFileSystem(ReadOnlyFileSystem):
    """One file, ``khazna-arriving://<name>``, read while it is written: each read waits
    for its bytes. Registered on the early ingest's own DuckDB connection only."""

    protocol = (PROTOCOL,)
    read_block = READ_BLOCK
    refusal = "an arriving upload is read-only"

    def __init__(self, name: str, local_path: Path, arrival: Arrival) -> None:
        super().__init__()
        self.name = name
        self.local_path = local_path
        self.arrival = arrival

    @property
    def url(self) -> str:
        return f"{PROTOCOL}://{self.name}"

    def _check(self, path: str) -> str:
        name = str(self._strip_protocol(path)).strip("/")
        if name != self.name:
            raise FileNotFoundError(path)
        return name

    def fetch(self, path: str, start: int, end: int) -> bytes:
        self._check(path)
        self.arrival.wait_for(end)
        with open(self.local_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"name": self._check(path), "size": self.arrival.size, "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        info = self.info(path)
        return [info] if detail else [info["name"]]


class EarlyIngest:
    """One upload's ingest, started while it arrives."""

    def __init__(
        self,
        temp_path: Path,
        size: int,
        file_name: str,
        options: ingesting.IngestOptions,
        work_dir: Path,
        run: Callable[..., ingesting.IngestResult],
    ) -> None:
        self.arrival = Arrival(size)
        self.work_dir = work_dir
        self.key: tuple[str, str] | None = None  # (source sha256, options key) once known
        self.finished_at: float | None = None
        self.started_at_bytes: int | None = None  # on disk when the conversion began
        self._future: Future[ingesting.IngestResult] = Future()
        self._con: Any = None
        self._lock = threading.Lock()
        self._cancelled = False
        work_dir.mkdir(parents=True)
        # A second name for the upload's file: it survives the rename into the store (or
        # the removal of a duplicate), and goes with the work folder.
        self.source = work_dir / "source"
        os.link(temp_path, self.source)
        self._fs = ArrivingFileSystem(uuid.uuid4().hex, self.source, self.arrival)
        self._thread = threading.Thread(
            target=self._run,
            args=(file_name, options, run),
            name="khazna-early-ingest",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        file_name: str,
        options: ingesting.IngestOptions,
        run: Callable[..., ingesting.IngestResult],
    ) -> None:
        try:
            self.arrival.wait_for(START_BYTES)
            self.started_at_bytes = self.arrival.written
            arriving = ingesting.Arriving(
                self._fs.url, self._fs, self.arrival.size, self.arrival.wait_complete
            )
            result = run(
                self.source,
                file_name,
                self.work_dir / "ingest",
                options,
                arriving=arriving,
                on_connect=self._connected,
            )
            # The bytes read were the upload's only if the upload completed as announced.
            self.arrival.wait_complete()
        except BaseException as exc:  # any failure means: convert normally
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)
        finally:
            with self._lock:
                self._con = None
            self.finished_at = time.monotonic()

    def _connected(self, con: Any) -> None:
        with self._lock:
            self._con = con
            cancelled = self._cancelled
        if cancelled:
            raise UploadGone("cancelled")

    def wrote(self, n: int) -> None:
        self.arrival.advance(n)

    def complete(self) -> None:
        self.arrival.complete()

    def cancel(self, why: str) -> None:
        """Stop (the upload failed, or nobody will claim the result) and remove its files
        once the thread has let go of them."""
        self.arrival.fail(why)
        with self._lock:
            self._cancelled = True
            if self._con is not None:
                with contextlib.suppress(Exception):
                    self._con.interrupt()
        self._future.add_done_callback(lambda _: self.remove())

    def result(self) -> ingesting.IngestResult | None:
        """The finished ingest, waiting for it; None if it failed (convert normally)."""
        try:
            return self._future.result()
        except BaseException as exc:
            log.info("early ingest of %s not used: %s", self.key, exc)
            return None

    @property
    def done(self) -> bool:
        return self._future.done()

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class EarlyIngests:
    """The early ingests of one process, by (source sha256, options key) once stored."""

    def __init__(
        self,
        work_dir: Path,
        run: Callable[..., ingesting.IngestResult],
        min_bytes: int,
        slots: int = 1,
    ) -> None:
        self.work_dir = work_dir
        self._run = run
        self.min_bytes = min_bytes
        self._slots = slots
        self._lock = threading.Lock()
        self._running: list[EarlyIngest] = []
        self._by_key: dict[tuple[str, str], EarlyIngest] = {}

    def start(
        self,
        temp_path: Path | None,
        size: int | None,
        file_name: str,
        options: dict[str, Any],
    ) -> EarlyIngest | None:
        """An early ingest of the upload being written at ``temp_path``, or None when it
        would not help (smaller than ``min_bytes``, not CSV, encoding declared), when the
        store writes no local file (``temp_path`` None), or when no slot is free."""
        if (
            temp_path is None
            or size is None
            or self.min_bytes <= 0
            or size < self.min_bytes
            or ingesting._kind(file_name) != "csv"
            or options.get("encoding")
        ):
            return None
        with self._lock:
            self._expire()
            if sum(not e.done for e in self._running) >= self._slots:
                return None
            try:
                early = EarlyIngest(
                    temp_path,
                    size,
                    file_name,
                    ingesting.IngestOptions(**options),
                    self.work_dir / f"early-{uuid.uuid4().hex}",
                    self._run,
                )
            except OSError as exc:  # e.g. the temporary folder on another file system
                log.info("no early ingest for %s: %s", file_name, exc)
                return None
            self._running.append(early)
            return early

    def stored(self, early: EarlyIngest, sha256: str, options_key: str) -> None:
        """The upload is stored: its job may now claim the result."""
        with self._lock:
            early.key = (sha256, options_key)
            previous = self._by_key.get(early.key)
            self._by_key[early.key] = early
        if previous is not None and previous is not early:
            self._drop(previous, "a newer upload of the same content")

    def claim(self, sha256: str, options_key: str) -> EarlyIngest | None:
        with self._lock:
            early = self._by_key.pop((sha256, options_key), None)
            if early is not None:
                self._running.remove(early)
            return early

    def drop(self, early: EarlyIngest, why: str) -> None:
        """Nobody will claim it (no job was queued, or the version was refused)."""
        with self._lock:
            if early.key is not None and self._by_key.get(early.key) is early:
                del self._by_key[early.key]
        self._drop(early, why)

    def _drop(self, early: EarlyIngest, why: str) -> None:
        with self._lock:
            if early in self._running:
                self._running.remove(early)
        early.cancel(why)

    def _expire(self) -> None:
        now = time.monotonic()
        for early in list(self._running):
            if early.finished_at is not None and now - early.finished_at > UNCLAIMED_S:
                if early.key is not None:
                    self._by_key.pop(early.key, None)
                self._running.remove(early)
                early.cancel("not claimed")

    def clear_stale(self, everything: bool) -> int:
        """Remove the work folders of early ingests a killed process left; returns how many.
        ``everything`` when no other process shares the folder (the embedded hub), else
        those untouched for twice the unclaimed delay."""
        removed = 0
        cutoff = time.time() - 2 * UNCLAIMED_S
        for folder in self.work_dir.glob("early-*"):
            with contextlib.suppress(OSError):
                if everything or folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)
                    removed += 1
        return removed

    def close(self) -> None:
        with self._lock:
            running, self._running, self._by_key = self._running, [], {}
        for early in running:
            early.cancel("the hub is stopping")
