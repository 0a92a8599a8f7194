"""Two hub processes sharing one PostgreSQL database (and one hub folder, standing for
shared storage, or with KHAZNA_TEST_STORAGE=s3 one SeaweedFS bucket) serve one hub: what
one writes the other reads, concurrent commits to one dataset make consecutive versions,
no job runs twice, and quotas hold across them."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

from khazna import db
from khazna.access.quotas import SharedQuotas
from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub
from khazna.jobs import Job, JobRunner
from tests.conftest import DATA, ON_POSTGRES, S3_MODE, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not ON_POSTGRES,
    reason="several hubs share a database only on PostgreSQL: set KHAZNA_TEST_DATABASE_URL",
)
ORG = "haut-commissariat"
SQL_NAME = "haut_commissariat_rgph_regions"


@pytest.fixture
def two_hubs(tmp_path: Path) -> Iterator[tuple[Hub, Hub]]:
    # KHAZNA_DATABASE_URL is the test's PostgreSQL database (tests/conftest.py).
    first = Hub(Settings.from_env(tmp_path / "hub"))
    second = Hub(Settings.from_env(tmp_path / "hub"))
    yield first, second
    first.close()
    second.close()


@pytest.fixture
def two_apis(two_hubs: tuple[Hub, Hub]) -> Iterator[tuple[TestClient, TestClient, str]]:
    first, second = two_hubs
    _, token = first.accounts.add_user("nadia", admin=True)
    with (
        TestClient(create_app(first), raise_server_exceptions=False) as a,
        TestClient(create_app(second), raise_server_exceptions=False) as b,
    ):
        for http in (a, b):
            http.headers["Authorization"] = f"Bearer {token}"
        assert a.post("/api/v1/organizations", json={"name": ORG}).status_code == 201
        yield a, b, token


@pytest.fixture
def two_limited(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Hub, str, str]]:
    """Two hubs on one database, both with a limit of 5 calls a minute and 1000 bytes of
    downloads a day per caller; an admin's token and a plain user's."""
    settings = dataclasses.replace(
        Settings.from_env(tmp_path / "hub"), rate_limit_per_minute=5, daily_download_bytes=1000
    )
    first, second = Hub(settings), Hub(settings)
    assert isinstance(first.quotas, SharedQuotas) and isinstance(second.quotas, SharedQuotas)
    _, admin = first.accounts.add_user("nadia", admin=True)
    _, user = first.accounts.add_user("startup")
    with (
        TestClient(create_app(first), raise_server_exceptions=False) as a,
        TestClient(create_app(second), raise_server_exceptions=False) as b,
    ):
        yield a, b, first, admin, user
    first.close()
    second.close()


def test_the_rate_limit_holds_across_two_hubs(
    two_limited: tuple[TestClient, TestClient, Hub, str, str],
) -> None:
    a, b, hub, admin, user = two_limited
    startup = {"Authorization": f"Bearer {user}"}
    assert [a.get("/api/v1/search", headers=startup).status_code for _ in range(3)] == [200] * 3
    assert [b.get("/api/v1/search", headers=startup).status_code for _ in range(2)] == [200] * 2
    for http in (b, a):
        r = http.get("/api/v1/search", headers=startup)
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert (error["code"], error["rule"], error["limit"]) == ("over_quota", "rate_limit", 5)
        assert error["message"].startswith(
            "rate limit: at most 5 requests per minute (KHAZNA_RATE_LIMIT_PER_MINUTE) for this "
            "token; retry in "
        )
        assert 55 <= int(r.headers["retry-after"]) == error["retry_after"] <= 60
    # Another token has its own count, on either hub.
    nadia = {"Authorization": f"Bearer {admin}"}
    assert b.get("/api/v1/search", headers=nadia).status_code == 200
    # Two refusals, one on each hub: the first of the window is in the audit log.
    log = a.get("/api/v1/audit", params={"action": "denied"}, headers=nadia).json()
    assert [(e["actor"], e["detail"]["status"], e["detail"]["unlogged_before"])
            for e in log["entries"]] == [("startup", 429, 0)]  # fmt: skip
    assert hub.verify().ok


def test_callers_racing_on_both_hubs_get_exactly_the_limit(
    two_limited: tuple[TestClient, TestClient, Hub, str, str],
) -> None:
    a, b, _, _, user = two_limited
    startup = {"Authorization": f"Bearer {user}"}
    start = threading.Barrier(16)
    codes: list[int] = []

    def call(n: int) -> None:
        start.wait()
        codes.append((a if n % 2 else b).get("/api/v1/me", headers=startup).status_code)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [429] * 11


def test_the_daily_download_volume_holds_across_two_hubs(
    two_limited: tuple[TestClient, TestClient, Hub, str, str],
) -> None:
    a, b, hub, admin, _ = two_limited
    nadia = {"Authorization": f"Bearer {admin}"}
    assert a.post("/api/v1/organizations", json={"name": ORG}, headers=nadia).status_code == 201
    r = b.post("/api/v1/datasets", json={"org": ORG, "name": "notes"}, headers=nadia)
    assert r.status_code == 201
    content = bytes(range(200)) * 2  # 400 bytes
    url = f"/api/v1/datasets/{ORG}/notes/files/notes.bin"
    assert a.put(url, content=content, headers=nadia).status_code == 200
    # Anonymous callers from one address: 400 through each hub, then 400 more do not fit.
    assert a.get(url).content == content
    assert b.get(url).content == content
    refused = a.get(url)
    assert refused.status_code == 429
    assert refused.json()["error"]["message"].startswith(
        "daily download volume: at most 1000 bytes a day (KHAZNA_DAILY_DOWNLOAD_BYTES) for "
        "anonymous callers from testclient; 800 used today, this download is 400; "
    )
    r = b.get(url, headers={"Range": "bytes=0-199"})
    assert (r.status_code, r.content) == (206, content[:200])
    refused = b.get(url, headers={"Range": "bytes=0-0"})
    assert refused.status_code == 429
    assert "1000 used today, this download is 1;" in refused.json()["error"]["message"]
    assert [hub.quotas.downloaded_today("address:testclient")] == [1000]


def test_each_hub_sees_what_the_other_wrote(
    two_apis: tuple[TestClient, TestClient, str],
) -> None:
    a, b, _ = two_apis
    r = b.post("/api/v1/datasets", json={"org": ORG, "name": "recensement", "title": "RGPH"})
    assert r.status_code == 201, r.text
    assert a.get(f"/api/v1/datasets/{ORG}/recensement").json()["title"] == {"fr": "RGPH"}

    put = a.put(f"/api/v1/datasets/{ORG}/recensement/files/notes.txt", content=b"un\n")
    assert (put.status_code, put.json()["version"]) == (200, 1)
    got = b.get(f"/api/v1/datasets/{ORG}/recensement/files/notes.txt")
    assert (got.status_code, got.content) == (200, b"un\n")
    assert [r["name"] for r in b.get("/api/v1/search?q=rgph").json()["results"]] == ["recensement"]

    # An upload session opened on one hub, fed through the other, committed on the first.
    session = a.post(
        f"/api/v1/datasets/{ORG}/recensement/uploads",
        json={"files": [{"name": "deux.txt", "size": 6}], "message": "ajout"},
    ).json()
    sid = session["id"]
    assert b.put(f"/api/v1/uploads/{sid}/files/deux.txt?offset=0", content=b"deu").json() == {
        "name": "deux.txt",
        "size": 6,
        "received": 3,
    }
    assert a.get(f"/api/v1/uploads/{sid}").json()["files"][0]["received"] == 3
    assert a.put(f"/api/v1/uploads/{sid}/files/deux.txt?offset=3", content=b"x\n!").status_code
    committed = a.post(f"/api/v1/uploads/{sid}/commit")
    assert (committed.status_code, committed.json()["version"]) == (200, 2)
    assert b.get(f"/api/v1/uploads/{sid}").json()["state"] == "committed"
    files = b.get(f"/api/v1/datasets/{ORG}/recensement").json()["files"]
    assert [(f["name"], f["size"]) for f in files] == [("deux.txt", 6), ("notes.txt", 3)]
    assert b.get(f"/api/v1/datasets/{ORG}/recensement/files/deux.txt").content == b"deux\n!"


def test_concurrent_commits_from_both_hubs_make_consecutive_versions(
    two_apis: tuple[TestClient, TestClient, str],
) -> None:
    a, b, _ = two_apis
    assert a.post("/api/v1/datasets", json={"org": ORG, "name": "mesures"}).status_code == 201
    writers = 12
    start = threading.Barrier(writers)
    answers: dict[int, Any] = {}

    def write(n: int) -> None:
        http = a if n % 2 else b
        start.wait()
        answers[n] = http.put(
            f"/api/v1/datasets/{ORG}/mesures/files/part-{n:02d}.txt", content=f"{n}\n".encode()
        )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.status_code for r in answers.values()) == [200] * writers
    assert sorted(r.json()["version"] for r in answers.values()) == list(range(1, writers + 1))
    history = b.get(f"/api/v1/datasets/{ORG}/mesures/versions").json()["versions"]
    assert [v["version"] for v in history] == list(range(writers, 0, -1))
    # Each version is the one before it plus the file its writer sent: nothing was lost.
    by_version = {r.json()["version"]: n for n, r in answers.items()}
    for v in history:
        expected = sorted(f"part-{by_version[k]:02d}.txt" for k in range(1, v["version"] + 1))
        assert [f["name"] for f in v["files"]] == expected
    assert a.get(f"/api/v1/datasets/{ORG}/mesures").json()["version"] == writers


def test_a_session_committed_through_both_hubs_at_once_makes_one_version(
    two_apis: tuple[TestClient, TestClient, str],
) -> None:
    a, b, _ = two_apis
    assert a.post("/api/v1/datasets", json={"org": ORG, "name": "lot"}).status_code == 201
    sid = a.post(
        f"/api/v1/datasets/{ORG}/lot/uploads", json={"files": [{"name": "lot.txt", "size": 4}]}
    ).json()["id"]
    assert a.put(f"/api/v1/uploads/{sid}/files/lot.txt?offset=0", content=b"lot\n").status_code
    start = threading.Barrier(2)
    answers: list[Any] = []

    def commit(http: TestClient) -> None:
        start.wait()
        answers.append(http.post(f"/api/v1/uploads/{sid}/commit"))

    threads = [threading.Thread(target=commit, args=(http,)) for http in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    # The loser either saw the session committed, or had its commit undone: 409 both ways.
    assert codes in ([200, 200], [200, 409])
    versions = a.get(f"/api/v1/datasets/{ORG}/lot/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1]
    assert {r.json()["version"] for r in answers if r.status_code == 200} == {1}


def test_two_hubs_job_runners_never_run_a_job_twice(two_hubs: tuple[Hub, Hub]) -> None:
    jobs = 60
    ran: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handler(job: Job) -> dict[str, Any]:
        with lock:
            ran.append((threading.current_thread().name, job.id))
        time.sleep(0.005)
        return {"n": job.payload["n"]}

    first, second = two_hubs
    with first.engine.begin() as conn:
        ids = [first.jobs.enqueue(conn, "test", {"n": n}) for n in range(jobs)]
    # Two runners per hub, each with its own worker name, all claiming at once.
    runners = [JobRunner(hub.jobs, {"test": handler}) for hub in (first, second, first, second)]
    start = threading.Barrier(len(runners))
    counts: dict[str, int] = {}

    def drain(runner: JobRunner) -> None:
        start.wait()
        counts[runner.worker] = runner.run_pending()

    threads = [threading.Thread(target=drain, args=(r,), name=r.worker) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(job_id for _, job_id in ran) == ids
    assert sum(counts.values()) == jobs
    assert len([c for c in counts.values() if c > 0]) >= 2  # the work was shared
    for job_id in ids:
        job = second.jobs.get(job_id)
        assert (job["state"], job["attempts"]) == ("done", 1)


def test_a_commit_that_collides_with_another_hubs_in_flight_starts_again(
    two_hubs: tuple[Hub, Hub],
) -> None:
    """Two datasets whose tables would get the same SQL name, committed at once from
    two hubs: the one that collides on the unique name starts again and takes the next."""
    first, second = two_hubs
    who = first.accounts.system_principal()
    for org in ("hcp", "hcp-rgph"):
        first.catalog.create_organization(who, org)
    first.catalog.create_dataset(who, "hcp-rgph", "menages")
    other = second.catalog.create_dataset(who, "hcp", "rgph-menages")
    writer = first.blobs.writer(1000)
    writer.write(b"region,menages\nRabat,10\n")
    blob = writer.commit(None)

    # The second hub's commit, caught between naming its table and committing.
    in_flight = second.engine.connect()
    in_flight.execute(
        insert(db.table_names).values(
            dataset_id=second.catalog.check_writable(who, other["org"], other["name"]),
            file_name="menages.csv",
            sql_name="hcp_rgph_menages_menages",
        )
    )
    done: list[Any] = []
    commit = threading.Thread(
        target=lambda: done.append(
            first.catalog.commit_version(who, "hcp-rgph", "menages", {"menages.csv": blob})
        )
    )
    commit.start()
    # The first hub's commit now waits on the name the second holds, uncommitted.
    with first.engine.connect() as conn:
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        deadline = time.monotonic() + 10
        while conn.execute(waiting).scalar_one() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert conn.execute(waiting).scalar_one() == 1
    in_flight.commit()
    in_flight.close()
    commit.join()

    assert done[0].version == 1
    with first.engine.connect() as conn:
        names = conn.execute(
            select(db.table_names.c.sql_name).order_by(db.table_names.c.sql_name)
        ).scalars()
        assert list(names) == ["hcp_rgph_menages_menages", "hcp_rgph_menages_menages_2"]
    described = first.tables.annotate(first.catalog.dataset(who, "hcp-rgph", "menages"))
    assert described["files"][0]["table"]["sql_name"] == "hcp_rgph_menages_menages_2"


def test_two_khazna_serve_processes_serve_one_hub(tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    first = start_server(home)
    second = start_server(home, token=first.token)
    try:
        with first.client(timeout=30) as a, second.client(timeout=30) as b:
            assert a.post("/api/v1/organizations", json={"name": ORG}).status_code == 201
            assert b.post("/api/v1/datasets", json={"org": ORG, "name": "rgph"}).status_code == 201
            regions = (DATA / "tables" / "morocco_regions_rgph2024.csv").read_bytes()
            put = a.put(f"/api/v1/datasets/{ORG}/rgph/files/regions.csv", content=regions)
            assert (put.status_code, put.json()["version"]) == (200, 1)
            job = put.json()["job"]["id"]
            deadline = time.monotonic() + 60
            while b.get(f"/api/v1/jobs/{job}").json()["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            answer = b.post("/api/v1/sql", json={"sql": f"SELECT count(*) FROM {SQL_NAME}"})
            assert answer.json()["rows"] == [[12]]
            # Uploaded through A, read through B: the bytes, the rows, the search index.
            got = b.get(f"/api/v1/datasets/{ORG}/rgph/files/regions.csv")
            assert (got.status_code, got.content) == (200, regions)
            assert got.headers["etag"] == f'"{hashlib.sha256(regions).hexdigest()}"'
            rows = b.get(f"/api/v1/tables/{ORG}/rgph/regions.csv/rows?limit=1").json()
            assert rows["total"] == 12
            found = b.get("/api/v1/search", params={"q": "rgph"}).json()
            assert [(r["org"], r["name"]) for r in found["results"]] == [(ORG, "rgph")]
            if S3_MODE:  # the bytes are in the bucket, not in the shared folder
                assert not list((home / "blobs").glob("??/??/*"))
                assert not list((home / "derived").glob("??/??/*"))

            start = threading.Barrier(6)
            versions: list[int] = []

            def write(n: int) -> None:
                http = a if n % 2 else b
                start.wait()
                r = http.put(f"/api/v1/datasets/{ORG}/rgph/files/note-{n}.txt", content=b"n")
                versions.append(r.json()["version"])

            threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(versions) == [2, 3, 4, 5, 6, 7]
            got = a.get(f"/api/v1/datasets/{ORG}/rgph").json()
            assert (got["version"], len(got["files"])) == (7, 7)
            # Both processes tell the same history.
            history = [
                http.get(f"/api/v1/datasets/{ORG}/rgph/versions").json()["versions"]
                for http in (a, b)
            ]
            assert history[0] == history[1]
            assert [v["version"] for v in history[0]] == [7, 6, 5, 4, 3, 2, 1]
            for n in range(6):
                note = a.get(f"/api/v1/datasets/{ORG}/rgph/files/note-{n}.txt")
                assert (note.status_code, note.content) == (200, b"n")
    finally:
        stop_server(first)
        stop_server(second)
