"""Routes for tokens and access requests, under /api/v1."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from khazna import db
from khazna.access.accounts import Principal, parse_expiry
from khazna.api.deps import HubDep, Who, check_caller, note
from khazna.errors import BadRequest, Forbidden, Unauthorized
from khazna.hub import Hub

router = APIRouter(prefix="/api/v1", dependencies=[Depends(check_caller)])

State = Literal["pending", "approved", "refused", "expired"]


class TokenIn(BaseModel):
    model_config = {"extra": "forbid"}
    label: str = Field(default="", max_length=200)
    scope: Literal["read", "read-write"] = "read-write"
    expires_at: str | None = None
    ttl: int | None = Field(default=None, ge=1, description="seconds from now")
    datasets: list[str] | None = None
    organizations: list[str] | None = None


class AccessRequestIn(BaseModel):
    purpose: str


class ApprovalIn(BaseModel):
    model_config = {"extra": "forbid"}
    until: str | None = None


class RefusalIn(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str


def _token_owner(who: Principal) -> int:
    """Tokens are managed with a token that is neither restricted nor read-only, so a
    narrow token cannot make itself a wider one."""
    if who.user_id is None:
        raise Unauthorized("managing API tokens needs a signed-in user; send an API token")
    if who.limits is not None:
        raise Forbidden("managing API tokens needs a token that is not restricted to datasets")
    return who.user_id


# tokens -------------------------------------------------------------------------------


@router.post("/tokens", status_code=201, tags=["tokens"])
def create_token(body: TokenIn, request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    """A new token for the caller; its secret is in this answer only."""
    user_id = _token_owner(who)
    if body.expires_at is not None and body.ttl is not None:
        raise BadRequest("give expires_at or ttl, not both")
    expires = None
    if body.expires_at is not None:
        expires = parse_expiry(body.expires_at, "expires_at")
    elif body.ttl is not None:
        expires = db.utcnow() + timedelta(seconds=body.ttl)
    limits = None
    if body.datasets is not None or body.organizations is not None:
        limits = hub.catalog.reach(who, body.datasets or [], body.organizations or [])
        if not limits.datasets and not limits.orgs:
            raise BadRequest("a restricted token needs at least one dataset or organization")
    detail = {
        "label": body.label,
        "scope": body.scope,
        "expires_at": db.iso(expires),
        "datasets": None if limits is None else sorted(body.datasets or []),
        "organizations": None if limits is None else sorted(body.organizations or []),
    }
    secret = hub.accounts.create_token(
        user_id,
        label=body.label,
        scope=body.scope,
        expires_at=expires,
        limits=limits,
        note=note(request, who, "token.create", detail),
    )
    created = hub.accounts.tokens_of(user_id)[0]
    return {**created, "token": secret}


@router.get("/tokens", tags=["tokens"])
def list_tokens(who: Who, hub: HubDep) -> dict[str, Any]:
    return {"tokens": hub.accounts.tokens_of(_token_owner(who))}


@router.delete("/tokens/{token_id}", status_code=204, tags=["tokens"])
def revoke_token(token_id: int, request: Request, who: Who, hub: HubDep) -> Response:
    _token_owner(who)
    entry = note(request, who, "token.revoke", {"token": token_id})
    hub.accounts.revoke_token_id(who, token_id, note=entry)
    return Response(status_code=204)


# access requests ----------------------------------------------------------------------


@router.post("/datasets/{org}/{name}/access-requests", status_code=201, tags=["access"])
def ask_access(
    org: str, name: str, body: AccessRequestIn, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    return ask_access_as(request, who, hub, org, name, body.purpose)


def ask_access_as(
    request: Request, who: Principal, hub: Hub, org: str, name: str, purpose: str
) -> dict[str, Any]:
    """The caller's request for a restricted dataset, logged in the same transaction; the
    API and the dataset page share it."""
    entry = note(request, who, "access.request", {"purpose": purpose})
    return hub.access_requests.ask(who, org, name, purpose, note=entry)


@router.get("/datasets/{org}/{name}/access-requests", tags=["access"])
def dataset_access_requests(
    org: str, name: str, who: Who, hub: HubDep, state: State | None = None
) -> dict[str, Any]:
    return {"requests": hub.access_requests.of_dataset(who, org, name, state)}


@router.post("/datasets/{org}/{name}/access-requests/{user}/approve", tags=["access"])
def approve_access(
    org: str, name: str, user: str, body: ApprovalIn, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    return approve_as(request, who, hub, org, name, user, body.until)


def approve_as(
    request: Request,
    who: Principal,
    hub: Hub,
    org: str,
    name: str,
    user: str,
    until_text: str | None,
) -> dict[str, Any]:
    """Approve, logged in the same transaction; the API and the access-requests page
    share it."""
    until = None if until_text is None else parse_expiry(until_text, "until")
    detail = {"user": user, "until": None if until is None else until.isoformat()}
    entry = note(request, who, "access.approve", detail)
    return hub.access_requests.approve(who, org, name, user, until, note=entry)


@router.post("/datasets/{org}/{name}/access-requests/{user}/refuse", tags=["access"])
def refuse_access(
    org: str, name: str, user: str, body: RefusalIn, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    return refuse_as(request, who, hub, org, name, user, body.reason)


def refuse_as(
    request: Request, who: Principal, hub: Hub, org: str, name: str, user: str, reason: str
) -> dict[str, Any]:
    """Refuse, logged in the same transaction; the API and the access-requests page share
    it."""
    entry = note(request, who, "access.refuse", {"user": user, "reason": reason})
    return hub.access_requests.refuse(who, org, name, user, reason, note=entry)


@router.get("/access-requests", tags=["access"])
def access_request_inbox(who: Who, hub: HubDep, state: State | None = None) -> dict[str, Any]:
    """Requests for the datasets the caller publishes (editor or admin of their org)."""
    return {"requests": hub.access_requests.inbox(who, state)}


@router.get("/me/access-requests", tags=["access"])
def my_access_requests(who: Who, hub: HubDep, state: State | None = None) -> dict[str, Any]:
    return {"requests": hub.access_requests.mine(who, state)}
