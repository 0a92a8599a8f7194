"""The catalog: organizations, datasets and their immutable versions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from khazna import db
from khazna.access.accounts import Principal, TokenLimits
from khazna.access.audit import AuditLog, AuditNote
from khazna.access.policy import AccessPolicy, check_level, check_role
from khazna.catalog.formats import media_type
from khazna.catalog.names import check_file_name, check_slug, normalize_text
from khazna.catalog.search import SearchIndex
from khazna.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ResidencyRefused,
    Unauthorized,
)
from khazna.storage.blobstore import StoredBlob
from khazna.storage.location import StorageLocation, check_jurisdiction

MAX_TAGS = 50
# How many times a commit that lost a race with another writer starts again.
COMMIT_ATTEMPTS = 20


class _Raced(Exception):
    """Another writer moved the dataset's version between our read and our write."""


# PostgreSQL's unique violation, deadlock, serialization failure.
_RACE_STATES = {"23505", "40P01", "40001"}


def _lost_race(exc: Exception) -> bool:
    if isinstance(exc, _Raced | IntegrityError):
        return True
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _RACE_STATES


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str
    media_type: str
    # How to read it as a table, as declared at upload (encoding, delimiter...).
    table_options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "media_type": self.media_type,
        }


@dataclass(frozen=True)
class CommittedVersion:
    """What a commit made: the version, its files, and the jobs queued for them."""

    dataset_id: int
    version: int
    files: list[FileEntry]
    jobs: dict[str, int]  # file name -> job id


# Called inside the commit's transaction with the dataset id and the new version's files;
# returns the jobs it queued by file name. The tables room uses it to queue ingests.
VersionHook = Callable[[Connection, int, list[FileEntry]], dict[str, int]]
# A caller's own step in one commit's transaction: the version's number and its files.
VersionStep = Callable[[Connection, int, list[FileEntry]], None]


@dataclass(frozen=True)
class ResolvedFile:
    """A file of one version of a dataset the caller may read."""

    org: str
    dataset: str
    access: str
    version: int
    file: FileEntry
    dataset_id: int


# Statements most requests run, built once (building one costs about as much as running it
# on SQLite). The dataset with its organization's name, by their names:
_DATASET = (
    select(db.datasets, db.organizations.c.name.label("org_name"))
    .join(db.organizations, db.organizations.c.id == db.datasets.c.org_id)
    .where(db.organizations.c.name == bindparam("org"), db.datasets.c.name == bindparam("name"))
)
# PostgreSQL: writers of one dataset queue here rather than race (SQLite has one writer at
# a time already and renders no FOR UPDATE).
_DATASET_LOCKED = _DATASET.with_for_update(of=db.datasets)
# The files of one version of a dataset.
_FILES = (
    select(
        db.version_files.c.name,
        db.version_files.c.size,
        db.version_files.c.sha256,
        db.version_files.c.media_type,
        db.version_files.c.table_options,
    )
    .join(db.versions, db.versions.c.id == db.version_files.c.version_id)
    .where(
        db.versions.c.dataset_id == bindparam("dataset_id"),
        db.versions.c.number == bindparam("number"),
    )
    .order_by(db.version_files.c.name)
)


def _check_tags(tags: object) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise BadRequest(f"tags must be a list of at most {MAX_TAGS} names", field="tags")
    return sorted({check_slug(t, "tag") for t in tags})


def _check_license(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 100:
        raise BadRequest("license must be a short identifier such as CC-BY-4.0", field="license")
    return value.strip()


class Catalog:
    def __init__(
        self,
        engine: Engine,
        policy: AccessPolicy,
        search: SearchIndex,
        audit: AuditLog,
        storage: StorageLocation | None = None,
    ) -> None:
        self.engine = engine
        # A change and its audit entry are written in one transaction.
        self.audit = audit
        # Where this hub writes bytes; residency is checked against its jurisdiction.
        self.storage = storage or StorageLocation("local", None)
        self.policy = policy
        self.search = search
        self.version_hooks: list[VersionHook] = []
        # Checks of a file's bytes (a local copy) before it may enter a version: each
        # gets (file name, path, upload options) and raises (a 422) to refuse it.
        self.file_checks: list[Callable[[str, Path, dict[str, Any]], None]] = []

    def check_file(self, file_name: str, path: Path, options: dict[str, Any]) -> None:
        """Run the file checks on a local copy of an upload, before it is stored."""
        for check in self.file_checks:
            check(file_name, path, options)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        # SQLite allows one writer; serializing writers in-process (with the audit log's
        # appends) avoids lock upgrade deadlocks between threads. PostgreSQL relies on the
        # row locks and unique constraints.
        with self.audit.transaction() as conn:
            yield conn

    def writing(self) -> AbstractContextManager[Connection]:
        """A write transaction, queued behind the catalog's own writers on SQLite."""
        return self._begin()

    # organizations -------------------------------------------------------------------

    def create_organization(
        self,
        who: Principal,
        name: str,
        title: object = None,
        description: object = None,
        *,
        note: AuditNote | None = None,
    ) -> dict[str, Any]:
        if not who.authenticated or who.user_id is None:
            raise Unauthorized("creating an organization needs an API token")
        check_slug(name, "organization")
        title_t = normalize_text(title, "title") or {"fr": name}
        desc_t = normalize_text(description, "description")
        try:
            with self._begin() as conn:
                org_id = conn.execute(
                    insert(db.organizations).values(
                        name=name, title=title_t, description=desc_t, created_at=db.utcnow()
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                # Whoever creates an organization administers it.
                conn.execute(
                    insert(db.memberships).values(org_id=org_id, user_id=who.user_id, role="admin")
                )
                if note is not None:
                    self.audit.append_note(conn, note, org=name)
        except IntegrityError as exc:
            raise Conflict(f"organization {name!r} already exists") from exc
        return self.organization(name)

    def organization(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._org_row(conn, name)
        return _org_view(row)

    def organizations(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.organizations).order_by(db.organizations.c.name)).all()
        return [_org_view(r) for r in rows]

    def add_member(
        self, who: Principal, org: str, user: str, role: str, *, note: AuditNote | None = None
    ) -> None:
        check_role(role)
        with self._begin() as conn:
            org_row = self._org_row(conn, org)
            if not self.policy.can_manage(who, int(org_row.id)):
                raise _denied(
                    who, _role_rule(who, f"managing members of {org!r}", "its admin role")
                )
            user_row = conn.execute(select(db.users.c.id).where(db.users.c.name == user)).first()
            if user_row is None:
                raise NotFound(f"no user named {user!r}")
            conn.execute(
                db.upsert(
                    conn,
                    db.memberships,
                    {"org_id": org_row.id, "user_id": user_row.id, "role": role},
                    update=["role"],
                )
            )
            if note is not None:
                self.audit.append_note(conn, note, org=org)

    def roles_by_name(self, who: Principal) -> dict[str, str]:
        """The caller's role in each organization, by organization name."""
        if not who.roles:
            return {}
        o = db.organizations
        with self.engine.connect() as conn:
            rows = conn.execute(select(o.c.id, o.c.name).where(o.c.id.in_(list(who.roles))))
            return {str(r.name): who.roles[int(r.id)] for r in rows}

    def _org_row(self, conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(select(db.organizations).where(db.organizations.c.name == name)).first()
        if row is None:
            raise NotFound(f"no organization named {name!r}")
        return row

    # datasets ------------------------------------------------------------------------

    def create_dataset(
        self,
        who: Principal,
        org: str,
        name: str,
        *,
        title: object = None,
        description: object = None,
        tags: object = None,
        license: object = None,
        access: object = "public",
        residency: object = None,
        note: AuditNote | None = None,
    ) -> dict[str, Any]:
        """``note``: the audit entry, its detail completed with the access level."""
        check_slug(org, "organization")
        check_slug(name, "dataset")
        values = {
            "name": name,
            "title": normalize_text(title, "title") or {"fr": name},
            "description": normalize_text(description, "description"),
            "license": _check_license(license),
            "access": check_level(access if access is not None else "public"),
            "residency": _residency_value(residency),
        }
        tag_list = _check_tags(tags)
        now = db.utcnow()
        try:
            with self._begin() as conn:
                org_row = self._org_row(conn, org)
                if not self.policy.can_write(who, int(org_row.id)):
                    raise _denied(
                        who, _role_rule(who, f"creating datasets in {org!r}", "its editor role")
                    )
                dataset_id = conn.execute(
                    insert(db.datasets).values(
                        org_id=org_row.id,
                        current_version=0,
                        created_by=who.user_id,
                        created_at=now,
                        updated_at=now,
                        **values,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                self._set_tags(conn, dataset_id, tag_list)
                self.search.index(conn, dataset_id)
                if note is not None:
                    detail = {**note.detail, "access": values["access"]}
                    self.audit.append_note(
                        conn, replace(note, detail=detail), org=org, dataset=name, version=0
                    )
        except IntegrityError as exc:
            raise Conflict(f"dataset {org}/{name} already exists") from exc
        return self.dataset(who, org, name)

    def update_dataset(
        self,
        who: Principal,
        org: str,
        name: str,
        changes: Mapping[str, object],
        *,
        note: AuditNote | None = None,
    ) -> dict[str, Any]:
        allowed = {"title", "description", "tags", "license", "access", "residency"}
        unknown = set(changes) - allowed
        if unknown:
            raise BadRequest(
                f"cannot change {', '.join(sorted(unknown))}; "
                f"changeable: {', '.join(sorted(allowed))}"
            )
        values: dict[str, Any] = {}
        if "title" in changes:
            values["title"] = normalize_text(changes["title"], "title", required=True)
        if "description" in changes:
            values["description"] = normalize_text(changes["description"], "description")
        if "license" in changes:
            values["license"] = _check_license(changes["license"])
        if "access" in changes:
            values["access"] = check_level(changes["access"])
        if "residency" in changes:
            values["residency"] = _residency_value(changes["residency"])
        tag_list = _check_tags(changes["tags"]) if "tags" in changes else None
        with self._begin() as conn:
            row = self._writable_row(conn, who, org, name)
            if values.get("residency") and row.current_version > 0:
                # Its bytes are already stored: they would be where it now may not be.
                self.check_residency(org, name, values["residency"])
            values["updated_at"] = db.utcnow()
            conn.execute(update(db.datasets).where(db.datasets.c.id == row.id).values(**values))
            if tag_list is not None:
                self._set_tags(conn, row.id, tag_list)
            self.search.index(conn, row.id)
            if note is not None:
                self.audit.append_note(conn, note, org=org, dataset=name)
        return self.dataset(who, org, name)

    def _set_tags(self, conn: Connection, dataset_id: int, tags: list[str]) -> None:
        conn.execute(delete(db.dataset_tags).where(db.dataset_tags.c.dataset_id == dataset_id))
        if tags:
            conn.execute(
                insert(db.dataset_tags), [{"dataset_id": dataset_id, "tag": t} for t in tags]
            )

    def _dataset_row(
        self, conn: Connection, org: str, name: str, *, lock: bool = False
    ) -> Row[Any]:
        query = _DATASET_LOCKED if lock else _DATASET
        row = conn.execute(query, {"org": org, "name": name}).first()
        if row is None:
            raise NotFound(f"no dataset {org}/{name}")
        return row

    def _visible_row(
        self, conn: Connection, who: Principal, org: str, name: str, *, lock: bool = False
    ) -> Row[Any]:
        row = self._dataset_row(conn, org, name, lock=lock)
        if not self.policy.can_see(who, row):
            # A dataset the caller may not see does not exist for them.
            raise NotFound(f"no dataset {org}/{name}")
        return row

    def _readable_row(self, conn: Connection, who: Principal, org: str, name: str) -> Row[Any]:
        row = self._visible_row(conn, who, org, name)
        if not self.policy.can_read(who, row):
            raise _denied(who, self.policy.read_refusal(row, f"{org}/{name}"))
        return row

    def _writable_row(
        self, conn: Connection, who: Principal, org: str, name: str, *, lock: bool = False
    ) -> Row[Any]:
        row = self._visible_row(conn, who, org, name, lock=lock)
        if not self.policy.can_write(who, int(row.org_id), int(row.id)):
            raise _denied(
                who, _role_rule(who, f"writing to {org}/{name}", f"the editor role in {org!r}")
            )
        return row

    def visible_row(self, who: Principal, org: str, name: str) -> Row[Any]:
        """The ``datasets`` row (with ``org_name``) of a dataset the caller may see; else 404."""
        with self.engine.connect() as conn:
            return self._visible_row(conn, who, org, name)

    def can_read(self, who: Principal, org: str, name: str) -> bool:
        with self.engine.connect() as conn:
            return self.policy.can_read(who, self._visible_row(conn, who, org, name))

    def check_writable(self, who: Principal, org: str, name: str) -> int:
        """Raise unless the caller may write the dataset's bytes to this hub's storage;
        returns its id. Called before any byte is stored."""
        with self.engine.connect() as conn:
            row = self._writable_row(conn, who, org, name)
        self.check_residency(org, name, row.residency)
        return int(row.id)

    def check_residency(self, org: str, name: str, required: str | None) -> None:
        """Refuse to store a dataset's bytes outside the jurisdiction it requires."""
        have = self.storage.jurisdiction
        if required is None or required == have:
            return
        # Logged by whoever asked: the API's error handler (a "denied" entry for the
        # request), the ingest job (tables/registry.py), the demo loader (khazna/demo).
        where = f"is in {have}" if have else "declares no jurisdiction"
        raise ResidencyRefused(
            f"dataset {org}/{name} requires its data to stay in {required}, but this hub's "
            f"storage ({self.storage.kind}) {where}; nothing was stored",
            required=required,
            storage=have,
        )

    def dataset(self, who: Principal, org: str, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._visible_row(conn, who, org, name)
            tags = (
                conn.execute(
                    select(db.dataset_tags.c.tag)
                    .where(db.dataset_tags.c.dataset_id == row.id)
                    .order_by(db.dataset_tags.c.tag)
                )
                .scalars()
                .all()
            )
            files = self.files_of(conn, row.id, row.current_version)
        return {
            "org": row.org_name,
            "name": row.name,
            "title": row.title,
            "description": row.description,
            "tags": list(tags),
            "license": row.license,
            "access": row.access,
            "residency": row.residency,
            # Where the bytes are: never a credential (the storage URL holds none).
            "storage": self.storage.as_dict(),
            "version": row.current_version,
            "created_at": db.iso(row.created_at),
            "updated_at": db.iso(row.updated_at),
            "files": [f.as_dict() for f in files],
        }

    def datasets_of(self, who: Principal, org: str) -> list[dict[str, Any]]:
        d = db.datasets
        with self.engine.connect() as conn:
            org_row = self._org_row(conn, org)
            names = (
                conn.execute(
                    select(d.c.name)
                    .where(d.c.org_id == org_row.id, self.policy.visible_datasets(who))
                    .order_by(d.c.name)
                )
                .scalars()
                .all()
            )
        return [self.dataset(who, org, n) for n in names]

    # What counts as a use of a dataset on the home page: audit entries of these actions.
    USES = ("download", "rows", "query")

    def most_used(self, who: Principal, *, days: int = 30, limit: int = 6) -> list[dict[str, Any]]:
        """The datasets the caller may see that were used most in the last ``days``, from
        the audit log: each as ``dataset()`` gives it, with ``uses`` ``{download, rows,
        query, total}`` (entries of each action), most used first, then by name."""
        e, d, o = db.audit_entries, db.datasets, db.organizations
        since = db.iso(db.utcnow() - timedelta(days=days))
        counts = [
            func.sum(case((e.c.action == action, 1), else_=0)).label(f"n_{action}")
            for action in self.USES
        ]
        total = func.count().label("total")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(o.c.name.label("org_name"), d.c.name, *counts, total)
                .select_from(e)
                .join(o, o.c.name == e.c.org)
                .join(d, and_(d.c.org_id == o.c.id, d.c.name == e.c.dataset))
                .where(
                    e.c.action.in_(self.USES),
                    e.c.at >= since,
                    self.policy.visible_datasets(who),
                )
                .group_by(o.c.name, d.c.name)
                .order_by(total.desc(), o.c.name, d.c.name)
                .limit(limit)
            ).all()
        used = []
        for r in rows:
            uses = {action: int(getattr(r, f"n_{action}")) for action in self.USES}
            used.append(
                {**self.dataset(who, r.org_name, r.name), "uses": {**uses, "total": int(r.total)}}
            )
        return used

    def visible_ref(self, who: Principal, dataset_id: int) -> dict[str, str] | None:
        """``{org, name}`` of a dataset the caller may see, else None."""
        d, o = db.datasets, db.organizations
        with self.engine.connect() as conn:
            row = conn.execute(
                select(d, o.c.name.label("org_name"))
                .join(o, o.c.id == d.c.org_id)
                .where(d.c.id == dataset_id)
            ).first()
        if row is None or not self.policy.can_see(who, row):
            return None
        return {"org": str(row.org_name), "name": str(row.name)}

    def reach(self, who: Principal, datasets: Iterable[str], orgs: Iterable[str]) -> TokenLimits:
        """Dataset refs (``org/name``) and organization names as ids, for a restricted token;
        each must be visible to the caller."""
        with self.engine.connect() as conn:
            dataset_ids = set()
            for ref in datasets:
                org, _, name = ref.partition("/")
                if not org or not name:
                    raise BadRequest(f"datasets are ORG/NAME; got {ref!r}", field="datasets")
                dataset_ids.add(int(self._visible_row(conn, who, org, name).id))
            org_ids = {int(self._org_row(conn, org).id) for org in orgs}
        return TokenLimits(frozenset(dataset_ids), frozenset(org_ids))

    def dataset_id(self, conn: Connection, org: str, name: str) -> int:
        return int(self._dataset_row(conn, org, name).id)

    def files_of(self, conn: Connection, dataset_id: int, number: int) -> list[FileEntry]:
        """The files of one version, with their table options (no access check)."""
        rows = conn.execute(_FILES, {"dataset_id": dataset_id, "number": number}).all()
        return [
            FileEntry(r.name, int(r.size), r.sha256, r.media_type, dict(r.table_options or {}))
            for r in rows
        ]

    # versions ------------------------------------------------------------------------

    def versions(self, who: Principal, org: str, name: str) -> list[dict[str, Any]]:
        v, u = db.versions, db.users
        with self.engine.connect() as conn:
            # The history is metadata: whoever sees the dataset sees it.
            row = self._visible_row(conn, who, org, name)
            history = conn.execute(
                select(v.c.number, v.c.message, v.c.created_at, u.c.name.label("user"))
                .outerjoin(u, u.c.id == v.c.created_by)
                .where(v.c.dataset_id == row.id)
                .order_by(v.c.number.desc())
            ).all()
            return [
                {
                    "version": h.number,
                    "created_at": db.iso(h.created_at),
                    "created_by": h.user,
                    "message": h.message,
                    "files": [f.as_dict() for f in self.files_of(conn, row.id, h.number)],
                }
                for h in history
            ]

    def resolve_file(
        self, who: Principal, org: str, name: str, file: str, version: int | None = None
    ) -> ResolvedFile:
        with self.engine.connect() as conn:
            row = self._readable_row(conn, who, org, name)
            number = row.current_version if version is None else version
            if version is not None and not 1 <= version <= row.current_version:
                raise NotFound(
                    f"dataset {org}/{name} has no version {version} "
                    f"(latest is {row.current_version})"
                )
            for entry in self.files_of(conn, row.id, number):
                if entry.name == file:
                    return ResolvedFile(org, name, row.access, number, entry, int(row.id))
        raise NotFound(f"no file {file!r} in version {number} of {org}/{name}")

    def commit_version(
        self,
        who: Principal,
        org: str,
        name: str,
        changes: Mapping[str, StoredBlob | None],
        *,
        message: str = "",
        table_options: Mapping[str, dict[str, Any]] | None = None,
        also: VersionStep | None = None,
        note: AuditNote | None = None,
    ) -> CommittedVersion:
        """Make a new version from the current one with ``changes`` applied.

        ``changes`` maps file names to their new blob, or None to remove the file. The
        blobs must already be stored. A change that alters nothing makes no version.
        ``also`` runs in the commit's transaction with the version number and its files;
        what it raises undoes the commit. ``note`` is the audit entry, appended last in the
        same transaction with the version's number: both are committed or neither.
        """
        table_options = table_options or {}
        for file_name in changes:
            check_file_name(file_name)
        # Writers of one dataset queue on its row. Should two still both read version n
        # and both make n + 1, the unique (dataset, number) lets one win, and the other
        # starts again from n + 1; the same retry covers the commit's other collisions (a
        # table's SQL name taken by another dataset meanwhile, a deadlock).
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return self._commit_once(
                    who, org, name, changes, message, table_options, also=also, note=note
                )
            except (DBAPIError, _Raced) as exc:
                if not _lost_race(exc):
                    raise
                if attempt == COMMIT_ATTEMPTS:
                    raise Conflict(
                        f"{org}/{name} kept changing during the commit; try again"
                    ) from exc
        raise AssertionError("unreachable")

    def _commit_once(
        self,
        who: Principal,
        org: str,
        name: str,
        changes: Mapping[str, StoredBlob | None],
        message: str,
        table_options: Mapping[str, dict[str, Any]],
        also: VersionStep | None,
        note: AuditNote | None,
    ) -> CommittedVersion:
        with self._begin() as conn:
            row = self._writable_row(conn, who, org, name, lock=True)
            if any(blob is not None for blob in changes.values()):
                # Last line of defence: the callers check before they store anything.
                self.check_residency(org, name, row.residency)
            current = {f.name: f for f in self.files_of(conn, row.id, row.current_version)}
            files = dict(current)
            for file_name, blob in changes.items():
                if blob is None:
                    if file_name not in files:
                        raise NotFound(f"no file {file_name!r} in {org}/{name}")
                    del files[file_name]
                else:
                    files[file_name] = FileEntry(
                        file_name,
                        blob.size,
                        blob.sha256,
                        media_type(file_name),
                        dict(table_options.get(file_name, {})),
                    )
            ordered = sorted(files.values(), key=lambda f: f.name)
            if files == current and row.current_version > 0:
                if also is not None:
                    also(conn, row.current_version, ordered)
                if note is not None:
                    self.audit.append_note(
                        conn, note, org=org, dataset=name, version=row.current_version
                    )
                return CommittedVersion(row.id, row.current_version, ordered, {})
            number = row.current_version + 1
            now = db.utcnow()
            # In one order, so that two commits sharing blobs cannot deadlock.
            for entry in sorted(files.values(), key=lambda f: f.sha256):
                conn.execute(
                    db.insert_ignore(
                        conn,
                        db.blobs,
                        {"sha256": entry.sha256, "size": entry.size, "created_at": now},
                    )
                )
            version_id = conn.execute(
                insert(db.versions).values(
                    dataset_id=row.id,
                    number=number,
                    message=message,
                    created_by=who.user_id,
                    created_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            if files:
                conn.execute(
                    insert(db.version_files),
                    [
                        {"version_id": version_id, "table_options": f.table_options, **f.as_dict()}
                        for f in files.values()
                    ],
                )
            moved = conn.execute(
                update(db.datasets)
                .where(
                    db.datasets.c.id == row.id, db.datasets.c.current_version == row.current_version
                )
                .values(current_version=number, updated_at=now)
            ).rowcount
            if moved != 1:
                raise _Raced()
            self.search.index(conn, row.id)
            jobs: dict[str, int] = {}
            for hook in self.version_hooks:
                jobs.update(hook(conn, int(row.id), ordered))
            if also is not None:
                also(conn, number, ordered)
            # Last: on PostgreSQL the chain's head stays locked until the commit.
            if note is not None:
                self.audit.append_note(conn, note, org=org, dataset=name, version=number)
        return CommittedVersion(int(row.id), number, ordered, jobs)

    def known_blobs(self) -> Iterable[tuple[str, int]]:
        with self.engine.connect() as conn:
            yield from (
                (r.sha256, int(r.size))
                for r in conn.execute(
                    select(db.blobs.c.sha256, db.blobs.c.size).order_by(db.blobs.c.sha256)
                )
            )


def _org_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "name": row.name,
        "title": row.title,
        "description": row.description,
        "created_at": db.iso(row.created_at),
    }


def _role_rule(who: Principal, action: str, role: str) -> str:
    """The rule that refused a write: the token's scope or reach, else the missing role."""
    if who.read_only:
        return f"{action} needs a read-write token; this one has scope 'read'"
    if who.limits is not None:
        return f"{action} is outside what this token is restricted to"
    return f"{action} needs {role}"


def _residency_value(value: object) -> str | None:
    if value is None or value == "":
        return None
    try:
        return check_jurisdiction(value, "residency")
    except ValueError as exc:
        raise BadRequest(str(exc), field="residency") from None


def _denied(who: Principal, reason: str) -> Unauthorized | Forbidden:
    """401 for a caller with no token (a token may help), 403 for a signed-in one."""
    if not who.authenticated:
        return Unauthorized(f"{reason}; send an API token")
    return Forbidden(reason)
