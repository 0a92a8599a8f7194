"""Request-scoped helpers shared by the API routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from khazna.access.accounts import ANONYMOUS, Principal
from khazna.errors import Unauthorized
from khazna.hub import Hub


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_principal(request: Request) -> Principal:
    """The caller behind ``Authorization: Bearer TOKEN``; anonymous without the header.

    A header with a wrong token is refused outright rather than treated as anonymous, so
    a client with a typo learns it at once.
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


HubDep = Annotated[Hub, Depends(get_hub)]
Who = Annotated[Principal, Depends(get_principal)]
