"""Users and their API tokens. Tokens are random secrets shown once; only a hash is kept."""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from khazna import db
from khazna.catalog.names import check_slug
from khazna.errors import BadRequest, Conflict, NotFound, Unauthorized

if TYPE_CHECKING:  # the audit log knows principals
    from khazna.access.audit import AuditLog, AuditNote

TOKEN_PREFIX = "kz_"
# The hub's own account: admin, with no token, so nobody can sign in as it.
SYSTEM_USER = "khazna"
SCOPES = ("read", "read-write")
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenLimits:
    """What a restricted token reaches: these datasets and every dataset of these orgs."""

    datasets: frozenset[int] = frozenset()
    orgs: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user with a token, or nobody."""

    user_id: int | None
    name: str | None
    is_admin: bool = False
    # organization id -> role (admin, editor, member)
    roles: dict[int, str] = field(default_factory=dict)
    # Restricted datasets the user may read through an approved, unexpired access request.
    approved: frozenset[int] = frozenset()
    token_id: int | None = None
    # A token of scope "read" reads only, whatever its user may do.
    read_only: bool = False
    # None: the token reaches everything its user may.
    limits: TokenLimits | None = None

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None


ANONYMOUS = Principal(user_id=None, name=None)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(token.encode()).hexdigest()


# The statements every authenticated request runs, built once: building them per call cost
# about a third of authenticate() (SQLAlchemy's expression and cache-key work).
_TOKEN = (
    select(
        db.users.c.id,
        db.users.c.name,
        db.users.c.is_admin,
        db.tokens.c.id.label("token_id"),
        db.tokens.c.scope,
        db.tokens.c.revoked_at,
        db.tokens.c.expires_at,
        db.tokens.c.last_used_at,
        db.tokens.c.dataset_ids,
        db.tokens.c.org_ids,
    )
    .join(db.tokens, db.tokens.c.user_id == db.users.c.id)
    .where(db.tokens.c.token_hash == bindparam("token_hash"))
)
_ROLES = select(db.memberships.c.org_id, db.memberships.c.role).where(
    db.memberships.c.user_id == bindparam("user_id")
)
_APPROVED = select(db.access_requests.c.dataset_id).where(
    db.access_requests.c.user_id == bindparam("user_id"),
    db.access_requests.c.state == "approved",
    or_(
        db.access_requests.c.expires_at.is_(None),
        db.access_requests.c.expires_at > bindparam("now"),
    ),
)


class Accounts:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self.engine = engine
        # A user or token change and its audit entry are written in one transaction.
        self.audit = audit

    def add_user(
        self, name: str, *, admin: bool = False, note: AuditNote | None = None
    ) -> tuple[int, str]:
        """Create a user and a first token; returns (user id, token)."""
        check_slug(name, "user")
        if name == SYSTEM_USER:
            raise Conflict(f"{SYSTEM_USER!r} is the hub's own account; choose another name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.audit.transaction() as conn:
                user_id = conn.execute(
                    insert(db.users).values(name=name, is_admin=admin, created_at=db.utcnow())
                ).inserted_primary_key[0]  # type: ignore[index]
                self._insert_token(conn, int(user_id), token, label="created with the user")
                if note is not None:
                    self.audit.append_note(conn, note)
        except IntegrityError as exc:
            raise Conflict(f"user {name!r} already exists") from exc
        return int(user_id), token

    def system_principal(self) -> Principal:
        """The hub acting on its own behalf (demo loading, operator commands): an admin."""
        with self.engine.begin() as conn:
            conn.execute(
                db.insert_ignore(
                    conn,
                    db.users,
                    {"name": SYSTEM_USER, "is_admin": True, "created_at": db.utcnow()},
                )
            )
            user_id = conn.execute(
                select(db.users.c.id).where(db.users.c.name == SYSTEM_USER)
            ).scalar_one()
        return Principal(user_id=int(user_id), name=SYSTEM_USER, is_admin=True)

    def operator_principal(self) -> Principal:
        """The hub's own account, named after the operator running a command on the hub
        folder, for the audit entries it writes."""
        return dataclasses.replace(self.system_principal(), name=operator_name())

    def user_id(self, name: str) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.users.c.id).where(db.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return int(row.id)

    def create_token(
        self,
        user_id: int,
        *,
        label: str = "",
        scope: str = "read-write",
        expires_at: datetime | None = None,
        limits: TokenLimits | None = None,
        note: AuditNote | None = None,
    ) -> str:
        """A new token's secret. ``note``: its audit entry, its detail completed with the
        new token's id."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.add_token(
            user_id,
            token,
            label=label,
            scope=scope,
            expires_at=expires_at,
            limits=limits,
            note=note,
        )
        return token

    def add_token(
        self,
        user_id: int,
        token: str,
        *,
        label: str = "",
        scope: str = "read-write",
        expires_at: datetime | None = None,
        limits: TokenLimits | None = None,
        note: AuditNote | None = None,
    ) -> int:
        """Store a new token's hash; returns its id."""
        if scope not in SCOPES:
            raise BadRequest(
                f"scope must be one of {', '.join(SCOPES)}; got {scope!r}", field="scope"
            )
        if len(label) > 200:
            raise BadRequest("label must be at most 200 characters", field="label")
        now = db.utcnow()
        if expires_at is not None and expires_at <= now:
            raise BadRequest("expires_at must be in the future", field="expires_at")
        with self.audit.transaction() as conn:
            token_id = self._insert_token(
                conn, user_id, token, label=label, scope=scope, expires_at=expires_at, limits=limits
            )
            if note is not None:
                self.audit.append_note(
                    conn, replace(note, detail={**note.detail, "token": token_id})
                )
        return token_id

    def _insert_token(
        self,
        conn: Connection,
        user_id: int,
        token: str,
        *,
        label: str = "",
        scope: str = "read-write",
        expires_at: datetime | None = None,
        limits: TokenLimits | None = None,
    ) -> int:
        token_id = conn.execute(
            insert(db.tokens).values(
                user_id=user_id,
                token_hash=hash_token(token),
                prefix=token[:8],
                label=label,
                created_at=db.utcnow(),
                scope=scope,
                expires_at=expires_at,
                dataset_ids=None if limits is None else sorted(limits.datasets),
                org_ids=None if limits is None else sorted(limits.orgs),
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        return int(token_id)

    def revoke_token(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(db.tokens)
                .where(db.tokens.c.token_hash == hash_token(token))
                .values(revoked_at=db.utcnow())
            )

    def revoke_token_id(
        self, who: Principal, token_id: int, *, note: AuditNote | None = None
    ) -> None:
        """Revoke one of the caller's tokens (a hub admin: anyone's); 404 for any other.
        ``note``: the audit entry, written with the revocation (none for a token revoked
        already: nothing changes)."""
        t = db.tokens
        with self.audit.transaction() as conn:
            row = conn.execute(
                select(t.c.user_id, t.c.revoked_at).where(t.c.id == token_id)
            ).first()
            if row is None or not (who.is_admin or row.user_id == who.user_id):
                raise NotFound(f"no token {token_id}")
            if row.revoked_at is None:
                conn.execute(update(t).where(t.c.id == token_id).values(revoked_at=db.utcnow()))
                if note is not None:
                    self.audit.append_note(conn, note)

    def tokens_of(self, user_id: int) -> list[dict[str, Any]]:
        """A user's tokens, newest first, without their secret (the hub does not have it)."""
        t, d, o = db.tokens, db.datasets, db.organizations
        now = db.utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t).where(t.c.user_id == user_id).order_by(t.c.id.desc())
            ).all()
            dataset_names = {
                int(r.id): f"{r.org_name}/{r.name}"
                for r in conn.execute(
                    select(d.c.id, d.c.name, o.c.name.label("org_name")).join(
                        o, o.c.id == d.c.org_id
                    )
                )
            }
            org_names = {int(r.id): str(r.name) for r in conn.execute(select(o.c.id, o.c.name))}
        out = []
        for r in rows:
            if r.revoked_at is not None:
                state = "revoked"
            elif r.expires_at is not None and _aware(r.expires_at) <= now:
                state = "expired"
            else:
                state = "active"
            restricted = r.dataset_ids is not None or r.org_ids is not None
            out.append(
                {
                    "id": int(r.id),
                    "label": r.label,
                    "prefix": r.prefix,
                    "scope": r.scope,
                    "state": state,
                    "datasets": sorted(dataset_names[i] for i in r.dataset_ids or [])
                    if restricted
                    else None,
                    "organizations": sorted(org_names[i] for i in r.org_ids or [])
                    if restricted
                    else None,
                    "created_at": db.iso(r.created_at),
                    "expires_at": db.iso(r.expires_at),
                    "last_used_at": db.iso(r.last_used_at),
                    "revoked_at": db.iso(r.revoked_at),
                }
            )
        return out

    def _grants(self, conn: Connection, user_id: int) -> tuple[dict[int, str], frozenset[int]]:
        """A user's roles by organization, and the datasets its approved requests open."""
        roles = {int(r.org_id): str(r.role) for r in conn.execute(_ROLES, {"user_id": user_id})}
        approved = frozenset(
            int(dataset_id)
            for dataset_id in conn.execute(
                _APPROVED, {"user_id": user_id, "now": db.utcnow()}
            ).scalars()
        )
        return roles, approved

    def principal_of(self, user_id: int) -> Principal:
        """The user as it stands now, without a token: for work a job does on its behalf
        (its rights are read again when the job runs, not carried from the request)."""
        u = db.users
        with self.engine.connect() as conn:
            row = conn.execute(select(u.c.name, u.c.is_admin).where(u.c.id == user_id)).first()
            if row is None:
                raise NotFound(f"no user {user_id}")
            roles, approved = self._grants(conn, user_id)
        return Principal(user_id, str(row.name), bool(row.is_admin), roles, approved)

    def authenticate(self, token: str) -> Principal:
        """The principal behind a token, or Unauthorized saying why the token is refused."""
        t = db.tokens
        now = db.utcnow()
        with self.engine.connect() as conn:
            row = conn.execute(_TOKEN, {"token_hash": hash_token(token)}).first()
            if row is None:
                raise Unauthorized("invalid or revoked API token")
            if row.revoked_at is not None:
                raise Unauthorized(f"this API token was revoked at {db.iso(row.revoked_at)}")
            if row.expires_at is not None and _aware(row.expires_at) <= now:
                raise Unauthorized(f"this API token expired at {db.iso(row.expires_at)}")
            # Read at every request, so an approval, a refusal or an expiry counts at once.
            roles, approved = self._grants(conn, int(row.id))
        last_used = None if row.last_used_at is None else _aware(row.last_used_at)
        if last_used is None or now - last_used > LAST_USED_PRECISION:
            # Written at most once a minute per token: a write on every request would queue
            # readers behind SQLite's single writer.
            with self.engine.begin() as conn:
                conn.execute(update(t).where(t.c.id == row.token_id).values(last_used_at=now))
        limits = None
        if row.dataset_ids is not None or row.org_ids is not None:
            limits = TokenLimits(
                frozenset(int(i) for i in row.dataset_ids or []),
                frozenset(int(i) for i in row.org_ids or []),
            )
        return Principal(
            user_id=int(row.id),
            name=str(row.name),
            is_admin=bool(row.is_admin),
            roles=roles,
            approved=approved,
            token_id=int(row.token_id),
            read_only=row.scope == "read",
            limits=limits,
        )


def parse_expiry(value: str, field: str) -> datetime:
    """An expiry as given by people: ``2026-12-31`` means through the end of that day (UTC);
    a date and time without a zone is UTC. Must be in the future."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time(), UTC) + timedelta(days=1)
        else:
            moment = _aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError as exc:
        raise BadRequest(
            f"{field} must be a date (2026-12-31) or an ISO 8601 date and time; got {value!r}",
            field=field,
        ) from exc
    if moment <= db.utcnow():
        raise BadRequest(f"{field} must be in the future; got {value!r}", field=field)
    return moment


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes that were stored as UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def operator_name() -> str:
    """Who runs a command on the hub folder: the OS user at this host (``amina@hub-1``)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"
