"""The audit log over HTTP: publishers read their datasets' entries, hub admins all."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from khazna.api.deps import HubDep, Who, check_caller

router = APIRouter(prefix="/api/v1", dependencies=[Depends(check_caller)])


@router.get("/audit", tags=["audit"])
def audit_entries(
    who: Who,
    hub: HubDep,
    dataset: str | None = None,
    org: str | None = None,
    action: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> dict[str, Any]:
    """Entries newest first: ``dataset=ORG/NAME``, ``org=ORG`` and ``action=`` narrow them."""
    return hub.audit.entries(
        who, dataset=dataset, org=org, action=action, limit=limit, offset=offset
    )
