"""What encryption at rest costs: the same work on a hub without and with a key.

Run from the repository root:

    nice -n 19 .venv/bin/python bench/encryption.py [--size-mib 256] [--rows 1000000] [--s3]

Two real ``khazna serve`` on loopback, one without a key and one with (on local disk, or
with ``--s3`` each in a bucket of a SeaweedFS started here); every measure is taken on
both in turn, call by call, so that other load on the machine falls on both alike:

1. a one-shot ``PUT`` of a random file of N MiB (median of 3 files), then its download
   to memory, and 1 MiB ``Range`` reads at random offsets (median of 20);
2. a CSV of R rows (id, region, population, value, note) uploaded, time to the table
   being ready (ingest: upload, convert, seal and store the Parquet);
3. ``POST /api/v1/sql``: a GROUP BY aggregate, ``sum(id)``, a filtered page of 100:
   the first query and the median of the 6 after it; the rows API page at offset
   R - 100,000, median of 7.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from common import job_end

MIB = 1024 * 1024
ORG = "bench"
TIMEOUT = httpx.Timeout(600.0)
REGIONS = ["Souss-Massa", "Oriental", "Draa-Tafilalet", "Fes-Meknes", "Marrakech-Safi"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,region,population,value,note\n")
        for i in range(rows):
            f.write(
                f"{i},{REGIONS[i % 5]},{rng.randrange(1000, 900000)},"
                f"{rng.random() * 1000:.3f},note {i % 977}\n"
            )


def random_body(size: int, seed: int) -> Iterator[bytes]:
    head = seed.to_bytes(8, "big")
    block = os.urandom(MIB)
    yield head + block[8:]
    for _ in range(size // MIB - 1):
        yield block


class Hub:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KHAZNA_")}
        self.env |= {"KHAZNA_HOME": str(home), **env}
        out = subprocess.run(
            [sys.executable, "-m", "khazna", "users", "add", "bench", "--admin"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = out.stdout.strip().splitlines()[-1]
        port = free_port()
        self.log = open(home.parent / f"{home.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "khazna", "serve", "--port", str(port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"khazna serve did not start; see {self.log.name}")
            time.sleep(0.1)
        self.http.post("/api/v1/organizations", json={"name": ORG, "title": "Bench"})
        for name in ("files", "tables"):
            self.http.post("/api/v1/datasets", json={"org": ORG, "name": name})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.http.close()
        self.log.close()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(hubs: dict[str, Hub], size_mib: int, csv_path: Path, rows: int) -> dict[str, Any]:
    """Each measure taken on every hub in turn, call by call, so that the load other
    processes put on the machine falls on both alike."""
    size = size_mib * MIB
    out: dict[str, dict[str, Any]] = {mode: {} for mode in hubs}
    samples: dict[tuple[str, str], list[float]] = {}

    def note(mode: str, what: str, value: float) -> None:
        samples.setdefault((mode, what), []).append(value)

    for seed in range(3):
        for mode, hub in hubs.items():
            url = f"/api/v1/datasets/{ORG}/files/files/payload{seed}.bin"
            took, r = timed(
                lambda hub=hub, url=url, seed=seed: hub.http.put(
                    url, content=random_body(size, seed)
                )
            )
            assert r.status_code == 200, r.text
            note(mode, "upload_MBps", size / took / 1e6)
            took, r = timed(lambda hub=hub, url=url: hub.http.get(url))
            assert r.status_code == 200 and len(r.content) == size
            note(mode, "download_MBps", size / took / 1e6)
    rng = random.Random(2)
    for _ in range(20):
        start = rng.randrange(0, size - MIB)
        for mode, hub in hubs.items():
            took, r = timed(
                lambda hub=hub, start=start: hub.http.get(
                    f"/api/v1/datasets/{ORG}/files/files/payload0.bin",
                    headers={"Range": f"bytes={start}-{start + MIB - 1}"},
                )
            )
            assert r.status_code == 206 and len(r.content) == MIB
            note(mode, "range_1MiB_ms", took * 1000)

    def ingest(hub: Hub) -> None:
        with open(csv_path, "rb") as f:
            r = hub.http.put(f"/api/v1/datasets/{ORG}/tables/files/big.csv", content=f)
        assert r.status_code == 200, r.text
        assert job_end(hub.http, r.json()["job"]["id"])["state"] == "done"

    for mode, hub in hubs.items():
        note(mode, "ingest_s", timed(lambda hub=hub: ingest(hub))[0])
    time.sleep(5)  # let the profile jobs finish before querying
    table = "bench_tables_big"
    queries = {
        "aggregate": f"SELECT region, count(*), round(avg(value), 6), max(population) "
        f"FROM {table} GROUP BY region ORDER BY region",
        "sum_id": f"SELECT sum(id) FROM {table}",
        "filtered_page": f"SELECT * FROM {table} WHERE population > 500000 "
        "AND note = 'note 5' ORDER BY id LIMIT 100",
    }
    answers: dict[str, dict[str, Any]] = {mode: {} for mode in hubs}
    for name, q in queries.items():
        for i in range(7):
            for mode, hub in hubs.items():
                took, r = timed(lambda hub=hub, q=q: hub.http.post("/api/v1/sql", json={"sql": q}))
                assert r.status_code == 200, r.text
                note(mode, f"{name}_{'first' if i == 0 else 'next'}_ms", took * 1000)
                answers[mode][name] = r.json()["rows"][:3]
    for _ in range(7):
        for mode, hub in hubs.items():
            took, r = timed(
                lambda hub=hub: hub.http.get(
                    f"/api/v1/tables/{ORG}/tables/big.csv/rows",
                    params={"limit": 100, "offset": max(0, rows - 100_000)},
                )
            )
            assert r.status_code == 200, r.text
            note(mode, "rows_page_ms", took * 1000)
    for (mode, what), values in samples.items():
        out[mode][what] = round(statistics.median(values), 2 if what == "ingest_s" else 1)
    first = next(iter(answers.values()))
    assert all(a == first for a in answers.values()), answers
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--s3", action="store_true", help="store in a SeaweedFS started here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"size_mib": args.size_mib, "rows": args.rows, "s3": args.s3}
    with tempfile.TemporaryDirectory(prefix="khazna-bench-enc-") as tmp:
        work = Path(tmp)
        csv_path = work / "big.csv"
        write_csv(csv_path, args.rows)
        results["csv_MB"] = round(csv_path.stat().st_size / 1e6, 1)
        keys = work / "keys"
        keys.mkdir()
        key = keys / "hub.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        os.close(fd)
        seaweed = None
        if args.s3:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.seaweedfs import SeaweedFS

            seaweed = SeaweedFS(work / "seaweedfs")
        hubs: dict[str, Hub] = {}
        try:
            for mode in ("plain", "encrypted"):
                env = {"KHAZNA_ENCRYPTION_KEY_FILE": str(key)} if mode == "encrypted" else {}
                if seaweed is not None:
                    bucket = seaweed.new_bucket()
                    env["KHAZNA_STORAGE_URL"] = f"s3://{bucket}?endpoint={seaweed.endpoint}"
                hubs[mode] = Hub(work / mode, env)
            results |= measure(hubs, args.size_mib, csv_path, args.rows)
        finally:
            for hub in hubs.values():
                hub.stop()
            if seaweed is not None:
                seaweed.stop()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
