"""Storage throughput: Khazna against the floor and against a bare Starlette peer.

Run from the repository root:

    .venv/bin/python bench/storage.py [--size-mib N] [--repeat R]

On one machine, in one run, with a random file of N MiB in a temporary folder:

1. floor: ``shutil.copyfile`` + fsync to another file on the same disk, plus a SHA-256
   of the file: the least work a content-addressed store must do;
2. Khazna one-shot upload: a streamed ``PUT /api/v1/datasets/{org}/{name}/files/{file}``
   to a real ``khazna serve`` (time to the 200 answer) and the server's peak RSS growth;
3. Khazna download: a streamed ``GET`` to disk, and ``Client.pull`` (which verifies the
   SHA-256);
4. peer: a bare Starlette app under uvicorn that streams the body to a file (no hash, no
   fsync) and answers GET with a ``FileResponse``: the same HTTP stack, none of the
   guarantees. Its ``FileResponse`` reads 1 MiB at a time, like Khazna, unless
   ``--bare-file-chunk-kib`` says otherwise: with Starlette's default of 64 KiB the
   peer's GET is much slower and the download ratio says more about that default than
   about Khazna.

Everything runs on loopback; servers are started and stopped here, and the temporary
folder is removed at the end. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import (
    CHUNK,
    MIB,
    RssSampler,
    Server,
    clean_env,
    file_chunks,
    free_port,
    machine,
    start_khazna,
    stop,
    wait_healthy,
)

from khazna.client import Client

ORG, DATASET, FILE_NAME = "bench", "storage", "payload.bin"
TIMEOUT = httpx.Timeout(600.0)

BARE_APP = '''\
"""A bare Starlette peer: streams PUT bodies to a file, answers GET with FileResponse."""

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

ROOT = Path(sys.argv[2])
# Starlette's FileResponse reads 64 KiB at a time by default; argv[3] sets it.
FILE_CHUNK = int(sys.argv[3])


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def put_file(request: Request) -> Response:
    size = 0
    with open(ROOT / request.path_params["name"], "wb") as f:
        async for chunk in request.stream():
            f.write(chunk)
            size += len(chunk)
    return JSONResponse({"size": size})


async def get_file(request: Request) -> Response:
    response = FileResponse(ROOT / request.path_params["name"])
    response.chunk_size = FILE_CHUNK
    return response


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/files/{name}", put_file, methods=["PUT"]),
        Route("/files/{name}", get_file, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    # The same call as `khazna serve`, so both servers run the same stack.
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", timeout_graceful_shutdown=5
    )
'''


# helpers ---------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def change_head(path: Path) -> None:
    """New first bytes, so each repetition stores new content (no dedup shortcut)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(32), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    for chunk in file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    # Write back what earlier steps left dirty, so no step pays for another's writes.
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# servers ---------------------------------------------------------------------------


def start_bare(work: Path, file_chunk: int) -> Server:
    app = work / "bare_peer.py"
    app.write_text(BARE_APP)
    root = work / "bare-files"
    root.mkdir()
    port = free_port()
    log = work / "bare-server.log"
    with open(log, "wb") as out_log:
        proc = subprocess.Popen(
            [sys.executable, str(app), str(port), str(root), str(file_chunk)],
            env=clean_env(),
            stdout=out_log,
            stderr=subprocess.STDOUT,
        )
    server = Server("bare starlette", f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(server, "/health")
    except BaseException:
        stop(server)
        raise
    return server


# measurements ----------------------------------------------------------------------


def upload(http: httpx.Client, url: str, src: Path) -> dict[str, Any]:
    size = src.stat().st_size
    r = http.put(
        url,
        content=file_chunks(src),
        headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )
    if r.status_code != 200:
        raise RuntimeError(f"PUT {url}: {r.status_code} {r.text[:500]}")
    answer: dict[str, Any] = r.json()
    return answer


def download(http: httpx.Client, url: str, dest: Path) -> int:
    done = 0
    with http.stream("GET", url) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:500]}")
        with open(dest, "wb") as out:
            for chunk in r.iter_bytes(CHUNK):
                out.write(chunk)
                done += len(chunk)
    return done


def floor_copy(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Results:
    times: dict[str, list[float]] = field(default_factory=dict)
    khazna_rss_growth: list[int] = field(default_factory=list)
    bare_rss_growth: list[int] = field(default_factory=list)

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def min(self, key: str) -> float:
        return min(self.times[key])

    def median(self, key: str) -> float:
        return statistics.median(self.times[key])


def run_once(
    rep: int,
    src: Path,
    work: Path,
    khazna: Server,
    bare: Server,
    kh_http: httpx.Client,
    bare_http: httpx.Client,
    res: Results,
) -> None:
    size = src.stat().st_size
    change_head(src)
    digest = sha256_of(src)  # also leaves the source in the page cache for every contender

    # 1. floor
    copy = work / "floor-copy.bin"
    res.add("floor_copy_fsync", timed(lambda: floor_copy(src, copy)))
    copy.unlink()
    res.add("floor_sha256", timed(lambda: sha256_of(src)))
    res.add("floor", res.times["floor_copy_fsync"][-1] + res.times["floor_sha256"][-1])

    # 2. Khazna one-shot upload
    file_url = f"/api/v1/datasets/{ORG}/{DATASET}/files/{FILE_NAME}"
    answer: dict[str, Any] = {}
    with RssSampler(khazna.proc.pid, children=False) as rss:

        def put_khazna() -> None:
            answer.update(upload(kh_http, file_url, src))

        res.add("khazna_upload", timed(put_khazna))
    res.khazna_rss_growth.append(rss.growth)
    if answer.get("sha256") != digest or answer.get("size") != size:
        raise RuntimeError(f"Khazna stored something else: {answer}")

    # 3. Khazna download: raw GET, then Client.pull (verifies SHA-256)
    got = work / "khazna-get.bin"
    res.add("khazna_download", timed(lambda: download(kh_http, file_url, got)))
    if got.stat().st_size != size:
        raise RuntimeError("Khazna GET returned a short file")
    got.unlink()
    pulled = work / f"pull-{rep}"
    with Client(khazna.url, token=khazna.token, timeout=600, state_dir=work / "client") as client:
        paths: list[Path] = []

        def pull() -> None:
            paths.extend(client.pull(f"{ORG}/{DATASET}", pulled))

        res.add("khazna_pull", timed(pull))
    if [p.stat().st_size for p in paths] != [size]:
        raise RuntimeError(f"pull returned {paths}")
    shutil.rmtree(pulled)

    # 4. bare Starlette peer
    with RssSampler(bare.proc.pid, children=False) as rss:
        res.add("bare_upload", timed(lambda: upload(bare_http, f"/files/{FILE_NAME}", src)))
    res.bare_rss_growth.append(rss.growth)
    got = work / "bare-get.bin"
    res.add("bare_download", timed(lambda: download(bare_http, f"/files/{FILE_NAME}", got)))
    if got.stat().st_size != size:
        raise RuntimeError("bare GET returned a short file")
    got.unlink()


ROWS = [
    ("floor: copyfile + fsync", "floor_copy_fsync"),
    ("floor: SHA-256", "floor_sha256"),
    ("floor: both", "floor"),
    ("khazna PUT (one-shot)", "khazna_upload"),
    ("bare starlette PUT", "bare_upload"),
    ("khazna GET", "khazna_download"),
    ("khazna Client.pull", "khazna_pull"),
    ("bare starlette GET", "bare_download"),
]


def report(size_mib: int, repeat: int, bare_chunk_kib: int, res: Results) -> dict[str, Any]:
    size = size_mib * MIB
    print(
        f"\n{size_mib} MiB, {repeat} repetition(s); MB/s = 10^6 bytes per second; "
        f"bare FileResponse reads {bare_chunk_kib} KiB at a time\n"
    )
    header = f"{'what':<26} {'min s':>9} {'median s':>9} {'MB/s best':>10} {'MB/s med':>9}"
    print(header)
    print("-" * len(header))
    for label, key in ROWS:
        lo, mid = res.min(key), res.median(key)
        print(
            f"{label:<26} {lo:>9.3f} {mid:>9.3f} {size / 1e6 / lo:>10.1f} {size / 1e6 / mid:>9.1f}"
        )

    def ratio(a: str, b: str) -> float:
        return round(res.median(a) / res.median(b), 3)

    ratios = {
        "khazna_upload_vs_floor": ratio("khazna_upload", "floor"),
        "khazna_upload_vs_bare_starlette": ratio("khazna_upload", "bare_upload"),
        "khazna_download_vs_bare_starlette": ratio("khazna_download", "bare_download"),
    }
    khazna_rss = max(res.khazna_rss_growth) / MIB
    bare_rss = max(res.bare_rss_growth) / MIB
    print("\nratios of median times (above 1 = Khazna slower):")
    for k, v in ratios.items():
        print(f"  {k:<36} {v:.3f}")
    print(
        f"\nserver peak RSS growth during upload (max over runs): khazna {khazna_rss:.1f} MiB, "
        f"bare starlette {bare_rss:.1f} MiB"
    )

    def med(key: str) -> float:
        return round(res.median(key), 4)

    return {
        "size_mib": size_mib,
        "repeat": repeat,
        "stat": "median",
        "upload_s": med("khazna_upload"),
        "upload_floor_s": med("floor"),
        "upload_floor_copy_fsync_s": med("floor_copy_fsync"),
        "upload_floor_sha256_s": med("floor_sha256"),
        "upload_bare_s": med("bare_upload"),
        "download_s": med("khazna_download"),
        "download_bare_s": med("bare_download"),
        "pull_s": med("khazna_pull"),
        **ratios,
        "server_peak_rss_growth_mib": round(khazna_rss, 1),
        "bare_peak_rss_growth_mib": round(bare_rss, 1),
        "bare_file_chunk_kib": bare_chunk_kib,
        "min_s": {key: round(res.min(key), 4) for _, key in ROWS},
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measure")
    parser.add_argument(
        "--bare-file-chunk-kib",
        type=int,
        default=1024,
        help="read size of the bare peer's FileResponse (Starlette's default is 64; "
        "1024 matches Khazna's own read size)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1 or args.bare_file_chunk_kib < 1:
        parser.error("--size-mib, --repeat and --bare-file-chunk-kib must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="khazna-bench-"))
    servers: list[Server] = []
    try:
        src = work / "source.bin"
        print(f"writing {args.size_mib} MiB of random bytes to {src}", file=sys.stderr)
        write_random_file(src, args.size_mib * MIB)
        khazna = start_khazna(work / "khazna-home")
        servers.append(khazna)
        bare = start_bare(work, args.bare_file_chunk_kib * 1024)
        servers.append(bare)
        with Client(khazna.url, token=khazna.token, state_dir=work / "client") as client:
            client.ensure_dataset(f"{ORG}/{DATASET}")
        res = Results()
        auth = {"Authorization": f"Bearer {khazna.token}"}
        with (
            httpx.Client(base_url=khazna.url, headers=auth, timeout=TIMEOUT) as kh_http,
            httpx.Client(base_url=bare.url, timeout=TIMEOUT) as bare_http,
        ):
            for rep in range(args.repeat):
                print(f"repetition {rep + 1}/{args.repeat}", file=sys.stderr)
                run_once(rep, src, work, khazna, bare, kh_http, bare_http, res)
        summary = report(args.size_mib, args.repeat, args.bare_file_chunk_kib, res)
    finally:
        for server in reversed(servers):
            stop(server)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
