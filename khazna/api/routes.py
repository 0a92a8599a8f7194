"""REST routes of the contract (DESIGN.md), under /api/v1."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from khazna import __version__
from khazna.access.accounts import Principal
from khazna.api.bodies import body_chunks, header_text
from khazna.api.deps import HubDep, Who, check_caller, note, quota_key, record
from khazna.api.downloads import file_response
from khazna.catalog.names import check_file_name
from khazna.errors import BadRequest
from khazna.geo.cog import is_raster
from khazna.geo.rasters import parse_raster_options
from khazna.hub import Hub
from khazna.storage.blobstore import too_large
from khazna.tables.registry import options_key, parse_table_options

# Every route checks a token that is sent, even where anonymous callers are welcome: a
# client with a wrong token learns it on its first call.
router = APIRouter(prefix="/api/v1", dependencies=[Depends(check_caller)])
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Text = str | dict[str, str] | None


class OrganizationIn(BaseModel):
    name: str
    title: Text = None
    description: Text = None


class MemberIn(BaseModel):
    user: str
    role: str = "editor"


class DatasetIn(BaseModel):
    org: str
    name: str
    title: Text = None
    description: Text = None
    tags: list[str] | None = None
    license: str | None = None
    access: str = "public"
    residency: str | None = None


class DatasetPatch(BaseModel):
    model_config = {"extra": "forbid"}
    title: Text = None
    description: Text = None
    tags: list[str] | None = None
    license: str | None = None
    access: str | None = None
    residency: str | None = None


class UploadFileIn(BaseModel):
    name: str
    size: int
    sha256: str | None = None


class UploadSessionIn(BaseModel):
    files: list[UploadFileIn] = Field(min_length=1)
    message: str = ""


@router.get("/health", tags=["hub"])
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/me", tags=["hub"])
def me(who: Who, hub: HubDep) -> dict[str, Any]:
    return {
        "name": who.name,
        "is_admin": who.is_admin,
        "organizations": hub.catalog.roles_by_name(who),
    }


# organizations -----------------------------------------------------------------------


@router.post("/organizations", status_code=201, tags=["organizations"])
def create_organization(
    body: OrganizationIn, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    return hub.catalog.create_organization(
        who,
        body.name,
        body.title,
        body.description,
        note=note(request, who, "organization.create"),
    )


@router.get("/organizations", tags=["organizations"])
def list_organizations(hub: HubDep) -> dict[str, Any]:
    return {"organizations": hub.catalog.organizations()}


@router.get("/organizations/{org}", tags=["organizations"])
def get_organization(org: str, who: Who, hub: HubDep) -> dict[str, Any]:
    return {
        **hub.catalog.organization(org),
        "datasets": [_summary(d) for d in hub.catalog.datasets_of(who, org)],
    }


@router.put("/organizations/{org}/members", status_code=204, tags=["organizations"])
def set_member(org: str, body: MemberIn, request: Request, who: Who, hub: HubDep) -> Response:
    detail = {"user": body.user, "role": body.role}
    hub.catalog.add_member(
        who, org, body.user, body.role, note=note(request, who, "membership.change", detail)
    )
    return Response(status_code=204)


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("org", "name", "title", "access", "version", "updated_at")}


# datasets ----------------------------------------------------------------------------


@router.post("/datasets", status_code=201, tags=["datasets"])
def create_dataset(body: DatasetIn, request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    return create_dataset_as(request, who, hub, body)


def create_dataset_as(
    request: Request, who: Principal, hub: Hub, body: DatasetIn
) -> dict[str, Any]:
    """Create the dataset, logged in the same transaction (the entry's detail is the access
    level it was made with); the API and the publisher's page share it."""
    return hub.catalog.create_dataset(
        who,
        body.org,
        body.name,
        title=body.title,
        description=body.description,
        tags=body.tags,
        license=body.license,
        access=body.access,
        residency=body.residency,
        note=note(request, who, "dataset.create"),
    )


@router.get("/datasets/{org}/{name}", tags=["datasets"])
def get_dataset(org: str, name: str, who: Who, hub: HubDep) -> dict[str, Any]:
    dataset = hub.tables.annotate(hub.catalog.dataset(who, org, name))
    return hub.rasters.annotate(dataset)


@router.patch("/datasets/{org}/{name}", tags=["datasets"])
def update_dataset(
    org: str, name: str, body: DatasetPatch, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    # Changing the access level changes who may read: a permission change.
    action = "permission.change" if "access" in changes else "dataset.update"
    entry = note(request, who, action, {"changes": changes})
    return hub.catalog.update_dataset(who, org, name, changes, note=entry)


@router.get("/datasets/{org}/{name}/versions", tags=["datasets"])
def list_versions(org: str, name: str, who: Who, hub: HubDep) -> dict[str, Any]:
    return {"versions": hub.catalog.versions(who, org, name)}


@router.get("/datasets/{org}/{name}/files/{file}", tags=["files"], response_class=Response)
@router.head("/datasets/{org}/{name}/files/{file}", tags=["files"], response_class=Response)
def download_file(
    org: str,
    name: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    ref = hub.catalog.resolve_file(who, org, name, file, version)
    key = quota_key(request, who)
    response = file_response(
        request,
        hub.blobs,
        ref,
        pinned=version is not None,
        reserve=lambda length: hub.quotas.download(key, length),
    )
    if request.method == "GET":
        detail = {"file": file, "sha256": ref.file.sha256, "status": response.status_code}
        if response.status_code == 206:
            detail["range"] = response.headers["content-range"]
        record(request, who, "download", org=org, dataset=name, version=ref.version, detail=detail)
    return response


@router.put("/datasets/{org}/{name}/files/{file}", tags=["files"])
async def upload_file(
    org: str, name: str, file: str, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    """Stream the raw body into storage; a complete upload makes a new version.

    A table file (CSV, TSV, XLSX, JSON, NDJSON, Parquet) is then ingested by a job, whose id
    the answer gives; ``?encoding=&delimiter=&header=&sheet=`` say how to read it. A GeoTIFF
    is checked and made a Cloud Optimized GeoTIFF by a job; ``?datetime=`` (RFC 3339) gives
    its acquisition time when its tags hold none.
    """
    return await receive_file(request, who, hub, org, name, file)


async def receive_file(
    request: Request, who: Principal, hub: Hub, org: str, name: str, file: str
) -> dict[str, Any]:
    """The body of ``request`` as the new version's ``file``, logged; the API and the
    publisher's upload page share it."""
    check_file_name(file)
    options = parse_table_options(request.query_params)
    if is_raster(file):
        options |= parse_raster_options(request.query_params)
    await run_in_threadpool(hub.catalog.check_writable, who, org, name)
    limit = hub.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    announced = request.headers.get("x-content-sha256")
    if announced is not None and not _SHA256.fullmatch(announced):
        raise BadRequest("X-Content-SHA256 must be 64 hexadecimal digits")
    writer = hub.blobs.writer(limit)
    # A large CSV starts converting while it arrives (khazna/tables/early.py).
    early = hub.tables.early.start(
        getattr(writer, "temp_path", None),
        int(declared) if declared is not None and declared.isdigit() else None,
        file,
        options,
    )
    if early is not None:
        writer.on_write = early.wrote  # type: ignore[attr-defined]
    # A raster is also written to a local spool file, checked there before it is stored:
    # the store's own copy may be remote or sealed with the operator's key.
    spool = hub.rasters.spool() if hub.rasters.checks(file) else None
    try:
        async for chunk in body_chunks(request, hub.settings.body_idle_timeout_s):
            writer.write(chunk)
            if spool is not None:
                spool.write(chunk)
        if early is not None:
            early.complete()
        if spool is not None:
            spool.close()
            await run_in_threadpool(hub.catalog.check_file, file, Path(spool.name), options)
        blob = await run_in_threadpool(writer.commit, announced)
    except BaseException:
        # Disconnects, size limit, disk errors, a file refused: the temporary file goes,
        # nothing is visible.
        writer.abort()
        if early is not None:
            hub.tables.early.drop(early, "the upload failed")
        raise
    finally:
        if spool is not None:
            spool.close()
            Path(spool.name).unlink(missing_ok=True)
    if early is not None:
        hub.tables.early.stored(early, blob.sha256, options_key(options))
    files = [{"name": file, "sha256": blob.sha256, "size": blob.size}]
    try:
        committed = await run_in_threadpool(
            partial(
                hub.catalog.commit_version,
                who,
                org,
                name,
                {file: blob},
                message=header_text(request.headers.get("x-khazna-message", "")),
                table_options={file: options},
                note=note(request, who, "upload", {"files": files}),
            )
        )
    except BaseException:
        if early is not None:
            hub.tables.early.drop(early, "the version was not made")
        raise
    if early is not None and committed.jobs.get(file) is None:
        hub.tables.early.drop(early, "no ingest was needed")
    job = committed.jobs.get(file)
    return {
        "name": file,
        "sha256": blob.sha256,
        "size": blob.size,
        "version": committed.version,
        "job": None if job is None else {"id": job, "state": "queued"},
    }


@router.delete("/datasets/{org}/{name}/files/{file}", tags=["files"])
def delete_file(
    org: str, name: str, file: str, request: Request, who: Who, hub: HubDep
) -> dict[str, Any]:
    """Make a new version without the file; older versions keep it."""
    committed = hub.catalog.commit_version(
        who,
        org,
        name,
        {file: None},
        message=f"removed {file}",
        note=note(request, who, "delete", {"file": file}),
    )
    return {"version": committed.version}


# resumable uploads -------------------------------------------------------------------


@router.post("/datasets/{org}/{name}/uploads", status_code=201, tags=["uploads"])
def open_upload(
    org: str, name: str, body: UploadSessionIn, who: Who, hub: HubDep
) -> dict[str, Any]:
    files = [f.model_dump() for f in body.files]
    return hub.uploads.open(who, org, name, files, body.message)


@router.get("/uploads/{session_id}", tags=["uploads"])
def upload_status(session_id: str, who: Who, hub: HubDep) -> dict[str, Any]:
    return hub.uploads.status(who, session_id)


@router.put("/uploads/{session_id}/files/{file}", tags=["uploads"])
async def upload_chunk(
    session_id: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    # On a disconnect what arrived is kept; the client asks for the status and resumes.
    chunks = body_chunks(request, hub.settings.body_idle_timeout_s)
    return await hub.uploads.receive(who, session_id, file, offset, chunks)


@router.post("/uploads/{session_id}/commit", tags=["uploads"])
def commit_upload(session_id: str, request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    # The entry's detail is the session and the version's files.
    return hub.uploads.commit(who, session_id, note=note(request, who, "upload"))


@router.delete("/uploads/{session_id}", status_code=204, tags=["uploads"])
def abort_upload(session_id: str, who: Who, hub: HubDep) -> Response:
    hub.uploads.abort(who, session_id)
    return Response(status_code=204)


# search ------------------------------------------------------------------------------


@router.get("/search", tags=["search"])
def search(
    who: Who,
    hub: HubDep,
    q: str = "",
    org: str | None = None,
    tag: str | None = None,
    format: str | None = None,
    license: str | None = None,
    limit: Annotated[int, Query(ge=0, le=1000)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQLite's largest integer
) -> dict[str, Any]:
    return hub.search.search(
        who, q, org=org, tag=tag, format=format, license=license, limit=limit, offset=offset
    )
