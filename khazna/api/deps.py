"""Request-scoped helpers shared by the API routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from khazna.access.accounts import ANONYMOUS, Principal
from khazna.errors import Forbidden, Unauthorized
from khazna.hub import Hub

# Calls that change nothing though they are not GET: a read-only token may make them.
READING_POSTS = {"/api/v1/sql", "/stac/search"}
_READING_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_principal(request: Request) -> Principal:
    """The caller behind ``Authorization: Bearer TOKEN``; anonymous without the header.

    A header with a wrong, expired or revoked token is refused outright rather than treated
    as anonymous, so a client with a typo learns it at once.
    """
    header = request.headers.get("authorization")
    if not header:
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
    who = get_hub(request).accounts.authenticate(token.strip())
    # For the audit entry of a refusal, which the error handler writes.
    request.state.principal = who
    return who


def client_address(request: Request) -> str | None:
    """Where the request came from, for the audit log: the connecting address."""
    return request.client.host if request.client is not None else None


def record(request: Request, who: Principal, action: str, **entry: Any) -> None:
    """Append an audit entry for this request (``org``, ``dataset``, ``version``, ``detail``)."""
    get_hub(request).audit.record(who, action, client=client_address(request), **entry)


def quota_key(request: Request, who: Principal) -> str:
    """Whose quota a request counts against: its token, else the client's address."""
    if who.token_id is not None:
        return f"token:{who.token_id}"
    return f"address:{request.client.host if request.client else 'unknown'}"


def check_caller(request: Request, who: Annotated[Principal, Depends(get_principal)]) -> None:
    """What every API call and page goes through: the token's scope, then the rate limit."""
    if (
        who.read_only
        and request.method not in _READING_METHODS
        and request.url.path not in READING_POSTS
    ):
        raise Forbidden(
            f"{request.method} {request.url.path} needs a read-write token; "
            "this one has scope 'read'"
        )
    if not request.url.path.endswith("/health"):
        get_hub(request).quotas.hit(quota_key(request, who))


HubDep = Annotated[Hub, Depends(get_hub)]
Who = Annotated[Principal, Depends(get_principal)]
