"""The one access check used by every path that reveals a dataset or its data.

Levels (DESIGN.md): public, registered, restricted, private. Restricted data is read by
the organization for now; approved access requests extend it in a later change.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, false, or_, true

from khazna import db
from khazna.access.accounts import Principal
from khazna.errors import BadRequest

LEVELS = ("public", "registered", "restricted", "private")
ORG_ROLES = ("admin", "editor", "member")
WRITER_ROLES = ("admin", "editor")


def check_level(level: object) -> str:
    if level not in LEVELS:
        raise BadRequest(
            f"access must be one of {', '.join(LEVELS)}; got {level!r}", field="access"
        )
    return str(level)


def check_role(role: object) -> str:
    if role not in ORG_ROLES:
        raise BadRequest(f"role must be one of {', '.join(ORG_ROLES)}; got {role!r}", field="role")
    return str(role)


class AccessPolicy:
    """Decides who may see a dataset's metadata, read its data, and write to an organization."""

    def is_member(self, who: Principal, org_id: int) -> bool:
        return who.is_admin or org_id in who.roles

    def can_see(self, who: Principal, dataset: Any) -> bool:
        """Metadata (title, description, file list) and existence."""
        if dataset.access == "private":
            return self.is_member(who, int(dataset.org_id))
        return True

    def can_read(self, who: Principal, dataset: Any) -> bool:
        """The data itself: downloads, previews, rows, SQL."""
        level = dataset.access
        if level == "public":
            return True
        if level == "registered":
            return who.authenticated
        return self.is_member(who, int(dataset.org_id))

    def can_write(self, who: Principal, org_id: int) -> bool:
        return who.is_admin or who.roles.get(org_id) in WRITER_ROLES

    def can_manage(self, who: Principal, org_id: int) -> bool:
        return who.is_admin or who.roles.get(org_id) == "admin"

    def visible_datasets(self, who: Principal) -> ColumnElement[bool]:
        """A SQL condition on ``datasets`` equal to ``can_see``, for listings and search."""
        if who.is_admin:
            return true()
        member_of = list(who.roles)
        return or_(
            db.datasets.c.access != "private",
            db.datasets.c.org_id.in_(member_of) if member_of else false(),
        )
