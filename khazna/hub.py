"""The hub: one object that owns the configuration, the database and the rooms."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from khazna import db
from khazna.access import AccessPolicy, Accounts
from khazna.access.audit import AuditLog, HubKey
from khazna.access.quotas import make_quotas
from khazna.access.requests import AccessRequests
from khazna.catalog.search import make_search_index
from khazna.catalog.service import Catalog
from khazna.catalog.uploads import UploadSessions
from khazna.config import Settings
from khazna.errors import StorageFailure
from khazna.geo.indices import INDICES_JOB, Indices
from khazna.geo.rasters import RASTER_JOB, Rasters
from khazna.jobs import JobQueue, JobRunner
from khazna.storage.blobstore import BlobStore, LocalBlobStore
from khazna.storage.encryption import (
    MARKER_NAME,
    EncryptionKey,
    FileMarker,
    Marker,
    check_marker,
    encrypted,
)
from khazna.tables.query import QuerySlots
from khazna.tables.registry import INGEST_JOB, PROFILE_JOB, Tables


@dataclass
class VerifyReport:
    blobs_checked: int = 0
    audit_entries_checked: int = 0
    checkpoints_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Hub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        # Before anything else is opened: a hub started without its key, or with another
        # key, refuses at once instead of serving ciphertext or writing a mix.
        key = None
        if settings.encryption_key_file is not None:
            key = EncryptionKey.load(settings.encryption_key_file, settings.home)
        plain = _stores(settings)
        check_marker(_marker(settings, plain[0]), key, lambda: any(_holds_any(s) for s in plain))
        self.encryption_key_fingerprint = key.fingerprint if key is not None else None
        self.blobs, self.derived = plain if key is None else encrypted(plain, key, settings.tmp_dir)
        self.engine = db.make_engine(settings.database_url)
        try:
            db.create_schema(self.engine)
        except OperationalError as exc:
            where = make_url(db.engine_url(settings.database_url))
            reason = str(exc.orig).strip().splitlines()[0]
            raise ValueError(
                "cannot open the metadata database "
                f"{where.render_as_string(hide_password=True)}: {reason}"
            ) from exc
        self.storage = settings.storage
        self.policy = AccessPolicy()
        self.audit = AuditLog(
            self.engine,
            HubKey(settings.key_dir),
            self.policy,
            checkpoint_every=settings.audit_checkpoint_every,
        )
        self.accounts = Accounts(self.engine, self.audit)
        self.quotas = make_quotas(
            self.engine, settings.rate_limit_per_minute, settings.daily_download_bytes
        )
        self.search = make_search_index(self.engine, self.policy)
        self.catalog = Catalog(
            self.engine, self.policy, self.search, self.audit, storage=self.storage
        )
        self.access_requests = AccessRequests(self.engine, self.catalog, self.policy)
        self.jobs = JobQueue(self.engine, lease_s=settings.job_lease_s)
        self.tables = Tables(
            self.engine,
            self.catalog,
            self.policy,
            self.blobs,
            self.derived,
            self.jobs,
            settings.home / "work",
            memory_limit=settings.ingest_memory_limit,
            threads=settings.ingest_threads,
            early_min_bytes=settings.early_ingest_min_bytes,
            audit=self.audit,
        )
        self.rasters = Rasters(
            self.engine,
            self.catalog,
            self.policy,
            self.blobs,
            self.derived,
            self.jobs,
            settings.home / "work",
            settings.max_upload_bytes,
        )
        self.indices = Indices(
            self.engine,
            self.catalog,
            self.rasters,
            self.accounts,
            self.jobs,
            self.blobs,
            settings.home / "work",
        )
        self.query_slots = QuerySlots(settings.sql_concurrency)
        self.runner = JobRunner(
            self.jobs,
            {
                INGEST_JOB: self.tables.run_ingest,
                PROFILE_JOB: self.tables.run_profile,
                RASTER_JOB: self.rasters.run_ingest,
                INDICES_JOB: self.indices.run,
            },
        )
        self.uploads = UploadSessions(
            self.engine,
            self.catalog,
            self.blobs,
            settings.uploads_dir,
            settings.max_upload_bytes,
            settings.upload_session_ttl_s,
        )
        # A process killed mid-upload leaves its temporary file; nothing refers to it.
        self.blobs.clear_stale_temporaries()

    def start_workers(self) -> None:
        """Run queued jobs in the background; jobs a killed process left are taken up."""
        # SQLite means one hub process: whatever was running belonged to a dead process.
        # On PostgreSQL other processes may be running theirs: their lease decides.
        if self.engine.dialect.name == "sqlite":
            self.jobs.requeue_running()
        self.runner.start()

    def stop_workers(self) -> None:
        self.runner.stop()

    def verify(self) -> VerifyReport:
        """Re-hash every blob and derived table the catalog refers to, walk the audit
        chain and check its signed checkpoints; report damage."""
        report = VerifyReport()
        chain = self.audit.verify()
        report.audit_entries_checked = chain.entries
        report.checkpoints_checked = chain.checkpoints
        report.problems.extend(str(p) for p in chain.problems)
        for sha, size in self.catalog.known_blobs():
            _check(report, self.blobs, sha, "blob", size)
        for sha in self.tables.known_parquet():
            _check(report, self.derived, sha, "derived table")
        for sha in self.rasters.known_cogs():
            _check(report, self.derived, sha, "derived COG")
        return report

    def close(self) -> None:
        self.stop_workers()
        self.tables.close()
        self.engine.dispose()


def _stores(settings: Settings) -> tuple[BlobStore, BlobStore]:
    """Originals and derived Parquet: on local disk under KHAZNA_HOME, or in one bucket."""
    location = settings.storage
    if location.s3 is None:
        return (
            LocalBlobStore(settings.blob_dir, settings.tmp_dir),
            LocalBlobStore(settings.home / "derived", settings.tmp_dir),
        )
    from khazna.storage.s3 import S3BlobStore, make_client  # boto3 only when used

    client = make_client(location.s3)
    return S3BlobStore(location.s3, "blobs", client), S3BlobStore(location.s3, "derived", client)


def _marker(settings: Settings, blobs: BlobStore) -> Marker:
    """Beside the files: the hub folder, or the bucket (where hub processes with folders
    of their own all find it)."""
    if isinstance(blobs, LocalBlobStore):
        return FileMarker(settings.home / MARKER_NAME)
    from khazna.storage.s3 import S3BlobStore, S3Marker

    assert isinstance(blobs, S3BlobStore)
    return S3Marker(blobs, MARKER_NAME)


def _holds_any(store: BlobStore) -> bool:
    return next(iter(store.iter_hashes()), None) is not None


def _check(
    report: VerifyReport, store: BlobStore, sha: str, what: str, size: int | None = None
) -> None:
    """One content-addressed file: present, of the recorded size, hashing to its name."""
    report.blobs_checked += 1
    if not store.exists(sha):
        report.problems.append(f"{what} {sha} is missing")
        return
    try:
        if size is not None and (actual_size := store.size(sha)) != size:
            report.problems.append(
                f"{what} {sha} has {actual_size} bytes, the catalog recorded {size}"
            )
            return
        actual = store.rehash(sha)
    except StorageFailure as exc:  # an encrypted file whose chunks fail their check
        report.problems.append(f"{what} {sha} is damaged: {exc.message}")
        return
    if actual != sha:
        report.problems.append(f"{what} {sha} is damaged: its content hashes to {actual}")
