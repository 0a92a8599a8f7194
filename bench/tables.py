"""Tables: Khazna's upload-to-queryable and query latency against raw DuckDB and Datasette.

Run from the repository root (the peers come with the ``bench`` extra):

    .venv/bin/python bench/tables.py [--rows N] [--repeat R] [--calls C] [--skip-sqlite-utils]

On one machine, in one run, with a generated CSV of N rows (id, timestamp, city, category,
amount, lat, lon, note; a fixed seed; 441 MiB at the default 5,000,000 rows) in a temporary
folder:

1. ingest, R times each, min and median:
   - Khazna: a streamed ``PUT /api/v1/datasets/{org}/{name}/files/{file}`` to a real
     ``khazna serve``, then ``GET /api/v1/jobs/{id}?wait=30`` (the hub answers when the
     ingest job is ``done``) as a client waiting for its table does; each repetition goes
     to a new dataset, and the CSV's last note changes first, so content deduplication
     never skips the ingest. The server's peak RSS (itself and any children: the kernel's
     high-water mark, see ``RssSampler``) is recorded meanwhile; the time each
     step ended (PUT answered, table ready, job done) is read back from the server, and
     whether the CSV was converted while it arrived (``ingest_converted_while_uploading``:
     the server's default does so from 64 MiB);
   - the floor: DuckDB's ``COPY (SELECT * FROM read_csv_auto(f)) TO 'x.parquet'
     (FORMAT parquet)`` in this process, on a fresh in-memory connection;
   - Datasette's path, once (it is slow): ``sqlite-utils insert db.sqlite rows f --csv``
     (types are detected by default in sqlite-utils 4);
   - the CPU seconds each side spent (Khazna: the server and this client; DuckDB: this
     process), since client, server and DuckDB share the machine's cores;
   - with ``--remote-mb-per-s R``, once more each: an upload paced at R MB/s (a client
     across a network link) to this hub, which converts a CSV of 64 MiB or more as it
     arrives, and to a second hub started with ``KHAZNA_EARLY_INGEST_MIN_BYTES=0``, which
     converts after the upload.
2. queries, C timed calls each after 2 warm-up calls, p50 and p95:
   - a group-by aggregate: Khazna ``POST /api/v1/sql``, DuckDB on the Parquet file
     Khazna derived from the last upload (the same file, found under
     ``$KHAZNA_HOME/derived/`` from the job's ``parquet_sha256``), and Datasette's
     ``/db.json?sql=...&_shape=array``;
   - a filtered page of 100 rows (category = 'transport' AND amount > 500 ORDER BY id):
     Khazna's rows API and the same page through ``POST /api/v1/sql``, DuckDB on the
     Parquet, and Datasette's ``/db/rows.json?category=...&amount__gt=500&_sort=id``.
   HTTP calls go through one keep-alive httpx client per server and include decoding the
   JSON answer; DuckDB calls include fetching every row. Datasette runs with
   ``--setting sql_time_limit_ms 60000``: at its default of 1 s it refuses the aggregate.
3. where Khazna's query time goes: the HTTP round trip (``GET /health``), ``POST /sql``
   of ``SELECT 1`` and of a ``count(*)`` over the table, and the same engine calls as the
   API makes (``Sandbox``, ``read_rows``) run in this process, without HTTP.

It also reports, per phase, the share of the machine's CPU that other processes used
(``other_cpu_share``): above 10 %, the timings are not clean.

``--skip-sqlite-utils`` leaves out sqlite-utils and Datasette (their fields are null).
Everything runs on loopback; servers are started and stopped here, and the temporary
folder is removed at the end. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psutil  # type: ignore[import-untyped]
from common import (
    CHUNK,
    MIB,
    RssSampler,
    Server,
    clean_env,
    file_chunks,
    job_end,
    machine,
    start,
    start_khazna,
    stop,
)

from khazna.client import Client
from khazna.tables.query import Column, Sandbox, TableRef, parse_filters, read_rows

ORG, FILE_NAME = "bench", "events.csv"
JOB_POLL_S = 0.05  # how often the untimed waits (profiles) look
WARMUP = 2
TIMEOUT = httpx.Timeout(600.0)
SEED = 20240101

# The queries. {t} is the table's name on each side.
CATEGORY, AMOUNT_OVER = "transport", 500
AGG_SQL = (
    "SELECT city, category, count(*) AS n, sum(amount) AS total, avg(amount) AS mean "
    "FROM {t} GROUP BY city, category ORDER BY city, category"
)
PAGE_SQL = (
    f"SELECT * FROM {{t}} WHERE category = '{CATEGORY}' AND amount > {AMOUNT_OVER} "
    "ORDER BY id LIMIT 100"
)
COUNT_SQL = f"SELECT count(*) FROM {{t}} WHERE category = '{CATEGORY}' AND amount > {AMOUNT_OVER}"
SQLITE_DB, SQLITE_TABLE = "db", "rows"

# The data: (city, latitude, longitude, weight), (category, weight), notes.
CITIES = [
    ("Casablanca", 33.5731, -7.5898, 22),
    ("Rabat", 34.0209, -6.8416, 9),
    ("Marrakech", 31.6295, -7.9811, 10),
    ("Fès", 34.0181, -5.0078, 9),
    ("Tanger", 35.7595, -5.8340, 8),
    ("Agadir", 30.4278, -9.5981, 6),
    ("Meknès", 33.8935, -5.5473, 5),
    ("Oujda", 34.6814, -1.9086, 4),
    ("Kénitra", 34.2610, -6.5802, 4),
    ("Tétouan", 35.5889, -5.3626, 4),
    ("Safi", 32.2994, -9.2372, 3),
    ("El Jadida", 33.2316, -8.5007, 3),
    ("Nador", 35.1681, -2.9335, 3),
    ("Béni Mellal", 32.3373, -6.3498, 3),
    ("Laâyoune", 27.1253, -13.1625, 2),
    ("Dakhla", 23.6848, -15.9570, 1),
]
CATEGORIES = [
    ("groceries", 30),
    ("transport", 20),
    ("restaurants", 15),
    ("health", 10),
    ("utilities", 10),
    ("education", 8),
    ("leisure", 7),
]
NOTES = [
    "paiement carte",
    "virement bancaire",
    "paiement mobile",
    "espèces",
    "facture eau",
    "facture électricité",
    "abonnement mensuel",
    "remboursement",
    "achat en ligne",
    "ticket tram",
    "taxi",
    "pharmacie de garde",
    "souk hebdomadaire",
    "frais de scolarité",
    "recharge téléphone",
    "دفع نقدي",
    "تحويل بنكي",
    "",
]
# The last row's note ends with three digits that each repetition rewrites.
LAST_NOTE = "contrôle 000"
YEAR_START = 1704067200  # 2024-01-01T00:00:00Z
YEAR_S = 366 * 86400


# helpers ---------------------------------------------------------------------------


def write_csv(path: Path, rows: int, seed: int = SEED) -> None:
    """``rows`` transactions over 2024 in Moroccan cities, the same for the same seed."""
    rng = random.Random(seed)
    city_w = [c[3] for c in CITIES]
    cat_w = [c[1] for c in CATEGORIES]
    days = [time.strftime("%Y-%m-%d", time.gmtime(YEAR_START + d * 86400)) for d in range(367)]
    block = 100_000
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("id,timestamp,city,category,amount,lat,lon,note\n")
        done = 0
        while done < rows:
            m = min(block, rows - done)
            cities = rng.choices(CITIES, city_w, k=m)
            cats = rng.choices(CATEGORIES, cat_w, k=m)
            notes = rng.choices(NOTES, k=m)
            gauss, lognorm, uniform = rng.gauss, rng.lognormvariate, rng.random
            lines = []
            for j in range(m):
                k = done + j + 1
                t = int((k - 1) * YEAR_S / rows + uniform() * 60)
                day, s = divmod(t, 86400)
                city, lat, lon, _ = cities[j]
                note = notes[j]
                if k == rows:
                    note = LAST_NOTE
                elif note and uniform() < 0.5:
                    note = f"{note} réf {int(uniform() * 100000):05d}"
                amount = min(lognorm(5.0, 1.1), 99999.99)
                lines.append(
                    f"{k},{days[day]} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d},"
                    f"{city},{cats[j][0]},{amount:.2f},"
                    f"{lat + gauss(0, 0.04):.6f},{lon + gauss(0, 0.04):.6f},{note}\n"
                )
            f.write("".join(lines))
            done += m
        f.flush()
        os.fsync(f.fileno())


def mark(path: Path, rep: int) -> None:
    """New last digits in the last note, so each repetition uploads new content."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if os.pread(fd, 4, size - 4)[-1:] != b"\n":
            raise RuntimeError("the CSV does not end with the expected last row")
        os.pwrite(fd, f"{rep % 1000:03d}".encode(), size - 4)
        os.fsync(fd)
    finally:
        os.close(fd)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def same_start(src: Path) -> bool:
    """Give the next timed step the same machine as every other: nothing dirty, and (as root)
    a page cache holding the CSV and nothing else. True if the cache could be dropped.

    Why: on this VM, memory the guest has not touched since boot costs the host a fault per
    page: writing 443 MiB took 1.25 s of system time into fresh memory and 0.23 s into pages
    just freed by a drop. Without this, a run's speed depends on what earlier runs left.
    """
    os.sync()
    dropped = False
    with contextlib.suppress(OSError):
        DROP_CACHES.write_text("3")
        dropped = True
    with open(src, "rb") as f:
        while f.readinto(_READ_BUFFER):
            pass
    return dropped


_READ_BUFFER = bytearray(CHUNK)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    """Nearest rank: the 19th of 20 sorted values."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def server_time(text: str) -> float:
    """A timestamp from the hub's database (UTC, naive or not) as seconds since the epoch."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


class CpuWatch:
    """How busy the rest of the machine was: CPU time spent by processes other than this
    one and the servers and commands it started, per phase, as a share of all CPUs.

    Timings on a shared machine mean little if something else ran meanwhile."""

    def __init__(self) -> None:
        self.servers: list[subprocess.Popen[bytes]] = []
        self.shares: dict[str, float] = {}
        self._phase: tuple[str, float, float, float] | None = None

    def _own(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for proc in self.servers:
            if proc.returncode is None:  # not waited for yet, so not in children_*
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(proc.pid)
                    for q in [p, *p.children(recursive=True)]:
                        c = q.cpu_times()
                        total += c.user + c.system
        return float(total)

    @staticmethod
    def _busy() -> float:
        c = psutil.cpu_times()
        return float(c.user + c.nice + c.system + getattr(c, "irq", 0) + getattr(c, "softirq", 0))

    def start(self, phase: str) -> None:
        self.stop()
        self._phase = (phase, time.monotonic(), self._busy(), self._own())

    def stop(self) -> None:
        if self._phase is None:
            return
        phase, t0, busy0, own0 = self._phase
        self._phase = None
        wall = time.monotonic() - t0
        other = (self._busy() - busy0) - (self._own() - own0)
        self.shares[phase] = round(max(0.0, other) / (wall * (os.cpu_count() or 1)), 3)


# servers ---------------------------------------------------------------------------


def start_datasette(db: Path) -> Server:
    cmd = [sys.executable, "-m", "datasette", "serve", str(db)]
    cmd += ["--setting", "sql_time_limit_ms", "60000"]
    log = db.parent / "datasette.log"
    return start("datasette", cmd, clean_env(), log, "/-/versions.json")


# ingest ----------------------------------------------------------------------------


@dataclass
class Ingest:
    dataset: str
    total_s: float
    put_s: float
    job_id: int
    parquet_sha256: str
    rss_peak: int
    rss_before: int
    started_at: float  # wall clock, seconds since the epoch
    early: bool  # converted while the upload arrived (the job's converted_while_uploading)
    server_cpu_s: float  # CPU time the server (and its children) spent meanwhile
    client_cpu_s: float  # CPU time this process spent sending and polling


def cpu_of(proc: psutil.Process) -> float:
    """User and system CPU seconds of a process and its children so far."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def paced(chunks: Iterator[bytes], mb_per_s: float) -> Iterator[bytes]:
    """The chunks no faster than ``mb_per_s`` (a client on a network link of that speed)."""
    start, sent = time.perf_counter(), 0
    for chunk in chunks:
        ahead = start + sent / (mb_per_s * 1e6) - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        yield chunk
        sent += len(chunk)


def khazna_ingest(
    http: httpx.Client, server: Server, src: Path, dataset: str, mb_per_s: float = 0
) -> Ingest:
    url = f"/api/v1/datasets/{ORG}/{dataset}/files/{FILE_NAME}"
    size = src.stat().st_size
    headers = {"Content-Length": str(size), "Content-Type": "text/csv"}
    body = paced(file_chunks(src), mb_per_s) if mb_per_s else file_chunks(src)
    server_proc = psutil.Process(server.proc.pid)
    with RssSampler(server.proc.pid) as rss:
        server_cpu, client_cpu = cpu_of(server_proc), own_cpu()
        started_at = time.time()
        t0 = time.perf_counter()
        r = http.put(url, content=body, headers=headers)
        put_s = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"PUT {url}: {r.status_code} {r.text[:500]}")
        job = r.json().get("job")
        if not job:
            raise RuntimeError(f"PUT {url} queued no ingest job: {r.text[:500]}")
        state = job_end(http, int(job["id"]))
        if state["state"] == "failed":
            raise RuntimeError(f"ingest job failed: {state}")
        total_s = time.perf_counter() - t0
        # Before the profile job that follows adds its own.
        server_cpu, client_cpu = cpu_of(server_proc) - server_cpu, own_cpu() - client_cpu
    return Ingest(
        dataset,
        total_s,
        put_s,
        int(job["id"]),
        str(state["result"]["parquet_sha256"]),
        rss.peak,
        rss.before,
        started_at,
        bool(state["result"].get("converted_while_uploading")),
        server_cpu,
        client_cpu,
    )


def remote_ingests(
    work: Path,
    khazna: Server,
    src: Path,
    args: argparse.Namespace,
    res: Results,
    servers: list[Server],
    cpu: CpuWatch,
) -> None:
    """One upload paced at --remote-mb-per-s to this hub (which converts a large CSV as it
    arrives) and one to a hub told not to (KHAZNA_EARLY_INGEST_MIN_BYTES=0)."""
    after = start_khazna(work / "khazna-home-after", KHAZNA_EARLY_INGEST_MIN_BYTES="0")
    servers.append(after)
    cpu.servers.append(after.proc)
    res.remote_mb_per_s = args.remote_mb_per_s
    for n, (key, server) in enumerate((("remote_early", khazna), ("remote_after", after))):
        print(f"paced upload at {args.remote_mb_per_s:g} MB/s: {key}", file=sys.stderr)
        auth = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=TIMEOUT) as http:
            with Client(server.url, token=server.token, state_dir=work / f"client-{n}") as c:
                c.ensure_dataset(f"{ORG}/paced")
            mark(src, args.repeat + n)
            same_start(src)
            run = khazna_ingest(http, server, src, "paced", args.remote_mb_per_s)
            wait_for_profiles(http, ["paced"])
        res.add(f"{key}_put", run.put_s)
        res.add(key, run.total_s)


def wait_for_profiles(http: httpx.Client, datasets: list[str], limit_s: float = 600) -> None:
    """Until every uploaded table's profile job has finished: the queries are measured on an
    idle server, not beside the profiling of 5M rows."""
    deadline = time.monotonic() + limit_s
    for dataset in datasets:
        url = f"/api/v1/tables/{ORG}/{dataset}/{FILE_NAME}/profile"
        while ok_json(http.get(url))["status"] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: no profile after {limit_s:.0f} s")
            time.sleep(JOB_POLL_S)


def ingest_steps(home: Path, runs: list[Ingest]) -> list[dict[str, float]]:
    """When each step ended, seconds after the PUT began: stored (PUT answered), table
    ready (queryable: its asset row exists), job done (profile written), seen done here."""
    con = sqlite3.connect(f"file:{home / 'khazna.db'}?mode=ro", uri=True)
    try:
        steps = []
        for run in runs:
            job = con.execute(
                "SELECT payload, updated_at FROM jobs WHERE id = ?", (run.job_id,)
            ).fetchone()
            payload = json.loads(job[0])
            ready = con.execute(
                "SELECT created_at FROM table_assets WHERE source_sha256 = ? AND options_key = ?",
                (payload["source_sha256"], payload["options_key"]),
            ).fetchone()
            steps.append(
                {
                    "stored_s": run.put_s,
                    "ready_s": server_time(ready[0]) - run.started_at,
                    "done_s": server_time(job[1]) - run.started_at,
                    "seen_done_s": run.total_s,
                }
            )
        return steps
    finally:
        con.close()


def duckdb_copy(src: Path, out: Path, tmp: Path) -> None:
    con = duckdb.connect(":memory:", config={"temp_directory": str(tmp)})
    try:
        con.execute(
            f"COPY (SELECT * FROM read_csv_auto({lit(str(src))})) TO {lit(str(out))} "
            "(FORMAT parquet)"
        )
    finally:
        con.close()


def sqlite_utils_insert(src: Path, db: Path) -> None:
    cmd = [sys.executable, "-m", "sqlite_utils", "insert", str(db), SQLITE_TABLE, str(src)]
    out = subprocess.run([*cmd, "--csv"], env=clean_env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sqlite-utils insert failed:\n{out.stderr[-2000:]}")


# queries ---------------------------------------------------------------------------


def measure(fn: Callable[[], object], calls: int) -> list[float]:
    """Milliseconds of ``calls`` calls after ``WARMUP`` untimed ones."""
    return measure_together({"fn": fn}, calls)["fn"]


def measure_together(fns: dict[str, Callable[[], object]], calls: int) -> dict[str, list[float]]:
    """Milliseconds of ``calls`` calls of each function, after ``WARMUP`` untimed ones each.

    The calls take turns (a, b, c, then b, c, a, ...), so that every side meets the same
    machine: a peer measured alone, later, would be judged in calmer or busier moments.
    """
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for call in range(calls):
        shift = call % len(keys)
        for key in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter()
            fns[key]()
            times[key].append((time.perf_counter() - t0) * 1000)
    return times


def ok_json(r: httpx.Response) -> Any:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}")
    return r.json()


@dataclass
class Results:
    ingest: dict[str, list[float]] = field(default_factory=dict)
    query_ms: dict[str, list[float]] = field(default_factory=dict)
    # What each side answered, to check they agree: {(city, category): count}, page ids.
    agg: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    page: dict[str, list[int]] = field(default_factory=dict)
    cache_dropped: bool = False  # each ingest began with the page cache dropped (root only)
    early: list[bool] = field(default_factory=list)  # per upload: converted while arriving
    remote_mb_per_s: float = 0

    def add(self, key: str, seconds: float) -> None:
        self.ingest.setdefault(key, []).append(seconds)


def khazna_calls(http: httpx.Client, dataset: str, sql_name: str) -> dict[str, Callable[[], Any]]:
    """Khazna's queries through its HTTP API, by result key."""
    agg_body = {"sql": AGG_SQL.format(t=sql_name)}
    page_body = {"sql": PAGE_SQL.format(t=sql_name)}
    rows_url = f"/api/v1/tables/{ORG}/{dataset}/{FILE_NAME}/rows"
    rows_params = {
        "category": CATEGORY,
        "amount__gt": str(AMOUNT_OVER),
        "sort": "id",
        "limit": "100",
    }
    return {
        "agg_khazna": lambda: ok_json(http.post("/api/v1/sql", json=agg_body)),
        "page_khazna": lambda: ok_json(http.get(rows_url, params=rows_params)),
        "sql_page_khazna": lambda: ok_json(http.post("/api/v1/sql", json=page_body)),
    }


def duckdb_calls(con: duckdb.DuckDBPyConnection) -> dict[str, Callable[[], Any]]:
    """The same queries in DuckDB on a view ``t`` of the Parquet file, by result key."""
    agg_sql, page_sql = AGG_SQL.format(t="t"), PAGE_SQL.format(t="t")
    # What the rows API also pays for: the filtered total.
    count_sql = COUNT_SQL.format(t="t")
    return {
        "agg_duckdb": lambda: con.execute(agg_sql).fetchall(),
        "page_duckdb": lambda: con.execute(page_sql).fetchall(),
        "count_duckdb": lambda: con.execute(count_sql).fetchall(),
    }


def khazna_and_duckdb_queries(
    http: httpx.Client, dataset: str, sql_name: str, parquet: Path, calls: int, res: Results
) -> None:
    """Both sides' queries, measured taking turns; then what each side answered."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet({lit(str(parquet))})")
        kh, dk = khazna_calls(http, dataset, sql_name), duckdb_calls(con)
        res.query_ms.update(measure_together({**kh, **dk}, calls))
        a = kh["agg_khazna"]()
        res.agg["khazna"] = {(r[0], r[1]): int(r[2]) for r in a["rows"]}
        for key, name in (("page_khazna", "khazna"), ("sql_page_khazna", "khazna_sql")):
            p = kh[key]()
            id_at = [c["name"] for c in p["columns"]].index("id")
            res.page[name] = [int(r[id_at]) for r in p["rows"]]
        res.agg["duckdb"] = {(r[0], r[1]): int(r[2]) for r in dk["agg_duckdb"]()}
        page = con.execute(PAGE_SQL.format(t="t"))
        id_at = [d[0] for d in page.description or []].index("id")
        res.page["duckdb"] = [int(r[id_at]) for r in page.fetchall()]
    finally:
        con.close()


def datasette_queries(http: httpx.Client, calls: int, res: Results) -> None:
    agg_params = {"sql": AGG_SQL.format(t=f'"{SQLITE_TABLE}"'), "_shape": "array"}
    page_params = {
        "category": CATEGORY,
        "amount__gt": str(AMOUNT_OVER),
        "_sort": "id",
        "_size": "100",
        "_shape": "array",
    }

    def agg() -> Any:
        return ok_json(http.get(f"/{SQLITE_DB}.json", params=agg_params))

    def page() -> Any:
        return ok_json(http.get(f"/{SQLITE_DB}/{SQLITE_TABLE}.json", params=page_params))

    res.query_ms.update(measure_together({"agg_datasette": agg, "page_datasette": page}, calls))
    res.agg["datasette"] = {(r["city"], r["category"]): int(r["n"]) for r in agg()}
    res.page["datasette"] = [int(r["id"]) for r in page()]


def khazna_overheads(
    http: httpx.Client, dataset: str, sql_name: str, parquet: Path, calls: int, res: Results
) -> None:
    """Where a Khazna query's time goes: HTTP, the sandbox, the engine without HTTP."""
    res.query_ms["http_health"] = measure(lambda: ok_json(http.get("/health")), calls)
    one = {"sql": "SELECT 1"}
    res.query_ms["sql_select1"] = measure(
        lambda: ok_json(http.post("/api/v1/sql", json=one)), calls
    )
    count = {"sql": f"SELECT count(*) FROM {sql_name}"}
    res.query_ms["sql_count"] = measure(
        lambda: ok_json(http.post("/api/v1/sql", json=count)), calls
    )

    schema = ok_json(http.get(f"/api/v1/tables/{ORG}/{dataset}/{FILE_NAME}/schema"))
    ref = TableRef(
        sql_name=sql_name,
        parquet=parquet,
        rows=int(schema["rows"]),
        columns=[Column(c["name"], c["type"]) for c in schema["columns"]],
    )
    tables = {sql_name: ref}

    def sandbox(sql: str) -> Callable[[], object]:
        return lambda: Sandbox(tables).run(sql).json(10_000)

    res.query_ms["inproc_sandbox_select1"] = measure(sandbox("SELECT 1"), calls)
    res.query_ms["inproc_sandbox_agg"] = measure(sandbox(AGG_SQL.format(t=sql_name)), calls)
    res.query_ms["inproc_sandbox_page"] = measure(sandbox(PAGE_SQL.format(t=sql_name)), calls)
    filters = parse_filters([("category", CATEGORY), ("amount__gt", str(AMOUNT_OVER))], set())
    res.query_ms["inproc_read_rows"] = measure(
        lambda: read_rows(ref, limit=100, sort="id", filters=filters), calls
    )


# report ----------------------------------------------------------------------------


INGEST_ROWS = [
    ("khazna: PUT + ingest job done", "khazna"),
    ("  PUT answered (stored)", "khazna_stored"),
    ("  table ready (queryable)", "khazna_ready"),
    ("  job done (profile written)", "khazna_done"),
    ("  CPU s: khazna server", "khazna_server_cpu"),
    ("  CPU s: this client", "khazna_client_cpu"),
    ("duckdb COPY csv -> parquet", "duckdb"),
    ("  CPU s: duckdb", "duckdb_cpu"),
    ("sqlite-utils insert --csv", "sqlite_utils"),
    ("paced, converted as it arrives: PUT", "remote_early_put"),
    ("  table ready (queryable)", "remote_early"),
    ("paced, converted after: PUT", "remote_after_put"),
    ("  table ready (queryable)", "remote_after"),
]
QUERY_ROWS = [
    ("aggregate: khazna POST /sql", "agg_khazna"),
    ("aggregate: duckdb on the parquet", "agg_duckdb"),
    ("aggregate: datasette /db.json", "agg_datasette"),
    ("page: khazna rows API", "page_khazna"),
    ("page: khazna POST /sql", "sql_page_khazna"),
    ("page: duckdb on the parquet", "page_duckdb"),
    ("page: datasette /db/rows.json", "page_datasette"),
    ("  duckdb: filtered count(*)", "count_duckdb"),
    ("  khazna GET /health", "http_health"),
    ("  khazna POST /sql SELECT 1", "sql_select1"),
    ("  khazna POST /sql count(*)", "sql_count"),
    ("  in-process Sandbox SELECT 1", "inproc_sandbox_select1"),
    ("  in-process Sandbox aggregate", "inproc_sandbox_agg"),
    ("  in-process Sandbox page", "inproc_sandbox_page"),
    ("  in-process read_rows page", "inproc_read_rows"),
]


def report(
    args: argparse.Namespace,
    csv_bytes: int,
    res: Results,
    rss_peak: int,
    rss_before: int,
    other_cpu: dict[str, float],
) -> dict[str, Any]:
    csv_mib = csv_bytes / MIB
    print(
        f"\n{args.rows:,} rows, CSV {csv_mib:.1f} MiB; ingest {args.repeat} repetition(s) "
        f"(sqlite-utils once); queries {args.calls} calls after {WARMUP} warm-up calls\n"
    )
    header = f"{'ingest':<36} {'min s':>9} {'median s':>9}"
    print(header)
    print("-" * len(header))
    for label, key in INGEST_ROWS:
        if key in res.ingest:
            xs = res.ingest[key]
            print(f"{label:<36} {min(xs):>9.3f} {p50(xs):>9.3f}")
    header = f"{'query':<34} {'p50 ms':>9} {'p95 ms':>9}"
    print(f"\n{header}")
    print("-" * len(header))
    for label, key in QUERY_ROWS:
        if key in res.query_ms:
            xs = res.query_ms[key]
            print(f"{label:<34} {p50(xs):>9.1f} {p95(xs):>9.1f}")

    def med_s(key: str) -> float | None:
        return round(p50(res.ingest[key]), 3) if key in res.ingest else None

    def ms(key: str) -> float | None:
        return round(p50(res.query_ms[key]), 2) if key in res.query_ms else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    ingest_s, duck_s, su_s = med_s("khazna"), med_s("duckdb"), med_s("sqlite_utils")
    agg, agg_duck, agg_ds = ms("agg_khazna"), ms("agg_duckdb"), ms("agg_datasette")
    page, page_duck, page_ds = ms("page_khazna"), ms("page_duckdb"), ms("page_datasette")
    sql_page = ms("sql_page_khazna")
    peak_mb = rss_peak / 1e6
    ratios = {
        "ingest_vs_duckdb": ratio(ingest_s, duck_s),
        "ingest_vs_sqlite_utils": ratio(ingest_s, su_s),
        "agg_p50_vs_duckdb": ratio(agg, agg_duck),
        "agg_p50_vs_datasette": ratio(agg, agg_ds),
        "page_p50_vs_duckdb": ratio(page, page_duck),
        "page_p50_vs_datasette": ratio(page, page_ds),
        "sql_page_p50_vs_duckdb": ratio(sql_page, page_duck),
    }
    assert ingest_s is not None and duck_s is not None
    assert agg is not None and agg_duck is not None and page is not None and page_duck is not None
    targets = {
        "ingest_within_1_5x_duckdb": ingest_s <= 1.5 * duck_s,
        "agg_p50_within_duckdb_plus_15ms": agg <= agg_duck + 15,
        "page_p50_within_duckdb_plus_15ms": page <= page_duck + 15,
        "sql_page_p50_within_duckdb_plus_15ms": sql_page is not None and sql_page <= page_duck + 15,
        "server_peak_rss_under_1gb": rss_peak < 1e9,
    }
    print("\nratios (Khazna's time over the peer's; medians for ingest, p50 for queries):")
    for k, v in ratios.items():
        print(f"  {k:<26} {'-' if v is None else f'{v:.3f}'}")
    print(
        f"\nkhazna server peak RSS while ingesting: {peak_mb:.1f} MB "
        f"(it was {rss_before / 1e6:.1f} MB before the first upload)"
    )
    print("\ntargets:")
    for k, met in targets.items():
        print(f"  {k:<38} {'met' if met else 'MISSED'}")

    print(
        "\nCPU used by other processes on this machine, share of all CPUs: "
        + ", ".join(f"{k} {v:.0%}" for k, v in other_cpu.items())
    )
    if any(v > 0.1 for v in other_cpu.values()):
        print("WARNING: something else was running; these timings are not clean", file=sys.stderr)

    agree = {
        "agg": all(v == res.agg["khazna"] for v in res.agg.values()),
        "page": all(v == res.page["khazna"] for v in res.page.values()),
    }
    if not all(agree.values()):
        print(f"\nWARNING: the answers differ between contenders: {agree}", file=sys.stderr)

    return {
        "rows": args.rows,
        "csv_mib": round(csv_mib, 1),
        "repeat": args.repeat,
        "calls": args.calls,
        **ratios,
        "ingest_s": ingest_s,
        "ingest_min_s": round(min(res.ingest["khazna"]), 3),
        "ingest_duckdb_s": duck_s,
        "ingest_duckdb_min_s": round(min(res.ingest["duckdb"]), 3),
        "ingest_sqlite_utils_s": su_s,
        "ingest_steps_median_s": {
            "stored": med_s("khazna_stored"),
            "ready": med_s("khazna_ready"),
            "done": med_s("khazna_done"),
        },
        "ingest_ready_vs_duckdb": ratio(med_s("khazna_ready"), duck_s),
        "agg_p50_ms": agg,
        "agg_p50_duckdb_ms": agg_duck,
        "agg_p50_datasette_ms": agg_ds,
        "page_p50_ms": page,
        "page_p50_duckdb_ms": page_duck,
        "page_p50_datasette_ms": page_ds,
        "sql_page_p50_ms": sql_page,
        "p95s": {
            key: round(p95(res.query_ms[key]), 2)
            for _, key in QUERY_ROWS[:7]
            if key in res.query_ms
        },
        "overheads_p50_ms": {key: ms(key) for _, key in QUERY_ROWS[7:]},
        "server_peak_rss_mb": round(peak_mb, 1),
        "server_rss_before_mb": round(rss_before / 1e6, 1),
        "targets": targets,
        "answers_agree": agree,
        "other_cpu_share": other_cpu,
        "page_cache_dropped_before_each_ingest": res.cache_dropped,
        "ingest_converted_while_uploading": res.early,
        "ingest_cpu_s_median": {
            "khazna_server": med_s("khazna_server_cpu"),
            "khazna_client": med_s("khazna_client_cpu"),
            "duckdb": med_s("duckdb_cpu"),
        },
        "paced_upload": None
        if not res.remote_mb_per_s
        else {
            "mb_per_s": res.remote_mb_per_s,
            "converted_as_it_arrives": {
                "put_s": med_s("remote_early_put"),
                "ready_s": med_s("remote_early"),
            },
            "converted_after": {
                "put_s": med_s("remote_after_put"),
                "ready_s": med_s("remote_after"),
            },
        },
        "duckdb_queries_on": "the Parquet file Khazna derived (under $KHAZNA_HOME/derived/)",
        "machine": machine(duckdb=duckdb.__version__),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the CSV")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each ingest")
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each query")
    parser.add_argument(
        "--remote-mb-per-s",
        type=float,
        default=0,
        help="also upload once at this pace (a client across a network link), to a hub that"
        " converts as the bytes arrive and to one that converts after (0: skip)",
    )
    parser.add_argument(
        "--skip-sqlite-utils",
        action="store_true",
        help="leave out sqlite-utils and Datasette (slow: about 4 minutes at 5M rows)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1000 or not 1 <= args.repeat <= 999 or args.calls < 1:
        parser.error("--rows must be at least 1000, --repeat 1 to 999, --calls at least 1")

    work = Path(tempfile.mkdtemp(prefix="khazna-bench-tables-"))
    servers: list[Server] = []
    cpu = CpuWatch()
    try:
        src = work / FILE_NAME
        print(f"writing {args.rows:,} rows to {src}", file=sys.stderr)
        write_csv(src, args.rows)
        csv_bytes = src.stat().st_size
        khazna = start_khazna(work / "khazna-home")
        servers.append(khazna)
        cpu.servers.append(khazna.proc)
        assert khazna.home is not None
        res = Results()
        runs: list[Ingest] = []
        auth = {"Authorization": f"Bearer {khazna.token}"}
        with httpx.Client(base_url=khazna.url, headers=auth, timeout=TIMEOUT) as kh_http:
            with Client(khazna.url, token=khazna.token, state_dir=work / "client") as client:
                for rep in range(args.repeat):
                    client.ensure_dataset(f"{ORG}/tables-{rep}")
            floor_out = work / "duckdb.parquet"
            cpu.start("ingest")
            for rep in range(args.repeat):
                print(f"ingest repetition {rep + 1}/{args.repeat}", file=sys.stderr)
                mark(src, rep)
                same_start(src)
                before = own_cpu()
                res.add("duckdb", timed(lambda: duckdb_copy(src, floor_out, work / "duckdb-tmp")))
                res.add("duckdb_cpu", own_cpu() - before)
                floor_out.unlink()
                res.cache_dropped = same_start(src)
                run = khazna_ingest(kh_http, khazna, src, f"tables-{rep}")
                # The profile job the upload queued runs next: not beside the next floor.
                wait_for_profiles(kh_http, [run.dataset])
                runs.append(run)
                res.early.append(run.early)
                res.add("khazna", run.total_s)
                res.add("khazna_server_cpu", run.server_cpu_s)
                res.add("khazna_client_cpu", run.client_cpu_s)
            for step in ingest_steps(khazna.home, runs):
                res.add("khazna_stored", step["stored_s"])
                res.add("khazna_ready", step["ready_s"])
                res.add("khazna_done", step["done_s"])

            if args.remote_mb_per_s:
                remote_ingests(work, khazna, src, args, res, servers, cpu)

            last = runs[-1]
            sha = last.parquet_sha256
            parquet = khazna.home / "derived" / sha[:2] / sha[2:4] / sha
            if not parquet.is_file():
                raise RuntimeError(f"the table's Parquet is not at {parquet}")
            meta = ok_json(kh_http.get(f"/api/v1/datasets/{ORG}/{last.dataset}"))
            sql_name = next(f["table"]["sql_name"] for f in meta["files"] if f["name"] == FILE_NAME)

            if not args.skip_sqlite_utils:
                print("sqlite-utils insert (once)", file=sys.stderr)
                cpu.start("sqlite_utils")
                db = work / f"{SQLITE_DB}.sqlite"
                same_start(src)
                res.add("sqlite_utils", timed(lambda: sqlite_utils_insert(src, db)))

            print("queries: khazna, duckdb", file=sys.stderr)
            cpu.start("queries")
            # Quiet first: the profile jobs the uploads queued, and the disk's writeback.
            wait_for_profiles(kh_http, [run.dataset for run in runs])
            os.sync()
            khazna_and_duckdb_queries(kh_http, last.dataset, sql_name, parquet, args.calls, res)
            khazna_overheads(kh_http, last.dataset, sql_name, parquet, args.calls, res)

        if not args.skip_sqlite_utils:
            print("queries: datasette", file=sys.stderr)
            datasette = start_datasette(db)
            servers.append(datasette)
            cpu.servers.append(datasette.proc)
            with httpx.Client(base_url=datasette.url, timeout=TIMEOUT) as ds_http:
                datasette_queries(ds_http, args.calls, res)

        cpu.stop()
        rss_peak = max(r.rss_peak for r in runs)
        summary = report(args, csv_bytes, res, rss_peak, runs[0].rss_before, cpu.shares)
    finally:
        for server in reversed(servers):
            stop(server)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
