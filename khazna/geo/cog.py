"""Reading a GeoTIFF's description and making it a Cloud Optimized GeoTIFF.

rasterio (GDAL) reads; rio-cogeo converts and validates. Nothing here knows about the hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

RASTER_SUFFIXES = (".tif", ".tiff")

log = logging.getLogger("khazna.geo")


class NotARaster(Exception):
    """The file cannot be read as a georeferenced GeoTIFF. ``damaged``: not even as an
    image (unreadable, truncated, another format), as opposed to an intact TIFF without
    georeferencing, which is a file like any other."""

    def __init__(self, message: str, *, damaged: bool = True) -> None:
        super().__init__(message)
        self.damaged = damaged


def is_raster(file_name: str) -> bool:
    return file_name.lower().endswith(RASTER_SUFFIXES)


@dataclass(frozen=True)
class RasterInfo:
    """What a STAC item needs to know of one GeoTIFF."""

    crs: str  # "EPSG:32629", or the WKT when the CRS has no EPSG code
    epsg: int | None
    shape: tuple[int, int]  # rows, columns
    transform: list[float]  # the six affine coefficients a, b, c, d, e, f
    bbox: list[float]  # west, south, east, north in WGS84
    native_bbox: list[float]
    dtype: str
    nodata: float | None
    bands: list[dict[str, Any]]  # one per band: name (its description), if any
    datetime: str | None  # TIFFTAG_DATETIME as RFC 3339, when the file has one

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def inspect(path: Path) -> RasterInfo:
    """Open the GeoTIFF and read every block of its smallest overview (or of the image, when
    it has none) so that a damaged file is refused here rather than half-converted."""
    try:
        with rasterio.open(path) as src:
            if src.driver != "GTiff":
                raise NotARaster(f"is a {src.driver} file, not a GeoTIFF")
            if src.crs is None:
                raise NotARaster(
                    "has no coordinate reference system (not georeferenced)", damaged=False
                )
            src.read(out_shape=(src.count, max(1, src.height // 64), max(1, src.width // 64)))
            _check_blocks(src, path.stat().st_size)
            epsg = src.crs.to_epsg()
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            descriptions = src.descriptions
            return RasterInfo(
                crs=f"EPSG:{epsg}" if epsg is not None else src.crs.to_wkt(),
                epsg=epsg,
                shape=(src.height, src.width),
                transform=list(src.transform)[:6],
                bbox=[west, south, east, north],
                native_bbox=list(src.bounds),
                dtype=src.dtypes[0],
                nodata=src.nodata,
                bands=[{"name": d} if d else {} for d in descriptions],
                datetime=_tiff_datetime(src.tags().get("TIFFTAG_DATETIME")),
            )
    except RasterioError as exc:
        raise NotARaster(_first_line(str(exc))) from exc


def _check_blocks(src: Any, size: int) -> None:
    """Every block of the full-resolution image lies inside the file: a truncated upload
    (whose overviews, first in a COG, may still read) is refused without decoding it all."""
    for band in range(1, src.count + 1):
        for (row, col), _ in src.block_windows(band):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
            length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
            if offset and length and int(offset) + int(length) > size:
                raise NotARaster(
                    f"is truncated: band {band}, block ({row}, {col}) ends at byte "
                    f"{int(offset) + int(length)} of a {size}-byte file"
                )
        if src.interleaving is not None and src.interleaving.value == "PIXEL":
            return  # the bands share their blocks


def is_cog(path: Path) -> tuple[bool, list[str]]:
    """rio-cogeo's verdict: valid, and the errors that make it not."""
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    return bool(valid), [str(e) for e in errors]


def to_cog(source: Path, target: Path) -> None:
    """Write ``source`` as a deflate-compressed COG with internal overviews."""
    try:
        cog_translate(
            str(source),
            str(target),
            cog_profiles.get("deflate"),  # type: ignore[no-untyped-call]
            in_memory=False,
            quiet=True,
            use_cog_driver=False,
        )
    except RasterioError as exc:
        raise NotARaster(_first_line(str(exc))) from exc
    valid, errors = is_cog(target)
    if not valid:  # rio-cogeo's own output should always pass; say so loudly if not
        raise NotARaster(f"the converted file is not a valid COG: {'; '.join(errors)}")


def _tiff_datetime(value: str | None) -> str | None:
    """``YYYY:MM:DD HH:MM:SS`` (TIFF 6.0), taken as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return parsed.isoformat().replace("+00:00", "Z")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"
