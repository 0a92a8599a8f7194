"""A job queue in the metadata database.

A job is claimed with a lease: the worker refreshes ``heartbeat_at`` while it works. A job
whose worker died (its heartbeat is older than the lease) is claimed again, up to
``max_attempts``; a restart of the embedded hub requeues its running jobs at once.
On PostgreSQL, workers of several processes claim with ``FOR UPDATE SKIP LOCKED``; on
SQLite, where one writer runs at a time, a compare-and-set on the state suffices.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from khazna import db
from khazna.errors import NotFound


class PermanentFailure(Exception):
    """The job cannot succeed by trying again (e.g. the file is not a table)."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


class JobQueue:
    def __init__(self, engine: Engine, lease_s: float = 30.0, retry_backoff_s: float = 2.0) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_s)
        # A failed attempt n waits retry_backoff_s * 2**(n-1) before the next one.
        self.retry_backoff_s = retry_backoff_s
        # Set when a job is queued in this process, so an idle runner wakes at once.
        self.wake = threading.Event()
        self._watch_lock = threading.Lock()
        self._watches: dict[int, list[JobWatch]] = {}

    def enqueue(
        self,
        conn: Connection,
        kind: str,
        payload: dict[str, Any],
        *,
        dataset_id: int | None = None,
        file_name: str | None = None,
        max_attempts: int = 3,
    ) -> int:
        """Queue a job inside the caller's transaction: it exists iff the change does."""
        now = db.utcnow()
        job_id = conn.execute(
            insert(db.jobs).values(
                kind=kind,
                payload=payload,
                state="queued",
                attempts=0,
                max_attempts=max_attempts,
                dataset_id=dataset_id,
                file_name=file_name,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        self.wake.set()
        return int(job_id)

    def claim(self, worker: str) -> Job | None:
        """Take the oldest job that is queued, or whose worker stopped beating."""
        j = db.jobs
        now = db.utcnow()
        claimable = or_(
            and_(j.c.state == "queued", or_(j.c.run_after.is_(None), j.c.run_after <= now)),
            and_(j.c.state == "running", j.c.heartbeat_at < now - self.lease),
        )
        oldest = select(j.c.id, j.c.state, j.c.heartbeat_at).where(claimable).order_by(j.c.id)
        if self.engine.dialect.name == "postgresql":
            # Workers in other processes skip the row this one holds instead of waiting.
            oldest = oldest.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            while True:
                row = conn.execute(oldest.limit(1)).first()
                if row is None:
                    return None
                # Compare-and-set on the state we saw, so two workers never both win.
                taken = conn.execute(
                    update(j)
                    .where(
                        j.c.id == row.id,
                        j.c.state == row.state,
                        _same(j.c.heartbeat_at, row.heartbeat_at),
                    )
                    .values(
                        state="running",
                        worker=worker,
                        heartbeat_at=now,
                        attempts=j.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(j.c.id, j.c.kind, j.c.payload, j.c.attempts, j.c.max_attempts)
                ).first()
                if taken is None:
                    continue
                if taken.attempts > taken.max_attempts:
                    conn.execute(
                        update(j)
                        .where(j.c.id == taken.id)
                        .values(
                            state="failed",
                            updated_at=now,
                            error=f"gave up after {taken.max_attempts} attempts",
                        )
                    )
                    continue
                return Job(
                    int(taken.id),
                    str(taken.kind),
                    dict(taken.payload),
                    int(taken.attempts),
                    int(taken.max_attempts),
                )

    def heartbeat(self, job_id: int, worker: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(db.jobs)
                .where(db.jobs.c.id == job_id, db.jobs.c.worker == worker)
                .values(heartbeat_at=db.utcnow())
            )

    def finish(self, job_id: int, result: dict[str, Any]) -> None:
        self._end(job_id, state="done", result=result, error=None)

    def fail(self, job_id: int, error: str, *, retry: bool, attempts: int = 1) -> None:
        if retry:
            # Back in the queue after a pause; claim() gives up once attempts are used up.
            wait = timedelta(seconds=self.retry_backoff_s * 2 ** (attempts - 1))
            self._end(
                job_id, state="queued", result=None, error=error, run_after=db.utcnow() + wait
            )
        else:
            self._end(job_id, state="failed", result=None, error=error)

    def _end(
        self,
        job_id: int,
        *,
        state: str,
        result: dict[str, Any] | None,
        error: str | None,
        run_after: Any = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(db.jobs)
                .where(db.jobs.c.id == job_id)
                .values(
                    state=state,
                    result=result,
                    error=error,
                    worker=None,
                    run_after=run_after,
                    updated_at=db.utcnow(),
                )
            )
        # Committed: whoever waits on the job (GET /api/v1/jobs/{id}?wait=) reads it now.
        with self._watch_lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch.fire()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: int) -> AsyncIterator[JobWatch]:
        """Told when this process ends the job (done, failed, or queued for another try).

        Enter before reading the job's state, so that an end in between is not missed. A
        job that another process runs is not seen here: look again now and then.
        """
        watch = JobWatch(asyncio.get_running_loop())
        with self._watch_lock:
            self._watches.setdefault(job_id, []).append(watch)
        try:
            yield watch
        finally:
            with self._watch_lock:
                watches = self._watches.get(job_id, [])
                watches.remove(watch)
                if not watches:
                    del self._watches[job_id]

    def requeue_running(self) -> int:
        """At the start of an embedded hub, no other process can be running its jobs."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    update(db.jobs)
                    .where(db.jobs.c.state == "running")
                    .values(state="queued", worker=None, updated_at=db.utcnow())
                ).rowcount
            )

    def get(self, job_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return view(row)

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return len(
                conn.execute(
                    select(db.jobs.c.id).where(db.jobs.c.state.in_(("queued", "running")))
                ).all()
            )


class JobWatch:
    """Wakes a coroutine of ``loop`` from the thread that ends a job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def fire(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """True if the job ended within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        return self._event.is_set()


def view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "error": row.error,
        "result": row.result,
        "dataset_id": row.dataset_id,
        "file": row.file_name,
        "created_at": db.iso(row.created_at),
        "updated_at": db.iso(row.updated_at),
    }


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value
