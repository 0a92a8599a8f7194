"""Routes for tables: rows, schema, profile, SQL, and the jobs that prepare them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from khazna.access.accounts import Principal
from khazna.access.audit import Subject
from khazna.api.deps import HubDep, Who, check_caller, client_address, record
from khazna.errors import NotFound
from khazna.hub import Hub
from khazna.tables.query import (
    QueryResult,
    Sandbox,
    TableRef,
    parse_filters,
    read_rows,
    referenced_tables,
)
from khazna.tables.registry import QueryTable

router = APIRouter(prefix="/api/v1", dependencies=[Depends(check_caller)])

ROW_PARAMS = {"limit", "offset", "sort", "next", "version"}
FORMATS = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
}


# How long GET /jobs/{id}?wait= may hold a request, and how often it reads the job again
# for a worker in another process (one of this process is heard at once).
MAX_JOB_WAIT_S = 60.0
JOB_RECHECK_S = 1.0


@router.get("/jobs/{job_id}", tags=["jobs"])
async def get_job(
    job_id: int,
    who: Who,
    hub: HubDep,
    wait: Annotated[float, Query(ge=0, le=MAX_JOB_WAIT_S)] = 0,
) -> dict[str, Any]:
    """The job; with ``wait=S``, answered once it is done or failed, or after S seconds."""
    deadline = time.monotonic() + wait
    while True:
        async with hub.jobs.watch(job_id) as watch:
            job = await run_in_threadpool(_visible_job, hub, who, job_id)
            left = deadline - time.monotonic()
            if job["state"] not in ("queued", "running") or left <= 0:
                return job
            await watch.wait(min(left, JOB_RECHECK_S))


def _visible_job(hub: Hub, who: Principal, job_id: int) -> dict[str, Any]:
    job = hub.jobs.get(job_id)
    dataset_id = job.pop("dataset_id")
    # A job is as visible as its dataset.
    if dataset_id is None or not (ref := hub.catalog.visible_ref(who, dataset_id)):
        raise NotFound(f"no job {job_id}")
    return {**job, "dataset": ref}


@router.get("/tables/{org}/{name}/{file}/rows", tags=["tables"], response_class=JSONResponse)
def table_rows(
    org: str,
    name: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    sort: str | None = None,
    next: str | None = None,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> JSONResponse:
    """Rows of a table: ``col=value`` and ``col__gt|gte|lt|lte|ne|contains|in|isnull``
    filters, ``sort=col`` or ``-col``, ``limit/offset``, or keyset paging with ``next``."""
    page, _, _ = read_table(
        request,
        who,
        hub,
        org,
        name,
        file,
        limit=limit,
        offset=offset,
        sort=sort,
        cursor=next,
        version=version,
        reserved=ROW_PARAMS,
    )
    return JSONResponse(page)


def read_table(
    request: Request,
    who: Principal,
    hub: Hub,
    org: str,
    name: str,
    file: str,
    *,
    limit: int,
    offset: int,
    sort: str | None,
    cursor: str | None,
    version: int | None,
    reserved: set[str],
) -> tuple[dict[str, Any], TableRef, Any]:
    """A page of rows for the caller, filtered by the query string's other parameters, with
    its audit entry; the table and its asset too. The rows API and the preview page share it.
    """
    table, asset, number = hub.tables.table(who, org, name, file, version)
    filters = parse_filters(request.query_params.multi_items(), reserved)
    slot = hub.query_slots.take()
    try:
        page = read_rows(
            table, limit=limit, offset=offset, sort=sort, filters=filters, cursor=cursor
        )
    finally:
        slot.release()
    detail = {"file": file, "sql_name": table.sql_name, "query": request.url.query}
    record(request, who, "rows", org=org, dataset=name, version=number, detail=detail)
    return page, table, asset


@router.get("/tables/{org}/{name}/{file}/schema", tags=["tables"])
def table_schema(
    org: str,
    name: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    table, asset = _looked_at(request, who, hub, "schema", org, name, file, version)
    return {
        "sql_name": table.sql_name,
        "rows": table.rows,
        "columns": [{"name": c.name, "type": c.type} for c in table.columns],
        "encoding": asset.encoding,
        "delimiter": asset.delimiter,
        "problem_count": asset.problem_count,
        "problems": asset.problems,
    }


@router.get("/tables/{org}/{name}/{file}/profile", tags=["tables"])
def table_profile(
    org: str,
    name: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    table, asset = _looked_at(request, who, hub, "profile", org, name, file, version)
    return {
        "sql_name": table.sql_name,
        "rows": table.rows,
        "status": "ready" if asset.profile is not None else "pending",
        "columns": asset.profile,
    }


def _looked_at(
    request: Request,
    who: Principal,
    hub: Hub,
    action: str,
    org: str,
    name: str,
    file: str,
    version: int | None,
) -> tuple[TableRef, Any]:
    """A table and its asset for the caller, with the audit entry saying they looked."""
    table, asset, number = hub.tables.table(who, org, name, file, version)
    detail = {"file": file, "sql_name": table.sql_name}
    record(request, who, action, org=org, dataset=name, version=number, detail=detail)
    return table, asset


class SqlIn(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)
    limit: int | None = Field(default=None, ge=0)


# A plain function: FastAPI runs it once in its thread pool, where an async route would
# hop to the pool for each blocking step (~2.5 ms more per query, measured).
@router.post("/sql", tags=["tables"], response_model=None)
def run_sql(body: SqlIn, request: Request, who: Who, hub: HubDep) -> Any:
    """Read-only SQL over every table the caller may read, by ``sql_name``.

    ``Accept: text/csv``, ``application/vnd.apache.parquet`` or
    ``application/vnd.apache.arrow.stream`` streams that format instead of JSON.
    """
    fmt = _negotiate(request.headers.get("accept", "application/json"))
    result = open_query(request, who, hub, body.sql, fmt)
    if fmt == "json":
        try:
            # Rows are JSON-ready already: skip FastAPI's encoder, costly on many rows.
            return JSONResponse(result.json(row_limit(hub, body.limit)))
        finally:
            result.close()
    return stream_result(result, fmt)


def open_query(request: Request, who: Principal, hub: Hub, sql: str, fmt: str) -> QueryResult:
    """Run ``sql`` in the sandbox over the tables the caller may read, and log it; the
    caller closes the result. ``POST /api/v1/sql`` and the SQL page share it."""
    readable = hub.tables.readable(who, referenced_tables(sql))
    tables = {name: t.ref for name, t in readable.items()}
    settings = hub.settings
    sandbox = Sandbox(
        tables, timeout_s=settings.sql_timeout_s, memory_limit=settings.sql_memory_limit
    )
    # Held until the result is closed: a streamed answer is still running DuckDB.
    slot = hub.query_slots.take()
    try:
        result: QueryResult = sandbox.run(sql)
    except BaseException:
        slot.release()
        raise
    result.when_closed(slot.release)
    try:
        _record_query(request, who, hub, sql, readable, fmt)
    except BaseException:
        result.close()
        raise
    return result


def row_limit(hub: Hub, asked: int | None) -> int:
    """The rows a JSON answer holds: what was asked, within the hub's limit."""
    return min(asked or hub.settings.sql_row_limit, hub.settings.sql_row_limit)


def stream_result(
    result: QueryResult, fmt: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """The whole result as CSV, Parquet or Arrow, streamed; closes the result at the end."""
    stream = {"csv": result.csv, "parquet": result.parquet, "arrow": result.arrow_stream}[fmt]
    media = next(m for m, f in FORMATS.items() if f == fmt)
    return StreamingResponse(_closing(stream(), result), media_type=media, headers=headers)


def _record_query(
    request: Request,
    who: Principal,
    hub: Hub,
    sql: str,
    tables: Mapping[str, QueryTable],
    fmt: str,
) -> None:
    """One entry per dataset the query read, so each publisher sees it in their log."""
    subjects = sorted(
        {t.subject for t in tables.values()}, key=lambda s: (s.org or "", s.dataset or "")
    )
    detail = {"sql": sql, "tables": sorted(tables), "format": fmt}
    client = client_address(request)
    hub.audit.record_each(who, "query", subjects or [Subject()], detail=detail, client=client)


def _closing(chunks: Iterator[bytes], result: QueryResult) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        result.close()


def _negotiate(accept: str) -> str:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in FORMATS:
            return FORMATS[media]
        if media in ("*/*", "application/*", ""):
            return "json"
    return "json"
