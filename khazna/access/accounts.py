"""Users and their API tokens. Tokens are random secrets shown once; only a hash is kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from khazna import db
from khazna.catalog.names import check_slug
from khazna.errors import Conflict, NotFound, Unauthorized

TOKEN_PREFIX = "kz_"
# The hub's own account: admin, with no token, so nobody can sign in as it.
SYSTEM_USER = "khazna"


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user with a token, or nobody."""

    user_id: int | None
    name: str | None
    is_admin: bool = False
    # organization id -> role (admin, editor, member)
    roles: dict[int, str] = field(default_factory=dict)
    # The token the request came with (its id, for the audit log), if any.
    token_id: int | None = None

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None


ANONYMOUS = Principal(user_id=None, name=None)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_user(self, name: str, *, admin: bool = False) -> tuple[int, str]:
        """Create a user and a first token; returns (user id, token)."""
        check_slug(name, "user")
        if name == SYSTEM_USER:
            raise Conflict(f"{SYSTEM_USER!r} is the hub's own account; choose another name")
        try:
            with self.engine.begin() as conn:
                user_id = conn.execute(
                    insert(db.users).values(name=name, is_admin=admin, created_at=db.utcnow())
                ).inserted_primary_key[0]  # type: ignore[index]
        except IntegrityError as exc:
            raise Conflict(f"user {name!r} already exists") from exc
        return int(user_id), self.create_token(int(user_id), label="created with the user")

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

    def user_id(self, name: str) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.users.c.id).where(db.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return int(row.id)

    def create_token(self, user_id: int, *, label: str = "") -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.tokens).values(
                    user_id=user_id,
                    token_hash=hash_token(token),
                    prefix=token[:8],
                    label=label,
                    created_at=db.utcnow(),
                )
            )
        return token

    def revoke_token(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(db.tokens)
                .where(db.tokens.c.token_hash == hash_token(token))
                .values(revoked_at=db.utcnow())
            )

    def authenticate(self, token: str) -> Principal:
        """The principal behind a token, or Unauthorized."""
        t, u = db.tokens, db.users
        with self.engine.connect() as conn:
            row = conn.execute(
                select(u.c.id, u.c.name, u.c.is_admin, t.c.id.label("token_id"))
                .join(t, t.c.user_id == u.c.id)
                .where(t.c.token_hash == hash_token(token), t.c.revoked_at.is_(None))
            ).first()
            if row is None:
                raise Unauthorized("invalid or revoked API token")
            roles = {
                int(m.org_id): str(m.role)
                for m in conn.execute(
                    select(db.memberships.c.org_id, db.memberships.c.role).where(
                        db.memberships.c.user_id == row.id
                    )
                )
            }
        return Principal(
            user_id=int(row.id),
            name=str(row.name),
            is_admin=bool(row.is_admin),
            roles=roles,
            token_id=int(row.token_id),
        )
