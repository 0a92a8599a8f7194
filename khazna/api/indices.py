"""Vegetation indices computed next to the data (khazna/geo/indices.py): a request becomes
a job whose result is a new version of a dataset the caller may write."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from khazna.api.deps import HubDep, Who, check_caller
from khazna.geo.indices import IndexRequest

router = APIRouter(prefix="/api/v1", dependencies=[Depends(check_caller)])


class IndicesIn(BaseModel):
    index: Literal["ndvi", "vci"]
    collection: str = Field(description="the input collection, ORG.DATASET")
    items: list[str] | None = Field(
        default=None, description="ndvi: the one item; vci: the series (default: every item)"
    )
    datetime: str | None = Field(default=None, description="vci: the series' interval")
    at: str | None = Field(default=None, description="vci: the item evaluated (the latest)")
    bands: dict[str, str] | None = Field(
        default=None, description='{"red": ASSET[:BAND], "nir": ...}; default: eo:bands'
    )
    target: str = Field(description="ORG/DATASET that gets the result as a new version")
    name: str | None = Field(default=None, description="the output's base name")
    zones: dict[str, Any] | None = Field(
        default=None,
        description="polygons for zonal statistics: a GeoJSON FeatureCollection, or "
        '{"dataset": "ORG/NAME", "file": "zones.geojson"}',
    )


@router.post("/indices", status_code=202, tags=["rasters"])
def compute_index(body: IndicesIn, who: Who, hub: HubDep) -> dict[str, Any]:
    """Queue the computation of NDVI (one item) or VCI (an item against its series)."""
    request = IndexRequest(
        body.index,
        body.collection,
        body.items,
        body.datetime,
        body.at,
        body.bands,
        body.target,
        body.name,
        body.zones,
    )
    return hub.indices.request(who, request)
