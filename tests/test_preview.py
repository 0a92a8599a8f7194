"""Pictures of rasters: the PNG quick-look of an item and its XYZ map tiles, checked pixel
by pixel against rasterio reading and warping the fixture file here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from tests.conftest import Api
from tests.test_stac import B08, ORG, SCENE, load_scene, stac

ITEM = f"/stac/collections/{ORG}.s2/items/{SCENE}"


def png(data: bytes) -> np.ndarray:
    with MemoryFile(data) as mem, mem.open() as src:
        assert src.driver == "PNG"
        return src.read()


def stretch_of_b08() -> tuple[float, float]:
    """2nd and 98th percentiles of the NIR band read at half size (its overview)."""
    with rasterio.open(B08) as src:
        values = src.read(1, out_shape=(549, 549), masked=True).compressed()
    low, high = np.percentile(values, [2, 98])
    return float(low), float(high)


def stretched(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - low) / (high - low) * 255), 0, 255)


def lonlat_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def test_the_quicklook_is_the_nir_band_stretched_at_512_pixels(api: Api) -> None:
    load_scene(api)
    item = stac(api, ITEM).json()
    thumb = item["assets"]["thumbnail"]
    assert thumb == {
        "href": f"http://testserver{ITEM}/preview.png",
        "type": "image/png",
        "roles": ["thumbnail"],
        "title": "Quick-look",
    }
    r = stac(api, thumb["href"])
    assert (r.status_code, r.headers["content-type"]) == (200, "image/png")
    assert r.headers["cache-control"] == "private, max-age=3600"
    got = png(r.content)
    assert got.shape == (4, 512, 512)
    # No red, green and blue bands: grey from the first asset (nir, B08), nodata none.
    with rasterio.open(B08) as src:
        nir = src.read(1, out_shape=(512, 512), resampling=Resampling.nearest)
    expected = stretched(nir, *stretch_of_b08())
    for channel in range(3):
        assert np.array_equal(got[channel], expected)
    assert (got[3] == 255).all()
    entries = stac(api, "/api/v1/audit", api.admin, params={"action": "download"}).json()
    shown = [e["detail"] for e in entries["entries"] if e["detail"].get("shown") == "preview"]
    assert shown == [{"item": SCENE, "shown": "preview"}]


def test_a_map_tile_is_the_band_warped_to_web_mercator(api: Api) -> None:
    load_scene(api)
    item = stac(api, ITEM).json()
    template = next(ln["href"] for ln in item["links"] if ln["rel"] == "xyz")
    assert template == (f"http://testserver/api/v1/tiles/{ORG}.s2/{SCENE}/{{z}}/{{x}}/{{y}}.png")
    z = 12  # 38 m pixels: finer than the band's 100 m, so no overview is read
    x, y = lonlat_tile(-11.5, 24.8, z)
    r = stac(api, template.format(z=z, x=x, y=y))
    assert r.status_code == 200
    got = png(r.content)
    n = 2**z
    half = math.pi * 6378137.0
    size = 2 * half / n
    west, north = -half + x * size, half - y * size
    warped = np.zeros((256, 256), dtype=np.uint16)
    with rasterio.open(B08) as src:
        reproject(
            rasterio.band(src, 1),
            warped,
            dst_transform=from_bounds(west, north - size, west + size, north, 256, 256),
            dst_crs="EPSG:3857",
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
    inside = warped != 0
    assert inside.all()  # a tile well inside the scene
    expected = stretched(warped, *stretch_of_b08())
    assert np.array_equal(got[0], expected)
    assert (got[3] == 255).all()


def test_tiles_beyond_the_scene_are_transparent_and_bad_ones_refused(api: Api) -> None:
    load_scene(api)
    far = stac(api, f"/api/v1/tiles/{ORG}.s2/{SCENE}/8/0/0.png")
    assert far.status_code == 200
    assert (png(far.content)[3] == 0).all()
    # The scene's edge: some pixels drawn, the rest transparent.
    x, y = lonlat_tile(-10.87, 24.3, 9)
    edge = png(stac(api, f"/api/v1/tiles/{ORG}.s2/{SCENE}/9/{x}/{y}.png").content)
    assert 0 < int((edge[3] == 255).sum()) < 256 * 256
    for bad in ("25/0/0", "3/8/0", "3/0/-1"):
        r = stac(api, f"/api/v1/tiles/{ORG}.s2/{SCENE}/{bad}.png")
        assert r.status_code in (400, 422), bad
    r = stac(api, f"/api/v1/tiles/{ORG}.s2/{SCENE}/25/0/0.png")
    assert r.json()["error"]["message"] == ("no tile 25/0/0: z is 0 to 24, x and y 0 to 2^z - 1")
    assert stac(api, f"/api/v1/tiles/{ORG}.s2/nope/3/0/0.png").status_code == 404


@pytest.mark.parametrize("token", ["outsider", None])
def test_a_private_scene_has_no_pictures_for_others(api: Api, token: str | None) -> None:
    load_scene(api, "secret", access="private")
    caller = getattr(api, token) if token else None
    item = f"/stac/collections/{ORG}.secret/items/{SCENE}"
    assert stac(api, f"{item}/preview.png", caller).status_code == 404
    assert stac(api, f"/api/v1/tiles/{ORG}.secret/{SCENE}/3/3/3.png", caller).status_code == 404
    assert stac(api, f"{item}/preview.png", api.editor).status_code == 200


def test_the_dataset_page_shows_the_footprint_tiles_and_quicklook(api: Api) -> None:
    load_scene(api)
    page = stac(api, f"/datasets/{ORG}/s2", params={"lang": "fr"}).text
    base = f"/stac/collections/{ORG}.s2/items/{SCENE}"
    assert (
        f'<img class="quicklook" src="{base}/preview.png" alt="Aperçu de {SCENE}" '
        'width="256" loading="lazy">'
    ) in page
    assert f'data-xyz="/api/v1/tiles/{ORG}.s2/{SCENE}/{{z}}/{{x}}/{{y}}.png"' in page
    assert 'data-image-label="Image"' in page
    item = stac(api, ITEM).json()
    footprint = {"type": "Feature", "geometry": item["geometry"], "properties": {}}
    drawn = json.dumps(footprint, sort_keys=True)
    assert f'<script type="application/json" id="map-1-data">{drawn}</script>' in page
