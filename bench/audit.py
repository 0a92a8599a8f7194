"""The cost of writing a change and its audit entry: a small PUT and a membership change.

    nice -n 19 .venv/bin/python bench/audit.py \\
        [--database postgresql://postgres@127.0.0.1:5432/postgres]

Times, through the in-process app, ``PUT /api/v1/datasets/ORG/NAME/files/FILE`` of a
12-byte file (a new version each time) and ``PUT /api/v1/organizations/ORG/members``
(alternating the role), on SQLite and on a scratch database of that PostgreSQL server,
which it drops afterwards. The last line is one JSON object of medians in milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from khazna import db
from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub

CALLS = 300


def timings(hub: Hub, calls: int) -> dict[str, float]:
    _, admin = hub.accounts.add_user("admin", admin=True)
    hub.accounts.add_user("nadia")
    auth = {"Authorization": f"Bearer {admin}"}
    puts, members = [], []
    with TestClient(create_app(hub)) as http:
        assert http.post("/api/v1/organizations", json={"name": "o"}, headers=auth).is_success
        assert http.post("/api/v1/datasets", json={"org": "o", "name": "d"}, headers=auth)
        for i in range(calls):
            body = f"n\n{i:010d}".encode()
            t = time.perf_counter()
            r = http.put("/api/v1/datasets/o/d/files/a.txt", content=body, headers=auth)
            puts.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            role = ("editor", "member")[i % 2]
            t = time.perf_counter()
            r = http.put(
                "/api/v1/organizations/o/members",
                json={"user": "nadia", "role": role},
                headers=auth,
            )
            members.append(time.perf_counter() - t)
            assert r.status_code == 204, r.text
    # The first calls warm caches up.
    return {
        "put_ms": round(statistics.median(puts[20:]) * 1e3, 2),
        "membership_ms": round(statistics.median(members[20:]) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=CALLS)
    args = parser.parse_args()
    admin = create_engine(db.engine_url(args.database), isolation_level="AUTOCOMMIT")
    name = f"khazna_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(db.engine_url(args.database)).set(database=name)
    result: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind, database in (("sqlite", None), ("postgresql", url)):
                base = Settings.from_env(Path(tmp) / kind)
                if database is not None:
                    base = dataclasses.replace(
                        base, database_url=database.render_as_string(hide_password=False)
                    )
                hub = Hub(dataclasses.replace(base, rate_limit_per_minute=0))
                for key, value in timings(hub, args.calls).items():
                    result[f"{kind}_{key}"] = value
                hub.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
