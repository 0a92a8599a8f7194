"""A cap on the DuckDB queries one hub process runs at once (KHAZNA_SQL_CONCURRENCY):
past it a query is told to come back, and everything else keeps being answered."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from khazna.config import Settings
from khazna.errors import OverQuota
from khazna.tables.query import QuerySlots
from tests.conftest import DATA, LiveServer

API = "/api/v1"
ORG = "haut-commissariat"
REGIONS = DATA / "tables" / "morocco_regions_rgph2024.csv"
SQL_NAME = "haut_commissariat_rgph_morocco_regions_rgph2024"
# Runs until the time limit cancels it (tests/test_query.py does the same).
SLOW = {"sql": "SELECT sum(range) FROM range(10_000_000_000)"}
CAP_MESSAGE = (
    "SQL concurrency: at most 2 queries at once in this hub process "
    "(KHAZNA_SQL_CONCURRENCY); retry in 1 s"
)


def timed(call: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = call()
    return r, time.monotonic() - start


def test_past_the_cap_a_query_is_told_to_retry_and_the_hub_keeps_answering(
    live_factory: Any,
) -> None:
    server: LiveServer = live_factory({"KHAZNA_SQL_CONCURRENCY": "2", "KHAZNA_SQL_TIMEOUT_S": "4"})
    rows_url = f"{API}/tables/{ORG}/rgph/{REGIONS.name}/rows?limit=2"
    with server.client(timeout=60) as http:
        assert http.post(f"{API}/organizations", json={"name": ORG}).status_code == 201
        assert http.post(f"{API}/datasets", json={"org": ORG, "name": "rgph"}).status_code == 201
        put = http.put(
            f"{API}/datasets/{ORG}/rgph/files/{REGIONS.name}", content=REGIONS.read_bytes()
        )
        job = put.json()["job"]["id"]
        deadline = time.monotonic() + 60
        while http.get(f"{API}/jobs/{job}").json()["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)

        answers: list[httpx.Response] = []

        def slow_query() -> None:
            with server.client(timeout=60) as own:
                answers.append(own.post(f"{API}/sql", json=SLOW))

        running = [threading.Thread(target=slow_query) for _ in range(2)]
        for t in running:
            t.start()
        time.sleep(1.0)  # both have taken their slot and are computing

        r, took = timed(lambda: http.post(f"{API}/sql", json=SLOW))
        assert (r.status_code, r.headers["retry-after"]) == (429, "1"), r.text
        assert r.json()["error"] == {
            "code": "over_quota",
            "message": CAP_MESSAGE,
            "rule": "sql_concurrency",
            "limit": 2,
            "retry_after": 1,
        }
        assert took < 2
        # The rows API runs DuckDB too: it shares the cap.
        r = http.get(rows_url)
        assert (r.status_code, r.json()["error"]["rule"]) == (429, "sql_concurrency")
        # Everything else is answered, and soon, while both queries run.
        for call in (
            lambda: http.get("/health"),
            lambda: http.get(f"{API}/search?q=rgph"),
            lambda: http.get(f"{API}/datasets/{ORG}/rgph"),
            lambda: http.get(f"{API}/datasets/{ORG}/rgph/files/{REGIONS.name}"),
        ):
            r, took = timed(call)
            assert r.status_code == 200, r.text
            assert took < 2, took
        assert all(t.is_alive() for t in running)

        for t in running:
            t.join()
        assert [(a.status_code, a.json()["error"]["message"]) for a in answers] == [
            (400, "query exceeded the 4 s time limit")
        ] * 2
        # The slots are free again.
        r = http.post(f"{API}/sql", json={"sql": f"SELECT count(*) FROM {SQL_NAME}"})
        assert (r.status_code, r.json()["rows"]) == (200, [[12]])
        assert http.get(rows_url).json()["total"] == 12


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 4),
        ("3", 3),
        ("0", "KHAZNA_SQL_CONCURRENCY must be more than 0 queries"),
        ("2.5", "KHAZNA_SQL_CONCURRENCY must be a whole number of queries, at least 1"),
        ("beaucoup", "KHAZNA_SQL_CONCURRENCY must be a number of queries, got 'beaucoup'"),
    ],
)
def test_the_cap_is_a_whole_number_of_queries(
    raw: str, expected: int | str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KHAZNA_SQL_CONCURRENCY", raw)
    if isinstance(expected, int):
        assert Settings.from_env(tmp_path).sql_concurrency == expected
    else:
        with pytest.raises(ValueError) as refused:
            Settings.from_env(tmp_path)
        assert str(refused.value) == expected


def test_a_slot_goes_back_once() -> None:
    slots = QuerySlots(1)
    first = slots.take()
    with pytest.raises(OverQuota):
        slots.take()
    first.release()
    first.release()  # a second release does not make room for two
    second = slots.take()
    with pytest.raises(OverQuota):
        slots.take()
    second.release()
