"""Tables against a real `khazna serve`: restarts, time limits, the query command."""

from __future__ import annotations

import csv
import io
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq

from tests.conftest import DATA, LiveServer, khazna_cmd, start_server

ORG = "haut-commissariat"


def wait_for(condition, timeout: float = 60.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def big_csv(path: Path, rows: int) -> None:
    con = duckdb.connect()
    con.execute(f"""
        COPY (SELECT range AS id, 'ville-' || (range % 97) AS city,
                     (range % 1000) / 10.0 AS amount, 'note ' || range AS note
              FROM range({rows})) TO '{path}' (HEADER, DELIMITER ',')
    """)


def upload_measures(c: httpx.Client, tmp_path: Path, access: str = "public") -> int:
    """4,000,000 rows uploaded to a new dataset of ORG: the id of the job converting them."""
    data = tmp_path / "mesures.csv"
    big_csv(data, 4_000_000)
    c.post("/api/v1/organizations", json={"name": ORG})
    c.post("/api/v1/datasets", json={"org": ORG, "name": "mesures", "access": access})
    with open(data, "rb") as f:
        answer = c.put(f"/api/v1/datasets/{ORG}/mesures/files/mesures.csv", content=f)
    return int(answer.json()["job"]["id"])


def test_a_restart_in_the_middle_of_an_ingest_finishes_it(live_factory, tmp_path: Path) -> None:
    server = live_factory()
    with server.client(timeout=120) as c:
        job_id = upload_measures(c, tmp_path)
        assert wait_for(
            lambda: c.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", step=0.01
        )
    server.proc.kill()
    server.proc.wait()

    (server.home / "server.log").rename(server.home / "killed.log")
    again = start_server(server.home, token=server.token)
    try:
        with again.client() as c:
            assert wait_for(lambda: c.get(f"/api/v1/jobs/{job_id}").json()["state"] == "done")
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            assert job["attempts"] == 2
            assert job["result"]["rows"] == 4_000_000
            total = c.post(
                "/api/v1/sql",
                json={"sql": "SELECT count(*), sum(id) FROM haut_commissariat_mesures_mesures"},
            )
            assert total.json()["rows"] == [[4_000_000, 4_000_000 * 3_999_999 // 2]]
        # The interrupted attempt left no scratch files behind (the statistics job that
        # follows the ingest may still hold its own for a moment).
        assert wait_for(lambda: not any((server.home / "work").iterdir()))
    finally:
        again.proc.terminate()
        again.proc.wait(10)


def test_a_client_waits_for_a_job_in_one_request(live_factory, tmp_path: Path) -> None:
    server = live_factory()
    with server.client(timeout=120) as c:
        url = f"/api/v1/jobs/{upload_measures(c, tmp_path, access='private')}"
        # Converting 4M rows takes seconds: a short wait ends with the job still at work.
        assert c.get(url, params={"wait": 0.2}).json()["state"] in ("queued", "running")
        # A long one ends when the job does.
        job = c.get(url, params={"wait": 60}).json()
        assert (job["state"], job["result"]["rows"]) == ("done", 4_000_000)
        too_long = c.get(url, params={"wait": 61})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "bad_request"
        assert "wait" in too_long.json()["error"]["message"]
        # Nobody else sees the job, waiting or not.
        hidden = httpx.get(server.url + url, params={"wait": 5}, timeout=10)
        assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "not_found")


def test_a_query_past_its_time_limit_is_cancelled_and_the_hub_stays_responsive(
    live_factory,
) -> None:
    server = live_factory({"KHAZNA_SQL_TIMEOUT_S": "1"})
    answer: dict = {}

    def slow() -> None:
        started = time.monotonic()
        r = httpx.post(
            server.url + "/api/v1/sql",
            timeout=30,
            json={"sql": "SELECT count(*) FROM range(100000000000) a"},
        )
        answer.update(status=r.status_code, body=r.json(), took=time.monotonic() - started)

    worker = threading.Thread(target=slow)
    worker.start()
    latencies = []
    while worker.is_alive():
        started = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    assert answer["status"] == 400
    assert answer["body"]["error"]["message"] == "query exceeded the 1 s time limit"
    assert answer["took"] < 5
    assert len(latencies) >= 5 and max(latencies) < 0.5
    ok = httpx.post(server.url + "/api/v1/sql", json={"sql": "SELECT 42 AS answer"})
    assert ok.json()["rows"] == [[42]]


def test_khazna_query_prints_tables_csv_json_and_writes_parquet(
    live: LiveServer, tmp_path: Path
) -> None:
    env = {**live.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    regions = DATA / "tables" / "morocco_regions_rgph2024.csv"
    pushed = subprocess.run(
        khazna_cmd("push", "hcp/rgph", str(regions)), env=env, capture_output=True, text=True
    )
    assert pushed.returncode == 0, pushed.stderr
    with httpx.Client(base_url=live.url) as c:
        info = c.get("/api/v1/datasets/hcp/rgph").json()
        job = info["files"][0]["table"].get("job")
        if job is not None:
            assert wait_for(lambda: c.get(f"/api/v1/jobs/{job}").json()["state"] == "done")
    name = "hcp_rgph_morocco_regions_rgph2024"
    sql = f"SELECT code, name_fr, population_2024 FROM {name} ORDER BY population_2024 DESC LIMIT 2"

    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            khazna_cmd("query", sql, *args), env=env, capture_output=True, text=True
        )

    table = query()
    assert table.returncode == 0, table.stderr
    assert "Casablanca-Settat" in table.stdout and "7688967" in table.stdout
    assert "2 row(s)" in table.stderr
    as_csv = query("--format", "csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["code", "name_fr", "population_2024"],
        ["06", "Casablanca-Settat", "7688967"],
        ["04", "Rabat-Salé-Kénitra", "5132639"],
    ]
    as_json = query("--format", "json")
    assert '"rows": [\n    [\n      "06"' in as_json.stdout
    out = tmp_path / "top.parquet"
    assert query("--format", "parquet", "-o", str(out)).returncode == 0
    assert pq.read_table(out).column("population_2024").to_pylist() == [7688967, 5132639]
    refused = subprocess.run(
        khazna_cmd("query", "DROP TABLE x"), env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ")
