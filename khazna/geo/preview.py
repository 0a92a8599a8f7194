"""Pictures of a raster for people: a PNG quick-look of an item and web map tiles.

Both read the COGs through GDAL, which picks the overview that fits the size asked for, so a
quick-look or a tile of a large scene reads a few blocks, not the scene. Colours: red, green
and blue from the bands whose eo:bands common names say so, else the first band in grey;
each band stretched linearly between its 2nd and 98th percentiles (computed once per file
from its smallest overview, so that neighbouring tiles match); nodata is transparent.
Nothing here knows about the hub.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

QUICKLOOK_SIZE = 512  # pixels on the long side at most
TILE_SIZE = 256
MAX_ZOOM = 24
# Web Mercator's half width in metres (EPSG:3857).
_HALF = math.pi * 6378137.0


@dataclass(frozen=True)
class Channel:
    """One band of one COG, to be one colour channel: a local path, or a URL read through
    ``opener`` (an fsspec filesystem: the hub's S3 or decrypting view)."""

    path: Path | str
    band: int  # 1-based
    opener: Any = None

    def open(self) -> Any:
        if self.opener is None:
            return rasterio.open(self.path)
        return rasterio.open(self.path, opener=self.opener)


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """West, south, east, north of XYZ tile z/x/y in EPSG:3857 metres."""
    n = 2**z
    size = 2 * _HALF / n
    west = -_HALF + x * size
    north = _HALF - y * size
    return west, north - size, west + size, north


def check_tile(z: int, x: int, y: int) -> None:
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise ValueError(f"no tile {z}/{x}/{y}: z is 0 to {MAX_ZOOM}, x and y 0 to 2^z - 1")


class _Stretches:
    """(low, high) per (file, band), bounded: percentiles of the smallest overview."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._known: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, c: Channel) -> tuple[float, float]:
        key = (str(c.path), c.band)
        with self._lock:
            if (hit := self._known.get(key)) is not None:
                return hit
        with c.open() as src:
            scale = max(1, max(src.width, src.height) // QUICKLOOK_SIZE)
            shape = (max(1, src.height // scale), max(1, src.width // scale))
            data = src.read(c.band, out_shape=shape, masked=True)
        values = data.compressed()
        if values.size == 0:
            found = (0.0, 1.0)
        else:
            low, high = np.percentile(values, [2, 98])
            found = (float(low), float(high) if high > low else float(low) + 1.0)
        with self._lock:
            self._known[key] = found
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return found


STRETCHES = _Stretches()


def _to_bytes(data: np.ma.MaskedArray, c: Channel) -> np.ndarray:
    low, high = STRETCHES.of(c)
    scaled = (np.ma.filled(data, low).astype(np.float64) - low) / (high - low)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _png(channels: list[np.ndarray], alpha: np.ndarray) -> bytes:
    if len(channels) == 1:
        channels = channels * 3
    rgba = np.stack([*channels, alpha])
    height, width = alpha.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="PNG", width=width, height=height, count=4, dtype="uint8") as dst:
                dst.write(rgba)
            return bytes(mem.read())


def quicklook(channels: list[Channel], size: int = QUICKLOOK_SIZE) -> bytes:
    """A PNG of the whole raster, ``size`` pixels on its long side at most."""
    with channels[0].open() as first:
        scale = max(first.width, first.height) / size
        shape = (
            max(1, round(first.height / max(scale, 1))),
            max(1, round(first.width / max(scale, 1))),
        )
    out, valid = [], np.ones(shape, dtype=bool)
    for c in channels:
        with c.open() as src:
            data = src.read(c.band, out_shape=shape, masked=True, resampling=Resampling.nearest)
        valid &= ~np.ma.getmaskarray(data)
        out.append(_to_bytes(data, c))
    return _png(out, np.where(valid, 255, 0).astype(np.uint8))


def tile(channels: list[Channel], z: int, x: int, y: int) -> bytes | None:
    """The XYZ tile z/x/y (Web Mercator, 256 px) as a PNG; None when the raster does not
    reach it."""
    check_tile(z, x, y)
    west, south, east, north = tile_bounds(z, x, y)
    out, valid = [], np.ones((TILE_SIZE, TILE_SIZE), dtype=bool)
    for c in channels:
        with c.open() as src:
            left, bottom, right, top = transform_bounds(src.crs, "EPSG:3857", *src.bounds)
            if west >= right or east <= left or south >= top or north <= bottom:
                return None
            # A warped view that is exactly the tile: GDAL reads the overview that fits.
            with WarpedVRT(
                src,
                crs="EPSG:3857",
                transform=from_bounds(west, south, east, north, TILE_SIZE, TILE_SIZE),
                width=TILE_SIZE,
                height=TILE_SIZE,
                resampling=Resampling.nearest,
            ) as vrt:
                data = vrt.read(c.band, masked=True)
        valid &= ~np.ma.getmaskarray(data)
        out.append(_to_bytes(data, c))
    if not valid.any():
        return None
    return _png(out, np.where(valid, 255, 0).astype(np.uint8))


def transparent_tile() -> bytes:
    zero = np.zeros((TILE_SIZE, TILE_SIZE), dtype=np.uint8)
    return _png([zero], zero)
