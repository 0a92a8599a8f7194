"""The metadata database: one schema, SQLite embedded or PostgreSQL at scale."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


organizations = Table(
    "organizations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("title", JSON, nullable=False),
    Column("description", JSON, nullable=False),
    _ts("created_at"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    _ts("created_at"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    # SHA-256 of the token: the token itself is shown once and never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("label", String(200), nullable=False, default=""),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
    # "read" or "read-write".
    Column("scope", String(20), nullable=False, default="read-write"),
    _ts("expires_at", nullable=True),
    _ts("last_used_at", nullable=True),
    # When either is set, the token reaches only these datasets and organizations (ids).
    Column("dataset_ids", JSON, nullable=True),
    Column("org_ids", JSON, nullable=True),
)

memberships = Table(
    "memberships",
    metadata,
    Column("org_id", Integer, ForeignKey("organizations.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("role", String(20), nullable=False),
    PrimaryKeyConstraint("org_id", "user_id"),
)

# A user's request to read a restricted dataset, and the publisher's decision.
access_requests = Table(
    "access_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False, index=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("purpose", Text, nullable=False),
    Column("state", String(20), nullable=False),  # pending, approved, refused
    Column("reason", Text, nullable=True),
    _ts("expires_at", nullable=True),
    Column("decided_by", Integer, ForeignKey("users.id"), nullable=True),
    _ts("decided_at", nullable=True),
    _ts("created_at"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("org_id", Integer, ForeignKey("organizations.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("title", JSON, nullable=False),
    Column("description", JSON, nullable=False),
    Column("license", String(100), nullable=False, default=""),
    Column("access", String(20), nullable=False, default="public"),
    # Jurisdiction (ISO 3166-1 alpha-2) the dataset's bytes must stay in; None: anywhere.
    Column("residency", String(2), nullable=True),
    Column("current_version", Integer, nullable=False, default=0),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    UniqueConstraint("org_id", "name"),
)

dataset_tags = Table(
    "dataset_tags",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("tag", String(100), nullable=False),
    PrimaryKeyConstraint("dataset_id", "tag"),
)

# The format labels (CSV, GeoTIFF, ...) of a dataset's current files, for search facets.
dataset_formats = Table(
    "dataset_formats",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("format", String(50), nullable=False),
    PrimaryKeyConstraint("dataset_id", "format"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    _ts("created_at"),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=True),
    _ts("created_at"),
    # The unique pair is what makes concurrent writers agree on version numbers.
    UniqueConstraint("dataset_id", "number"),
)

version_files = Table(
    "version_files",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("media_type", String(200), nullable=False),
    # How to read the file as a table (encoding, delimiter...), as the publisher declared.
    Column("table_options", JSON, nullable=False, default=dict),
    PrimaryKeyConstraint("version_id", "name"),
)

upload_sessions = Table(
    "upload_sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("state", String(20), nullable=False),  # open, committed, aborted
    Column("message", Text, nullable=False, default=""),
    Column("version", Integer, nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
)

upload_files = Table(
    "upload_files",
    metadata,
    Column("session_id", String(40), ForeignKey("upload_sessions.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("position", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=True),
    PrimaryKeyConstraint("session_id", "name"),
)


jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(50), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(20), nullable=False),  # queued, running, done, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("worker", String(64), nullable=True),
    _ts("heartbeat_at", nullable=True),
    # A job that failed waits until then before it is tried again.
    _ts("run_after", nullable=True),
    Column("error", Text, nullable=True),
    Column("result", JSON, nullable=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=True),
    Column("file_name", String(255), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
)

# A table derived from an uploaded file: keyed by the file's content and the options it
# was read with, so identical uploads share one ingest.
table_assets = Table(
    "table_assets",
    metadata,
    Column("source_sha256", String(64), nullable=False),
    Column("options_key", String(64), nullable=False),
    Column("status", String(20), nullable=False),  # ready, failed
    Column("parquet_sha256", String(64), nullable=True),
    Column("rows", BigInteger, nullable=True),
    Column("columns", JSON, nullable=True),
    Column("problems", JSON, nullable=True),
    Column("problem_count", Integer, nullable=True),
    Column("encoding", String(40), nullable=True),
    Column("delimiter", String(8), nullable=True),
    Column("profile", JSON, nullable=True),
    Column("error", Text, nullable=True),
    _ts("created_at"),
    PrimaryKeyConstraint("source_sha256", "options_key"),
)

# The stable SQL name of a dataset's file, the same across versions.
table_names = Table(
    "table_names",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("sql_name", String(200), nullable=False, unique=True),
    PrimaryKeyConstraint("dataset_id", "file_name"),
)

# A raster derived from an uploaded GeoTIFF (khazna/geo): keyed by the file's content, so
# identical uploads share one conversion. ``cog_sha256`` equals the source when the upload
# already was a valid Cloud Optimized GeoTIFF (nothing is copied).
raster_assets = Table(
    "raster_assets",
    metadata,
    Column("source_sha256", String(64), primary_key=True),
    Column("status", String(20), nullable=False),  # ready, failed
    Column("cog_sha256", String(64), nullable=True),
    Column("cog_size", BigInteger, nullable=True),
    Column("info", JSON, nullable=True),  # CRS, shape, transform, WGS84 bbox, bands
    Column("error", Text, nullable=True),
    _ts("created_at"),
)

# The STAC items of each dataset's current version, rebuilt when a version is made or a
# raster of it is ready. Bounds and datetime are columns, for search.
stac_items = Table(
    "stac_items",
    metadata,
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("item_id", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("datetime", DateTime(timezone=True), nullable=True),
    Column("west", Float, nullable=False),
    Column("south", Float, nullable=False),
    Column("east", Float, nullable=False),
    Column("north", Float, nullable=False),
    Column("item", JSON, nullable=False),  # the item without links; assets name files
    PrimaryKeyConstraint("dataset_id", "item_id"),
)

# The audit log (khazna/access/audit.py): append-only, each entry hashing the one before.
# Times and details are stored as the exact text that was hashed.
audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(100), nullable=True),
    Column("token_id", Integer, nullable=True),
    Column("action", String(50), nullable=False),
    Column("org", String(100), nullable=True),
    Column("dataset", String(100), nullable=True),
    Column("version", Integer, nullable=True),
    Column("detail", Text, nullable=False),
    Column("client", String(200), nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_entries_org_dataset", audit_entries.c.org, audit_entries.c.dataset)

# One row: the last position and hash. Updating it first is what serializes appends.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The head of the chain at some position, signed with the hub's Ed25519 key.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("at", String(40), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", String(100), nullable=False),
)


# Quota counters shared by every hub process on PostgreSQL (khazna/access/quotas.py): one
# row per caller and rule, for the current window (a minute, or a UTC day).
quota_counters = Table(
    "quota_counters",
    metadata,
    Column("key", String(200), nullable=False),  # "token:12", "address:192.0.2.10"
    Column("rule", String(30), nullable=False),  # "rate_limit", "daily_download_bytes"
    Column("window_start_ms", BigInteger, nullable=False),  # Unix time, milliseconds
    Column("used", BigInteger, nullable=False),  # requests, or bytes, admitted in the window
    Column("refused", BigInteger, nullable=False),  # refusals in the window
    # Refusals of earlier windows not written to the audit log (only the first of each
    # window is), until the next refusal that is.
    Column("unlogged", BigInteger, nullable=False),
    Column("admitted", Boolean, nullable=False),  # what the last attempt got
    PrimaryKeyConstraint("key", "rule"),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers go on while one writer commits; busy_timeout makes writers queue.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def engine_url(url: str) -> str:
    """``postgresql://`` means psycopg 3, the driver Khazna ships with."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def make_engine(url: str) -> Engine:
    url = engine_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True)
    raise ValueError(f"KHAZNA_DATABASE_URL must be an sqlite:/// or postgresql:// URL, got {url!r}")


def create_schema(engine: Engine) -> None:
    """Bring the database to the current schema with the shipped Alembic migrations."""
    from khazna.migrations import upgrade

    upgrade(engine)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands back naive datetimes that were stored as UTC."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.isoformat().replace("+00:00", "Z")


def _dialect_insert(engine_or_conn: Any, table: Table) -> Any:
    name = engine_or_conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
    else:
        raise NotImplementedError(f"unsupported database {name}")
    return dialect_insert(table)


def insert_ignore(engine_or_conn: Any, table: Table, values: dict[str, Any]) -> Any:
    """INSERT that does nothing when the primary key exists (SQLite and PostgreSQL)."""
    return _dialect_insert(engine_or_conn, table).values(**values).on_conflict_do_nothing()


def upsert(engine_or_conn: Any, table: Table, values: dict[str, Any], update: list[str]) -> Any:
    """INSERT, or UPDATE of the ``update`` columns when the primary key exists: one
    statement, so two writers of the same row cannot collide."""
    stmt = _dialect_insert(engine_or_conn, table).values(**values)
    return stmt.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={c: stmt.excluded[c] for c in update},
    )
