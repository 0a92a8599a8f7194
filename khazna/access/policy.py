"""The one access check used by every path that reveals a dataset or its data.

Levels (DESIGN.md): public, registered, restricted, private. Restricted data is read by
the organization, hub admins, and users whose access request was approved (until its
expiry). Tokens narrow their user's rights: scope "read", or a list of datasets and
organizations outside which nothing exists for the token.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, true

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
    """Decides who may see a dataset's metadata, read its data, and write to an organization.

    ``dataset`` is anything with ``id``, ``org_id`` and ``access`` (a row of ``datasets``).
    A token restricted to some datasets or organizations sees nothing else: outside its
    reach a dataset does not exist, whatever its level.
    """

    def is_member(self, who: Principal, org_id: int) -> bool:
        return who.is_admin or org_id in who.roles

    def in_reach(self, who: Principal, dataset: Any) -> bool:
        limits = who.limits
        return (
            limits is None
            or int(dataset.id) in limits.datasets
            or int(dataset.org_id) in limits.orgs
        )

    def org_in_reach(self, who: Principal, org_id: int) -> bool:
        return who.limits is None or org_id in who.limits.orgs

    def can_see(self, who: Principal, dataset: Any) -> bool:
        """Metadata (title, description, file list, versions) and existence."""
        if not self.in_reach(who, dataset):
            return False
        if dataset.access == "private":
            return self.is_member(who, int(dataset.org_id))
        return True

    def can_read(self, who: Principal, dataset: Any) -> bool:
        """The data itself: downloads, previews, rows, schema, profile, SQL."""
        if not self.can_see(who, dataset):
            return False
        level = dataset.access
        if level == "public":
            return True
        if level == "registered":
            return who.authenticated
        if level == "restricted" and int(dataset.id) in who.approved:
            return True
        return self.is_member(who, int(dataset.org_id))

    def read_refusal(self, dataset: Any, ref: str) -> str:
        """Which rule refused ``can_read`` on a dataset the caller can see."""
        if dataset.access == "registered":
            return f"dataset {ref} is registered: its data needs a signed-in user"
        if dataset.access == "restricted":
            return (
                f"dataset {ref} is restricted: its data needs an approved access request "
                f"(POST /api/v1/datasets/{ref}/access-requests, or khazna access request "
                f"{ref} --purpose TEXT) or membership of its organization"
            )
        return f"dataset {ref} is {dataset.access}: its data needs membership of its organization"

    def can_write(self, who: Principal, org_id: int, dataset_id: int | None = None) -> bool:
        """Create datasets in an organization or change one (``dataset_id``) of them."""
        if who.read_only:
            return False
        limits = who.limits
        if limits is not None and org_id not in limits.orgs and dataset_id not in limits.datasets:
            return False
        return who.is_admin or who.roles.get(org_id) in WRITER_ROLES

    def can_manage(self, who: Principal, org_id: int) -> bool:
        """Change an organization's members."""
        if who.read_only or not self.org_in_reach(who, org_id):
            return False
        return who.is_admin or who.roles.get(org_id) == "admin"

    def visible_datasets(self, who: Principal) -> ColumnElement[bool]:
        """A SQL condition on ``datasets`` equal to ``can_see``, for listings and search."""
        d = db.datasets
        conditions: list[ColumnElement[bool]] = []
        if who.limits is not None:
            reach = [
                d.c.id.in_(sorted(who.limits.datasets)) if who.limits.datasets else false(),
                d.c.org_id.in_(sorted(who.limits.orgs)) if who.limits.orgs else false(),
            ]
            conditions.append(or_(*reach))
        if not who.is_admin:
            member_of = sorted(who.roles)
            conditions.append(
                or_(d.c.access != "private", d.c.org_id.in_(member_of) if member_of else false())
            )
        return and_(*conditions) if conditions else true()
