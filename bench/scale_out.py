"""Throughput of one against two `khazna serve` processes sharing PostgreSQL and SeaweedFS.

    nice -n 19 .venv/bin/python bench/scale_out.py [--database postgresql://postgres@127.0.0.1:5432/postgres]

Starts a SeaweedFS (`weed mini`, a bucket of its own) and makes a scratch PostgreSQL
database, then runs the same load against one process and against two (the clients
alternate between them, as a load balancer would): small-file PUTs, downloads of a
64 MiB file, rows API pages and searches, each from CLIENTS threads at once. Everything
it made is removed at the end. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.seaweedfs starts and stops the SeaweedFS

from khazna import db  # noqa: E402
from tests.seaweedfs import SeaweedFS  # noqa: E402

CLIENTS = 4
BIG = 64 * 1024 * 1024
TABLE_ROWS = 200_000
ORG = "bench"
# operation -> calls in all (spread over the clients)
CALLS = {"small_put": 120, "download_64mib": 16, "rows_page": 400, "search": 400}


def khazna(*args: str) -> list[str]:
    return [sys.executable, "-m", "khazna", *args]


def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = common.start("khazna serve", khazna("serve"), env, log, "/api/v1/health")
    return server.proc, server.url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def table_csv() -> bytes:
    rng = random.Random(7)
    cities = ["Rabat", "Casablanca", "Fes", "Marrakech", "Agadir", "Tanger", "Oujda", "Laayoune"]
    lines = ["id,city,amount,year"]
    for i in range(TABLE_ROWS):
        lines.append(f"{i},{rng.choice(cities)},{rng.randint(0, 100000) / 100},{2000 + i % 25}")
    return ("\n".join(lines) + "\n").encode()


def prepare(url: str, token: str) -> str:
    """The datasets the load reads; the table's sql_name."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as h:
        assert h.post("/api/v1/organizations", json={"name": ORG}).status_code == 201
        for n in range(30):
            body = {
                "org": ORG,
                "name": f"jeu-{n:02d}",
                "title": {"fr": f"Données de transport public {n}", "en": f"Transit data {n}"},
                "tags": ["transport", f"lot-{n % 5}"],
            }
            assert h.post("/api/v1/datasets", json=body).status_code == 201
        for name in ["gros", "table", *(f"petit-{c}" for c in range(CLIENTS))]:
            assert h.post("/api/v1/datasets", json={"org": ORG, "name": name}).status_code == 201
        r = h.put(f"/api/v1/datasets/{ORG}/gros/files/gros.bin", content=os.urandom(BIG))
        assert r.status_code == 200, r.text
        r = h.put(f"/api/v1/datasets/{ORG}/table/files/ventes.csv", content=table_csv())
        assert r.status_code == 200, r.text
        assert common.job_end(h, r.json()["job"]["id"], limit_s=300)["state"] == "done"
        files = h.get(f"/api/v1/datasets/{ORG}/table").json()["files"]
        return str(files[0]["table"]["sql_name"])


def run_load(
    urls: list[str], token: str, name: str, call: Callable[[httpx.Client, int, int], int]
) -> dict[str, float]:
    """CLIENTS threads, each on its own connection to urls[i % len(urls)], sharing the calls."""
    total = CALLS[name]
    latencies: list[float] = []
    moved = [0]
    lock = threading.Lock()
    start_line = threading.Barrier(CLIENTS + 1)

    def client(i: int) -> None:
        url = urls[i % len(urls)]
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as h:
            start_line.wait()
            for n in range(i, total, CLIENTS):
                t = time.perf_counter()
                size = call(h, i, n)
                took = time.perf_counter() - t
                with lock:
                    latencies.append(took)
                    moved[0] += size

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    start_line.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    result = {
        "calls_per_s": round(total / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
    }
    if moved[0]:
        result["mb_per_s"] = round(moved[0] / wall / 1e6, 1)
    return result


def loads(sql_name: str) -> dict[str, Callable[[httpx.Client, int, int], int]]:
    def small_put(h: httpx.Client, i: int, n: int) -> int:
        # One dataset per client: commits to one dataset queue on its row lock.
        r = h.put(f"/api/v1/datasets/{ORG}/petit-{i}/files/f{n}.txt", content=os.urandom(1024))
        assert r.status_code == 200, r.text
        return 0

    def download(h: httpx.Client, i: int, n: int) -> int:
        size = 0
        with h.stream("GET", f"/api/v1/datasets/{ORG}/gros/files/gros.bin") as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes(1024 * 1024):
                size += len(chunk)
        assert size == BIG
        return size

    def rows(h: httpx.Client, i: int, n: int) -> int:
        city = ["Rabat", "Fes", "Agadir", "Oujda"][n % 4]
        r = h.get(
            f"/api/v1/tables/{ORG}/table/ventes.csv/rows",
            params={"city": city, "amount__gt": str(n % 500), "limit": 100, "offset": n % 50},
        )
        assert r.status_code == 200, r.text
        return 0

    def search(h: httpx.Client, i: int, n: int) -> int:
        q = ["transport public", "donnees", "transit", "lot"][n % 4]
        r = h.get("/api/v1/search", params={"q": q})
        assert r.status_code == 200 and r.json()["count"] > 0, r.text
        return 0

    return {"small_put": small_put, "download_64mib": download, "rows_page": rows, "search": search}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    admin = create_engine(db.engine_url(args.database), isolation_level="AUTOCOMMIT")
    name = f"khazna_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    database = make_url(db.engine_url(args.database)).set(database=name)
    results: dict[str, Any] = {
        "clients": CLIENTS,
        "calls": CALLS,
        "cpus": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2),
        "nice": os.nice(0),
    }
    servers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="kz-scale-") as tmp:
        weed = SeaweedFS(Path(tmp) / "seaweedfs")
        try:
            bucket = weed.new_bucket()
            env = {
                **os.environ,
                "KHAZNA_HOME": str(Path(tmp) / "home"),
                "KHAZNA_DATABASE_URL": database.render_as_string(hide_password=False),
                "KHAZNA_STORAGE_URL": f"s3://{bucket}?endpoint={weed.endpoint}",
            }
            made = subprocess.run(
                khazna("users", "add", "bench", "--admin"),
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            token = made.stdout.strip().splitlines()[-1]
            first, url_a = start(env, Path(tmp) / "a.log")
            servers.append(first)
            sql_name = prepare(url_a, token)
            calls = loads(sql_name)
            for label, urls in (("one_process", [url_a]), ("two_processes", None)):
                if urls is None:
                    second, url_b = start(env, Path(tmp) / "b.log")
                    servers.append(second)
                    urls = [url_a, url_b]
                results[label] = {}
                for op, call in calls.items():
                    results[label][op] = run_load(urls, token, op, call)
                    print(label, op, results[label][op], flush=True)
            results["load_after"] = round(os.getloadavg()[0], 2)
        finally:
            for proc in servers:
                stop(proc)
            weed.stop()
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
