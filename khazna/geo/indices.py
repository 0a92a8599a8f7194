"""Vegetation indices computed next to the data: NDVI of a scene, and the Vegetation
Condition Index of a scene against its collection's history, with drought classes and
zonal statistics by polygon.

    NDVI = (NIR - Red) / (NIR + Red)
    VCI  = 100 * (NDVI - NDVI_min) / (NDVI_max - NDVI_min)

per pixel, NDVI_min and NDVI_max over the series (Kogan 1990, 1995). Drought classes of
the VCI, as FAO's Agricultural Stress Index System and UN-SPIDER use them: below 10
extreme, 10-20 severe, 20-30 moderate, 30-40 mild, 40 and above none.

Inputs are COGs the hub already holds (the rasters of STAC items the caller may read);
band roles come from ``eo:bands`` common names (``red``, ``nir``) or are given. Everything
is computed window by window, so memory stays bounded whatever the scene's size. The
result is published like an upload, as a new version of a dataset the caller may write:
a COG of the index (and one of the classes), a ``.stac.json`` sidecar naming the inputs,
which the raster ingest makes a STAC item, and, when polygons are given, a CSV of zonal
statistics, which the table ingest makes a table SQL can query.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as reproject
from sqlalchemy import Engine

from khazna import __version__
from khazna.access.accounts import Accounts, Principal
from khazna.access.audit import AuditNote
from khazna.catalog.names import check_file_name
from khazna.catalog.service import Catalog
from khazna.checksums import file_sha256
from khazna.errors import BadRequest, KhaznaError, NotFound, Unauthorized, Unprocessable
from khazna.geo import cog
from khazna.geo.rasters import Rasters, split_collection_id
from khazna.geo.search import ItemQuery, parse_query
from khazna.jobs.queue import Job, JobQueue, PermanentFailure
from khazna.storage.blobstore import BlobStore

log = logging.getLogger("khazna.geo")

INDICES_JOB = "indices"
NODATA = -9999.0  # of the index COGs (float32)
CLASS_NODATA = 0  # of the drought class COG (uint8)
# (upper bound, class number, name): VCI below the bound, after the classes before it.
DROUGHT_CLASSES = (
    (10.0, 1, "extreme"),
    (20.0, 2, "severe"),
    (30.0, 3, "moderate"),
    (40.0, 4, "mild"),
    (math.inf, 5, "none"),
)
MAX_ZONES_BYTES = 4 << 20  # a zones GeoJSON file or body
MAX_SERIES = 400  # dates in a VCI history
WINDOW = 1024  # pixels on a side of the windows computed at once
GDAL_CACHE_MB = 128  # GDAL's block cache in an indices job (its default: 5 % of the RAM)


# --- the computation (no hub in here) ------------------------------------------------------


def ndvi(red: np.ndarray, nir: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 NDVI where ``valid`` and NIR + Red is not 0, NODATA elsewhere."""
    r = red.astype(np.float32)
    n = nir.astype(np.float32)
    total = n + r
    ok = valid & (total != 0)
    out = np.full(r.shape, NODATA, dtype=np.float32)
    np.divide(n - r, total, out=out, where=ok)
    return out


def vci(series: np.ndarray, at: int) -> np.ndarray:
    """VCI of date ``at`` against ``series`` (dates x rows x cols of NDVI, NODATA where
    unknown): NODATA where that date is unknown or the history's max equals its min."""
    known = series != NODATA
    history = np.where(known, series, np.nan)
    with np.errstate(all="ignore"):  # all-nan pixels: nodata below
        low = np.nanmin(history, axis=0)
        high = np.nanmax(history, axis=0)
    now = series[at]
    ok = known[at] & np.isfinite(low) & (high > low)
    out = np.full(now.shape, NODATA, dtype=np.float32)
    np.divide(
        100.0 * (now - low.astype(np.float32)),
        (high - low).astype(np.float32),
        out=out,
        where=ok,
    )
    return out


def drought_classes(index: np.ndarray) -> np.ndarray:
    """uint8 drought class (1 extreme .. 5 none) of VCI values, 0 where VCI is NODATA."""
    out = np.full(index.shape, CLASS_NODATA, dtype=np.uint8)
    known = index != NODATA
    done = ~known
    for upper, number, _ in DROUGHT_CLASSES:
        here = ~done & (index < upper)
        out[here] = number
        done |= here
    return out


def windows(height: int, width: int, size: int) -> Iterator[Window]:
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


@dataclass(frozen=True)
class Band:
    """One band of one input COG: a local path once the job has it."""

    path: Path
    band: int  # 1-based
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0

    def read(self, src: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) of the window; scale and offset applied only when an offset
        makes them matter (NDVI is a ratio: a scale alone cancels out)."""
        data = src.read(self.band, window=window)
        valid = np.ones(data.shape, dtype=bool) if self.nodata is None else data != self.nodata
        if self.offset:
            data = data.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        return data, valid


@dataclass
class Scene:
    red: Band
    nir: Band


def _profile(like: Any, dtype: str, nodata: float) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": like.width,
        "height": like.height,
        "count": 1,
        "dtype": dtype,
        "crs": like.crs,
        "transform": like.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }


def compute(
    scenes: list[Scene], at: int, kind: str, out: Path, classes_out: Path | None, size: int
) -> int:
    """Write the index of ``scenes[at]`` (NDVI, or VCI against all of ``scenes``) to
    ``out`` (and VCI's drought classes to ``classes_out``), window by window; returns the
    number of windows. Every input must be on one grid."""
    handles = [(rasterio.open(s.red.path), rasterio.open(s.nir.path)) for s in scenes]
    try:
        first = handles[0][0]
        grid = (first.crs, first.transform, first.width, first.height)
        for red, nir in handles:
            for src in (red, nir):
                if (src.crs, src.transform, src.width, src.height) != grid:
                    raise Unprocessable(
                        "the inputs are not on one grid (same CRS, transform and size); "
                        "resample them to one grid first"
                    )
        count = 0
        with rasterio.open(out, "w", **_profile(first, "float32", NODATA)) as dst:
            cls = (
                rasterio.open(classes_out, "w", **_profile(first, "uint8", CLASS_NODATA))
                if classes_out is not None
                else None
            )
            try:
                for window in windows(first.height, first.width, size):
                    wanted = range(len(scenes)) if kind == "vci" else [at]
                    values = {}
                    for i in wanted:
                        red, red_ok = scenes[i].red.read(handles[i][0], window)
                        nir, nir_ok = scenes[i].nir.read(handles[i][1], window)
                        values[i] = ndvi(red, nir, red_ok & nir_ok)
                    if kind == "vci":
                        index = vci(np.stack([values[i] for i in wanted]), at)
                    else:
                        index = values[at]
                    dst.write(index, 1, window=window)
                    if cls is not None:
                        cls.write(drought_classes(index), 1, window=window)
                    count += 1
            finally:
                if cls is not None:
                    cls.close()
        return count
    finally:
        for red, nir in handles:
            red.close()
            nir.close()


@dataclass
class _ZoneStats:
    pixels: int = 0
    valid: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared differences from the mean (Chan et al.'s merge)
    low: float = math.inf
    high: float = -math.inf
    classes: dict[int, int] = field(default_factory=dict)


def zonal_statistics(
    index_path: Path,
    classes_path: Path | None,
    zones: list[dict[str, Any]],
    out_csv: Path,
    size: int,
) -> int:
    """Per zone (GeoJSON features in WGS84): its pixels, the valid ones, and the index's
    mean, min, max and standard deviation (and the share of each drought class) over them,
    written as CSV; returns the number of rows. Zones are rasterized window by window (a
    pixel belongs to a zone when its centre is inside)."""
    with rasterio.open(index_path) as src:
        to_raster = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform
        shapes: list[BaseGeometry] = [reproject(to_raster, z["geometry"]) for z in zones]
        stats = [_ZoneStats() for _ in zones]
        cls = rasterio.open(classes_path) if classes_path is not None else None
        try:
            for window in windows(src.height, src.width, size):
                area = box(*window_bounds(window, src.transform))
                inside = [i for i, g in enumerate(shapes) if g.intersects(area)]
                if not inside:
                    continue
                values = src.read(1, window=window)
                classes = cls.read(1, window=window) if cls is not None else None
                transform = src.window_transform(window)
                for i in inside:
                    mask = geometry_mask([mapping(shapes[i])], values.shape, transform, invert=True)
                    s = stats[i]
                    s.pixels += int(mask.sum())
                    picked = values[mask & (values != NODATA)].astype(np.float64)
                    if picked.size:
                        n, mean = int(picked.size), float(picked.mean())
                        delta, total = mean - s.mean, s.valid + n
                        s.m2 += (
                            float(np.square(picked - mean).sum()) + delta**2 * s.valid * n / total
                        )
                        s.mean += delta * n / total
                        s.valid = total
                        s.low = min(s.low, float(picked.min()))
                        s.high = max(s.high, float(picked.max()))
                    if classes is not None:
                        counts = np.bincount(classes[mask], minlength=6)
                        for number in range(1, 6):
                            s.classes[number] = s.classes.get(number, 0) + int(counts[number])
        finally:
            if cls is not None:
                cls.close()
    columns = _zone_columns(zones)
    header = ["zone", *columns, "pixels", "valid_pixels", "mean", "min", "max", "std"]
    if classes_path is not None:
        header += [f"{name}_share" for _, _, name in DROUGHT_CLASSES]
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for z, s in zip(zones, stats, strict=True):
            average = s.mean if s.valid else None
            std = math.sqrt(s.m2 / s.valid) if s.valid else None
            row: list[Any] = [z["id"], *(z["properties"].get(c) for c in columns)]
            row += [s.pixels, s.valid, _num(average), _num(s.low if s.valid else None)]
            row += [_num(s.high if s.valid else None), _num(std)]
            if classes_path is not None:
                row += [
                    _num(s.classes.get(n, 0) / s.valid if s.valid else None)
                    for _, n, _ in DROUGHT_CLASSES
                ]
            writer.writerow(row)
    return len(zones)


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 9))


_STATS = {"zone", "pixels", "valid_pixels", "mean", "min", "max", "std"}


def _zone_columns(zones: list[dict[str, Any]]) -> list[str]:
    """The zones' scalar properties, as columns (in first-seen order)."""
    seen: list[str] = []
    for z in zones:
        for key, value in z["properties"].items():
            if key not in seen and key not in _STATS and isinstance(value, str | int | float):
                seen.append(key)
    return seen


def parse_zones(data: Any) -> list[dict[str, Any]]:
    """A GeoJSON FeatureCollection of polygons in WGS84 as zones: id, properties, geometry.
    Anything else is a 400 that says what is wrong."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise BadRequest("zones must be a GeoJSON FeatureCollection", field="zones")
    features = data.get("features")
    if not isinstance(features, list) or not features:
        raise BadRequest("zones has no features", field="zones")
    zones = []
    for n, feature in enumerate(features, start=1):
        try:
            geometry = shape(feature["geometry"])
        except Exception:  # shapely raises several kinds
            raise BadRequest(f"zone {n} has no valid geometry", field="zones") from None
        if geometry.geom_type not in ("Polygon", "MultiPolygon") or geometry.is_empty:
            raise BadRequest(f"zone {n} is a {geometry.geom_type}, not a polygon", field="zones")
        props = feature.get("properties") or {}
        zone_id = feature.get("id", n)
        zones.append({"id": zone_id, "properties": props, "geometry": geometry})
    return zones


# --- the hub's side: a request, a job, a version ----------------------------------------------


@dataclass(frozen=True)
class IndexRequest:
    index: str  # ndvi | vci
    collection: str
    items: list[str] | None
    datetime: str | None
    at: str | None
    bands: dict[str, str] | None
    target: str
    name: str | None
    zones: Any


def _role_band(item: dict[str, Any], role: str, given: str | None) -> tuple[str, int]:
    """(asset key, 1-based band) of the band with this role: given as ``KEY`` or
    ``KEY:BAND``, else the asset band whose eo:bands common_name is the role."""
    assets = item["assets"]
    if given is not None:
        key, _, number = given.partition(":")
        if key not in assets:
            raise BadRequest(
                f"bands.{role}: item {item['id']!r} has no asset {key!r} "
                f"(it has {', '.join(sorted(assets))})",
                field="bands",
            )
        if number and not number.isdigit():
            raise BadRequest(f"bands.{role} must be ASSET or ASSET:BAND", field="bands")
        return key, int(number or 1)
    for key, asset in sorted(assets.items()):
        for n, band in enumerate(asset.get("eo:bands") or [], start=1):
            if isinstance(band, dict) and band.get("common_name") == role:
                return key, n
    raise Unprocessable(
        f"item {item['id']!r} has no band whose eo:bands common_name is {role!r}: "
        f"name its bands at upload (?bands=) or give bands.{role} as ASSET or ASSET:BAND",
        field="bands",
    )


def _grids(item: dict[str, Any], inputs: list[dict[str, Any]]) -> set[Any]:
    """The grids (CRS, shape, transform) of the assets an item gives the inputs."""
    found = set()
    for spec in inputs:
        if spec["item"] != item["id"]:
            continue
        for role in ("red", "nir"):
            asset = item["assets"][spec[role]["asset"]]
            where = asset if "proj:shape" in asset else item["properties"]
            found.add(
                (
                    where.get("proj:code"),
                    tuple(where.get("proj:shape") or ()),
                    tuple(where.get("proj:transform") or ()),
                )
            )
    return found


def _raster_band(item: dict[str, Any], key: str, band: int) -> tuple[float, float]:
    """(scale, offset) from the asset's raster:bands, when given."""
    bands = item["assets"][key].get("raster:bands")
    if isinstance(bands, list) and len(bands) >= band and isinstance(bands[band - 1], dict):
        b = bands[band - 1]
        return float(b.get("scale", 1.0) or 1.0), float(b.get("offset", 0.0) or 0.0)
    return 1.0, 0.0


class Indices:
    def __init__(
        self,
        engine: Engine,
        catalog: Catalog,
        rasters: Rasters,
        accounts: Accounts,
        queue: JobQueue,
        blobs: BlobStore,
        work_dir: Path,
        window: int = WINDOW,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.rasters = rasters
        self.accounts = accounts
        self.queue = queue
        self.blobs = blobs
        self.work_dir = work_dir
        self.window = window

    # the request ---------------------------------------------------------------------------

    def request(self, who: Principal, req: IndexRequest) -> dict[str, Any]:
        """Check everything the caller can get wrong now, then queue the job."""
        if not who.authenticated:
            raise Unauthorized("computing an index needs an API token: send one")
        target_org, _, target_name = req.target.partition("/")
        if not target_name:
            raise BadRequest("target must be ORG/DATASET", field="target")
        target_id = self.catalog.check_writable(who, target_org, target_name)
        items = self._series(who, req)
        at = self._at(items, req)
        inputs = []
        for row in items:
            roles = {}
            for role in ("red", "nir"):
                key, band = _role_band(row.item, role, (req.bands or {}).get(role))
                asset = row.item["assets"][key]
                ref, store = self.rasters.cog_of(
                    who, row.org, row.dataset, asset["file"], row.version, asset.get("member")
                )
                scale, offset = _raster_band(row.item, key, band)
                roles[role] = {
                    "asset": key,
                    "band": band,
                    "sha256": ref.file.sha256,
                    "store": "blobs" if store is self.blobs else "derived",
                    "scale": scale,
                    "offset": offset,
                }
            inputs.append(
                {
                    "collection": row.collection,
                    "item": row.item["id"],
                    "version": row.version,
                    "datetime": row.item["properties"].get("datetime"),
                    **roles,
                }
            )
        grids = {g for row in items for g in _grids(row.item, inputs)}
        if len(grids) > 1:
            raise Unprocessable(
                "the inputs are not on one grid (same CRS, transform and size); "
                "resample them to one grid first",
                field="items",
            )
        name = req.name or f"{req.index}-{items[at].item['id']}"
        files = self._file_names(name, req.index, req.zones is not None)
        zones = self._zones(who, req.zones) if req.zones is not None else None
        payload = {
            "index": req.index,
            "user_id": who.user_id,
            "target": req.target,
            "name": name,
            "at": at,
            "inputs": inputs,
            "zones": zones,
            "files": files,
        }
        with self.engine.begin() as conn:
            job = self.queue.enqueue(conn, INDICES_JOB, payload, dataset_id=target_id)
        return {
            "job": {"id": job, "state": "queued"},
            "name": name,
            "files": list(files.values()),
            "inputs": [f"{i['collection']}/{i['item']}" for i in inputs],
        }

    def _series(self, who: Principal, req: IndexRequest) -> list[Any]:
        split_collection_id(req.collection)
        self.rasters.collection(who, req.collection)  # 404 for a collection not seen
        query = ItemQuery(collections=(req.collection,))
        if req.datetime is not None:  # the same intervals as a STAC search
            query = parse_query({"datetime": req.datetime}, collection=req.collection)
        ids = tuple(req.items) if req.items else None
        query = dataclasses.replace(query, ids=ids, limit=MAX_SERIES + 1)
        rows, matched = self.rasters.search(who, query)
        if req.items:
            missing = sorted(set(req.items) - {r.item["id"] for r in rows})
            if missing:
                raise NotFound(f"no item {missing[0]!r} in collection {req.collection!r}")
        if not rows:
            raise Unprocessable(f"collection {req.collection!r} has no item to compute from")
        if matched > MAX_SERIES:
            raise BadRequest(f"at most {MAX_SERIES} items in a series", field="items")
        if req.index == "ndvi" and len(rows) != 1:
            raise BadRequest(
                f"ndvi is computed for one item; {len(rows)} match (give items: [ID])",
                field="items",
            )
        if req.index == "vci":
            undated = [r.item["id"] for r in rows if not r.item["properties"].get("datetime")]
            if undated:
                raise Unprocessable(
                    f"a VCI series needs dated items; {undated[0]!r} has no datetime",
                    field="items",
                )
            rows.sort(key=lambda r: (r.item["properties"]["datetime"], r.item["id"]))
            if len(rows) < 2:
                raise Unprocessable("a VCI needs a history of at least 2 items", field="items")
        return rows

    def _at(self, rows: list[Any], req: IndexRequest) -> int:
        if req.at is None:
            return len(rows) - 1  # the latest
        for i, r in enumerate(rows):
            if r.item["id"] == req.at:
                return i
        raise BadRequest(f"at: {req.at!r} is not one of the series' items", field="at")

    def _file_names(self, name: str, index: str, zones: bool) -> dict[str, str]:
        files = {"index": f"{name}-index.tif", "item": f"{name}.stac.json"}
        if index == "vci":
            files["classes"] = f"{name}-classes.tif"
        if zones:
            files["zones"] = f"{name}-zones.csv"
        for f in files.values():
            try:
                check_file_name(f)
            except KhaznaError as exc:
                raise BadRequest(f"name: {exc.message}", field="name") from None
        return files

    def _zones(self, who: Principal, given: Any) -> Any:
        """The zones as GeoJSON: given inline, or ``{"dataset": "ORG/NAME", "file": F}``
        the caller may read."""
        if isinstance(given, dict) and "file" in given and "dataset" in given:
            org, _, name = str(given["dataset"]).partition("/")
            ref = self.catalog.resolve_file(who, org, name, str(given["file"]))
            if ref.file.size > MAX_ZONES_BYTES:
                raise BadRequest(f"zones file is over {MAX_ZONES_BYTES} bytes", field="zones")
            raw = b"".join(self.blobs.read_range(ref.file.sha256, 0, ref.file.size))
            try:
                given = json.loads(raw)
            except ValueError:
                raise BadRequest(f"{ref.file.name!r} is not GeoJSON", field="zones") from None
        elif len(json.dumps(given)) > MAX_ZONES_BYTES:
            raise BadRequest(f"zones is over {MAX_ZONES_BYTES} bytes", field="zones")
        parse_zones(given)  # refused now rather than in the job
        return given

    # the job -------------------------------------------------------------------------------

    def run(self, job: Job) -> dict[str, Any]:
        p = job.payload
        who = self.accounts.principal_of(int(p["user_id"]))
        org, _, name = str(p["target"]).partition("/")
        work = self.work_dir / f"job-{job.id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            # GDAL's block cache is its memory beyond the windows: held to GDAL_CACHE_MB.
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
                return self._run(job, who, org, name, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, job: Job, who: Principal, org: str, name: str, work: Path) -> dict[str, Any]:
        p = job.payload
        try:
            self.catalog.check_writable(who, org, name)  # rights may have changed
            scenes = [self._scene(i, work) for i in p["inputs"]]
            with rasterio.open(scenes[0].red.path) as first:
                pixels = first.width * first.height
            files = p["files"]
            index = work / files["index"]
            raw = work / "raw-index.tif"
            raw_classes = work / "raw-classes.tif" if "classes" in files else None
            started = time.perf_counter()
            count = compute(scenes, int(p["at"]), p["index"], raw, raw_classes, self.window)
            computed = time.perf_counter()
            cog.to_cog(raw, index)
            out = {"index": index}
            if raw_classes is not None:
                out["classes"] = work / files["classes"]
                cog.to_cog(raw_classes, out["classes"])
            if p.get("zones") is not None:
                out["zones"] = work / files["zones"]
                zonal_statistics(
                    raw, raw_classes, parse_zones(p["zones"]), out["zones"], self.window
                )
            zoned = time.perf_counter()
            out["item"] = work / files["item"]
            out["item"].write_text(json.dumps(self._sidecar(p), indent=1), encoding="utf-8")
            stored = {files[k]: self._store(path) for k, path in out.items()}
            note = AuditNote(
                who,
                "upload",
                {
                    "files": [
                        {"name": n, "sha256": b.sha256, "size": b.size} for n, b in stored.items()
                    ],
                    "computed": p["index"],
                    "job": job.id,
                    "inputs": [f"{i['collection']}/{i['item']}" for i in p["inputs"]],
                },
            )
            committed = self.catalog.commit_version(
                who,
                org,
                name,
                stored,
                message=f"{p['index'].upper()} computed by job {job.id}",
                note=note,
            )
        except KhaznaError as exc:  # rights, residency, grids: trying again won't help
            raise PermanentFailure(exc.message) from exc
        return {
            "dataset": p["target"],
            "version": committed.version,
            "item": p["name"],
            "files": sorted(stored),
            "windows": count,
            "jobs": committed.jobs,
            # Seconds: computing the index, then making COGs and zonal statistics.
            "compute_s": round(computed - started, 3),
            "cog_and_zones_s": round(zoned - computed, 3),
            "pixels": pixels,
        }

    def _scene(self, given: dict[str, Any], work: Path) -> Scene:
        def band(role: str) -> Band:
            spec = given[role]
            store = self.blobs if spec["store"] == "blobs" else self.rasters.derived
            folder = work / f"{role}-{spec['sha256'][:16]}"
            folder.mkdir(exist_ok=True)
            path = store.local_file(spec["sha256"], folder)
            with rasterio.open(path) as src:
                nodata = src.nodatavals[spec["band"] - 1] if spec["band"] <= src.count else None
                if spec["band"] > src.count:
                    raise Unprocessable(
                        f"{given['item']}: asset {spec['asset']} has {src.count} band(s), "
                        f"not {spec['band']}"
                    )
            return Band(path, int(spec["band"]), nodata, spec["scale"], spec["offset"])

        return Scene(band("red"), band("nir"))

    def _store(self, path: Path) -> Any:
        sha = file_sha256(path)
        return self.blobs.place(path, sha, path.stat().st_size)

    def _sidecar(self, p: dict[str, Any]) -> dict[str, Any]:
        """The output's STAC Item: the raster ingest joins the COGs to it by their names."""
        at = p["inputs"][int(p["at"])]
        files = p["files"]
        assets: dict[str, Any] = {
            "index": {
                "href": files["index"],
                "title": p["index"].upper(),
                "roles": ["data"],
                "eo:bands": [{"name": p["index"], "description": _DESCRIPTION[p["index"]]}],
                "raster:bands": [{"data_type": "float32", "nodata": NODATA}],
            }
        }
        if "classes" in files:
            assets["classes"] = {
                "href": files["classes"],
                "title": "Drought classes",
                "roles": ["data"],
                "eo:bands": [{"name": "drought_class", "description": _CLASSES}],
                "raster:bands": [{"data_type": "uint8", "nodata": CLASS_NODATA}],
            }
        return {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": p["name"],
            "properties": {
                "datetime": at["datetime"],
                "processing:lineage": _DESCRIPTION[p["index"]]
                + f", computed by Khazna {__version__} next to the data",
                "processing:software": {"khazna": __version__},
                "processing:datetime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "khazna:index": p["index"],
                "khazna:derived_from": [
                    {
                        "collection": i["collection"],
                        "item": i["item"],
                        "version": i["version"],
                        "red": {k: i["red"][k] for k in ("asset", "band", "sha256")},
                        "nir": {k: i["nir"][k] for k in ("asset", "band", "sha256")},
                    }
                    for i in p["inputs"]
                ],
            },
            "geometry": None,
            "links": [],
            "assets": assets,
        }


_DESCRIPTION = {
    "ndvi": "NDVI = (NIR - Red) / (NIR + Red)",
    "vci": "VCI = 100 * (NDVI - NDVI_min) / (NDVI_max - NDVI_min) over the series, per pixel",
}
_CLASSES = "VCI drought class: 1 extreme (<10), 2 severe (10-20), 3 moderate (20-30), " + (
    "4 mild (30-40), 5 none (>=40), 0 no data"
)
