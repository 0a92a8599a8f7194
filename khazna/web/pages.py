"""Server-rendered pages: home, search, organization, dataset, table preview, SQL, sign-in,
and the publisher's dataset form and upload page.

Every page reads and writes through the same calls as the REST API (catalog, search, the
rows and SQL steps of ``khazna.api.tables``, dataset creation and file reception of
``khazna.api.routes``), so an access level holds on a page exactly as in the API.
The language is ``?lang=fr|ar|en`` (remembered in a cookie), else ``Accept-Language``, else
French; every sentence comes from the gettext catalogs of ``khazna.web.i18n``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from khazna.access.accounts import Principal
from khazna.access.policy import LEVELS, WRITER_ROLES
from khazna.api.access import approve_as, ask_access_as, refuse_as
from khazna.api.deps import SESSION_COOKIE, HubDep, Who, check_caller, record
from khazna.api.routes import DatasetIn, create_dataset_as, receive_file
from khazna.api.tables import ROW_PARAMS, open_query, read_table, row_limit, stream_result
from khazna.catalog.names import pick_language
from khazna.errors import BadRequest, KhaznaError, TooLarge, Unauthorized
from khazna.geo.rasters import collection_id
from khazna.geo.search import ItemQuery
from khazna.hub import Hub
from khazna.storage.blobstore import human_bytes
from khazna.tables.query import OPERATORS
from khazna.web import geo, i18n

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_caller)])
STATIC_DIR = Path(__file__).parent / "static"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.add_extension("jinja2.ext.i18n")
# Placeholders are named (``%(name)s``) and filled by gettext itself, escaped.
templates.env.newstyle_gettext = True  # type: ignore[attr-defined]
templates.env.policies["ext.i18n.trimmed"] = True

PAGE_PREFIXES = (
    "/search",
    "/organizations/",
    "/datasets/",
    "/sql",
    "/signin",
    "/publish",
    "/audit",
    "/requests",
)
AUDIT_PAGE = 50
# The home page's most used datasets: downloads, pages of rows and queries in these days.
MOST_USED_DAYS = 30
PREVIEW_ROWS = 50
# The preview page's own parameters, which are not filters on the table's columns.
FILTER_FORM = ("_column", "_op", "_value")
PREVIEW_PARAMS = ROW_PARAMS | {"lang", *FILTER_FORM}
MAX_FORM_BYTES = 200_000
SHOWN_SQL_ROWS = 1000


def is_page(request: Request) -> bool:
    """Whether an error answers as a page; the upload page's PUT (a script's) gets JSON."""
    path = request.url.path
    return request.method != "PUT" and (path == "/" or path.startswith(PAGE_PREFIXES))


def language(request: Request) -> str:
    return i18n.choose(
        request.query_params, request.cookies, request.headers.get("accept-language", "")
    )


def _gettext_functions(lang: str) -> dict[str, Any]:
    """``gettext`` and ``ngettext`` for the templates, newstyle: they fill ``%(name)s``
    placeholders themselves and escape what they fill in."""
    catalog = i18n.translations(lang)

    @pass_context
    def gettext(context: Context, message: str, **variables: Any) -> str:
        text = catalog.gettext(message)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables if variables else text

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, num: int, **variables: Any) -> str:
        variables.setdefault("num", num)
        text = catalog.ngettext(singular, plural, num)
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return {"gettext": gettext, "ngettext": ngettext}


def _with_params(request: Request, **changes: Any) -> str:
    """This page's path and query string with ``changes`` applied (None removes a key)."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    kept += [(k, str(v)) for k, v in changes.items() if v is not None]
    return request.url.path + (f"?{urlencode(kept)}" if kept else "")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    lang = language(request)

    def url(path: str, **params: Any) -> str:
        """A link to another page, in this page's language."""
        pairs = [(k, str(v)) for k, v in params.items() if v is not None]
        return f"{path}?{urlencode([*pairs, ('lang', lang)])}"

    response = templates.TemplateResponse(
        request,
        template,
        {
            "lang": lang,
            "dir": i18n.direction(lang),
            "languages": [
                {"code": code, "name": name, "url": _with_params(request, lang=code)}
                for code, name in i18n.NAMES.items()
            ],
            "pick": lambda text: pick_language(text, lang),
            "human_bytes": human_bytes,
            "country": lambda code: i18n.country_name(code, lang),
            "url": url,
            "me": getattr(request.state, "principal", None),
            "session_ended": getattr(request.state, "session_ended", False),
            "here": lambda **changes: _with_params(request, **changes),
            **_gettext_functions(lang),
            **context,
        },
        status_code=status_code,
    )
    if request.query_params.get("lang") in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="lax")
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


def error_page(
    request: Request, status: int, message: str, headers: dict[str, str] | None
) -> Response:
    response = render(request, "error.html", status_code=status, status=status, message=message)
    response.headers.update(headers or {})
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, who: Who, hub: HubDep) -> HTMLResponse:
    latest = hub.search.search(who, "", limit=12)
    return render(
        request,
        "home.html",
        latest=latest["results"],
        most_used=hub.catalog.most_used(who, days=MOST_USED_DAYS),
        days=MOST_USED_DAYS,
        organizations=hub.catalog.organizations(),
    )


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    who: Who,
    hub: HubDep,
    q: str = "",
    org: str | None = None,
    tag: str | None = None,
    format: str | None = None,
    license: str | None = None,
) -> HTMLResponse:
    found = hub.search.search(who, q, org=org, tag=tag, format=format, license=license, limit=50)
    chosen = {"org": org, "tag": tag, "format": format, "license": license}
    return render(request, "search.html", q=q, found=found, chosen=chosen)


@router.get("/organizations/{org}", response_class=HTMLResponse)
def organization_page(request: Request, org: str, who: Who, hub: HubDep) -> HTMLResponse:
    return render(
        request,
        "organization.html",
        org=hub.catalog.organization(org),
        datasets=hub.catalog.datasets_of(who, org),
    )


@router.get("/datasets/{org}/{name}", response_class=HTMLResponse)
def dataset_page(request: Request, org: str, name: str, who: Who, hub: HubDep) -> HTMLResponse:
    dataset = hub.tables.annotate(hub.catalog.dataset(who, org, name))
    readable = hub.catalog.can_read(who, org, name)
    history = hub.catalog.versions(who, org, name) if readable else []
    return render(
        request,
        "dataset.html",
        d=dataset,
        versions=history,
        readable=readable,
        writable=who.authenticated and _writable(who, hub, org, name),
        layers=_map_layers(request, who, hub, dataset) if readable else [],
        footprints=_footprints(who, hub, dataset) if readable else [],
        tiles=hub.settings.map_tiles_url,
    )


def _map_layers(
    request: Request, who: Principal, hub: Hub, dataset: dict[str, Any]
) -> list[dict[str, Any]]:
    """The dataset's GeoJSON files, each ``{file, bbox, geojson}`` (``geojson`` None when
    the file is too large to draw); reading one is logged as a download, ``shown: map``."""
    org, name = dataset["org"], dataset["name"]
    layers = []
    for f in dataset["files"]:
        if not geo.may_be_geojson(f["name"]) or f["size"] > geo.MAP_MAX_BYTES:
            continue
        ref = hub.catalog.resolve_file(who, org, name, f["name"])
        data = b"".join(hub.blobs.read_range(ref.file.sha256, 0, ref.file.size))
        geojson = geo.parse(f["name"], data)
        if geojson is None:
            continue
        detail = {"file": f["name"], "sha256": ref.file.sha256, "shown": "map"}
        record(request, who, "download", org=org, dataset=name, version=ref.version, detail=detail)
        layers.append({"file": f["name"], "bbox": geo.bbox(geojson), "geojson": geojson})
    return layers


MAP_MAX_ITEMS = 20  # raster items drawn on a dataset's page


def _footprints(who: Principal, hub: Hub, dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset's raster items as map layers like ``_map_layers``': the footprint, and
    the item's own tiles and quick-look (whose requests are logged when the browser makes
    them)."""
    cid = collection_id(dataset["org"], dataset["name"])
    rows, _ = hub.rasters.search(who, ItemQuery(collections=(cid,), limit=MAP_MAX_ITEMS))
    layers = []
    for row in rows:
        item_id = row.item["id"]
        footprint = {"type": "Feature", "geometry": row.item["geometry"], "properties": {}}
        layers.append(
            {
                "file": item_id,
                "bbox": row.item["bbox"],
                "geojson": footprint,
                "xyz": f"/api/v1/tiles/{quote(cid)}/{quote(item_id)}/{{z}}/{{x}}/{{y}}.png",
                "preview": f"/stac/collections/{quote(cid)}/items/{quote(item_id)}/preview.png",
            }
        )
    return layers


def _writable(who: Principal, hub: Hub, org: str, name: str) -> bool:
    try:
        hub.catalog.check_writable(who, org, name)
    except KhaznaError:
        return False
    return True


@router.get("/datasets/{org}/{name}/tables/{file}", response_class=HTMLResponse)
def table_page(
    request: Request,
    org: str,
    name: str,
    file: str,
    who: Who,
    hub: HubDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = PREVIEW_ROWS,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    sort: str | None = None,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """A page of a table's rows, sortable and filterable with links and forms (no script),
    with the columns' types and profile."""
    column, op, value = (request.query_params.get(k) for k in FILTER_FORM)
    if column:
        # The filter form sends column, operator and value apart; the rows API's own form
        # of a filter is one parameter, ``column__op=value``.
        key = column if op in (None, "", "eq") else f"{column}__{op}"
        target = _with_params(request, **dict.fromkeys(FILTER_FORM), offset=None)
        joiner = "&" if "?" in target else "?"
        return Response(
            status_code=303, headers={"Location": f"{target}{joiner}{urlencode({key: value})}"}
        )
    page, table, asset = read_table(
        request,
        who,
        hub,
        org,
        name,
        file,
        limit=limit,
        offset=offset,
        sort=sort,
        cursor=None,
        version=version,
        reserved=PREVIEW_PARAMS,
    )
    dataset = hub.catalog.dataset(who, org, name)
    filters = [(k, v) for k, v in request.query_params.multi_items() if k not in PREVIEW_PARAMS]
    return render(
        request,
        "table.html",
        d=dataset,
        file=file,
        table=table,
        page=page,
        profile=asset.profile,
        sort=sort or "",
        limit=limit,
        offset=offset,
        pages=max(1, math.ceil(page["total"] / limit)),
        filters=filters,
        operators=OPERATORS,
    )


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (the SQL forms have no files), size-limited."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLarge(f"a form of more than {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise BadRequest("the form is not UTF-8") from exc


@router.get("/sql", response_class=HTMLResponse)
def sql_page(request: Request, sql: str = "") -> HTMLResponse:
    """The form, filled with ``?sql=`` when a table page links here."""
    return render(request, "sql.html", sql=sql, result=None, error=None)


@router.post("/sql", response_class=HTMLResponse)
async def run_sql_page(request: Request, who: Who, hub: HubDep) -> HTMLResponse:
    """Runs the query as ``POST /api/v1/sql`` does, for the caller; shows the first rows
    or the error, and offers the whole result as CSV or Parquet."""
    sql = (await _form(request)).get("sql", "").strip()
    if not sql:
        return render(request, "sql.html", 400, sql=sql, result=None, error=None)
    try:
        result = await _run_json(request, who, hub, sql)
    except BadRequest as exc:
        return render(request, "sql.html", 400, sql=sql, result=None, error=exc.message)
    return render(request, "sql.html", sql=sql, result=result, error=None)


async def _run_json(request: Request, who: Principal, hub: Hub, sql: str) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        result = open_query(request, who, hub, sql, "json")
        try:
            return result.json(min(SHOWN_SQL_ROWS, row_limit(hub, None)))
        finally:
            result.close()

    return await run_in_threadpool(run)


@router.post("/sql/download")
async def download_sql(request: Request, who: Who, hub: HubDep) -> Response:
    """The whole result of the form's query, as a CSV or Parquet file."""
    form = await _form(request)
    fmt = form.get("format", "csv")
    if fmt not in ("csv", "parquet"):
        raise BadRequest("format must be csv or parquet", field="format")
    sql = form.get("sql", "").strip()
    if not sql:
        raise BadRequest("sql is required", field="sql")
    result = await run_in_threadpool(open_query, request, who, hub, sql, fmt)
    disposition = {"Content-Disposition": f'attachment; filename="khazna-query.{fmt}"'}
    return stream_result(result, fmt, disposition)


def _local_path(target: str | None) -> str:
    """Where to go after signing in or out: a path of this hub, never another site."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\", "/signin")):
        return target
    return "/"


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", next=_local_path(next), error=None)


@router.post("/signin")
async def sign_in(request: Request, hub: HubDep) -> Response:
    """Checks the token, then keeps it in an HttpOnly, SameSite=Strict cookie."""
    form = await _form(request)
    token, target = form.get("token", "").strip(), _local_path(form.get("next"))
    try:
        who = await run_in_threadpool(hub.accounts.authenticate, token) if token else None
    except Unauthorized as exc:
        return render(request, "signin.html", 401, next=target, error=exc.message)
    if who is None:
        return render(request, "signin.html", 400, next=target, error=None)
    response = Response(status_code=303, headers={"Location": target})
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
def sign_out(request: Request) -> Response:
    response = Response(status_code=303, headers={"Location": "/"})
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


# publishing --------------------------------------------------------------------------

_TEXT_FIELDS = ("title", "description")


def _writable_organizations(who: Principal, hub: Hub) -> list[dict[str, Any]]:
    """The organizations the caller may create datasets in (the catalog checks again)."""
    roles = hub.catalog.roles_by_name(who)
    return [
        o
        for o in hub.catalog.organizations()
        if who.is_admin or roles.get(o["name"]) in WRITER_ROLES
    ]


def _publish_form(
    request: Request,
    who: Principal,
    hub: Hub,
    status: int = 200,
    form: dict[str, str] | None = None,
    error: str | None = None,
) -> HTMLResponse:
    return render(
        request,
        "publish.html",
        status,
        form=form or {"access": "public"},
        error=error,
        organizations=_writable_organizations(who, hub) if who.authenticated else [],
        levels=LEVELS,
        signed_in=who.authenticated,
    )


@router.get("/publish", response_class=HTMLResponse)
def publish_page(request: Request, who: Who, hub: HubDep) -> HTMLResponse:
    """The form that creates a dataset; it asks an anonymous visitor to sign in first."""
    return _publish_form(request, who, hub, 200 if who.authenticated else 401)


@router.post("/publish", response_class=HTMLResponse)
async def publish(request: Request, who: Who, hub: HubDep) -> Response:
    """Creates the dataset as ``POST /api/v1/datasets`` does, then opens its upload page."""
    form = await _form(request)
    if not who.authenticated:
        return _publish_form(request, who, hub, 401, form)
    texts = {
        field: {
            lang: form[f"{field}_{lang}"].strip()
            for lang in i18n.LANGUAGES
            if form.get(f"{field}_{lang}", "").strip()
        }
        for field in _TEXT_FIELDS
    }
    body = DatasetIn(
        org=form.get("org", ""),
        name=form.get("name", "").strip(),
        title=texts["title"] or None,
        description=texts["description"] or None,
        tags=[t.strip() for t in form.get("tags", "").split(",") if t.strip()] or None,
        license=form.get("license", "").strip() or None,
        access=form.get("access", "public"),
    )
    try:
        created = await run_in_threadpool(create_dataset_as, request, who, hub, body)
    except KhaznaError as exc:
        if exc.status >= 500:
            raise
        return _publish_form(request, who, hub, exc.status, form, exc.message)
    target = f"/datasets/{created['org']}/{created['name']}/upload?lang={language(request)}"
    return Response(status_code=303, headers={"Location": target})


@router.get("/datasets/{org}/{name}/upload", response_class=HTMLResponse)
def upload_page(request: Request, org: str, name: str, who: Who, hub: HubDep) -> HTMLResponse:
    """A file chooser and a progress bar; a small script sends the file (no form can show
    the progress of an upload)."""
    hub.catalog.check_writable(who, org, name)
    return render(request, "upload.html", d=hub.catalog.dataset(who, org, name))


@router.put("/datasets/{org}/{name}/upload/{file}")
async def upload_from_page(
    request: Request, org: str, name: str, file: str, who: Who, hub: HubDep
) -> dict[str, Any]:
    """The upload page's script sends the file here: ``PUT /api/v1/datasets/.../files/...``
    for the signed-in visitor."""
    return await receive_file(request, who, hub, org, name, file)


# the audit log -----------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    who: Who,
    hub: HubDep,
    dataset: str | None = None,
    org: str | None = None,
    action: str | None = None,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    """The entries ``GET /api/v1/audit`` gives the caller, newest first, 50 a page."""
    found = hub.audit.entries(
        who,
        dataset=dataset or None,
        org=org or None,
        action=action or None,
        limit=AUDIT_PAGE,
        offset=offset,
    )
    return render(
        request,
        "audit.html",
        found=found,
        dataset=dataset or "",
        org=org or "",
        action=action or "",
        offset=offset,
        limit=AUDIT_PAGE,
        as_json=lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True),
    )


# access requests ---------------------------------------------------------------------


@router.get("/requests", response_class=HTMLResponse)
def requests_page(request: Request, who: Who, hub: HubDep) -> HTMLResponse:
    """The requests for the datasets the caller publishes, to decide, and the caller's own."""
    inbox = hub.access_requests.inbox(who)
    return render(request, "requests.html", inbox=inbox, mine=hub.access_requests.mine(who))


def _back_to_requests(request: Request) -> Response:
    return Response(status_code=303, headers={"Location": f"/requests?lang={language(request)}"})


@router.post("/datasets/{org}/{name}/access-request")
async def ask_access_page(request: Request, org: str, name: str, who: Who, hub: HubDep) -> Response:
    """A restricted dataset page's form: asks as ``POST .../access-requests`` does."""
    purpose = (await _form(request)).get("purpose", "")
    await run_in_threadpool(ask_access_as, request, who, hub, org, name, purpose)
    return _back_to_requests(request)


@router.post("/datasets/{org}/{name}/access-requests/{user}/approve")
async def approve_page(
    request: Request, org: str, name: str, user: str, who: Who, hub: HubDep
) -> Response:
    until = (await _form(request)).get("until", "").strip() or None
    await run_in_threadpool(approve_as, request, who, hub, org, name, user, until)
    return _back_to_requests(request)


@router.post("/datasets/{org}/{name}/access-requests/{user}/refuse")
async def refuse_page(
    request: Request, org: str, name: str, user: str, who: Who, hub: HubDep
) -> Response:
    reason = (await _form(request)).get("reason", "")
    await run_in_threadpool(refuse_as, request, who, hub, org, name, user, reason)
    return _back_to_requests(request)
