"""Indices next to the data: Khazna's job against a plain rasterio + NumPy script.

Run from the repository root (after ``make install``):

    .venv/bin/python bench/indices.py [--tiles N] [--repeat R]

In one run, on one machine: a scene made of N x N copies of the real Sentinel-2 red and
NIR bands in ../shared/data/raster (1098 x 1098 pixels each; N=5 gives 5490 x 5490, a
quarter of a 10 m tile), written as COGs, is uploaded to a real ``khazna serve`` with its
real STAC item; then, R times each:

1. NDVI: ``POST /api/v1/indices`` until its job is done (the job reads the COGs window by
   window, writes the index, makes it a COG, stores it and commits a version);
2. the peer: a script that reads both bands whole with rasterio, computes NDVI with NumPy
   and writes a COG with rio-cogeo (the same output), in this process;
3. VCI over three dates (the NIR band scaled by 0.9, 1.0 and 1.1) the same two ways.

It prints pixels per second, the ratios (Khazna's time over the peer's) and the peak
memory of each side (the server's RSS growth during the job; the peer's own peak RSS
growth), and last one JSON object. The temporary folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
from common import RssSampler, job_end, machine, start_khazna, stop
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

REPO = Path(__file__).resolve().parents[1]
RASTER = REPO.parent / "shared" / "data" / "raster"
SCENE = "S2A_29RKH_20200219_0_L2A"
RED = RASTER / "S2A_29RKH_20200219_L2A_B04_red_100m_cog.tif"
NIR = RASTER / "S2A_29RKH_20200219_L2A_B08_nir_100m_cog.tif"
SIDECAR = RASTER / f"{SCENE}.stac.json"
NIR_SCALES = (0.9, 1.0, 1.1)


def tiled(source: Path, tiles: int, target: Path, scale: float = 1.0) -> None:
    """``source`` repeated ``tiles`` x ``tiles`` times (and scaled), as a COG on the same
    CRS with the same pixel size."""
    with rasterio.open(source) as src:
        band = src.read(1)
        profile = src.profile
    big = np.tile(band, (tiles, tiles))
    if scale != 1.0:
        big = np.clip(np.rint(big * scale), 0, 65535).astype(np.uint16)
        big[np.tile(band, (tiles, tiles)) == 0] = 0  # nodata stays nodata
    profile.update(width=big.shape[1], height=big.shape[0], tiled=True)
    with MemoryFile() as mem:
        with mem.open(**{**profile, "driver": "GTiff"}) as dst:
            dst.write(big, 1)
        cog_translate(mem, str(target), cog_profiles.get("deflate"), quiet=True)


def two_band(red: Path, nir: Path, target: Path) -> None:
    with rasterio.open(red) as r, rasterio.open(nir) as n:
        profile = {**r.profile, "count": 2, "driver": "GTiff", "tiled": True}
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(r.read(1), 1)
                dst.write(n.read(1), 2)
            cog_translate(mem, str(target), cog_profiles.get("deflate"), quiet=True)


def peer(index: str, inputs: list[Path], out: Path) -> tuple[float, float]:
    """Run the peer script in a process of its own: (its seconds, its peak RSS in MB),
    timed inside it, so that starting Python and importing rasterio do not count."""
    cmd = [sys.executable, __file__, "--peer", index, str(out), *map(str, inputs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return float(answer["seconds"]), float(answer["peak_mb"])


def run_peer(index: str, out: Path, inputs: list[Path]) -> None:
    t0 = time.perf_counter()
    if index == "ndvi":
        peer_ndvi(inputs[0], inputs[1], out)
    else:
        peer_vci(inputs, out)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def peer_ndvi(red: Path, nir: Path, out: Path) -> None:
    with rasterio.open(red) as r, rasterio.open(nir) as n:
        rv, nv = r.read(1).astype(np.float32), n.read(1).astype(np.float32)
        profile = r.profile
    valid = (rv != 0) & (nv != 0) & (rv + nv != 0)
    index = np.full(rv.shape, -9999.0, dtype=np.float32)
    np.divide(nv - rv, nv + rv, out=index, where=valid)
    write_cog(index, profile, out)


def peer_vci(dates: list[Path], out: Path) -> None:
    stack = []
    for path in dates:
        with rasterio.open(path) as src:
            rv, nv = src.read(1).astype(np.float32), src.read(2).astype(np.float32)
            profile = src.profile
        ok = (rv != 0) & (nv != 0) & (rv + nv != 0)
        ndvi = np.full(rv.shape, np.nan, dtype=np.float32)
        np.divide(nv - rv, nv + rv, out=ndvi, where=ok)
        stack.append(ndvi)
    cube = np.stack(stack)
    low, high = np.nanmin(cube, axis=0), np.nanmax(cube, axis=0)
    now = cube[-1]
    ok = np.isfinite(now) & (high > low)
    index = np.full(now.shape, -9999.0, dtype=np.float32)
    np.divide(100 * (now - low), high - low, out=index, where=ok)
    write_cog(index, profile, out)


def write_cog(index: np.ndarray, like: dict[str, Any], out: Path) -> None:
    profile = {**like, "count": 1, "dtype": "float32", "nodata": -9999.0, "driver": "GTiff"}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(index, 1)
        cog_translate(mem, str(out), cog_profiles.get("deflate"), quiet=True)


def khazna_job(
    http: httpx.Client, server: Any, body: dict[str, Any]
) -> tuple[float, float, dict[str, Any]]:
    """(seconds from the request to the job's end, server RSS growth in MB, job result)."""
    with RssSampler(server.proc.pid) as rss:
        t0 = time.perf_counter()
        r = http.post("/api/v1/indices", json=body)
        r.raise_for_status()
        job = r.json()["job"]["id"]
        state = job_end(http, job)
        elapsed = time.perf_counter() - t0
    if state["state"] != "done":
        raise RuntimeError(f"job {job} failed: {state['error']}")
    return elapsed, rss.growth / 2**20, state["result"]


def wait_jobs(http: httpx.Client, answers: list[dict[str, Any]]) -> None:
    for a in answers:
        if a.get("job"):
            job_end(http, a["job"]["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=5, help="copies of the scene per side")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)  # INDEX OUT INPUT...
    args = parser.parse_args(argv)
    if args.peer:
        run_peer(args.peer[0], Path(args.peer[1]), [Path(p) for p in args.peer[2:]])
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="khazna-bench-indices-"))
    server = None
    try:
        size = 1098 * args.tiles
        print(f"making a {size} x {size} scene from the real Sentinel-2 bands", flush=True)
        red, nir = tmp / f"{SCENE[:-6]}_B04.tif", tmp / f"{SCENE[:-6]}_B08.tif"
        tiled(RED, args.tiles, red)
        tiled(NIR, args.tiles, nir)
        dates = []
        for n, scale in enumerate(NIR_SCALES):
            scaled = tmp / f"nir-{n}.tif"
            tiled(NIR, args.tiles, scaled, scale)
            dates.append(tmp / f"d{n}.tif")
            two_band(red, scaled, dates[-1])
            scaled.unlink()
        server = start_khazna(tmp / "hub")
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=600
        )
        http.post("/api/v1/organizations", json={"name": "bench"}).raise_for_status()
        for name in ("scene", "series", "out"):
            http.post("/api/v1/datasets", json={"org": "bench", "name": name}).raise_for_status()
        answers = []
        for path in (SIDECAR, red, nir):
            url = f"/api/v1/datasets/bench/scene/files/{path.name}"
            answers.append(http.put(url, content=path.read_bytes()).raise_for_status().json())
        for n, path in enumerate(dates):
            url = f"/api/v1/datasets/bench/series/files/{path.name}"
            query = {"bands": "red,nir", "datetime": f"2020-0{n + 1}-01T00:00:00Z"}
            answers.append(
                http.put(url, params=query, content=path.read_bytes()).raise_for_status().json()
            )
        wait_jobs(http, answers)
        pixels = size * size
        runs: dict[str, list[float]] = {k: [] for k in ("ndvi", "ndvi_peer", "vci", "vci_peer")}
        rss: dict[str, float] = {"ndvi": 0.0, "vci": 0.0}
        for rep in range(args.repeat):
            print(f"repetition {rep + 1}/{args.repeat}", flush=True)
            for index, collection in (("ndvi", "bench.scene"), ("vci", "bench.series")):
                body = {"index": index, "collection": collection, "target": "bench/out",
                        "name": f"{index}-{rep}"}  # fmt: skip
                seconds, grown, _ = khazna_job(http, server, body)
                runs[index].append(seconds)
                rss[index] = max(rss[index], grown)
            for index, inputs in (("ndvi", [red, nir]), ("vci", dates)):
                seconds, peak = peer(index, inputs, tmp / f"peer-{index}.tif")
                runs[f"{index}_peer"].append(seconds)
                rss[f"{index}_peer"] = max(rss.get(f"{index}_peer", 0.0), peak)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"\n{size} x {size} pixels ({pixels / 1e6:.1f} Mpx); VCI over {len(dates)} dates")
        print(f"{'':32}{'median s':>10}{'Mpx/s':>10}")
        for k in runs:
            print(f"{k:32}{med[k]:>10.3f}{pixels / med[k] / 1e6:>10.2f}")
        print(f"server RSS growth during a job: NDVI {rss['ndvi']:.0f} MB, VCI {rss['vci']:.0f} MB")
        print(
            f"peer script's peak RSS: NDVI {rss['ndvi_peer']:.0f} MB, "
            f"VCI {rss['vci_peer']:.0f} MB (the whole process)"
        )
        out = {
            "pixels": pixels,
            "dates": len(dates),
            "repeat": args.repeat,
            "ndvi_s": round(med["ndvi"], 3),
            "ndvi_peer_s": round(med["ndvi_peer"], 3),
            "vci_s": round(med["vci"], 3),
            "vci_peer_s": round(med["vci_peer"], 3),
            "ndvi_px_per_s": round(pixels / med["ndvi"]),
            "ndvi_peer_px_per_s": round(pixels / med["ndvi_peer"]),
            "vci_px_per_s": round(pixels / med["vci"]),
            "vci_peer_px_per_s": round(pixels / med["vci_peer"]),
            "ndvi_vs_peer": round(med["ndvi"] / med["ndvi_peer"], 3),
            "vci_vs_peer": round(med["vci"] / med["vci_peer"], 3),
            "server_rss_growth_mb": {"ndvi": round(rss["ndvi"]), "vci": round(rss["vci"])},
            "peer_peak_rss_mb": {"ndvi": round(rss["ndvi_peer"]), "vci": round(rss["vci_peer"])},
            "machine": machine(),
        }
        print(json.dumps(out))
        return 0
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
