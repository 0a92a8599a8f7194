"""Request-scoped helpers shared by the API routes."""

from __future__ import annotations

from typing import Annotated

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
    return get_hub(request).accounts.authenticate(token.strip())


HubDep = Annotated[Hub, Depends(get_hub)]
Who = Annotated[Principal, Depends(get_principal)]
