"""Access requests: a signed-in user asks to read a restricted dataset, its publisher decides.

An approval takes effect at the requester's next call (the caller's approvals are read with
their token), on every path, and ends at its expiry.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, insert, or_, select, update
from sqlalchemy.orm import aliased

from khazna import db
from khazna.access.accounts import Principal
from khazna.access.audit import AuditNote
from khazna.access.policy import AccessPolicy
from khazna.catalog.service import Catalog
from khazna.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

STATES = ("pending", "approved", "refused", "expired")
MAX_TEXT = 2000


def _text(value: str, field: str) -> str:
    text = value.strip()
    if not text:
        raise BadRequest(f"{field} must say something", field=field)
    if len(text) > MAX_TEXT:
        raise BadRequest(f"{field} must be at most {MAX_TEXT} characters", field=field)
    return text


class AccessRequests:
    def __init__(self, engine: Engine, catalog: Catalog, policy: AccessPolicy) -> None:
        self.engine = engine
        self.catalog = catalog
        self.policy = policy
        self._lock = threading.Lock()  # one request per user and dataset at a time

    def ask(
        self, who: Principal, org: str, name: str, purpose: str, *, note: AuditNote | None = None
    ) -> dict[str, Any]:
        """A new pending request by the caller; 409 if it would change nothing. ``note``:
        the audit entry, written in the request's transaction."""
        if who.user_id is None:
            raise Unauthorized("asking for access needs a signed-in user; send an API token")
        purpose = _text(purpose, "purpose")
        row = self.catalog.visible_row(who, org, name)
        ref = f"{org}/{name}"
        if row.access != "restricted":
            raise Conflict(
                f"dataset {ref} is {row.access}: access requests are for restricted datasets"
            )
        if self.policy.can_read(who, row):
            raise Conflict(f"you can already read {ref}")
        a = db.access_requests
        with self._lock, self.catalog.audit.transaction() as conn:
            pending = conn.execute(
                select(a.c.id).where(
                    a.c.dataset_id == row.id, a.c.user_id == who.user_id, a.c.state == "pending"
                )
            ).first()
            if pending is not None:
                raise Conflict(
                    f"your access request {pending.id} for {ref} is pending already",
                    request=int(pending.id),
                )
            request_id = conn.execute(
                insert(a).values(
                    dataset_id=row.id,
                    user_id=who.user_id,
                    purpose=purpose,
                    state="pending",
                    created_at=db.utcnow(),
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            if note is not None:
                self.catalog.audit.append_note(conn, note, org=org, dataset=name)
        return self._one(int(request_id))

    def of_dataset(
        self, who: Principal, org: str, name: str, state: str | None = None
    ) -> list[dict[str, Any]]:
        row = self._decidable(who, org, name, "listing the access requests of")
        return self._list(db.access_requests.c.dataset_id == row.id, state)

    def inbox(self, who: Principal, state: str | None = None) -> list[dict[str, Any]]:
        """Requests for every dataset the caller publishes (a hub admin: all)."""
        if not who.authenticated:
            raise Unauthorized("the access request inbox needs a signed-in user; send an API token")
        d = db.datasets
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d.c.id, d.c.org_id, d.c.access).where(self.policy.visible_datasets(who))
            ).all()
        mine = [int(r.id) for r in rows if self.policy.can_write(who, int(r.org_id), int(r.id))]
        return self._list(db.access_requests.c.dataset_id.in_(mine), state)

    def mine(self, who: Principal, state: str | None = None) -> list[dict[str, Any]]:
        if who.user_id is None:
            raise Unauthorized("your access requests need a signed-in user; send an API token")
        return self._list(db.access_requests.c.user_id == who.user_id, state)

    def approve(
        self,
        who: Principal,
        org: str,
        name: str,
        user: str,
        until: datetime | None = None,
        *,
        note: AuditNote | None = None,
    ) -> dict[str, Any]:
        """Approve the user's latest request (pending, refused or approved: a new expiry).
        ``note``: the audit entry, written in the decision's transaction."""
        if until is not None and until <= db.utcnow():
            raise BadRequest("until must be in the future", field="until")
        return self._decide(
            who, org, name, user, state="approved", until=until, reason=None, note=note
        )

    def refuse(
        self,
        who: Principal,
        org: str,
        name: str,
        user: str,
        reason: str,
        *,
        note: AuditNote | None = None,
    ) -> dict[str, Any]:
        """Refuse the user's latest request; an approval is withdrawn at once."""
        reason = _text(reason, "reason")
        return self._decide(
            who, org, name, user, state="refused", until=None, reason=reason, note=note
        )

    # -- inside ---------------------------------------------------------------------------

    def _decidable(self, who: Principal, org: str, name: str, action: str) -> Any:
        row = self.catalog.visible_row(who, org, name)
        if not self.policy.can_write(who, int(row.org_id), int(row.id)):
            rule = f"{action} {org}/{name} needs the editor or admin role in {org!r}"
            if who.read_only:
                rule = f"{action} {org}/{name} needs a read-write token; this one has scope 'read'"
            if not who.authenticated:
                raise Unauthorized(f"{rule}; send an API token")
            raise Forbidden(rule)
        return row

    def _decide(
        self,
        who: Principal,
        org: str,
        name: str,
        user: str,
        *,
        state: str,
        until: datetime | None,
        reason: str | None,
        note: AuditNote | None,
    ) -> dict[str, Any]:
        verb = "approving" if state == "approved" else "refusing"
        row = self._decidable(who, org, name, f"{verb} access requests for")
        a, u = db.access_requests, db.users
        with self._lock, self.catalog.audit.transaction() as conn:
            latest = conn.execute(
                select(a.c.id)
                .join(u, u.c.id == a.c.user_id)
                .where(a.c.dataset_id == row.id, u.c.name == user)
                .order_by(a.c.id.desc())
                .limit(1)
            ).first()
            if latest is None:
                raise NotFound(f"no access request from {user!r} for {org}/{name}")
            conn.execute(
                update(a)
                .where(a.c.id == latest.id)
                .values(
                    state=state,
                    expires_at=until,
                    reason=reason,
                    decided_by=who.user_id,
                    decided_at=db.utcnow(),
                )
            )
            if note is not None:
                self.catalog.audit.append_note(conn, note, org=org, dataset=name)
        return self._one(int(latest.id))

    def _state_condition(self, state: str) -> ColumnElement[bool]:
        a, now = db.access_requests, db.utcnow()
        if state == "approved":
            return and_(
                a.c.state == "approved", or_(a.c.expires_at.is_(None), a.c.expires_at > now)
            )
        if state == "expired":
            return and_(a.c.state == "approved", a.c.expires_at <= now)
        return a.c.state == state

    def _list(self, where: ColumnElement[bool], state: str | None) -> list[dict[str, Any]]:
        conditions = [where]
        if state is not None:
            if state not in STATES:
                raise BadRequest(
                    f"state must be one of {', '.join(STATES)}; got {state!r}", field="state"
                )
            conditions.append(self._state_condition(state))
        a, d, o, u = db.access_requests, db.datasets, db.organizations, db.users
        decider = aliased(u)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    a,
                    d.c.name.label("dataset"),
                    o.c.name.label("org"),
                    u.c.name.label("user"),
                    decider.c.name.label("decider"),
                )
                .join(d, d.c.id == a.c.dataset_id)
                .join(o, o.c.id == d.c.org_id)
                .join(u, u.c.id == a.c.user_id)
                .outerjoin(decider, decider.c.id == a.c.decided_by)
                .where(*conditions)
                .order_by(a.c.id.desc())
            ).all()
        now = db.utcnow()
        out = []
        for r in rows:
            state = str(r.state)
            expires = r.expires_at
            # SQLite hands back naive datetimes that were stored as UTC.
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            if state == "approved" and expires is not None and expires <= now:
                state = "expired"
            out.append(
                {
                    "id": int(r.id),
                    "org": r.org,
                    "dataset": r.dataset,
                    "user": r.user,
                    "purpose": r.purpose,
                    "state": state,
                    "reason": r.reason,
                    "expires_at": db.iso(expires),
                    "created_at": db.iso(r.created_at),
                    "decided_at": db.iso(r.decided_at),
                    "decided_by": r.decider,
                }
            )
        return out

    def _one(self, request_id: int) -> dict[str, Any]:
        return self._list(db.access_requests.c.id == request_id, None)[0]
