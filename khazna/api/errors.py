"""Every error leaves the hub as JSON ``{"error": {"code", "message", ...}}``, but on the web
pages, which answer with an HTML page of the same status instead."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from khazna.access.accounts import ANONYMOUS, Principal
from khazna.api.deps import record
from khazna.errors import Forbidden, KhaznaError, OverQuota, RangeNotSatisfiable, Unauthorized

log = logging.getLogger("khazna")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    429: "over_quota",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, **details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _record_refusal(request: Request, exc: KhaznaError) -> None:
    """Every 401 and 403 goes to the audit log, with the rule that refused; of the 429s of
    a quota, the first of each caller's window, with the count of those left out before."""
    who: Principal = getattr(request.state, "principal", ANONYMOUS)
    params = request.path_params
    org = params.get("org")
    detail: dict[str, Any] = {
        "status": exc.status,
        "rule": exc.message,
        "method": request.method,
        "path": request.url.path,
    }
    if isinstance(exc, OverQuota):
        detail["quota"] = exc.details.get("rule")
        detail["unlogged_before"] = exc.log_unlogged
    record(
        request,
        who,
        "denied",
        org=org,
        dataset=params.get("name") if org is not None else None,
        detail=detail,
    )


# (request, status, message, headers) -> the page that says so.
PageError = Callable[[Request, int, str, dict[str, str] | None], Response]


def install(
    app: FastAPI,
    page_error: PageError | None = None,
    is_page: Callable[[Request], bool] = lambda _: False,
) -> None:
    def answer(
        request: Request, status: int, code: str, message: str, headers: dict[str, str] | None
    ) -> Response:
        if page_error is not None and is_page(request):
            return page_error(request, status, message, headers)
        return error_response(status, code, message, headers)

    @app.exception_handler(KhaznaError)
    async def _khazna(request: Request, exc: KhaznaError) -> Response:
        if isinstance(exc, Unauthorized | Forbidden) or (
            isinstance(exc, OverQuota) and exc.log_unlogged is not None
        ):
            await run_in_threadpool(_record_refusal, request, exc)
        headers = None
        if isinstance(exc, RangeNotSatisfiable) and "size" in exc.details:
            headers = {"Content-Range": f"bytes */{exc.details['size']}"}
        if isinstance(exc, OverQuota):
            headers = {"Retry-After": str(exc.details["retry_after"])}
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        if page_error is not None and is_page(request):
            return page_error(request, exc.status, exc.message, headers)
        return error_response(exc.status, exc.code, exc.message, headers, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, 400, "bad_request", _describe_validation(exc), None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = dict(exc.headers) if exc.headers else None
        return answer(request, exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        # Nobody is listening; whatever the route was writing has been cleaned up.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "internal error; the hub's log has the details")
