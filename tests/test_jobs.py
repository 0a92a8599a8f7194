"""The job queue: claimed once, taken up when a worker dies, tried a bounded number of times."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from sqlalchemy import update

from khazna import db
from khazna.jobs import Job, JobQueue, JobRunner, PermanentFailure


def queue(tmp_path: Path, lease_s: float = 30.0, retry_backoff_s: float = 0.0) -> JobQueue:
    # The test's PostgreSQL database when the suite runs on one (tests/conftest.py).
    engine = db.make_engine(os.environ.get("KHAZNA_DATABASE_URL") or f"sqlite:///{tmp_path}/j.db")
    db.create_schema(engine)
    return JobQueue(engine, lease_s=lease_s, retry_backoff_s=retry_backoff_s)


def add(q: JobQueue, payload: dict, max_attempts: int = 3) -> int:
    with q.engine.begin() as conn:
        return q.enqueue(conn, "test", payload, max_attempts=max_attempts)


def test_jobs_are_claimed_oldest_first_and_only_once(tmp_path: Path) -> None:
    q = queue(tmp_path)
    first, second = add(q, {"n": 1}), add(q, {"n": 2})
    a, b = q.claim("worker-a"), q.claim("worker-b")
    assert (a.id, a.payload, a.attempts) == (first, {"n": 1}, 1)  # type: ignore[union-attr]
    assert (b.id, b.payload) == (second, {"n": 2})  # type: ignore[union-attr]
    assert q.claim("worker-c") is None
    assert q.get(first)["state"] == "running"


def test_a_job_whose_worker_stopped_beating_is_taken_up_again(tmp_path: Path) -> None:
    q = queue(tmp_path, lease_s=0.2)
    job_id = add(q, {"n": 1})
    assert q.claim("dead-worker") is not None
    assert q.claim("other") is None  # the lease still holds
    time.sleep(0.3)
    again = q.claim("other")
    assert again is not None and (again.id, again.attempts) == (job_id, 2)


def test_a_job_is_given_up_after_its_attempts(tmp_path: Path) -> None:
    q = queue(tmp_path, lease_s=0.05)
    job_id = add(q, {}, max_attempts=2)
    for _ in range(2):
        assert q.claim("crashing") is not None
        time.sleep(0.1)
    assert q.claim("crashing") is None
    job = q.get(job_id)
    assert (job["state"], job["attempts"], job["error"]) == (
        "failed",
        3,
        "gave up after 2 attempts",
    )


def test_the_runner_retries_errors_but_not_permanent_failures(tmp_path: Path) -> None:
    q = queue(tmp_path)
    calls: list[int] = []

    def flaky(job: Job) -> dict:
        calls.append(job.id)
        if job.payload["kind"] == "not-a-table":
            raise PermanentFailure("not a table: no columns")
        if job.attempts == 1:
            raise OSError("disk hiccup")
        return {"ok": job.attempts}

    runner = JobRunner(q, {"test": flaky})
    flaky_id = add(q, {"kind": "flaky"})
    bad_id = add(q, {"kind": "not-a-table"})
    assert runner.run_pending() == 3
    assert q.get(flaky_id) | {"created_at": None, "updated_at": None} == {
        "id": flaky_id,
        "kind": "test",
        "state": "done",
        "attempts": 2,
        "max_attempts": 3,
        "error": None,
        "result": {"ok": 2},
        "dataset_id": None,
        "file": None,
        "created_at": None,
        "updated_at": None,
    }
    bad = q.get(bad_id)
    assert (bad["state"], bad["attempts"], bad["error"]) == ("failed", 1, "not a table: no columns")
    # With no backoff the failed job is first in line again.
    assert calls == [flaky_id, flaky_id, bad_id]


def test_a_failed_attempt_waits_before_the_next(tmp_path: Path) -> None:
    q = queue(tmp_path, retry_backoff_s=0.3)
    job_id = add(q, {})
    job = q.claim("w")
    assert job is not None
    q.fail(job_id, "OSError: disk hiccup", retry=True, attempts=job.attempts)
    assert q.claim("w") is None  # not yet
    time.sleep(0.35)
    again = q.claim("w")
    assert again is not None and again.attempts == 2
    assert q.get(job_id)["error"] == "OSError: disk hiccup"


def test_a_restarted_hub_requeues_what_was_running(tmp_path: Path) -> None:
    q = queue(tmp_path)
    job_id = add(q, {})
    assert q.claim("killed-process") is not None
    # A long lease: only the restart can free it.
    with q.engine.begin() as conn:
        conn.execute(update(db.jobs).values(heartbeat_at=db.utcnow()))
    assert q.requeue_running() == 1
    again = q.claim("new-process")
    assert again is not None and (again.id, again.attempts) == (job_id, 2)


def test_a_job_queued_in_a_slow_transaction_runs_once_it_commits(tmp_path: Path) -> None:
    # Queuing wakes the idle runner before the transaction commits; on PostgreSQL its claim
    # cannot see the job yet. It looks again shortly instead of sleeping its idle delay.
    q = queue(tmp_path)
    ran = threading.Event()

    def handler(job: Job) -> dict:
        ran.set()
        return {"n": job.payload["n"]}

    runner = JobRunner(q, {"test": handler}, idle_s=60)
    runner.start()
    try:
        time.sleep(0.1)  # the runner is idle
        with q.engine.begin() as conn:
            job_id = q.enqueue(conn, "test", {"n": 7})
            time.sleep(0.3)
        assert ran.wait(10)  # not the 60 s idle delay
        deadline = time.monotonic() + 10
        while q.get(job_id)["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (q.get(job_id)["state"], q.get(job_id)["result"]) == ("done", {"n": 7})
    finally:
        runner.stop()


def test_a_watch_hears_when_another_thread_ends_the_job(tmp_path: Path) -> None:
    q = queue(tmp_path)
    job_id, other_id = add(q, {"n": 1}), add(q, {"n": 2})
    assert q.claim("w") is not None

    async def scenario() -> tuple[bool, bool, str]:
        async with q.watch(job_id) as watch, q.watch(other_id) as other:
            ender = threading.Timer(0.05, q.finish, (job_id, {"ok": True}))
            ender.start()
            heard = await watch.wait(30)  # woken by the end, long before 30 s
            ender.join()
            state = q.get(job_id)["state"]
            return heard, await other.wait(0.05), state

    assert asyncio.run(scenario()) == (True, False, "done")
    assert q._watches == {}  # nothing left behind once the requests are answered
