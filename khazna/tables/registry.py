"""Which files are tables, their stable SQL names, their ingest, and access to them.

A table is derived from a file's bytes and the options it is read with, so identical
uploads share one Parquet. Every lookup goes through the catalog's access check: a table
the caller may not read does not exist for them.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select, update

import khazna.tables.ingest as ingesting
from khazna import db
from khazna.access.accounts import SYSTEM_USER, Principal
from khazna.access.audit import AuditLog, Subject
from khazna.access.policy import AccessPolicy
from khazna.catalog.service import Catalog, FileEntry
from khazna.checksums import file_sha256
from khazna.errors import BadRequest, Conflict, KhaznaError, NotFound, Unprocessable
from khazna.jobs.queue import Job, JobQueue, PermanentFailure
from khazna.storage.blobstore import BlobStore
from khazna.tables.early import EarlyIngests
from khazna.tables.query import Column, TableRef

log = logging.getLogger("khazna.tables")

INGEST_JOB = "ingest_table"
PROFILE_JOB = "profile_table"
_OPTION_NAMES = ("encoding", "delimiter", "header", "sheet")


def parse_table_options(params: Mapping[str, str]) -> dict[str, Any]:
    """Declared reading options from a query string; refused with a 400 when malformed."""
    out: dict[str, Any] = {}
    if enc := params.get("encoding"):
        try:
            out["encoding"] = codecs.lookup(enc).name
        except LookupError as exc:
            raise BadRequest(f"unknown text encoding {enc!r}", field="encoding") from exc
    if (delim := params.get("delimiter")) is not None:
        delim = "\t" if delim in ("\\t", "tab") else delim
        if len(delim) != 1:
            raise BadRequest("delimiter must be one character (or 'tab')", field="delimiter")
        out["delimiter"] = delim
    if (header := params.get("header")) is not None:
        if header.lower() not in ("true", "false", "1", "0"):
            raise BadRequest("header must be true or false", field="header")
        out["header"] = header.lower() in ("true", "1")
    if sheet := params.get("sheet"):
        out["sheet"] = sheet
    return out


def options_key(options: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(options), sort_keys=True).encode()).hexdigest()


def sql_identifier(org: str, dataset: str, file_name: str) -> str:
    """``org_dataset_stem`` in lowercase letters, digits and underscores."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    raw = f"{org}_{dataset}_{stem}".lower()
    name = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", raw)).strip("_")
    return name if not name[:1].isdigit() else f"t_{name}"


@dataclass(frozen=True)
class QueryTable:
    """A table a query may read, and the dataset version it is of."""

    ref: TableRef
    subject: Subject


_t, _d, _o, _v, _vf, _a = (
    db.table_names,
    db.datasets,
    db.organizations,
    db.versions,
    db.version_files,
    db.table_assets,
)
# What a query needs of the tables it names, in one statement built once (building it per
# request cost more than running it): the access check's columns, the audit entry's dataset
# and version, and the assets of the current version's file (not their profile, a large JSON).
_READABLE = (
    select(
        _t.c.sql_name,
        _d.c.id,
        _d.c.access,
        _d.c.org_id,
        _o.c.name.label("org"),
        _d.c.name.label("dataset"),
        _d.c.current_version,
        _vf.c.table_options,
        _a.c.options_key,
        _a.c.status,
        _a.c.parquet_sha256,
        _a.c.rows,
        _a.c.columns,
    )
    .join(_d, _d.c.id == _t.c.dataset_id)
    .join(_o, _o.c.id == _d.c.org_id)
    .join(_v, and_(_v.c.dataset_id == _d.c.id, _v.c.number == _d.c.current_version))
    .join(_vf, and_(_vf.c.version_id == _v.c.id, _vf.c.name == _t.c.file_name))
    .outerjoin(_a, _a.c.source_sha256 == _vf.c.sha256)
    .where(_t.c.sql_name.in_(bindparam("names", expanding=True)))
)

_ASSET = select(_a).where(
    _a.c.source_sha256 == bindparam("sha"), _a.c.options_key == bindparam("key")
)
_SQL_NAME = select(_t.c.sql_name).where(
    _t.c.dataset_id == bindparam("dataset_id"), _t.c.file_name == bindparam("file_name")
)

# The hub acting on its own, in the audit log: jobs run for nobody in particular.
_HUB = Principal(user_id=None, name=SYSTEM_USER, is_admin=True)


class Tables:
    def __init__(
        self,
        engine: Engine,
        catalog: Catalog,
        policy: AccessPolicy,
        blobs: BlobStore,
        derived: BlobStore,
        queue: JobQueue,
        work_dir: Path,
        memory_limit: str = "512MB",
        threads: int = 2,
        early_min_bytes: int = 0,
        audit: AuditLog | None = None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.catalog = catalog
        self.policy = policy
        self.blobs = blobs
        self.derived = derived
        self.queue = queue
        self.work_dir = work_dir
        self.memory_limit = memory_limit
        self.threads = threads
        work_dir.mkdir(parents=True, exist_ok=True)
        # Conversions started while an upload arrives (early.py); the jobs take them.
        self.early = EarlyIngests(work_dir, self._convert, early_min_bytes)
        # Only one process uses an SQLite hub's folder: whatever is there was left behind.
        self.early.clear_stale(everything=engine.dialect.name == "sqlite")
        catalog.version_hooks.append(self.on_version)

    # scheduling ------------------------------------------------------------------------

    def on_version(
        self, conn: Connection, dataset_id: int, files: list[FileEntry]
    ) -> dict[str, int]:
        """In the commit's transaction: name each table file, queue the ingests it needs."""
        org, dataset = self._names(conn, dataset_id)
        jobs: dict[str, int] = {}
        for f in files:
            if not ingesting.is_table(f.name):
                continue
            self._ensure_sql_name(conn, dataset_id, org, dataset, f.name)
            key = options_key(f.table_options)
            if self._asset(conn, f.sha256, key) is not None:
                continue
            pending = self._pending_job(conn, f.sha256, key)
            jobs[f.name] = (
                pending
                if pending is not None
                else self.queue.enqueue(
                    conn,
                    INGEST_JOB,
                    {
                        "source_sha256": f.sha256,
                        "options": f.table_options,
                        "options_key": key,
                        "file_name": f.name,
                    },
                    dataset_id=dataset_id,
                    file_name=f.name,
                )
            )
        return jobs

    def _names(self, conn: Connection, dataset_id: int) -> tuple[str, str]:
        d, o = db.datasets, db.organizations
        row = conn.execute(
            select(o.c.name, d.c.name.label("ds"))
            .join(o, o.c.id == d.c.org_id)
            .where(d.c.id == dataset_id)
        ).one()
        return str(row.name), str(row.ds)

    def _ensure_sql_name(
        self, conn: Connection, dataset_id: int, org: str, dataset: str, file_name: str
    ) -> str:
        t = db.table_names
        existing = conn.execute(
            select(t.c.sql_name).where(t.c.dataset_id == dataset_id, t.c.file_name == file_name)
        ).scalar()
        if existing is not None:
            return str(existing)
        base = sql_identifier(org, dataset, file_name)
        taken = set(
            conn.execute(select(t.c.sql_name).where(t.c.sql_name.like(f"{base}%"))).scalars()
        )
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        conn.execute(t.insert().values(dataset_id=dataset_id, file_name=file_name, sql_name=name))
        return name

    def _asset(self, conn: Connection, sha: str, key: str) -> Any:
        return conn.execute(_ASSET, {"sha": sha, "key": key}).first()

    def _pending_job(self, conn: Connection, sha: str, key: str) -> int | None:
        j = db.jobs
        for row in conn.execute(
            select(j.c.id, j.c.payload).where(
                j.c.kind == INGEST_JOB, j.c.state.in_(("queued", "running"))
            )
        ):
            if row.payload.get("source_sha256") == sha and row.payload.get("options_key") == key:
                return int(row.id)
        return None

    # the ingest job --------------------------------------------------------------------

    def run_ingest(self, job: Job) -> dict[str, Any]:
        sha, key = job.payload["source_sha256"], job.payload["options_key"]
        early = self.early.claim(sha, key)
        with self.engine.connect() as conn:
            if self._asset(conn, sha, key) is not None:
                if early is not None:
                    early.cancel("already ingested")
                return {"status": "already ingested"}
        work = self.work_dir / f"job-{job.id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            self._check_residency(sha, job)
            options = ingesting.IngestOptions(**job.payload["options"])
            result = early_result = early.result() if early is not None else None
            if result is None:
                # On local disk the blob itself; from object storage a copy in the work folder.
                source = self.blobs.local_file(sha, work)
                try:
                    result = self._convert(source, job.payload["file_name"], work, options)
                except ingesting.NotATable as exc:
                    self._record(sha, key, status="failed", error=str(exc))
                    raise PermanentFailure(str(exc)) from exc
            digest = result.parquet_sha256 or file_sha256(result.parquet)
            self.derived.place(result.parquet, digest, result.parquet.stat().st_size)
            columns = [{"name": c.name, "type": c.type} for c in result.columns]
            self._record(
                sha,
                key,
                status="ready",
                parquet_sha256=digest,
                rows=result.rows,
                columns=columns,
                problems=[p.__dict__ for p in result.problems],
                problem_count=result.problem_count,
                encoding=result.encoding,
                delimiter=result.delimiter,
            )
            # Queryable from here on; the statistics come from a job of their own.
            with self.engine.begin() as conn:
                self.queue.enqueue(conn, PROFILE_JOB, {"source_sha256": sha, "options_key": key})
            return {
                "rows": result.rows,
                "parquet_sha256": digest,
                "problem_count": result.problem_count,
                # Converted while the upload arrived (early.py), or by this job.
                "converted_while_uploading": early_result is not None,
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if early is not None:
                early.remove()

    def _convert(
        self,
        source: Path,
        file_name: str,
        work: Path,
        options: ingesting.IngestOptions,
        **kwargs: Any,
    ) -> ingesting.IngestResult:
        return ingesting.ingest(
            source,
            file_name,
            work,
            options,
            memory_limit=self.memory_limit,
            threads=self.threads,
            **kwargs,
        )

    def close(self) -> None:
        self.early.close()

    def run_profile(self, job: Job) -> dict[str, Any]:
        sha, key = job.payload["source_sha256"], job.payload["options_key"]
        with self.engine.connect() as conn:
            asset = self._asset(conn, sha, key)
        if asset is None or asset.status != "ready":
            raise PermanentFailure("the table to profile does not exist")
        columns = [ingesting.Column(c["name"], c["type"]) for c in asset.columns]
        work = self.work_dir / f"job-{job.id}"
        shutil.rmtree(work, ignore_errors=True)
        if self.derived.filesystem is not None:
            work.mkdir(parents=True)  # the Parquet is copied here from object storage
        try:
            stats = ingesting.profile(
                self.derived.local_file(asset.parquet_sha256, work),
                columns,
                memory_limit=self.memory_limit,
                threads=self.threads,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with self.engine.begin() as conn:
            conn.execute(
                update(db.table_assets)
                .where(db.table_assets.c.source_sha256 == sha, db.table_assets.c.options_key == key)
                .values(profile=stats)
            )
        return {"columns": len(stats)}

    def _check_residency(self, sha: str, job: Job) -> None:
        """Derived Parquet goes where the original is; refuse it when a dataset holding the
        original has since come to require another jurisdiction. A refusal is in the audit
        log, by the hub itself (no request made it), on the dataset."""
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
                if self.audit is not None:
                    detail = {
                        "status": exc.status,
                        "rule": exc.message,
                        "job": job.id,
                        "job_kind": job.kind,
                        "file": job.payload.get("file_name"),
                    }
                    self.audit.record(
                        _HUB, "denied", org=str(r.name), dataset=str(r.ds), detail=detail,
                        client="job",
                    )  # fmt: skip
                raise PermanentFailure(exc.message) from exc

    def _record(self, sha: str, key: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                db.insert_ignore(
                    conn,
                    db.table_assets,
                    {"source_sha256": sha, "options_key": key, "created_at": db.utcnow(), **values},
                )
            )

    # reading -----------------------------------------------------------------------------

    def describe(self, files: list[FileEntry], dataset_id: int) -> dict[str, dict[str, Any]]:
        """The ``table`` entry of each table file of a version, by file name."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            names = {
                r.file_name: r.sql_name
                for r in conn.execute(
                    select(db.table_names).where(db.table_names.c.dataset_id == dataset_id)
                )
            }
            for f in files:
                if not ingesting.is_table(f.name):
                    continue
                key = options_key(f.table_options)
                asset = self._asset(conn, f.sha256, key)
                entry: dict[str, Any] = {"sql_name": names.get(f.name)}
                if asset is None:
                    entry |= {"status": "pending", "job": self._pending_job(conn, f.sha256, key)}
                elif asset.status == "failed":
                    entry |= {"status": "failed", "error": asset.error}
                else:
                    entry |= {
                        "status": "ready",
                        "rows": asset.rows,
                        "columns": asset.columns,
                        "problem_count": asset.problem_count,
                    }
                out[f.name] = entry
        return out

    def annotate(self, dataset: dict[str, Any]) -> dict[str, Any]:
        """A dataset's metadata with ``table`` added to each of its table files."""
        with self.engine.connect() as conn:
            dataset_id = self.catalog.dataset_id(conn, dataset["org"], dataset["name"])
            files = self.catalog.files_of(conn, dataset_id, dataset["version"])
        tables = self.describe(files, dataset_id)
        for f in dataset["files"]:
            if f["name"] in tables:
                f["table"] = tables[f["name"]]
        return dataset

    def table(
        self, who: Principal, org: str, name: str, file_name: str, version: int | None = None
    ) -> tuple[TableRef, Any, int]:
        """The table of a file the caller may read, with its asset row and the version it
        is of; 404/409/422 else."""
        ref = self.catalog.resolve_file(who, org, name, file_name, version)
        if not ingesting.is_table(file_name):
            raise NotFound(f"{file_name!r} is not a table")
        with self.engine.connect() as conn:
            key = options_key(ref.file.table_options)
            asset = self._asset(conn, ref.file.sha256, key)
            sql_name = conn.execute(
                _SQL_NAME, {"dataset_id": ref.dataset_id, "file_name": file_name}
            ).scalar()
            pending = None if asset is not None else self._pending_job(conn, ref.file.sha256, key)
        if asset is None:
            raise Conflict(
                f"table {file_name!r} is being prepared (job {pending}); try again soon",
                job=pending,
            )
        if asset.status != "ready":
            raise Unprocessable(f"{file_name!r} could not be read as a table: {asset.error}")
        return self._ref(str(sql_name), asset), asset, ref.version

    def _ref(self, sql_name: str, asset: Any) -> TableRef:
        return TableRef(
            sql_name=sql_name,
            parquet=self.derived.url_of(asset.parquet_sha256),
            filesystem=self.derived.filesystem,
            rows=int(asset.rows),
            columns=[Column(c["name"], c["type"]) for c in asset.columns],
        )

    def readable(self, who: Principal, sql_names: set[str]) -> dict[str, QueryTable]:
        """The current tables among ``sql_names`` that the caller may read, each with the
        dataset version it is of (for the audit log).

        Names the caller may not read, or that do not exist, are simply absent.
        """
        if not sql_names:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(_READABLE, {"names": sorted(sql_names)}).all()
        # A row per asset of the file's bytes (one per set of reading options, if any):
        # the one read with the file's own options is the table.
        assets: dict[str, Any] = {}
        for r in rows:
            if not self.policy.can_read(who, r):
                continue
            name = str(r.sql_name)
            if r.options_key is not None and r.options_key == options_key(r.table_options or {}):
                assets[name] = r
            else:
                assets.setdefault(name, None)
        out: dict[str, QueryTable] = {}
        for name, asset in assets.items():
            if asset is None:
                raise Conflict(f"table {name} is being prepared; try again soon")
            if asset.status == "ready":
                subject = Subject(str(asset.org), str(asset.dataset), int(asset.current_version))
                out[name] = QueryTable(self._ref(name, asset), subject)
        return out

    def known_parquet(self) -> list[str]:
        a = db.table_assets
        with self.engine.connect() as conn:
            return [
                str(sha)
                for sha in conn.execute(
                    select(a.c.parquet_sha256).where(a.c.status == "ready")
                ).scalars()
            ]
