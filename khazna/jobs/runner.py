"""Runs queued jobs in a background thread of the hub process."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from khazna.jobs.queue import Job, JobQueue, PermanentFailure

log = logging.getLogger("khazna.jobs")

Handler = Callable[[Job], dict[str, Any]]

# After a wake-up that finds no job, look again this often, this many times (0.5 s).
RECHECK_S = 0.01
RECHECKS = 50


class JobRunner:
    def __init__(
        self,
        queue: JobQueue,
        handlers: dict[str, Handler],
        heartbeat_s: float = 5.0,
        idle_s: float = 1.0,
    ) -> None:
        self.queue = queue
        self.handlers = handlers
        self.heartbeat_s = heartbeat_s
        self.idle_s = idle_s
        self.worker = f"worker-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.worker, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_pending(self) -> int:
        """Run every claimable job now, in this thread; returns how many ran."""
        ran = 0
        while (job := self.queue.claim(self.worker)) is not None:
            self._run(job)
            ran += 1
        return ran

    def _loop(self) -> None:
        recheck = 0  # looks left after a wake-up that found nothing
        while not self._stop.is_set():
            try:
                job = self.queue.claim(self.worker)
            except Exception:
                log.exception("could not claim a job")
                job = None
            if job is not None:
                self._run(job)
                continue
            if recheck > 0:
                # Woken by a job queued inside a transaction that had not committed yet
                # (PostgreSQL's claim skips what it cannot see): look again shortly rather
                # than sleep for the idle delay.
                recheck -= 1
                self._stop.wait(RECHECK_S)
                continue
            if self.queue.wake.wait(self.idle_s):
                recheck = RECHECKS
            self.queue.wake.clear()

    def _run(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            self.queue.fail(job.id, f"no handler for jobs of kind {job.kind!r}", retry=False)
            return
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job.id, done), daemon=True)
        beat.start()
        try:
            result = handler(job)
        except PermanentFailure as exc:
            self.queue.fail(job.id, str(exc), retry=False)
        except Exception as exc:
            log.exception("job %s (%s) failed on attempt %s", job.id, job.kind, job.attempts)
            self.queue.fail(
                job.id,
                f"{type(exc).__name__}: {exc}",
                retry=job.attempts < job.max_attempts,
                attempts=job.attempts,
            )
        else:
            self.queue.finish(job.id, result)
        finally:
            done.set()
            beat.join()

    def _beat(self, job_id: int, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.queue.heartbeat(job_id, self.worker)
            except Exception:
                log.exception("heartbeat of job %s failed", job_id)
