"""The cost of a quota check: in process (SQLite hub) and shared in PostgreSQL.

    KHAZNA_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/quotas.py

Makes a scratch database on that server, times ``Quotas.hit`` alone and ``GET /api/v1/me``
through the in-process app with the rate limit off and on, and drops the database. The
last line is one JSON object (medians, in microseconds for ``hit``, milliseconds for HTTP).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from khazna import db
from khazna.access.quotas import Quotas, SharedQuotas
from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub

ROUNDS = 2000
CALLS = 400


def median_us(fn: object, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(f"token:{i % 50}")  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def http_ms(hub: Hub, token: str) -> float:
    times = []
    with TestClient(create_app(hub)) as http:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(CALLS):
            t = time.perf_counter()
            assert http.get("/api/v1/me", headers=headers).status_code == 200
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    server = os.environ.get(
        "KHAZNA_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    admin = create_engine(db.engine_url(server), isolation_level="AUTOCOMMIT")
    name = f"khazna_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(db.engine_url(server)).set(database=name).render_as_string(hide_password=False)
    result: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            memory = Quotas(10**9, 0)
            result["hit_memory_us"] = round(median_us(memory.hit, ROUNDS), 1)
            for kind, database in (("sqlite", None), ("postgresql", url)):
                home = Path(tmp) / kind
                base = Settings.from_env(home)
                if database is not None:
                    base = dataclasses.replace(base, database_url=database)
                for limit in (0, 10**9):
                    hub = Hub(dataclasses.replace(base, rate_limit_per_minute=limit))
                    if kind == "postgresql" and limit:
                        assert isinstance(hub.quotas, SharedQuotas)
                        result["hit_shared_us"] = round(median_us(hub.quotas.hit, ROUNDS), 1)
                    _, token = hub.accounts.add_user(f"u{limit}")
                    http_ms(hub, token)  # warm up
                    key = f"me_{kind}_{'limit' if limit else 'nolimit'}_ms"
                    result[key] = round(http_ms(hub, token), 2)
                    hub.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
