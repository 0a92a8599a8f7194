"""STAC item search parameters: parsed and checked once, for GET and POST alike."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    )
