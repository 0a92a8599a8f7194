"""The audit log: who did what to which dataset, when and from where, hash-chained.

Each entry holds the hash of the one before it, so editing, deleting or re-ordering an
entry breaks the chain where it happened. An entry's hash covers its position, the
previous hash and the SHA-256 of its content (every other field): an export may then
leave out the content of entries its reader is not meant to see and still prove the chain
whole. Every ``checkpoint_every`` entries, and on export, the head of the chain is signed
with the hub's Ed25519 key, so whoever rewrites the whole chain cannot sign its new head.

Appends are serialized by updating the one ``audit_head`` row first, in the same
transaction as the entry: SQLite takes its write lock there, PostgreSQL a row lock, so
two writers can never chain onto the same entry.

A change (a new version, a membership, a token...) is written with its entry in one
transaction: the service making it takes the transaction from ``AuditLog.transaction`` and
calls ``append`` last, so the head's row lock is the last lock it takes and is held to its
commit. Either both are committed or neither; a read is logged after it, on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError

from khazna import db
from khazna.access.accounts import Principal
from khazna.access.policy import WRITER_ROLES, AccessPolicy
from khazna.errors import AuditFailure, BadRequest, Forbidden, NotFound, Unauthorized

GENESIS = "0" * 64
EXPORT_FORMAT = "khazna-audit-export"
_HEAD_ID = 1
KEY_FILE = "audit-ed25519.pem"
PUBLIC_KEY_FILE = "audit-ed25519.pub"


def canonical(value: Any) -> bytes:
    """The bytes that are hashed or signed: sorted-key, compact JSON in UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def entry_hash(seq: int, prev_hash: str, content_hash: str) -> str:
    return _sha256({"seq": seq, "prev_hash": prev_hash, "content_hash": content_hash})


def checkpoint_message(seq: int, hash: str, at: str) -> bytes:
    return canonical({"type": "khazna-audit-checkpoint", "seq": seq, "hash": hash, "at": at})


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str  # UTC, ISO 8601
    actor: str | None  # user name; None for an anonymous caller
    token_id: int | None  # which of the user's tokens, never the token
    action: str
    org: str | None
    dataset: str | None
    version: int | None
    detail: dict[str, Any]
    client: str | None  # the caller's address, or "cli" for commands on the hub folder
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "token_id": self.token_id,
            "action": self.action,
            "org": self.org,
            "dataset": self.dataset,
            "version": self.version,
            "detail": self.detail,
            "client": self.client,
        }

    def content_hash(self) -> str:
        return _sha256(self.content())

    def computed_hash(self) -> str:
        return entry_hash(self.seq, self.prev_hash, self.content_hash())

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.content(), "prev_hash": self.prev_hash, "hash": self.hash}

    @classmethod
    def from_row(cls, row: Any) -> AuditEntry:
        return cls(
            seq=int(row.seq),
            at=str(row.at),
            actor=row.actor,
            token_id=row.token_id,
            action=str(row.action),
            org=row.org,
            dataset=row.dataset,
            version=row.version,
            detail=json.loads(row.detail),
            client=row.client,
            prev_hash=str(row.prev_hash),
            hash=str(row.hash),
        )


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: str  # base64

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def verifies(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(
                base64.b64decode(self.signature), checkpoint_message(self.seq, self.hash, self.at)
            )
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Problem:
    """Damage found at one position of the chain."""

    seq: int
    message: str

    def __str__(self) -> str:
        return f"audit entry {self.seq}: {self.message}"


@dataclass
class ChainReport:
    entries: int = 0
    checkpoints: int = 0
    problems: list[Problem] = field(default_factory=list)


# keys ------------------------------------------------------------------------------------


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(text: str) -> Ed25519PublicKey:
    """``ed25519:BASE64`` (as ``khazna audit public-key`` prints it), bare base64 of the
    32 raw bytes, or a PEM public key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ValueError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text.removeprefix("ed25519:"), validate=True)
    except binascii.Error as exc:
        raise ValueError("a public key is 'ed25519:' and 44 base64 characters") from exc
    if len(raw) != 32:
        raise ValueError("a public key is 'ed25519:' and 44 base64 characters")
    return Ed25519PublicKey.from_public_bytes(raw)


class HubKey:
    """The hub's Ed25519 key, made on first use in ``folder`` (private part mode 0600)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._private: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.folder / KEY_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def private(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._private is None:
                if not self.path.exists():
                    self._create()
                key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise ValueError(f"{self.path} is not an Ed25519 private key")
                self._private = key
                self._write_public(key.public_key())
            return self._private

    def public(self) -> Ed25519PublicKey:
        return self.private().public_key()

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = self.folder / f".{KEY_FILE}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # A link fails if the name exists: of two processes starting at once, one key wins.
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def _write_public(self, key: Ed25519PublicKey) -> None:
        text = public_key_text(key) + "\n"
        path = self.folder / PUBLIC_KEY_FILE
        if path.exists() and path.read_text() == text:
            return
        tmp = self.folder / f".{PUBLIC_KEY_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(text)
        tmp.replace(path)


# the log -------------------------------------------------------------------------------

# Built once: an append is on the path of every download and query.
_h = db.audit_head
_TAKE_HEAD = (
    update(_h)
    .where(_h.c.id == _HEAD_ID)
    .values(seq=_h.c.seq + bindparam("n"))
    .returning(_h.c.seq, _h.c.hash)
)
_MOVE_HEAD = update(_h).where(_h.c.id == _HEAD_ID).values(hash=bindparam("new_hash"))
_ADD_ENTRY = insert(db.audit_entries)


@dataclass(frozen=True)
class Subject:
    """The dataset (or only the organization) an entry is about."""

    org: str | None = None
    dataset: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class AuditNote:
    """The entry a change is to be written with, given to the service that makes it: the
    service knows what the change is about (organization, dataset, new version) and
    appends the entry in the change's transaction."""

    who: Principal | None
    action: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    client: str | None = None


# Called in the transaction right after an append, with what was appended; what it raises
# undoes the change and its entries. A seam for tests: a failure at the last moment.
AppendHook = Callable[[Connection, list["AuditEntry"]], None]


class AuditLog:
    def __init__(
        self,
        engine: Engine,
        key: HubKey,
        policy: AccessPolicy,
        *,
        checkpoint_every: int = 1000,
    ) -> None:
        self.engine = engine
        self.key = key
        self.policy = policy
        self.checkpoint_every = checkpoint_every
        # SQLite has one writer: every transaction that appends (the catalog's, the
        # accounts', the log's own) takes this lock first, so the threads of one process
        # queue here rather than in SQLite's busy handler or in a lock upgrade deadlock.
        self.writer_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self.after_append: list[AppendHook] = []
        self._ensure_head()

    def _ensure_head(self) -> None:
        e = db.audit_entries
        with self.engine.begin() as conn:
            if conn.execute(select(db.audit_head.c.id)).first() is not None:
                return
            # A lost head row is remade from the last entry, so appends go on from there.
            last = conn.execute(select(e.c.seq, e.c.hash).order_by(e.c.seq.desc())).first()
            head = {"seq": 0, "hash": GENESIS} if last is None else dict(last._mapping)
            conn.execute(db.insert_ignore(conn, db.audit_head, {"id": _HEAD_ID, **head}))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing transaction in which ``append`` may be called (on SQLite, under the
        process's writer lock)."""
        with self.writer_lock or nullcontext(), self.engine.begin() as conn:
            yield conn

    # writing -----------------------------------------------------------------------------

    def record(
        self,
        who: Principal | None,
        action: str,
        *,
        org: str | None = None,
        dataset: str | None = None,
        version: int | None = None,
        detail: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> AuditEntry:
        """Append one entry in a transaction of its own (a read, a refusal)."""
        subject = Subject(org, dataset, version)
        return self.record_each(who, action, [subject], detail=detail, client=client)[0]

    def record_each(
        self,
        who: Principal | None,
        action: str,
        subjects: list[Subject],
        *,
        detail: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> list[AuditEntry]:
        """One entry per subject (a query over several datasets), in one transaction."""
        with self.transaction() as conn:
            return self.append(conn, who, action, subjects, detail=detail, client=client)

    def append_note(
        self,
        conn: Connection,
        note: AuditNote,
        *,
        org: str | None = None,
        dataset: str | None = None,
        version: int | None = None,
    ) -> AuditEntry:
        """Append the entry of a change in the change's transaction."""
        subject = Subject(org, dataset, version)
        return self.append(
            conn, note.who, note.action, [subject], detail=note.detail, client=note.client
        )[0]

    def append(
        self,
        conn: Connection,
        who: Principal | None,
        action: str,
        subjects: list[Subject],
        *,
        detail: Mapping[str, Any] | None = None,
        client: str | None = None,
    ) -> list[AuditEntry]:
        """Append one entry per subject in the caller's transaction (begun with
        ``transaction``), which then holds the chain's head until it ends. Call it last:
        on PostgreSQL every change queues on that row lock until the caller commits.

        A failure to write raises ``AuditFailure`` after the caller's transaction has
        been marked for rollback: the change is not made without its entry."""
        at = db.iso(db.utcnow()) or ""
        # Through JSON and back, so the detail hashed now is the one read back later.
        detail_text = canonical(dict(detail or {})).decode()
        detail_value = json.loads(detail_text)
        actor = who.name if who is not None else None
        token_id = who.token_id if who is not None else None
        n = len(subjects)
        try:
            # Taking the head row first is what makes concurrent appends queue.
            head = conn.execute(_TAKE_HEAD, {"n": n}).one()
            seq, prev = int(head.seq) - n, str(head.hash)
            entries = []
            for s in subjects:
                seq += 1
                unsigned = AuditEntry(
                    seq, at, actor, token_id, action, s.org, s.dataset, s.version,
                    detail_value, client, prev, "",
                )  # fmt: skip
                entry = replace(unsigned, hash=unsigned.computed_hash())
                entries.append(entry)
                prev = entry.hash
            rows = [{**e.as_dict(), "detail": detail_text} for e in entries]
            conn.execute(_ADD_ENTRY, rows[0] if n == 1 else rows)
            conn.execute(_MOVE_HEAD, {"new_hash": prev})
            first, last = entries[0].seq, entries[-1].seq
            if last // self.checkpoint_every > (first - 1) // self.checkpoint_every:
                # In the same transaction: a checkpoint of entries rolled back never exists.
                self._sign(conn, last, prev)
        except DBAPIError as exc:
            raise AuditFailure(
                f"the audit log could not be written ({type(exc).__name__}), so "
                f"{action!r} was not made; nothing changed, try again or ask the operator"
            ) from exc
        for hook in self.after_append:
            hook(conn, entries)
        return entries

    def checkpoint(self) -> Checkpoint:
        """Sign the head of the chain as it is now."""
        with self.transaction() as conn:
            head = conn.execute(
                select(db.audit_head.c.seq, db.audit_head.c.hash).where(
                    db.audit_head.c.id == _HEAD_ID
                )
            ).one()
            return self._sign(conn, int(head.seq), str(head.hash))

    def _sign(self, conn: Connection, seq: int, hash: str) -> Checkpoint:
        c = db.audit_checkpoints
        existing = conn.execute(select(c).where(c.c.seq == seq)).first()
        if existing is not None:
            return _checkpoint(existing)
        private = self.key.private()
        at = db.iso(db.utcnow()) or ""
        signature = private.sign(checkpoint_message(seq, hash, at))
        cp = Checkpoint(
            seq, hash, at, key_id(private.public_key()), base64.b64encode(signature).decode()
        )
        conn.execute(db.insert_ignore(conn, c, cp.as_dict()))
        return cp

    # reading -----------------------------------------------------------------------------

    def entries(
        self,
        who: Principal,
        *,
        dataset: str | None = None,
        org: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """The entries the caller may read, newest first: all for a hub admin, those of
        their organizations for an editor or admin of them; refused to anyone else."""
        if not who.authenticated:
            raise Unauthorized("reading the audit log needs an API token")
        e = db.audit_entries
        with self.engine.connect() as conn:
            cond: ColumnElement[bool]
            if dataset is not None:
                org_name, _, name = dataset.partition("/")
                if not org_name or not name or "/" in name:
                    raise BadRequest("dataset must be ORG/NAME", field="dataset")
                d, o = db.datasets, db.organizations
                row = conn.execute(
                    select(d.c.access, d.c.org_id)
                    .join(o, o.c.id == d.c.org_id)
                    .where(o.c.name == org_name, d.c.name == name)
                ).first()
                # A dataset the caller may not see does not exist for them.
                if row is None or not self.policy.can_see(who, row):
                    raise NotFound(f"no dataset {dataset}")
                if not self.policy.can_write(who, int(row.org_id)):
                    raise Forbidden(
                        f"the audit log of {dataset} is for the editors and admins of "
                        f"{org_name!r} and for hub admins"
                    )
                cond = and_(e.c.org == org_name, e.c.dataset == name)
                if org is not None and org != org_name:
                    cond = and_(cond, e.c.org == org)
            elif org is not None:
                org_id = conn.execute(
                    select(db.organizations.c.id).where(db.organizations.c.name == org)
                ).scalar()
                if org_id is None:
                    raise NotFound(f"no organization named {org!r}")
                if not self.policy.can_write(who, int(org_id)):
                    raise Forbidden(
                        f"the audit log of {org!r} is for its editors and admins and for hub admins"
                    )
                cond = e.c.org == org
            elif who.is_admin:
                cond = true()
            else:
                published = [o for o, role in who.roles.items() if role in WRITER_ROLES]
                if not published:
                    raise Forbidden(
                        "the audit log is for editors and admins of an organization "
                        "and for hub admins"
                    )
                names = list(
                    conn.execute(
                        select(db.organizations.c.name).where(db.organizations.c.id.in_(published))
                    ).scalars()
                )
                cond = e.c.org.in_(names)
            if action is not None:
                cond = and_(cond, e.c.action == action)
            count = conn.execute(select(func.count()).select_from(e).where(cond)).scalar_one()
            rows = conn.execute(
                select(e).where(cond).order_by(e.c.seq.desc()).limit(limit).offset(offset)
            ).all()
        return {"count": int(count), "entries": [AuditEntry.from_row(r).as_dict() for r in rows]}

    def _rows(self, upto: int | None = None) -> Iterator[AuditEntry]:
        e = db.audit_entries
        query = select(e).order_by(e.c.seq)
        if upto is not None:
            query = query.where(e.c.seq <= upto)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(query)
            for row in result:
                yield AuditEntry.from_row(row)

    # checking ----------------------------------------------------------------------------

    def verify(self) -> ChainReport:
        """Walk the chain from its first entry: every hash, every link, the head, and each
        checkpoint's signature and position."""
        report = ChainReport()
        with self.engine.connect() as conn:
            head = conn.execute(select(db.audit_head).where(db.audit_head.c.id == _HEAD_ID)).first()
            checkpoints = [
                _checkpoint(r)
                for r in conn.execute(
                    select(db.audit_checkpoints).order_by(db.audit_checkpoints.c.seq)
                )
            ]
        wanted = {cp.seq for cp in checkpoints}
        seen = {0: GENESIS}
        walk = ChainWalk()
        for entry in self._rows():
            report.entries += 1
            walk.entry(entry.seq, entry.prev_hash, entry.hash, entry.content_hash())
            if entry.seq in wanted:
                seen[entry.seq] = entry.hash
        report.problems.extend(walk.problems)
        if head is None:
            report.problems.append(Problem(walk.seq + 1, "the chain's head record is missing"))
        elif int(head.seq) > walk.seq:
            report.problems.append(
                Problem(
                    walk.seq + 1,
                    f"missing: the chain ends at entry {walk.seq} but its head records "
                    f"{head.seq} entries",
                )
            )
        elif int(head.seq) < walk.seq or head.hash != walk.hash:
            report.problems.append(
                Problem(walk.seq, f"does not match the chain's head ({head.seq}, {head.hash})")
            )
        public: Ed25519PublicKey | None = None
        if checkpoints:
            if self.key.exists():
                public = self.key.public()
            else:
                report.problems.append(
                    Problem(
                        checkpoints[0].seq,
                        f"the hub key {self.key.path} is missing: "
                        f"{len(checkpoints)} checkpoint(s) cannot be checked",
                    )
                )
        for cp in checkpoints:
            report.checkpoints += 1
            if public is not None and not cp.verifies(public):
                report.problems.append(
                    Problem(cp.seq, "its checkpoint's signature does not verify with the hub key")
                )
            if cp.seq not in seen:
                report.problems.append(
                    Problem(cp.seq, "missing: a signed checkpoint was made at this position")
                )
            elif seen[cp.seq] != cp.hash:
                report.problems.append(
                    Problem(
                        cp.seq,
                        "differs from the signed checkpoint made at this position: "
                        "the chain was rewritten",
                    )
                )
        report.problems.sort(key=lambda p: p.seq)
        return report

    # export ------------------------------------------------------------------------------

    def export(self, out: IO[str], *, dataset: str | None = None) -> ExportSummary:
        """JSON Lines: a header, every entry up to a new checkpoint (those of other datasets
        reduced to their hashes when ``dataset`` is given), then the signed checkpoint."""
        org_name, name = None, None
        if dataset is not None:
            org_name, _, name = dataset.partition("/")
            if not org_name or not name or "/" in name:
                raise BadRequest("dataset must be ORG/NAME")
        cp = self.checkpoint()
        header = {
            "type": EXPORT_FORMAT,
            "format": 1,
            "dataset": dataset,
            "public_key": public_key_text(self.key.public()),
            "exported_at": db.iso(db.utcnow()),
        }
        out.write(json.dumps(header, ensure_ascii=False) + "\n")
        summary = ExportSummary(checkpoint=cp)
        for entry in self._rows(upto=cp.seq):
            if dataset is None or (entry.org, entry.dataset) == (org_name, name):
                line = {"type": "entry", **entry.as_dict()}
                summary.entries += 1
            else:
                line = {
                    "type": "redacted",
                    "seq": entry.seq,
                    "content_hash": entry.content_hash(),
                    "prev_hash": entry.prev_hash,
                    "hash": entry.hash,
                }
                summary.redacted += 1
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.write(json.dumps({"type": "checkpoint", **cp.as_dict()}) + "\n")
        return summary


@dataclass
class ExportSummary:
    checkpoint: Checkpoint
    entries: int = 0
    redacted: int = 0


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(int(row.seq), str(row.hash), str(row.at), str(row.key_id), str(row.signature))


class ChainWalk:
    """Follows entries in the order given and notes where the chain breaks."""

    def __init__(self) -> None:
        self.seq = 0
        self.hash = GENESIS
        self.problems: list[Problem] = []

    def entry(self, seq: int, prev_hash: str, hash: str, content_hash: str) -> None:
        expected = self.seq + 1
        if seq > expected:
            gap = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
            self.problems.append(
                Problem(expected, f"missing: the chain jumps from entry {self.seq} to {seq} "
                        f"(entry {gap} deleted)")
            )  # fmt: skip
        elif seq < expected:
            self.problems.append(Problem(seq, f"out of order: it comes after entry {self.seq}"))
        elif prev_hash != self.hash:
            self.problems.append(
                Problem(
                    seq,
                    f"does not follow entry {self.seq}: it records the previous hash as "
                    f"{prev_hash[:16]}…, entry {self.seq} has {self.hash[:16]}…",
                )
            )
        if entry_hash(seq, prev_hash, content_hash) != hash:
            self.problems.append(
                Problem(seq, f"altered: its content no longer hashes to {hash[:16]}…")
            )
        self.seq, self.hash = max(seq, self.seq), hash


# offline check ----------------------------------------------------------------------------


@dataclass
class CheckResult:
    entries: int = 0
    redacted: int = 0
    checkpoint: Checkpoint | None = None
    dataset: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.checkpoint is not None


def check_export(lines: Iterable[str], public_key: Ed25519PublicKey) -> CheckResult:
    """Verify an export without the hub: every hash, every link, and the signature of the
    checkpoint over the last hash, with the public key the reader trusts."""
    result = CheckResult()
    walk = ChainWalk()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
            kind = item["type"] if isinstance(item, dict) else None
            if number == 1:
                if kind != EXPORT_FORMAT:
                    raise ValueError(f"the first line is not a {EXPORT_FORMAT} header")
                result.dataset = item.get("dataset")
                continue
            if result.checkpoint is not None:
                raise ValueError("lines after the checkpoint")
            if kind == "entry":
                entry = AuditEntry(**{k: v for k, v in item.items() if k != "type"})
                walk.entry(entry.seq, entry.prev_hash, entry.hash, entry.content_hash())
                result.entries += 1
            elif kind == "redacted":
                walk.entry(int(item["seq"]), item["prev_hash"], item["hash"], item["content_hash"])
                result.redacted += 1
            elif kind == "checkpoint":
                result.checkpoint = Checkpoint(**{k: v for k, v in item.items() if k != "type"})
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except (ValueError, KeyError, TypeError) as exc:
            result.problems.extend(walk.problems)
            result.problems.append(Problem(walk.seq + 1, f"line {number} is unreadable: {exc}"))
            return result
    result.problems.extend(walk.problems)
    cp = result.checkpoint
    if cp is None:
        result.problems.append(
            Problem(walk.seq, "the file ends without a signed checkpoint: it is incomplete")
        )
        return result
    if (cp.seq, cp.hash) != (walk.seq, walk.hash):
        result.problems.append(
            Problem(cp.seq, f"the checkpoint signs position {cp.seq} but the entries end at "
                    f"{walk.seq} with another hash")
        )  # fmt: skip
    if not cp.verifies(public_key):
        result.problems.append(
            Problem(
                cp.seq,
                "the checkpoint's signature does not verify with the public key "
                f"{public_key_text(public_key)}",
            )
        )
    result.problems.sort(key=lambda p: p.seq)
    return result
