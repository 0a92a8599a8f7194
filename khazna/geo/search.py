"""STAC item search parameters: parsed and checked once, for GET and POST alike."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cql2
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from khazna.errors import BadRequest

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000


@dataclass(frozen=True)
class ItemQuery:
    collections: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    intersects: BaseGeometry | None = None
    start: datetime | None = None  # inclusive; None: open
    end: datetime | None = None
    has_datetime: bool = False  # a datetime filter was given (items without one fail it)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    filter: ItemFilter | None = None

    @property
    def exact(self) -> bool:
        """True when SQL alone selects the items; else it gives candidates that ``keeps``
        then tests one by one."""
        return self.intersects is None and self.filter is None

    def keeps(self, doc: dict[str, Any]) -> bool:
        """Whether an item (a STAC Item document) passes the tests SQL cannot make."""
        if self.intersects is not None and not shape(doc["geometry"]).intersects(self.intersects):
            return False
        return self.filter is None or self.filter.matches(doc)


# CQL2 as the STAC API Filter extension has it: https://github.com/stac-api-extensions/filter
# Parsed and evaluated by the ``cql2`` package (Rust, from the CQL2 reference grammar): one
# library for both encodings, no SQL generated from user input. Items are matched after the
# SQL prefilter (collections, ids, bbox, datetime, access), so numberMatched and paging stay
# exact; a filter costs one pass over the prefiltered items, fine for a hub's thousands of
# scenes (a catalog of millions would want the filter translated to SQL instead).
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
FILTER_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/array-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/arithmetic",
    # The names of the CQL2 drafts, which stac-api-validator and older clients look for.
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/array-operators",
]
_OPERATORS = frozenset(
    {"and", "or", "not", "=", "<>", "<", "<=", ">", ">=", "like", "between", "in", "isNull"}
    | {"casei", "+", "-", "*", "/", "%", "^", "div"}
    | {f"s_{n}" for n in ("intersects", "equals", "disjoint", "touches", "within")}
    | {f"s_{n}" for n in ("overlaps", "crosses", "contains")}
    | {f"a_{n}" for n in ("equals", "contains", "containedBy", "overlaps")}
    | {
        f"t_{n}"
        for n in (
            "after", "before", "contains", "disjoint", "during", "equals", "finishedBy",
            "finishes", "intersects", "meets", "metBy", "overlappedBy", "overlaps",
            "startedBy", "starts",
        )
    }
)  # fmt: skip
# Read from the Item itself, not from its properties.
_TOP_LEVEL = frozenset({"id", "collection", "geometry"})


@dataclass(frozen=True)
class ItemFilter:
    expr: cql2.Expr
    properties: frozenset[str] = field(default_factory=frozenset)
    text: str = ""

    def matches(self, doc: dict[str, Any]) -> bool:
        """CQL2's three-valued logic: a property an item lacks is null, a comparison with
        null is unknown, and an item is kept only when the whole filter is true."""
        props = doc["properties"]
        missing = {p: None for p in self.properties - _TOP_LEVEL if p not in props}
        if missing:
            doc = {**doc, "properties": {**props, **missing}}
        try:
            return bool(self.expr.matches(doc))
        except Exception:  # "could not reduce to boolean": unknown, so not matched
            return False


def _walk(node: Any) -> Iterator[tuple[str, str]]:
    """("op", name) and ("property", name) of every operator and property in CQL2 JSON."""
    if isinstance(node, list):
        for n in node:
            yield from _walk(n)
    elif isinstance(node, dict):
        if isinstance(node.get("op"), str):
            yield "op", node["op"]
            yield from _walk(node.get("args", []))
        elif isinstance(node.get("property"), str):
            yield "property", node["property"]


def _between_as_drafted(node: Any) -> Any:
    """CQL2 JSON drafts wrote ``between`` as [property, [low, high]] (stac-api-validator
    still sends that); 1.0 has [property, low, high]. Both are read."""
    if isinstance(node, list):
        return [_between_as_drafted(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _between_as_drafted(v) for k, v in node.items()}
    match out.get("op"), out.get("args"):
        case "between", [subject, [low, high]]:
            out["args"] = [subject, low, high]
    return out


def parse_filter(params: dict[str, Any], *, body: bool) -> ItemFilter | None:
    """The ``filter`` of a search, in the ``filter-lang`` given (GET: cql2-text by default,
    POST: cql2-json), its ``filter-crs`` CRS84 if given. Errors are 400s naming the fault."""
    raw = params.get("filter")
    if raw is None or raw == "":
        return None
    lang = params.get("filter-lang") or ("cql2-json" if body else "cql2-text")
    if lang not in ("cql2-text", "cql2-json"):
        raise BadRequest(
            f"filter-lang {lang!r} is not supported: use cql2-text or cql2-json",
            field="filter-lang",
        )
    crs = params.get("filter-crs")
    if crs not in (None, "", CRS84):
        raise BadRequest(f"filter-crs must be {CRS84}", field="filter-crs")
    try:
        if lang == "cql2-text":
            if not isinstance(raw, str):
                raise BadRequest("a cql2-text filter must be a string", field="filter")
            expr = cql2.parse_text(raw)
        else:
            tree = json.loads(raw) if isinstance(raw, str) else raw
            expr = cql2.parse_json(json.dumps(_between_as_drafted(tree)))
        tree = expr.to_json()
        text = expr.to_text()
    except BadRequest:
        raise
    except Exception as exc:  # cql2's ParseError, ValidationError, ValueError, bad JSON
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first if line.strip())[:300]
        raise BadRequest(f"filter is not valid {lang}: {detail}", field="filter") from None
    names = list(_walk(tree))
    unknown = sorted({n for kind, n in names if kind == "op" and n not in _OPERATORS})
    if unknown:
        raise BadRequest(
            f"filter uses {', '.join(unknown)}, which this hub does not support",
            field="filter",
        )
    if not isinstance(tree, dict) and not isinstance(tree, bool):
        raise BadRequest("filter must be a boolean expression", field="filter")
    props = frozenset(n for kind, n in names if kind == "property")
    return ItemFilter(expr, props, text)


# RFC 3339 section 5.6: a full date, "T", a time with seconds, and an offset ("Z" or ±hh:mm).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def parse_rfc3339(value: str, what: str = "datetime") -> datetime:
    try:
        if not _RFC3339.fullmatch(value.strip()):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.strip().upper().replace(" ", "T"))
    except ValueError:
        raise BadRequest(f"{what} {value!r} is not an RFC 3339 date-time", field=what) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _list(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise BadRequest(f"{what} must be a list of strings", field=what)
    return tuple(i.strip() for i in items if i.strip())


def _bbox(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    raw = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise BadRequest("bbox must be 4 or 6 numbers", field="bbox") from None
    if len(numbers) == 6:
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    if len(numbers) != 4:
        raise BadRequest("bbox must be 4 or 6 numbers", field="bbox")
    west, south, east, north = numbers
    if not (-90 <= south <= north <= 90) or not (-180 <= west <= 180 and -180 <= east <= 180):
        raise BadRequest(
            "bbox must be west,south,east,north in WGS84 degrees, with south <= north",
            field="bbox",
        )
    return west, south, east, north


def _interval(value: Any) -> tuple[datetime | None, datetime | None] | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("datetime must be a string", field="datetime")
    if "/" not in value:
        instant = parse_rfc3339(value)
        return instant, instant
    first, _, last = value.partition("/")
    start = None if first in ("", "..") else parse_rfc3339(first)
    end = None if last in ("", "..") else parse_rfc3339(last)
    if start is None and end is None:
        raise BadRequest("datetime interval '../..' is open at both ends", field="datetime")
    if start is not None and end is not None and start > end:
        raise BadRequest("datetime interval ends before it starts", field="datetime")
    return start, end


def _geometry(value: Any) -> BaseGeometry | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest("intersects must be a GeoJSON geometry", field="intersects") from None
    if not isinstance(value, dict) or "type" not in value:
        raise BadRequest("intersects must be a GeoJSON geometry", field="intersects")
    try:
        geometry = shape(value)
    except Exception:  # shapely raises several kinds for malformed input
        raise BadRequest("intersects must be a GeoJSON geometry", field="intersects") from None
    if geometry.is_empty:
        raise BadRequest("intersects is an empty geometry", field="intersects")
    return geometry


def _int(value: Any, what: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest(f"{what} must be an integer", field=what)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be an integer", field=what) from None


def parse_query(
    params: dict[str, Any], collection: str | None = None, *, body: bool = False
) -> ItemQuery:
    """From a GET query string (strings), or a POST body (``body``: JSON values, where
    lists are arrays and a geometry is an object, never a comma-separated string)."""
    if body:
        for name in ("collections", "ids", "bbox"):
            if params.get(name) is not None and not isinstance(params[name], list):
                raise BadRequest(f"{name} must be a JSON array in a POST body", field=name)
        if params.get("intersects") is not None and not isinstance(params["intersects"], dict):
            raise BadRequest("intersects must be a GeoJSON object", field="intersects")
    if params.get("bbox") is not None and params.get("intersects") is not None:
        raise BadRequest("give bbox or intersects, not both", field="bbox")
    limit = _int(params.get("limit"), "limit", DEFAULT_LIMIT)
    if limit < 1:
        raise BadRequest("limit must be at least 1", field="limit")
    token = params.get("token")
    offset = 0
    if token is not None:
        offset = _int(str(token).removeprefix("next:"), "token", 0)
        if offset < 0:
            raise BadRequest("token is not one this hub gave", field="token")
    interval = _interval(params.get("datetime"))
    item_filter = parse_filter(params, body=body)
    return ItemQuery(
        collections=(collection,)
        if collection is not None
        else _list(params.get("collections"), "collections"),
        ids=_list(params.get("ids"), "ids"),
        bbox=_bbox(params.get("bbox")),
        intersects=_geometry(params.get("intersects")),
        start=interval[0] if interval else None,
        end=interval[1] if interval else None,
        has_datetime=interval is not None,
        limit=min(limit, MAX_LIMIT),  # above the maximum: clamped, as STAC API says
        offset=offset,
        filter=item_filter,
    )


# STAC's common metadata: https://github.com/radiantearth/stac-spec (item-spec/common-metadata)
_TIMESTAMPS = frozenset({"start_datetime", "end_datetime", "created", "updated"})
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))
_CORE_QUERYABLES: dict[str, Any] = {
    "id": {"title": "Item ID", "type": "string"},
    "collection": {"title": "Collection ID", "type": "string"},
    "geometry": {"title": "Footprint", "$ref": "https://geojson.org/schema/Geometry.json"},
    "datetime": {"title": "Acquired", "type": ["string", "null"], "format": "date-time"},
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES:  # bool before int: True is an int in Python
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "object"


def queryables(url: str, title: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of what a filter may name: the core four, then every property the
    items have, typed from their values. Other names are allowed (``additionalProperties``)
    and are null on every item, as the Filter extension says."""
    seen: dict[str, set[str]] = {}
    for props in items:
        for name, value in props.items():
            seen.setdefault(name, set()).add(_json_type(value))
    properties = dict(_CORE_QUERYABLES)
    for name in sorted(seen):
        if name in properties:
            continue
        kinds = sorted(seen[name] - {"null"}) or ["null"]
        if kinds == ["integer", "number"]:
            kinds = ["number"]
        schema: dict[str, Any] = {"type": kinds[0] if len(kinds) == 1 else kinds}
        if name in _TIMESTAMPS and kinds == ["string"]:
            schema["format"] = "date-time"
        properties[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": url,
        "type": "object",
        "title": title,
        "properties": properties,
        "additionalProperties": True,
    }
