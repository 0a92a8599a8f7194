"""SHA-256 of files, the hub's one notion of identity for bytes (server and client alike)."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    # file_digest reads into one reused buffer, without holding the GIL while it hashes.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
