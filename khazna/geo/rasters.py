"""Rasters of the hub: their ingest job, the STAC items of each dataset, and reading them.

A GeoTIFF uploaded to a dataset gets a job (as a table file does, khazna/tables/registry.py):
it is checked with rasterio, converted to a Cloud Optimized GeoTIFF unless it already is
one, and described. The STAC items of a dataset's current version are rebuilt whenever a
version is made or one of its rasters is ready. Every lookup goes through the catalog's
access policy: a dataset the caller may not see has no collection and no items for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, true

from khazna import db
from khazna.access.accounts import Principal
from khazna.access.policy import AccessPolicy
from khazna.catalog.service import Catalog, FileEntry, ResolvedFile
from khazna.checksums import file_sha256
from khazna.errors import BadRequest, Conflict, KhaznaError, NotFound, Unprocessable
from khazna.geo import bundles, cog
from khazna.geo.preview import Channel
from khazna.geo.scenes import SIDECAR_SUFFIX, build_item, group
from khazna.geo.search import ItemQuery, parse_rfc3339
from khazna.jobs.queue import Job, JobQueue, PermanentFailure
from khazna.storage.blobstore import BlobStore

log = logging.getLogger("khazna.geo")

RASTER_JOB = "ingest_raster"
# A sidecar STAC Item larger than this is not read (the real Earth Search item is 21 kB).
MAX_SIDECAR_BYTES = 1 << 20


# The eo extension's common band names (https://github.com/stac-extensions/eo, v1.1.0).
COMMON_NAMES = frozenset(
    {"coastal", "blue", "green", "red", "yellow", "pan", "rededge", "nir", "nir08", "nir09"}
    | {"cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12"}
)
_BAND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def parse_raster_options(params: Any) -> dict[str, Any]:
    """Options given at upload: ``?datetime=`` the acquisition time of a raster without one
    in its tags; ``?bands=nir,red,...`` the name of each band in order (an eo common name
    such as red or nir gives the band its role)."""
    out: dict[str, Any] = {}
    if when := params.get("datetime"):
        out["datetime"] = parse_rfc3339(when).isoformat().replace("+00:00", "Z")
    if (given := params.get("bands")) is not None:
        names = [n.strip().lower() for n in given.split(",")]
        bad = [n for n in names if not _BAND_NAME.fullmatch(n)]
        if bad or not names:
            raise BadRequest(
                f"bands must be band names separated by commas (letters, digits, _ and -), "
                f"not {given!r}",
                field="bands",
            )
        if len(set(names)) != len(names):
            raise BadRequest(f"bands names a band twice: {given!r}", field="bands")
        out["bands"] = names
    return out


def eo_bands(names: list[str]) -> list[dict[str, str]]:
    return [{"name": n, "common_name": n} if n in COMMON_NAMES else {"name": n} for n in names]


def collection_id(org: str, name: str) -> str:
    """Dataset slugs hold no dot, so ``org.name`` is unambiguous."""
    return f"{org}.{name}"


def split_collection_id(value: str) -> tuple[str, str]:
    org, dot, name = value.partition(".")
    if not dot or not org or not name:
        raise NotFound(f"no collection {value!r}")
    return org, name


@dataclass(frozen=True)
class ItemRow:
    org: str
    dataset: str
    version: int
    item: dict[str, Any]

    @property
    def collection(self) -> str:
        return collection_id(self.org, self.dataset)

    def feature(self) -> dict[str, Any]:
        """The item as a STAC Item without links and assets: what a search filter sees."""
        item = self.item
        return {
            "type": "Feature",
            "id": item["id"],
            "collection": self.collection,
            "geometry": item["geometry"],
            "bbox": item["bbox"],
            "properties": item["properties"],
        }


class Rasters:
    def __init__(
        self,
        engine: Engine,
        catalog: Catalog,
        policy: AccessPolicy,
        blobs: BlobStore,
        derived: BlobStore,
        queue: JobQueue,
        work_dir: Path,
        max_member_bytes: int = 5 << 30,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.policy = policy
        self.blobs = blobs
        self.derived = derived
        self.queue = queue
        self.work_dir = work_dir
        # The largest raster a zip member may expand to: the upload limit of one file.
        self.max_member_bytes = max_member_bytes
        work_dir.mkdir(parents=True, exist_ok=True)
        catalog.version_hooks.append(self.on_version)
        catalog.file_checks.append(self.check_upload)

    # scheduling ------------------------------------------------------------------------

    def on_version(
        self, conn: Connection, dataset_id: int, files: list[FileEntry]
    ) -> dict[str, int]:
        """In the commit's transaction: queue the raster ingests it needs, rebuild items."""
        jobs: dict[str, int] = {}
        for f in files:
            wanted = cog.is_raster(f.name) or bundles.is_bundle_name(f.name)
            if not wanted or self._asset(conn, f.sha256) is not None:
                continue
            pending = self._pending_job(conn, f.sha256)
            jobs[f.name] = (
                pending
                if pending is not None
                else self.queue.enqueue(
                    conn,
                    RASTER_JOB,
                    {"source_sha256": f.sha256, "file_name": f.name},
                    dataset_id=dataset_id,
                    file_name=f.name,
                )
            )
        self._refresh(conn, dataset_id)
        return jobs

    def _asset(self, conn: Connection, sha: str) -> Any:
        a = db.raster_assets
        return conn.execute(select(a).where(a.c.source_sha256 == sha)).first()

    def _pending_job(self, conn: Connection, sha: str) -> int | None:
        j = db.jobs
        for row in conn.execute(
            select(j.c.id, j.c.payload).where(
                j.c.kind == RASTER_JOB, j.c.state.in_(("queued", "running"))
            )
        ):
            if row.payload.get("source_sha256") == sha:
                return int(row.id)
        return None

    def _check_bundle(self, file_name: str, path: Path) -> None:
        """A zip of rasters: within bounds, and every raster member readable."""
        try:
            rasters, _ = bundles.members(path, self.max_member_bytes)
            for member in rasters:
                with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="upload-") as tmp:
                    part = bundles.extract(path, member, Path(tmp) / "member.tif")
                    try:
                        cog.inspect(part)
                    except cog.NotARaster as exc:
                        if exc.damaged:
                            raise bundles.BadBundle(f"{member.name!r} {exc}") from None
        except bundles.BadBundle as exc:
            raise Unprocessable(
                f"{file_name!r}: {exc}; nothing was stored", file=file_name
            ) from None

    @staticmethod
    def checks(file_name: str) -> bool:
        """Whether an upload of this name is checked (so spooled) before it is stored."""
        return cog.is_raster(file_name) or bundles.is_bundle_name(file_name)

    def spool(self) -> IO[bytes]:
        """A new temporary file for an arriving raster, removed by the caller."""
        return tempfile.NamedTemporaryFile(
            dir=self.work_dir, prefix="upload-", suffix=".tif", delete=False
        )

    def check_upload(self, file_name: str, path: Path, options: dict[str, Any]) -> None:
        """Before a raster's version is made (``Catalog.file_checks``): a file rasterio
        cannot read (damaged, truncated, not a TIFF), or whose bands do not match the names
        given at upload, is refused with a 422 and nothing is stored. An intact TIFF without
        georeferencing is let through: it stays a plain file, and its job says why."""
        if bundles.is_bundle_name(file_name):
            self._check_bundle(file_name, path)
            return
        if not cog.is_raster(file_name):
            return
        try:
            info = cog.inspect(path)
        except cog.NotARaster as exc:
            if not exc.damaged:  # a picture without coordinates: kept, said on the dataset
                return
            raise Unprocessable(
                f"{file_name!r} is not a readable GeoTIFF: {exc}; nothing was stored",
                file=file_name,
            ) from None
        names = options.get("bands")
        if names is not None and len(names) != len(info.bands):
            raise Unprocessable(
                f"bands names {len(names)} band(s) ({', '.join(names)}) but {file_name!r} has "
                f"{len(info.bands)}",
                file=file_name,
                field="bands",
            )

    # the ingest job --------------------------------------------------------------------

    def run_ingest(self, job: Job) -> dict[str, Any]:
        sha = job.payload["source_sha256"]
        with self.engine.connect() as conn:
            done = self._asset(conn, sha)
        if done is not None:
            self._refresh_holders(sha)
            return {"status": "already ingested"}
        work = self.work_dir / f"job-{job.id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            source = self.blobs.local_file(sha, work)
            if bundles.is_bundle_name(job.payload["file_name"]):
                result = self._ingest_bundle(job, sha, source, work)
                return {**result, "items": self._refresh_holders(sha)}
            try:
                info = cog.inspect(source)
                valid, _ = cog.is_cog(source)
                if valid:  # already a COG: the original is the asset, nothing is copied
                    cog_sha, cog_size, converted = sha, self.blobs.size(sha), False
                else:
                    self._check_residency(sha)
                    target = work / "cog.tif"
                    cog.to_cog(source, target)
                    cog_sha, cog_size, converted = (
                        file_sha256(target),
                        target.stat().st_size,
                        True,
                    )
                    self.derived.place(target, cog_sha, cog_size)
            except cog.NotARaster as exc:
                error = f"{job.payload['file_name']!r} is not a readable GeoTIFF: {exc}"
                self._record(sha, status="failed", error=error)
                raise PermanentFailure(error) from exc
            self._record(
                sha,
                status="ready",
                cog_sha256=cog_sha,
                cog_size=cog_size,
                info=info.as_dict(),
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        items = self._refresh_holders(sha)
        return {"cog_sha256": cog_sha, "converted": converted, "items": items}

    def _ingest_bundle(self, job: Job, sha: str, source: Path, work: Path) -> dict[str, Any]:
        """A zip: each raster member made a COG of its own in the derived store (always
        converted, even one that was a COG: a member has no blob of its own to serve), its
        description kept under the zip's row. A zip without rasters is just a file."""
        name = job.payload["file_name"]
        try:
            rasters, sidecar_members = bundles.members(source, self.max_member_bytes)
        except bundles.BadBundle as exc:
            return self._bundle_failed(sha, f"{name!r} {exc}")
        sidecars = {}
        for m in sidecar_members:
            try:
                item = json.loads(bundles.read_small(source, m))
            except (ValueError, OSError):
                continue
            if isinstance(item, dict) and item.get("type") == "Feature":
                sidecars[m.base] = item
        if not rasters:
            self._record(sha, status="none", info={"members": {}})
            return {"status": "no raster in this zip"}
        self._check_residency(sha)
        described: dict[str, Any] = {}
        for member in rasters:
            part = work / "member.tif"
            target = work / "cog.tif"
            try:
                bundles.extract(source, member, part)
                info = cog.inspect(part)
                cog.to_cog(part, target)
            except (bundles.BadBundle, cog.NotARaster) as exc:
                return self._bundle_failed(sha, f"{name!r}: {member.name!r}: {exc}")
            cog_sha, cog_size = file_sha256(target), target.stat().st_size
            self.derived.place(target, cog_sha, cog_size)
            described[member.name] = {
                **info.as_dict(),
                "sha256": file_sha256(part),
                "cog_sha256": cog_sha,
                "cog_size": cog_size,
            }
            part.unlink()
        self._record(sha, status="ready", info={"members": described, "sidecars": sidecars})
        return {"members": sorted(described)}

    def _bundle_failed(self, sha: str, error: str) -> dict[str, Any]:
        self._record(sha, status="failed", error=error)
        raise PermanentFailure(error)

    def _check_residency(self, sha: str) -> None:
        """A converted COG goes where the original is; refuse it when a dataset holding the
        original has since come to require another jurisdiction (as tables do)."""
        d, o, v, vf = db.datasets, db.organizations, db.versions, db.version_files
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(o.c.name, d.c.name.label("ds"), d.c.residency)
                .join(o, o.c.id == d.c.org_id)
                .join(v, v.c.dataset_id == d.c.id)
                .join(vf, vf.c.version_id == v.c.id)
                .where(vf.c.sha256 == sha, d.c.residency.is_not(None))
                .distinct()
            ).all()
        for r in rows:
            try:
                self.catalog.check_residency(str(r.name), str(r.ds), r.residency)
            except KhaznaError as exc:
                raise PermanentFailure(exc.message) from exc

    def _record(self, sha: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                db.insert_ignore(
                    conn,
                    db.raster_assets,
                    {"source_sha256": sha, "created_at": db.utcnow(), **values},
                )
            )

    def _refresh_holders(self, sha: str) -> int:
        """Rebuild the items of every dataset whose current version holds the blob."""
        d, v, vf = db.datasets, db.versions, db.version_files
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(d.c.id)
                .join(v, and_(v.c.dataset_id == d.c.id, v.c.number == d.c.current_version))
                .join(vf, vf.c.version_id == v.c.id)
                .where(vf.c.sha256 == sha)
                .distinct()
            ).scalars()
            dataset_ids = sorted(int(i) for i in ids)
        count = 0
        for dataset_id in dataset_ids:
            with self.catalog.writing() as conn:
                # Locked like a commit's, so a commit and this rebuild follow each other.
                conn.execute(select(d.c.id).where(d.c.id == dataset_id).with_for_update()).first()
                count += self._refresh(conn, dataset_id)
        return count

    # items -------------------------------------------------------------------------------

    def _refresh(self, conn: Connection, dataset_id: int) -> int:
        """Replace the dataset's items by those of its current version whose rasters are
        all ready; returns how many there are."""
        number = conn.execute(
            select(db.datasets.c.current_version).where(db.datasets.c.id == dataset_id)
        ).scalar_one()
        files = self.catalog.files_of(conn, dataset_id, int(number))
        infos: dict[str, dict[str, Any]] = {}
        datetimes: dict[str, str | None] = {}
        pending: set[str] = set()
        zipped: dict[str, dict[str, Any]] = {}  # sidecar items found in zips
        file_names = {f.name for f in files}
        for f in files:
            if bundles.is_bundle_name(f.name):
                zipped |= self._bundle_infos(conn, f, file_names, infos, datetimes)
                continue
            if not cog.is_raster(f.name):
                continue
            asset = self._asset(conn, f.sha256)
            if asset is None:
                pending.add(f.name)
            elif asset.status == "ready":
                infos[f.name] = dict(asset.info) | {
                    "cog_sha256": asset.cog_sha256,
                    "converted": asset.cog_sha256 != f.sha256,
                }
                datetimes[f.name] = f.table_options.get("datetime")
                if (names := f.table_options.get("bands")) is not None:
                    infos[f.name]["eo:bands"] = eo_bands(names)
        sidecars = zipped | {
            f.name: item
            for f in files
            if f.name.lower().endswith(SIDECAR_SUFFIX) and (item := self._sidecar(f)) is not None
        }
        conn.execute(delete(db.stac_items).where(db.stac_items.c.dataset_id == dataset_id))
        rows = []
        for scene in group([*infos, *pending], sidecars):
            if any(name in pending for name in scene.files.values()):
                continue  # complete once every band is ready
            item = build_item(scene, infos, datetimes)
            when = item["properties"].get("datetime")
            try:
                moment = parse_rfc3339(when) if isinstance(when, str) else None
            except BadRequest:  # a sidecar's own datetime, malformed: the item has none
                moment = None
            if moment is None:
                item["properties"]["datetime"] = None
            for key, asset in item["assets"].items():
                info = infos[scene.files[key]]
                # Served as the original file, or as its converted COG (api/stac.py).
                asset["converted"] = info["converted"]
                if "bundle" in info:  # a zip's member: the zip, and the member in it
                    asset["file"], asset["member"] = info["bundle"], info["member"]
            west, south, east, north = item["bbox"]
            rows.append(
                {
                    "dataset_id": dataset_id,
                    "item_id": item["id"],
                    "version": int(number),
                    "datetime": moment,
                    "west": west,
                    "south": south,
                    "east": east,
                    "north": north,
                    "item": item,
                }
            )
        if rows:
            conn.execute(insert(db.stac_items), rows)
        return len(rows)

    def _bundle_infos(
        self,
        conn: Connection,
        f: FileEntry,
        names: set[str],
        infos: dict[str, dict[str, Any]],
        datetimes: dict[str, str | None],
    ) -> dict[str, dict[str, Any]]:
        """Add a ready zip's rasters to ``infos`` under their own names (the zip's name
        and theirs when another file of the version has it), so that they group into scenes
        like uploaded band files; returns the sidecar items the zip holds."""
        asset = self._asset(conn, f.sha256)
        if asset is None or asset.status != "ready":
            return {}
        for member, info in asset.info["members"].items():
            base = member.rsplit("/", 1)[-1]
            shown = base if base not in names and base not in infos else f"{f.name}/{base}"
            infos[shown] = info | {"converted": True, "bundle": f.name, "member": member}
            datetimes[shown] = f.table_options.get("datetime")
        return dict(asset.info.get("sidecars") or {})

    def _sidecar(self, f: FileEntry) -> dict[str, Any] | None:
        """A sidecar STAC Item's JSON, or None when it is not one (then it is just a file)."""
        if f.size > MAX_SIDECAR_BYTES:
            return None
        try:
            data = json.loads(b"".join(self.blobs.read_range(f.sha256, 0, f.size)))
        except (ValueError, OSError):
            return None
        if not isinstance(data, dict) or data.get("type") != "Feature":
            return None
        return data

    # reading -----------------------------------------------------------------------------

    def _visible(self, who: Principal) -> Any:
        return self.policy.visible_datasets(who)

    def collections(self, who: Principal, only: str | None = None) -> list[dict[str, Any]]:
        """The datasets with items the caller may see, each with its extent."""
        d, o, s = db.datasets, db.organizations, db.stac_items
        query = (
            select(
                d.c.id,
                o.c.name.label("org"),
                d.c.name,
                d.c.title,
                d.c.description,
                d.c.license,
                d.c.access,
                d.c.current_version,
                func.min(s.c.west).label("west"),
                func.min(s.c.south).label("south"),
                func.max(s.c.east).label("east"),
                func.max(s.c.north).label("north"),
                func.min(s.c.datetime).label("first"),
                func.max(s.c.datetime).label("last"),
                func.count().label("items"),
            )
            .join(o, o.c.id == d.c.org_id)
            .join(s, s.c.dataset_id == d.c.id)
            .where(self._visible(who))
            .group_by(d.c.id, o.c.name)
            .order_by(o.c.name, d.c.name)
        )
        if only is not None:
            org, name = split_collection_id(only)
            query = query.where(o.c.name == org, d.c.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "id": collection_id(r.org, r.name),
                "org": r.org,
                "name": r.name,
                "title": r.title,
                "description": r.description,
                "license": r.license,
                "access": r.access,
                "version": r.current_version,
                "bbox": [r.west, r.south, r.east, r.north],
                "interval": [db.iso(r.first), db.iso(r.last)],
                "items": int(r.items),
            }
            for r in rows
        ]

    def collection(self, who: Principal, cid: str) -> dict[str, Any]:
        org, name = split_collection_id(cid)
        self.catalog.visible_row(who, org, name)  # 404 for a dataset the caller may not see
        found = self.collections(who, cid)
        if not found:
            raise NotFound(f"no collection {cid!r}: dataset {org}/{name} holds no rasters")
        return found[0]

    def item_properties(self, who: Principal, cid: str | None = None) -> list[dict[str, Any]]:
        """The properties of every item the caller may see (in collection ``cid``): what
        the queryables are made of."""
        d, o, s = db.datasets, db.organizations, db.stac_items
        query = (
            select(s.c.item)
            .join(d, d.c.id == s.c.dataset_id)
            .join(o, o.c.id == d.c.org_id)
            .where(self._visible(who))
        )
        if cid is not None:
            self.collection(who, cid)  # 404 first
            org, name = split_collection_id(cid)
            query = query.where(o.c.name == org, d.c.name == name)
        with self.engine.connect() as conn:
            return [dict(r.item)["properties"] for r in conn.execute(query)]

    def search(self, who: Principal, query: ItemQuery) -> tuple[list[ItemRow], int]:
        """One page of the items matching ``query`` the caller may see, and how many match."""
        d, o, s = db.datasets, db.organizations, db.stac_items
        cond: list[Any] = [self._visible(who)]
        if query.collections is not None:
            pairs = [c.partition(".") for c in query.collections]
            wanted = [and_(o.c.name == a, d.c.name == b) for a, dot, b in pairs if dot]
            if not wanted:
                return [], 0
            cond.append(or_(*wanted))
        if query.ids is not None:
            cond.append(s.c.item_id.in_(list(query.ids)))
        box = query.bbox
        if query.intersects is not None:
            box = query.intersects.bounds  # candidates; the exact test follows
        if box is not None:
            west, south, east, north = box
            cond.append(and_(s.c.south <= north, s.c.north >= south))
            if west <= east:
                cond.append(and_(s.c.west <= east, s.c.east >= west))
        if query.has_datetime:
            cond.append(s.c.datetime.is_not(None))
            if query.start is not None:
                cond.append(s.c.datetime >= query.start)
            if query.end is not None:
                cond.append(s.c.datetime <= query.end)
        base = (
            select(o.c.name.label("org"), d.c.name, s.c.version, s.c.item)
            .join(d, d.c.id == s.c.dataset_id)
            .join(o, o.c.id == d.c.org_id)
            .where(and_(true(), *cond))
            .order_by(o.c.name, d.c.name, self._binary(s.c.item_id))
        )
        with self.engine.connect() as conn:
            if query.exact:
                matched = conn.execute(
                    select(func.count()).select_from(base.order_by(None).subquery())
                ).scalar_one()
                rows = conn.execute(base.limit(query.limit).offset(query.offset)).all()
            else:
                rows = conn.execute(base).all()
        found = [ItemRow(r.org, r.name, int(r.version), dict(r.item)) for r in rows]
        if query.exact:
            return found, int(matched)
        kept = [f for f in found if query.keeps(f.feature())]
        return kept[query.offset : query.offset + query.limit], len(kept)

    def _binary(self, column: Any) -> Any:
        """Item ids in code-point order on both databases (SQLite's default), so that pages
        and their order do not depend on a PostgreSQL locale."""
        return column.collate("C") if self.engine.dialect.name == "postgresql" else column

    def item(self, who: Principal, cid: str, item_id: str) -> ItemRow:
        self.collection(who, cid)
        rows, _ = self.search(who, ItemQuery(collections=(cid,), ids=(item_id,), limit=1))
        if not rows:
            raise NotFound(f"no item {item_id!r} in collection {cid!r}")
        return rows[0]

    def cog_of(
        self,
        who: Principal,
        org: str,
        name: str,
        file_name: str,
        version: int | None,
        member: str | None = None,
    ) -> tuple[ResolvedFile, BlobStore]:
        """The COG of a raster file the caller may read, as a file to serve and the store
        holding it: the converted COG, or the upload itself when it already was one; for a
        zip, the COG of its raster ``member``."""
        ref = self.catalog.resolve_file(who, org, name, file_name, version)
        if member is not None:
            return self._member_cog(ref, file_name, member)
        if not cog.is_raster(file_name):
            raise NotFound(f"{file_name!r} is not a raster")
        asset = self._ready(ref, f"raster {file_name!r}")
        stem = file_name.rsplit(".", 1)[0]
        entry = FileEntry(f"{stem}.cog.tif", int(asset.cog_size), asset.cog_sha256, "image/tiff")
        store = self.blobs if asset.cog_sha256 == ref.file.sha256 else self.derived
        return dataclasses.replace(ref, file=entry), store

    def channels(self, who: Principal, cid: str, item_id: str) -> tuple[ItemRow, list[Channel]]:
        """What a quick-look or a map tile of an item draws, once the caller may read its
        data: red, green and blue by their eo:bands common names, else the first band of
        its first asset. Read in place, through the store's own view of the COG."""
        row = self.item(who, cid, item_id)
        assets = row.item["assets"]
        found: dict[str, tuple[str, int]] = {}
        for key, asset in sorted(assets.items()):
            for n, band in enumerate(asset.get("eo:bands") or [], start=1):
                name = band.get("common_name") if isinstance(band, dict) else None
                if name in ("red", "green", "blue") and name not in found:
                    found[name] = (key, n)
        if len(found) == 3:
            chosen = [found["red"], found["green"], found["blue"]]
        else:
            chosen = [(sorted(assets)[0], 1)]
        out = []
        for key, band in chosen:
            asset = assets[key]
            ref, store = self.cog_of(
                who, row.org, row.dataset, asset["file"], row.version, asset.get("member")
            )
            out.append(Channel(store.url_of(ref.file.sha256), band, store.filesystem))
        return row, out

    def _ready(self, ref: ResolvedFile, what: str) -> Any:
        """The file's raster_assets row once its job is done: 409 while it runs, 422 when
        it failed."""
        with self.engine.connect() as conn:
            asset = self._asset(conn, ref.file.sha256)
            pending = None if asset is not None else self._pending_job(conn, ref.file.sha256)
        if asset is None:
            raise Conflict(f"{what} is being prepared (job {pending}); try again soon", job=pending)
        if asset.status == "failed":
            raise Unprocessable(str(asset.error))
        return asset

    def _member_cog(
        self, ref: ResolvedFile, file_name: str, member: str
    ) -> tuple[ResolvedFile, BlobStore]:
        if not bundles.is_bundle_name(file_name):
            raise NotFound(f"{file_name!r} is not a zip: it has no member {member!r}")
        asset = self._ready(ref, f"zip {file_name!r}")
        found = (asset.info or {}).get("members", {}).get(member)
        if found is None:
            raise NotFound(f"zip {file_name!r} has no raster {member!r}")
        stem = member.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        entry = FileEntry(
            f"{stem}.cog.tif", int(found["cog_size"]), found["cog_sha256"], "image/tiff"
        )
        return dataclasses.replace(ref, file=entry), self.derived

    def is_converted(self, sha: str) -> bool:
        with self.engine.connect() as conn:
            asset = self._asset(conn, sha)
        return asset is not None and asset.cog_sha256 not in (None, sha)

    def describe(self, files: list[FileEntry]) -> dict[str, dict[str, Any]]:
        """The ``raster`` entry of each raster file of a version, by file name."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for f in files:
                if bundles.is_bundle_name(f.name):
                    asset = self._asset(conn, f.sha256)
                    if asset is not None and asset.status == "failed":
                        out[f.name] = {"status": "failed", "error": asset.error}
                    elif asset is not None and asset.status == "ready":
                        members = sorted(asset.info["members"])
                        out[f.name] = {"status": "ready", "members": members}
                    continue  # pending, or no raster in it: just a file
                if not cog.is_raster(f.name):
                    continue
                asset = self._asset(conn, f.sha256)
                if asset is None:
                    out[f.name] = {"status": "pending", "job": self._pending_job(conn, f.sha256)}
                elif asset.status == "failed":
                    out[f.name] = {"status": "failed", "error": asset.error}
                else:
                    out[f.name] = {
                        "status": "ready",
                        "converted": asset.cog_sha256 != f.sha256,
                        "crs": asset.info["crs"],
                        "bbox": asset.info["bbox"],
                    }
        return out

    def annotate(self, dataset: dict[str, Any]) -> dict[str, Any]:
        """A dataset's metadata with ``raster`` added to each of its raster files."""
        files = [
            FileEntry(f["name"], f["size"], f["sha256"], f["media_type"]) for f in dataset["files"]
        ]
        rasters = self.describe(files)
        for f in dataset["files"]:
            if f["name"] in rasters:
                f["raster"] = rasters[f["name"]]
        return dataset

    def known_cogs(self) -> list[str]:
        """Converted COGs held in the derived store (an already-COG upload is its blob)."""
        a = db.raster_assets
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.c.source_sha256, a.c.cog_sha256, a.c.info)).all()
        found = [
            str(r.cog_sha256)
            for r in rows
            if r.cog_sha256 is not None and r.cog_sha256 != r.source_sha256
        ]
        for r in rows:  # the COGs of zips' members
            found += [m["cog_sha256"] for m in ((r.info or {}).get("members") or {}).values()]
        return found
