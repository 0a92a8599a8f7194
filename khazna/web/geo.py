"""Geo data on the dataset page: which files are GeoJSON, their bounding box, and the
layers a map draws.

A ``.geojson`` file is GeoJSON; a ``.json`` file is when its content is a
``FeatureCollection``. Files larger than MAP_MAX_BYTES are listed but not drawn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MAP_MAX_BYTES = 5_000_000
GEOMETRY_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)


def may_be_geojson(file_name: str) -> bool:
    return file_name.lower().endswith((".geojson", ".json"))


def parse(file_name: str, data: bytes) -> dict[str, Any] | None:
    """The GeoJSON object of a file, or None when it is not GeoJSON."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if file_name.lower().endswith(".geojson"):
        ok = kind in ("FeatureCollection", "Feature") or kind in GEOMETRY_TYPES
    else:
        ok = kind == "FeatureCollection"
    return value if ok else None


def _positions(value: Any) -> Iterator[tuple[float, float]]:
    """Every [longitude, latitude] position under a GeoJSON object."""
    if isinstance(value, dict):
        for key in ("features", "geometry", "geometries", "coordinates"):
            if key in value:
                yield from _positions(value[key])
    elif isinstance(value, list):
        if len(value) >= 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2]
        ):
            yield float(value[0]), float(value[1])
        else:
            for item in value:
                yield from _positions(item)


def bbox(geojson: dict[str, Any]) -> list[float] | None:
    """``[west, south, east, north]`` of every position, or None when there is none."""
    points = list(_positions(geojson))
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]
