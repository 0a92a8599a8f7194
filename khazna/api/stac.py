"""The STAC API at /stac (core, collections, features, item search), and the download of
a raster's converted COG. Thin: requests become calls on ``hub.rasters``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from khazna.access.accounts import Principal
from khazna.api.deps import HubDep, Who, check_caller, quota_key, record
from khazna.api.downloads import file_response
from khazna.errors import BadRequest
from khazna.geo import preview
from khazna.geo.rasters import ItemRow
from khazna.geo.search import FILTER_CONFORMANCE, parse_query, queryables

router = APIRouter(dependencies=[Depends(check_caller)])

STAC_VERSION = "1.1.0"
GEOJSON = "application/geo+json"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    *FILTER_CONFORMANCE,
]
QUERYABLES = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
SCHEMA_JSON = "application/schema+json"
# Fields of a stored asset that are the hub's own bookkeeping, not STAC.
_PRIVATE_ASSET_FIELDS = ("file", "converted", "member")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _geojson(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, media_type=GEOJSON)


def _text(value: Any) -> str:
    """A multilingual text ({lang: text}) as one string: English, else French, else any."""
    if isinstance(value, dict):
        for lang in ("en", "fr", "ar"):
            if value.get(lang):
                return str(value[lang])
        return next((str(v) for v in value.values() if v), "")
    return str(value or "")


def _license(value: str) -> str:
    return value if value and all(c.isalnum() or c in "-.+_" for c in value) else "other"


# documents -----------------------------------------------------------------------------


def collection_doc(base: str, c: dict[str, Any]) -> dict[str, Any]:
    url = f"{base}/stac/collections/{quote(c['id'])}"
    title = _text(c["title"]) or c["id"]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": c["id"],
        "title": title,
        "description": _text(c["description"]) or title,
        "license": _license(c["license"]),
        "extent": {
            "spatial": {"bbox": [c["bbox"]]},
            "temporal": {"interval": [c["interval"]]},
        },
        "links": [
            {"rel": "self", "href": url, "type": "application/json"},
            {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
            {"rel": "parent", "href": f"{base}/stac", "type": "application/json"},
            {"rel": "items", "href": f"{url}/items", "type": GEOJSON},
            {"rel": QUERYABLES, "href": f"{url}/queryables", "type": SCHEMA_JSON},
            {
                "rel": "describedby",
                "href": f"{base}/api/v1/datasets/{c['org']}/{c['name']}",
                "type": "application/json",
                "title": "The dataset in the hub's REST API",
            },
        ],
    }


def item_doc(base: str, row: ItemRow) -> dict[str, Any]:
    item = row.item
    cid = row.collection
    files = f"{base}/api/v1/datasets/{row.org}/{row.dataset}/files"
    assets: dict[str, Any] = {}
    for key, stored in item["assets"].items():
        path = f"{files}/{quote(stored['file'])}" + ("/cog" if stored["converted"] else "")
        member = f"member={quote(stored['member'])}&" if stored.get("member") else ""
        asset = {"href": f"{path}?{member}version={row.version}"}
        asset |= {k: v for k, v in stored.items() if k not in _PRIVATE_ASSET_FIELDS}
        assets[key] = asset
    props = item["properties"]
    uses_proj = any(k.startswith("proj:") for k in props) or any(
        any(k.startswith("proj:") for k in a) for a in assets.values()
    )
    uses_eo = any(k.startswith("eo:") for k in props) or any(
        "eo:bands" in a for a in assets.values()
    )
    url = f"{base}/stac/collections/{quote(cid)}/items/{quote(item['id'])}"
    assets["thumbnail"] = {
        "href": f"{url}/preview.png",
        "type": "image/png",
        "roles": ["thumbnail"],
        "title": "Quick-look",
    }
    tiles = f"{base}/api/v1/tiles/{quote(cid)}/{quote(item['id'])}/{{z}}/{{x}}/{{y}}.png"
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [e for e, used in ((EO, uses_eo), (PROJECTION, uses_proj)) if used],
        "id": item["id"],
        "collection": cid,
        "geometry": item["geometry"],
        "bbox": item["bbox"],
        "properties": props,
        "links": [
            {"rel": "self", "href": url, "type": GEOJSON},
            {
                "rel": "parent",
                "href": f"{base}/stac/collections/{quote(cid)}",
                "type": "application/json",
            },
            {
                "rel": "collection",
                "href": f"{base}/stac/collections/{quote(cid)}",
                "type": "application/json",
            },
            {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
            {"rel": "xyz", "href": tiles, "type": "image/png", "title": "Map tiles"},
            *(
                {
                    "rel": "derived_from",
                    "href": f"{base}/stac/collections/{quote(d['collection'])}"
                    f"/items/{quote(d['item'])}",
                    "type": GEOJSON,
                }
                for d in props.get("khazna:derived_from") or []
                if isinstance(d, dict) and "collection" in d and "item" in d
            ),
        ],
        "assets": assets,
    }


def _page(
    request: Request,
    rows: list[ItemRow],
    matched: int,
    offset: int,
    next_link: dict[str, Any] | None,
) -> dict[str, Any]:
    base = _base(request)
    links = [
        {"rel": "self", "href": str(request.url), "type": GEOJSON},
        {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
    ]
    if next_link is not None and offset + len(rows) < matched:
        links.append(next_link)
    return {
        "type": "FeatureCollection",
        "features": [item_doc(base, r) for r in rows],
        "numberMatched": matched,
        "numberReturned": len(rows),
        "links": links,
    }


def _next_get(request: Request, token: int) -> dict[str, Any]:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    params.append(("token", str(token)))
    href = f"{_base(request)}{request.url.path}?{urlencode(params)}"
    return {"rel": "next", "href": href, "type": GEOJSON, "method": "GET"}


# routes --------------------------------------------------------------------------------


@router.get("/stac", tags=["stac"])
def landing(request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    base = _base(request)
    links = [
        {"rel": "self", "href": f"{base}/stac", "type": "application/json"},
        {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
        {"rel": "conformance", "href": f"{base}/stac/conformance", "type": "application/json"},
        {"rel": "data", "href": f"{base}/stac/collections", "type": "application/json"},
        {"rel": "search", "href": f"{base}/stac/search", "type": GEOJSON, "method": "GET"},
        {"rel": "search", "href": f"{base}/stac/search", "type": GEOJSON, "method": "POST"},
        {
            "rel": "service-desc",
            "href": f"{base}/stac/api",
            "type": OPENAPI,
        },
        {"rel": "service-doc", "href": f"{base}/docs", "type": "text/html"},
        {"rel": QUERYABLES, "href": f"{base}/stac/queryables", "type": SCHEMA_JSON},
    ]
    for c in hub.rasters.collections(who):
        href = f"{base}/stac/collections/{quote(c['id'])}"
        links.append({"rel": "child", "href": href, "type": "application/json"})
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "khazna",
        "title": "Khazna",
        "description": "The rasters of this Khazna hub: one collection per dataset.",
        "conformsTo": CONFORMANCE,
        "links": links,
    }


@router.get("/stac/api", tags=["stac"])
def service_description(request: Request) -> Response:
    """The hub's OpenAPI document, with the media type STAC API clients ask for."""
    return JSONResponse(request.app.openapi(), media_type=OPENAPI)


@router.get("/stac/conformance", tags=["stac"])
def conformance() -> dict[str, Any]:
    return {"conformsTo": CONFORMANCE}


def _schema(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, media_type=SCHEMA_JSON)


@router.get("/stac/queryables", tags=["stac"])
def all_queryables(request: Request, who: Who, hub: HubDep) -> JSONResponse:
    """What a search filter may name, over every collection the caller may see."""
    url = f"{_base(request)}/stac/queryables"
    return _schema(queryables(url, "Khazna items", hub.rasters.item_properties(who)))


@router.get("/stac/collections/{collection_id}/queryables", tags=["stac"])
def collection_queryables(
    collection_id: str, request: Request, who: Who, hub: HubDep
) -> JSONResponse:
    url = f"{_base(request)}/stac/collections/{quote(collection_id)}/queryables"
    props = hub.rasters.item_properties(who, collection_id)
    return _schema(queryables(url, f"Items of {collection_id}", props))


@router.get("/stac/collections", tags=["stac"])
def collections(request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    base = _base(request)
    return {
        "collections": [collection_doc(base, c) for c in hub.rasters.collections(who)],
        "links": [
            {"rel": "self", "href": f"{base}/stac/collections", "type": "application/json"},
            {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
        ],
    }


@router.get("/stac/collections/{collection_id}", tags=["stac"])
def collection(collection_id: str, request: Request, who: Who, hub: HubDep) -> dict[str, Any]:
    return collection_doc(_base(request), hub.rasters.collection(who, collection_id))


@router.get("/stac/collections/{collection_id}/items", tags=["stac"])
def collection_items(collection_id: str, request: Request, who: Who, hub: HubDep) -> JSONResponse:
    hub.rasters.collection(who, collection_id)  # 404 before anything else
    params = dict(request.query_params)
    if "intersects" in params:
        raise BadRequest("intersects is a parameter of /stac/search", field="intersects")
    query = parse_query(params, collection=collection_id)
    rows, matched = hub.rasters.search(who, query)
    token = query.offset + query.limit
    return _geojson(_page(request, rows, matched, query.offset, _next_get(request, token)))


@router.get("/stac/collections/{collection_id}/items/{item_id}", tags=["stac"])
def collection_item(
    collection_id: str, item_id: str, request: Request, who: Who, hub: HubDep
) -> JSONResponse:
    return _geojson(item_doc(_base(request), hub.rasters.item(who, collection_id, item_id)))


@router.get("/stac/search", tags=["stac"])
def search_get(request: Request, who: Who, hub: HubDep) -> JSONResponse:
    query = parse_query(dict(request.query_params))
    rows, matched = hub.rasters.search(who, query)
    token = query.offset + query.limit
    return _geojson(_page(request, rows, matched, query.offset, _next_get(request, token)))


@router.post("/stac/search", tags=["stac"])
async def search_post(request: Request, who: Who, hub: HubDep) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the search body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the search body must be a JSON object")
    query = parse_query(body, body=True)
    rows, matched = hub.rasters.search(who, query)
    next_link = {
        "rel": "next",
        "href": f"{_base(request)}/stac/search",
        "type": GEOJSON,
        "method": "POST",
        "body": {**body, "token": str(query.offset + query.limit)},
        "merge": False,
    }
    return _geojson(_page(request, rows, matched, query.offset, next_link))


def _picture(request: Request, who: Principal, row: ItemRow, shown: str, png: bytes) -> Response:
    """A PNG of an item's data: logged as a download of it, never cached by others."""
    detail = {"item": row.item["id"], "shown": shown}
    record(request, who, "download", org=row.org, dataset=row.dataset, version=row.version,
           detail=detail)  # fmt: skip
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/stac/collections/{collection_id}/items/{item_id}/preview.png",
    tags=["stac"],
    response_class=Response,
)
def item_preview(
    collection_id: str, item_id: str, request: Request, who: Who, hub: HubDep
) -> Response:
    """A PNG quick-look of the item, 512 pixels on its long side at most."""
    row, channels = hub.rasters.channels(who, collection_id, item_id)
    return _picture(request, who, row, "preview", preview.quicklook(channels))


@router.get(
    "/api/v1/tiles/{collection_id}/{item_id}/{z}/{x}/{y}.png",
    tags=["stac"],
    response_class=Response,
)
def item_tile(
    collection_id: str,
    item_id: str,
    z: int,
    x: int,
    y: int,
    request: Request,
    who: Who,
    hub: HubDep,
) -> Response:
    """XYZ map tile z/x/y (Web Mercator, 256 px) of the item; transparent where it has no data."""
    try:
        preview.check_tile(z, x, y)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    row, channels = hub.rasters.channels(who, collection_id, item_id)
    png = preview.tile(channels, z, x, y)
    return _picture(request, who, row, f"tile {z}/{x}/{y}", png or preview.transparent_tile())


@router.get(
    "/api/v1/datasets/{org}/{name}/files/{file}/cog", tags=["files"], response_class=Response
)
@router.head(
    "/api/v1/datasets/{org}/{name}/files/{file}/cog", tags=["files"], response_class=Response
)
def download_cog(
    org: str,
    name: str,
    file: str,
    request: Request,
    who: Who,
    hub: HubDep,
    version: Annotated[int | None, Query(ge=1)] = None,
    member: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    """The Cloud Optimized GeoTIFF made from a raster file that was not one (or from the
    raster ``member`` of a zip); Range reads."""
    ref, store = hub.rasters.cog_of(who, org, name, file, version, member)
    key = quota_key(request, who)
    response = file_response(
        request,
        store,
        ref,
        pinned=version is not None,
        reserve=lambda length: hub.quotas.download(key, length),
    )
    if request.method == "GET":
        detail = {"file": file, "cog_sha256": ref.file.sha256, "status": response.status_code}
        if member is not None:
            detail["member"] = member
        if response.status_code == 206:
            detail["range"] = response.headers["content-range"]
        record(request, who, "download", org=org, dataset=name, version=ref.version, detail=detail)
    return response
