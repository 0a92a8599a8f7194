"""Hub configuration, read from the environment (``KHAZNA_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1000**3  # 50 GB


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a whole number of bytes, got {raw!r}") from exc


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
    jurisdiction: str = field(default="")

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @classmethod
    def from_env(cls, home: Path | str | None = None) -> Settings:
        root = Path(home or os.environ.get("KHAZNA_HOME") or "./khazna-data").resolve()
        db_url = os.environ.get("KHAZNA_DATABASE_URL") or f"sqlite:///{root / 'khazna.db'}"
        return cls(
            home=root,
            database_url=db_url,
            max_upload_bytes=_int_env("KHAZNA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES),
            upload_session_ttl_s=_int_env("KHAZNA_UPLOAD_SESSION_TTL_S", 7 * 24 * 3600),
            body_idle_timeout_s=float(_int_env("KHAZNA_BODY_IDLE_TIMEOUT_S", 60)),
            jurisdiction=os.environ.get("KHAZNA_JURISDICTION", ""),
        )
