"""Request-scoped helpers shared by the API routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from khazna.access.accounts import ANONYMOUS, Principal
from khazna.access.audit import AuditNote
from khazna.errors import Forbidden, Unauthorized
from khazna.hub import Hub

# Calls that change nothing though they are not GET: a read-only token may make them.
READING_POSTS = {"/api/v1/sql", "/stac/search", "/sql", "/sql/download", "/signin", "/signout"}
# The web pages' sign-in: the token, in an HttpOnly, SameSite=Strict cookie. Only the pages
# read it; the API answers to the Authorization header alone.
SESSION_COOKIE = "khazna_token"
_READING_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_principal(request: Request) -> Principal:
    """The caller behind ``Authorization: Bearer TOKEN``; without the header, on a web page,
    the one signed in with the session cookie; else anonymous.

    A header with a wrong, expired or revoked token is refused outright rather than treated
    as anonymous, so a client with a typo learns it at once.
    """
    header = request.headers.get("authorization")
    if not header:
        return _signed_in(request)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
    who = get_hub(request).accounts.authenticate(token.strip())
    # For the audit entry of a refusal, which the error handler writes.
    request.state.principal = who
    return who


def _signed_in(request: Request) -> Principal:
    """A web page's caller: the token of the sign-in cookie, if it is still good.

    A revoked or expired token there makes the visitor anonymous again (the page says so)
    rather than refusing every page, the sign-in page included.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if not token or request.url.path.startswith("/api/"):
        return ANONYMOUS
    origin = request.headers.get("origin")
    if (
        request.method not in _READING_METHODS
        and origin is not None
        and urlsplit(origin).netloc != request.headers.get("host")
    ):
        # Another site's form posting here does not act as the visitor (SameSite=Strict
        # already keeps the cookie from it; this holds for browsers that ignore SameSite).
        return ANONYMOUS
    try:
        who = get_hub(request).accounts.authenticate(token)
    except Unauthorized:
        request.state.session_ended = True
        return ANONYMOUS
    request.state.principal = who
    return who


def client_address(request: Request) -> str | None:
    """Where the request came from, for the audit log: the connecting address."""
    return request.client.host if request.client is not None else None


def record(request: Request, who: Principal, action: str, **entry: Any) -> None:
    """Append an audit entry for this request (``org``, ``dataset``, ``version``, ``detail``)
    in a transaction of its own: for reads and refusals, which change nothing."""
    get_hub(request).audit.record(who, action, client=client_address(request), **entry)


def note(
    request: Request, who: Principal, action: str, detail: Mapping[str, Any] | None = None
) -> AuditNote:
    """The audit entry of a change this request makes, for the service that makes it to
    write in the change's transaction."""
    return AuditNote(who, action, dict(detail or {}), client_address(request))


def quota_key(request: Request, who: Principal) -> str:
    """Whose quota a request counts against: its token, else the client's address."""
    if who.token_id is not None:
        return f"token:{who.token_id}"
    return f"address:{request.client.host if request.client else 'unknown'}"


async def check_caller(request: Request, who: Annotated[Principal, Depends(get_principal)]) -> None:
    """What every API call and page goes through: the token's scope, then the rate limit.

    async, and the count (a database or Redis write) in a worker thread only when a rate
    limit is set: a plain def dependency would cost every request a thread hop.
    """
    if (
        who.read_only
        and request.method not in _READING_METHODS
        and request.url.path not in READING_POSTS
    ):
        raise Forbidden(
            f"{request.method} {request.url.path} needs a read-write token; "
            "this one has scope 'read'"
        )
    quotas = get_hub(request).quotas
    if quotas.per_minute > 0 and not request.url.path.endswith("/health"):
        await run_in_threadpool(quotas.hit, quota_key(request, who))


async def _request_hub(request: Request) -> Hub:
    # async: FastAPI runs a plain def dependency in a worker thread, a hop per request
    # for what is an attribute read.
    return get_hub(request)


HubDep = Annotated[Hub, Depends(_request_hub)]
Who = Annotated[Principal, Depends(get_principal)]
