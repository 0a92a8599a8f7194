"""Resumable upload sessions: several files, sent in chunks, committed as one version.

Each file of a session is staged as ``uploads/<session>/<position>.part``; its size on
disk is how much arrived, so a client that lost its connection asks and resumes from
there. Nothing is visible in the catalog until the session is committed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from khazna import db
from khazna.access.accounts import Principal
from khazna.access.audit import AuditNote
from khazna.catalog.names import check_file_name
from khazna.catalog.service import Catalog, FileEntry
from khazna.checksums import file_sha256
from khazna.errors import (
    BadRequest,
    Conflict,
    NotFound,
    StorageFailure,
    Unauthorized,
    Unprocessable,
)
from khazna.storage.blobstore import (
    BlobStore,
    StoredBlob,
    too_large,
)

MAX_FILES_PER_SESSION = 10_000
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
SUGGESTED_CHUNK = 16 * 1024 * 1024


class OffsetMismatch(Conflict):
    code = "offset_mismatch"


class UploadBusy(Conflict):
    """A chunk of the same file is still being received (or its dead connection is not yet
    noticed by the server); the client waits and asks again."""

    code = "upload_busy"


class UploadSessions:
    def __init__(
        self,
        engine: Engine,
        catalog: Catalog,
        blobs: BlobStore,
        staging: Path,
        max_bytes: int,
        ttl_s: int,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.blobs = blobs
        self.staging = staging
        self.max_bytes = max_bytes
        self.ttl = timedelta(seconds=ttl_s)
        staging.mkdir(parents=True, exist_ok=True)

    def open(
        self, who: Principal, org: str, name: str, files: object, message: str = ""
    ) -> dict[str, Any]:
        if who.user_id is None:
            raise Unauthorized("uploading needs an API token")
        dataset_id = self.catalog.check_writable(who, org, name)
        entries = self._check_files(files)
        self.purge_expired()
        session_id = uuid.uuid4().hex
        folder = self.staging / session_id
        folder.mkdir()
        for position in range(len(entries)):
            (folder / f"{position}.part").touch()
        now = db.utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.upload_sessions).values(
                    id=session_id,
                    dataset_id=dataset_id,
                    user_id=who.user_id,
                    state="open",
                    message=message,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                insert(db.upload_files),
                [{"session_id": session_id, "position": i, **e} for i, e in enumerate(entries)],
            )
        return self.status(who, session_id)

    def _check_files(self, files: object) -> list[dict[str, Any]]:
        if not isinstance(files, list) or not files or len(files) > MAX_FILES_PER_SESSION:
            raise BadRequest(
                f"files must be a list of 1 to {MAX_FILES_PER_SESSION} "
                "{name, size, sha256?} objects",
                field="files",
            )
        seen: set[str] = set()
        out = []
        for f in files:
            if not isinstance(f, dict):
                raise BadRequest("each file must be an object {name, size, sha256?}")
            file_name = check_file_name(f.get("name"))
            if file_name in seen:
                raise BadRequest(f"file {file_name!r} is listed twice", field="files")
            seen.add(file_name)
            size = f.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"size of {file_name!r} must be a whole number of bytes")
            if size > self.max_bytes:
                raise too_large(self.max_bytes)
            sha = f.get("sha256")
            if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
                raise BadRequest(f"sha256 of {file_name!r} must be 64 hex digits")
            out.append({"name": file_name, "size": size, "sha256": sha.lower() if sha else None})
        return out

    def _session(self, who: Principal, session_id: str) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.upload_sessions).where(db.upload_sessions.c.id == session_id)
            ).first()
        # Someone else's session does not exist for the caller.
        if row is None or not (who.is_admin or row.user_id == who.user_id):
            raise NotFound(f"no upload session {session_id!r}")
        return row

    def _files(self, session_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(db.upload_files)
                    .where(db.upload_files.c.session_id == session_id)
                    .order_by(db.upload_files.c.position)
                ).all()
            )

    def _part(self, session_id: str, position: int) -> Path:
        return self.staging / session_id / f"{position}.part"

    def status(self, who: Principal, session_id: str) -> dict[str, Any]:
        row = self._session(who, session_id)
        files = []
        for f in self._files(session_id):
            part = self._part(session_id, f.position)
            received = (
                part.stat().st_size
                if part.exists()
                else (f.size if row.state == "committed" else 0)
            )
            files.append(
                {"name": f.name, "size": int(f.size), "sha256": f.sha256, "received": received}
            )
        return {
            "id": row.id,
            "state": row.state,
            "version": row.version,
            "chunk_size": SUGGESTED_CHUNK,
            "files": files,
            "created_at": db.iso(row.created_at),
            "updated_at": db.iso(row.updated_at),
        }

    async def receive(
        self,
        who: Principal,
        session_id: str,
        file_name: str,
        offset: int,
        chunks: AsyncIterator[bytes],
    ) -> dict[str, Any]:
        """Append a chunk that starts at ``offset`` to one file of an open session."""
        row = self._session(who, session_id)
        if row.state != "open":
            raise Conflict(f"upload session {session_id} is {row.state}")
        entry = next((f for f in self._files(session_id) if f.name == file_name), None)
        if entry is None:
            raise NotFound(f"file {file_name!r} is not part of upload session {session_id}")
        part = self._part(session_id, entry.position)
        with open(part, "ab") as out:
            try:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise UploadBusy(f"another chunk of {file_name!r} is being received") from exc
            received = out.tell()
            if offset != received:
                raise OffsetMismatch(
                    f"chunk starts at byte {offset} but {received} bytes of {file_name!r} "
                    "have arrived; resume from there",
                    received=received,
                )
            room = int(entry.size) - received
            try:
                async for chunk in chunks:
                    if len(chunk) > room:
                        raise BadRequest(
                            f"chunk runs past the declared size of {file_name!r} "
                            f"({entry.size} bytes)"
                        )
                    out.write(chunk)
                    room -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise StorageFailure(f"could not store the chunk: {exc}") from exc
            finally:
                # Whatever reached the file is correct data at the right offset; a client
                # that was cut off resumes from the new size.
                out.flush()
            received = out.tell()
        with self.engine.begin() as conn:
            conn.execute(
                update(db.upload_sessions)
                .where(db.upload_sessions.c.id == session_id)
                .values(updated_at=db.utcnow())
            )
        return {"name": file_name, "size": int(entry.size), "received": received}

    def commit(
        self, who: Principal, session_id: str, *, note: AuditNote | None = None
    ) -> dict[str, Any]:
        """Make the session's version. ``note``: its audit entry, written in the version's
        transaction, its detail completed with the session and the version's files."""
        row = self._session(who, session_id)
        if row.state != "open":
            raise Conflict(f"upload session {session_id} is {row.state}")
        files = self._files(session_id)
        for f in files:
            received = self._part(session_id, f.position).stat().st_size
            if received != f.size:
                raise Conflict(
                    f"{f.name!r} is incomplete: {received} of {f.size} bytes arrived",
                    file=f.name,
                    received=received,
                )
        try:
            return self._commit(who, session_id, row, files, note)
        except OSError as exc:
            raise StorageFailure(f"could not store the upload: {exc}") from exc

    def _commit(
        self, who: Principal, session_id: str, row: Any, files: list[Any], note: AuditNote | None
    ) -> dict[str, Any]:
        org, name = self._dataset_name(row.dataset_id)
        # Rights and residency may have changed since the session opened.
        self.catalog.check_writable(who, org, name)
        # Phase 1: hash everything, so one bad file leaves the others untouched.
        digests = {f.name: file_sha256(self._part(session_id, f.position)) for f in files}
        for f in files:
            if f.sha256 is not None and digests[f.name] != f.sha256:
                self._part(session_id, f.position).write_bytes(b"")  # to be sent again
                raise Unprocessable(
                    f"{f.name!r} arrived with SHA-256 {digests[f.name]}, but {f.sha256} was "
                    "announced; its bytes were discarded, send the file again",
                    file=f.name,
                )
        # The files' own checks (a raster must read as one), on the staged copies.
        for f in files:
            self.catalog.check_file(f.name, self._part(session_id, f.position), {})
        # Phase 2: link into the blob store. The staged parts stay until the version is
        # committed, so a failure here leaves a session the client can commit again.
        stored: dict[str, StoredBlob | None] = {
            f.name: self.blobs.link_file(
                self._part(session_id, f.position), digests[f.name], int(f.size)
            )
            for f in files
        }

        def close_session(conn: Connection, version: int, entries: list[FileEntry]) -> None:
            # In the version's transaction, and only from "open": of two commits of one
            # session racing (a client retrying through another hub process), one makes
            # the version and the other changes nothing.
            closed = conn.execute(
                update(db.upload_sessions)
                .where(db.upload_sessions.c.id == session_id, db.upload_sessions.c.state == "open")
                .values(state="committed", version=version, updated_at=db.utcnow())
            ).rowcount
            if closed != 1:
                raise Conflict(f"upload session {session_id} is no longer open")
            if note is not None:
                listed = [{k: e.as_dict()[k] for k in ("name", "sha256", "size")} for e in entries]
                detail = {**note.detail, "session": session_id, "files": listed}
                self.catalog.audit.append_note(
                    conn, replace(note, detail=detail), org=org, dataset=name, version=version
                )

        committed = self.catalog.commit_version(
            who, org, name, stored, message=row.message, also=close_session
        )
        version = committed.version
        shutil.rmtree(self.staging / session_id, ignore_errors=True)
        return {
            "id": session_id,
            "state": "committed",
            "version": version,
            "files": [e.as_dict() for e in committed.files],
            "jobs": committed.jobs,
        }

    def _dataset_name(self, dataset_id: int) -> tuple[str, str]:
        d, o = db.datasets, db.organizations
        with self.engine.connect() as conn:
            r = conn.execute(
                select(o.c.name, d.c.name.label("ds"))
                .join(o, o.c.id == d.c.org_id)
                .where(d.c.id == dataset_id)
            ).one()
        return str(r.name), str(r.ds)

    def abort(self, who: Principal, session_id: str) -> None:
        row = self._session(who, session_id)
        if row.state == "committed":
            raise Conflict(f"upload session {session_id} is already committed")
        self._drop(session_id, state="aborted")

    def _drop(self, session_id: str, state: str) -> None:
        with self.engine.begin() as conn:
            # A session committed meanwhile (by another process) stays committed.
            dropped = conn.execute(
                update(db.upload_sessions)
                .where(
                    db.upload_sessions.c.id == session_id,
                    db.upload_sessions.c.state != "committed",
                )
                .values(state=state, updated_at=db.utcnow())
            ).rowcount
        if dropped:
            shutil.rmtree(self.staging / session_id, ignore_errors=True)

    def purge_expired(self) -> int:
        """Remove open sessions untouched for longer than the TTL; returns how many."""
        cutoff = db.utcnow() - self.ttl
        with self.engine.connect() as conn:
            stale = (
                conn.execute(
                    select(db.upload_sessions.c.id).where(
                        db.upload_sessions.c.state == "open",
                        db.upload_sessions.c.updated_at < cutoff,
                    )
                )
                .scalars()
                .all()
            )
        for session_id in stale:
            self._drop(session_id, state="expired")
        with self.engine.begin() as conn:
            conn.execute(delete(db.upload_files).where(db.upload_files.c.session_id.in_(stale)))
        return len(stale)
