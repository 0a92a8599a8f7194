"""Hub configuration, read from the environment (``KHAZNA_*``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from khazna.storage.location import StorageLocation, check_jurisdiction, parse_s3_url

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1000**3  # 50 GB


def _number_env(name: str, default: float, unit: str, *, positive: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of {unit}, got {raw!r}") from exc
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'more than' if positive else 'at least'} 0 {unit}")
    return value


def _whole_env(name: str, default: int, unit: str) -> int:
    """A whole number, at least 1."""
    value = _number_env(name, default, unit, positive=True)
    if value != int(value) or value < 1:
        raise ValueError(f"{name} must be a whole number of {unit}, at least 1")
    return int(value)


def _memory_env(name: str, default: str) -> str:
    """A DuckDB memory size such as 512MB or 2GB."""
    raw = (os.environ.get(name) or default).strip().upper().replace(" ", "")
    if not re.fullmatch(r"\d+(\.\d+)?(KB|MB|GB|TB|KIB|MIB|GIB|TIB)", raw):
        raise ValueError(f"{name} must be a size such as 512MB or 2GB, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the hub needs to know about where it lives and its limits."""

    home: Path
    database_url: str
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Resumable upload sessions not touched for this long are removed.
    upload_session_ttl_s: int = 7 * 24 * 3600
    # A request body that sends nothing for this long is dropped, so a client that vanished
    # without closing its connection does not hold an upload forever.
    body_idle_timeout_s: float = 60.0
    # A job whose worker has not reported for this long is taken up by another worker.
    job_lease_s: float = 30.0
    # DuckDB memory for converting one uploaded table; what is over spills to disk.
    ingest_memory_limit: str = "512MB"
    # DuckDB threads converting one uploaded table: by default one per CPU.
    ingest_threads: int = 2
    # A one-shot upload of a CSV at least this large starts converting while it arrives
    # (khazna/tables/early.py); 0 turns that off.
    early_ingest_min_bytes: int = 64 << 20
    # Limits of one SQL query.
    sql_timeout_s: float = 30.0
    sql_memory_limit: str = "1GB"
    sql_row_limit: int = 10_000
    # DuckDB queries of callers (SQL, rows API) running at once in one process.
    sql_concurrency: int = 4
    # Quotas per token (per client address for anonymous callers); 0 turns one off.
    rate_limit_per_minute: int = 0
    daily_download_bytes: int = 0
    # The audit log's head is signed every this many entries (and on each export).
    audit_checkpoint_every: int = 1000
    # The map's tiles: a {z}/{x}/{y} URL template of the operator's own tile server; None
    # draws geo data on a plain background (the hub contacts no outside server).
    map_tiles_url: str | None = None
    # Where blobs and derived Parquet live: None for KHAZNA_HOME on local disk, or an
    # s3://bucket[/prefix]?endpoint=&region= URL; and the jurisdiction that place is under.
    storage_url: str | None = None
    storage_jurisdiction: str | None = None
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated
    # addresses or networks, "*" for any): the audit log and the quotas then see the client's
    # address, not the proxy's.
    trusted_proxies: str = "127.0.0.1"
    # A file outside the hub folder holding the key every stored file is encrypted with;
    # None: files are stored as they came.
    encryption_key_file: Path | None = None

    @property
    def storage(self) -> StorageLocation:
        sealed = self.encryption_key_file is not None
        if self.storage_url:
            return StorageLocation(
                "s3", self.storage_jurisdiction, s3=parse_s3_url(self.storage_url), encrypted=sealed
            )
        return StorageLocation("local", self.storage_jurisdiction, encrypted=sealed)

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def key_dir(self) -> Path:
        return self.home / "keys"

    @classmethod
    def from_env(cls, home: Path | str | None = None) -> Settings:
        root = Path(home or os.environ.get("KHAZNA_HOME") or "./khazna-data").resolve()
        db_url = os.environ.get("KHAZNA_DATABASE_URL") or f"sqlite:///{root / 'khazna.db'}"
        return cls(
            home=root,
            database_url=db_url,
            max_upload_bytes=int(
                _number_env("KHAZNA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, "bytes")
            ),
            upload_session_ttl_s=int(
                _number_env("KHAZNA_UPLOAD_SESSION_TTL_S", 7 * 24 * 3600, "seconds")
            ),
            body_idle_timeout_s=_number_env(
                "KHAZNA_BODY_IDLE_TIMEOUT_S", 60.0, "seconds", positive=True
            ),
            job_lease_s=_number_env("KHAZNA_JOB_LEASE_S", 30.0, "seconds", positive=True),
            ingest_memory_limit=_memory_env("KHAZNA_INGEST_MEMORY_LIMIT", "512MB"),
            ingest_threads=_whole_env("KHAZNA_INGEST_THREADS", os.cpu_count() or 2, "threads"),
            early_ingest_min_bytes=int(
                _number_env("KHAZNA_EARLY_INGEST_MIN_BYTES", 64 << 20, "bytes")
            ),
            sql_timeout_s=_number_env("KHAZNA_SQL_TIMEOUT_S", 30.0, "seconds", positive=True),
            sql_memory_limit=_memory_env("KHAZNA_SQL_MEMORY_LIMIT", "1GB"),
            sql_row_limit=int(_number_env("KHAZNA_SQL_ROW_LIMIT", 10_000, "rows", positive=True)),
            sql_concurrency=_whole_env("KHAZNA_SQL_CONCURRENCY", 4, "queries"),
            rate_limit_per_minute=int(
                _number_env("KHAZNA_RATE_LIMIT_PER_MINUTE", 0, "requests per minute")
            ),
            daily_download_bytes=int(_number_env("KHAZNA_DAILY_DOWNLOAD_BYTES", 0, "bytes")),
            audit_checkpoint_every=int(
                _number_env("KHAZNA_AUDIT_CHECKPOINT_EVERY", 1000, "entries", positive=True)
            ),
            storage_url=_storage_url_env(),
            map_tiles_url=(os.environ.get("KHAZNA_MAP_TILES_URL") or "").strip() or None,
            trusted_proxies=(os.environ.get("KHAZNA_TRUSTED_PROXIES") or "127.0.0.1").strip(),
            storage_jurisdiction=_jurisdiction_env(),
            encryption_key_file=_key_file_env(),
        )


def _storage_url_env() -> str | None:
    raw = (os.environ.get("KHAZNA_STORAGE_URL") or "").strip()
    if not raw:
        return None
    parse_s3_url(raw)  # refused early, with the reason
    return raw


def _jurisdiction_env() -> str | None:
    raw = (os.environ.get("KHAZNA_STORAGE_JURISDICTION") or "").strip()
    return check_jurisdiction(raw, "KHAZNA_STORAGE_JURISDICTION") if raw else None


def _key_file_env() -> Path | None:
    raw = (os.environ.get("KHAZNA_ENCRYPTION_KEY_FILE") or "").strip()
    return Path(raw).expanduser().absolute() if raw else None
