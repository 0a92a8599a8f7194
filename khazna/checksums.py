"""SHA-256 of files, the hub's one notion of identity for bytes (server and client alike)."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()
