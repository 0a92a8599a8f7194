"""Indices computed next to the data: NDVI of the real Sentinel-2 scene against NumPy on
the fixture files, VCI and drought classes of a hand-made three-date series, zonal
statistics queried back with SQL, lineage, and the refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from khazna.geo.indices import NODATA
from tests.conftest import Api
from tests.test_stac import B04, B08, ORG, SCENE, load_scene, make_dataset, stac, upload, wait

S2 = f"{ORG}.s2"


def run(api: Api, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """POST /api/v1/indices, then wait for its job and for the ingests of its version."""
    r = api.http.post("/api/v1/indices", json=body, headers=api.auth(token or api.editor))
    assert r.status_code == 202, r.text
    state = wait(api, r.json()["job"])
    assert state["state"] == "done", state
    for job in state["result"]["jobs"].values():
        assert wait(api, {"id": job})["state"] == "done"
    return {**r.json(), "result": state["result"]}


def read_asset(api: Api, href: str) -> tuple[np.ndarray, bytes]:
    data = stac(api, href).content
    with MemoryFile(data) as mem, mem.open() as src:
        return src.read(1), data


def is_cog(data: bytes) -> bool:
    with MemoryFile(data) as mem:
        return bool(cog_validate(mem.name, quiet=True)[0])


def test_ndvi_of_the_real_sentinel_scene_equals_numpy_on_the_fixture_files(api: Api) -> None:
    load_scene(api)
    make_dataset(api, "indices")
    api.hub.indices.window = 256  # 5 x 5 windows over 1098 x 1098 pixels
    out = run(api, {"index": "ndvi", "collection": S2, "target": f"{ORG}/indices"})
    name = f"ndvi-{SCENE}"
    assert out["name"] == name
    assert out["files"] == [f"{name}-index.tif", f"{name}.stac.json"]
    assert out["result"]["windows"] == 25
    assert out["result"]["pixels"] == 1098 * 1098
    assert out["result"]["version"] == 1
    item = stac(api, f"/stac/collections/{ORG}.indices/items/{name}").json()
    assert item["properties"]["datetime"] == "2020-02-19T11:34:25.405000Z"
    assert item["properties"]["khazna:index"] == "ndvi"
    lineage = item["properties"]["khazna:derived_from"]
    assert [(d["collection"], d["item"]) for d in lineage] == [(S2, SCENE)]
    red_sha = api.hub.catalog.resolve_file(api.hub.accounts.system_principal(), ORG, "s2", B04.name)
    assert lineage[0]["red"] == {"asset": "red", "band": 1, "sha256": red_sha.file.sha256}
    derived = [ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"]
    assert derived == [f"http://testserver/stac/collections/{S2}/items/{SCENE}"]
    got, data = read_asset(api, item["assets"]["index"]["href"])
    assert is_cog(data)
    # Independently: the two fixture files, read here, in float32.
    with rasterio.open(B04) as r, rasterio.open(B08) as n:
        red, nir = r.read(1).astype(np.float32), n.read(1).astype(np.float32)
    valid = (red != 0) & (nir != 0) & (red + nir != 0)
    expected = np.where(valid, (nir - red) / np.where(valid, nir + red, 1), NODATA)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected.astype(np.float32))
    # A few pixels by hand: (row, col) red, NIR -> (NIR - Red) / (NIR + Red).
    assert got[0, 0] == np.float32(3786 - 3248) / np.float32(3786 + 3248)  # 0.0764856...
    assert got[500, 500] == np.float32(4065 - 3454) / np.float32(4065 + 3454)
    assert got[1097, 1097] == np.float32(4143 - 3664) / np.float32(4143 + 3664)
    assert round(float(got.mean(dtype=np.float64)), 4) == 0.0662  # a desert: about 0.07


# A 3 x 3 grid over three dates: (red, NIR) per pixel. NDVI values are -0.5 .. 0.5 in
# binary fractions, so that the VCI below is exact. 0 is the bands' nodata.
D0 = [[(1, 3), (1, 3), (1, 3)], [(1, 3), (1, 3), (1, 3)], [(1, 3), (1, 3), (0, 0)]]
D1 = [[(3, 1), (3, 1), (3, 1)], [(3, 1), (3, 1), (3, 1)], [(1, 3), (3, 1), (3, 1)]]
D2 = [[(3, 1), (11, 5), (5, 3)], [(9, 7), (1, 1), (1, 3)], [(1, 3), (0, 4), (1, 1)]]
# The VCI of D2 against the three dates, worked by hand: 100 * (now - min) / (max - min).
VCI = [
    [0.0, 12.5, 25.0],  # now -0.5, -0.375, -0.25; min -0.5, max 0.5
    [37.5, 50.0, 100.0],  # now -0.125, 0, 0.5
    [NODATA, NODATA, 100.0],  # max == min; red is nodata now; history -0.5 .. 0 (D0 none)
]
CLASSES = [[1, 2, 3], [4, 5, 5], [0, 0, 5]]  # extreme, severe, moderate, mild, none
ORIGIN = (300000.0, 2800020.0)  # UTM 29N, 10 m pixels


def date_file(values: list[list[tuple[int, int]]]) -> bytes:
    data = np.array([[[p[b] for p in row] for row in values] for b in (0, 1)], dtype=np.uint16)
    profile = {
        "driver": "GTiff",
        "width": 3,
        "height": 3,
        "count": 2,
        "dtype": "uint16",
        "crs": "EPSG:32629",
        "transform": from_origin(*ORIGIN, 10, 10),
        "nodata": 0,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        return bytes(mem.read())


def load_series(api: Api) -> None:
    make_dataset(api, "series")
    for n, values in enumerate((D0, D1, D2)):
        query = f"?bands=red,nir&datetime=2020-0{n + 1}-01T00:00:00Z"
        job = upload(api, "series", f"d{n}.tif", date_file(values), query)["job"]
        assert wait(api, job)["state"] == "done"


def zone(zone_id: str, name: str, cols: range, rows: range) -> dict[str, Any]:
    """A polygon over whole pixels of the grid, 1 m inside their edges, in WGS84."""
    x0, y0 = ORIGIN
    west, east = x0 + 10 * cols.start + 1, x0 + 10 * cols.stop - 1
    north, south = y0 - 10 * rows.start - 1, y0 - 10 * rows.stop + 1
    to_wgs84 = Transformer.from_crs("EPSG:32629", "EPSG:4326", always_xy=True).transform
    ring = [to_wgs84(x, y) for x, y in ((west, south), (east, south), (east, north), (west, north))]
    ring.append(ring[0])
    return {
        "type": "Feature",
        "id": zone_id,
        "properties": {"name": name},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def test_vci_of_a_three_date_series_with_drought_classes_and_zonal_statistics(
    api: Api,
) -> None:
    load_series(api)
    make_dataset(api, "drought")
    zones = {
        "type": "FeatureCollection",
        "features": [
            zone("A", "Ouest", range(0, 1), range(0, 3)),
            zone("B", "Tout", range(3), range(3)),
        ],
    }
    body = {
        "index": "vci",
        "collection": f"{ORG}.series",
        "target": f"{ORG}/drought",
        "name": "vci-mars",
        "zones": zones,
    }
    out = run(api, body)
    assert out["inputs"] == [f"{ORG}.series/d0", f"{ORG}.series/d1", f"{ORG}.series/d2"]
    assert out["files"] == [
        "vci-mars-index.tif",
        "vci-mars.stac.json",
        "vci-mars-classes.tif",
        "vci-mars-zones.csv",
    ]
    item = stac(api, f"/stac/collections/{ORG}.drought/items/vci-mars").json()
    assert item["properties"]["datetime"] == "2020-03-01T00:00:00Z"  # the latest date's
    assert sorted(item["assets"]) == ["classes", "index", "thumbnail"]
    got, data = read_asset(api, item["assets"]["index"]["href"])
    assert is_cog(data)
    assert got.tolist() == VCI
    classes, data = read_asset(api, item["assets"]["classes"]["href"])
    assert is_cog(data)
    assert classes.tolist() == CLASSES
    # The zonal statistics are a table: SQL finds it by its name in the dataset.
    files = stac(api, f"/api/v1/datasets/{ORG}/drought").json()["files"]
    table = next(f["table"] for f in files if f["name"] == "vci-mars-zones.csv")
    sql = (
        "SELECT zone, name, pixels, valid_pixels, mean, min, max, std, extreme_share, "
        f"severe_share, moderate_share, mild_share, none_share FROM {table['sql_name']} "
        "ORDER BY zone"
    )
    r = api.http.post("/api/v1/sql", json={"sql": sql}, headers=api.auth(api.editor))
    assert r.status_code == 200, r.text
    zone_a, zone_b = r.json()["rows"]
    # A: the left column, 0 and 37.5 (the bottom pixel is nodata).
    assert zone_a == ["A", "Ouest", 3, 2, 18.75, 0.0, 37.5, 18.75, 0.5, 0.0, 0.0, 0.5, 0.0]
    # B: every pixel; seven with a VCI.
    values = [0.0, 12.5, 25.0, 37.5, 50.0, 100.0, 100.0]
    mean = sum(values) / 7
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 7)
    assert zone_b[:4] == ["B", "Tout", 9, 7]
    assert zone_b[4:8] == pytest.approx([mean, 0.0, 100.0, std], abs=1e-8)
    assert zone_b[8:] == pytest.approx([1 / 7, 1 / 7, 1 / 7, 1 / 7, 3 / 7], abs=1e-8)


def test_vci_at_an_earlier_date_and_over_an_interval(api: Api) -> None:
    load_series(api)
    make_dataset(api, "drought")
    # At d1 over the whole series: -0.5 is each history's minimum where it is known.
    run(api, {"index": "vci", "collection": f"{ORG}.series", "target": f"{ORG}/drought",
              "at": "d1", "name": "d1"})  # fmt: skip
    item = stac(api, f"/stac/collections/{ORG}.drought/items/d1").json()
    got, _ = read_asset(api, item["assets"]["index"]["href"])
    assert got.tolist() == [[0.0] * 3, [0.0] * 3, [NODATA, 0.0, 0.0]]
    # Over d1 and d2 only (an interval, as in a STAC search): d0's 0.5 is out of the history.
    run(api, {"index": "vci", "collection": f"{ORG}.series", "target": f"{ORG}/drought",
              "datetime": "2020-01-15T00:00:00Z/..", "name": "late"})  # fmt: skip
    item = stac(api, f"/stac/collections/{ORG}.drought/items/late").json()
    got, _ = read_asset(api, item["assets"]["index"]["href"])
    assert got.tolist() == [
        [NODATA, 100.0, 100.0],  # -0.5 both times: max == min
        [100.0, 100.0, 100.0],
        [NODATA, NODATA, 100.0],  # 0.5 both times; red is nodata in d2
    ]
    lineage = [d["item"] for d in item["properties"]["khazna:derived_from"]]
    assert lineage == ["d1", "d2"]


def test_bad_requests_are_refused_before_any_work_and_nothing_is_stored(api: Api) -> None:
    load_series(api)
    make_dataset(api, "drought")
    make_dataset(api, "bare")
    # A raster whose bands were never named: no red or NIR to find.
    job = upload(api, "bare", "x.tif", date_file([[(2, 2)] * 3] * 3))["job"]
    assert wait(api, job)["state"] == "done"

    def refused(body: dict[str, Any], token: str | None = None) -> tuple[int, str]:
        full = {"target": f"{ORG}/drought", **body}
        headers = api.auth(token) if token else {}
        r = api.http.post("/api/v1/indices", json=full, headers=headers)
        return r.status_code, r.json()["error"]["message"]

    series = f"{ORG}.series"
    editor = api.editor
    assert refused({"index": "ndvi", "collection": series}, editor) == (
        400,
        "ndvi is computed for one item; 3 match (give items: [ID])",
    )
    assert refused({"index": "ndvi", "collection": f"{ORG}.bare"}, editor) == (
        422,
        "item 'x' has no band whose eo:bands common_name is 'red': name its bands at upload "
        "(?bands=) or give bands.red as ASSET or ASSET:BAND",
    )
    assert refused({"index": "vci", "collection": series, "items": ["d0"]}, editor) == (
        422,
        "a VCI needs a history of at least 2 items",
    )
    assert refused({"index": "vci", "collection": series, "at": "d9"}, editor) == (
        400,
        "at: 'd9' is not one of the series' items",
    )
    assert refused({"index": "ndvi", "collection": series, "items": ["nope"]}, editor) == (
        404,
        f"no item 'nope' in collection '{series}'",
    )
    assert refused(
        {"index": "ndvi", "collection": series, "items": ["d0"], "bands": {"red": "x"}}, editor
    ) == (400, "bands.red: item 'd0' has no asset 'x' (it has data)")
    bad_zones = {
        "type": "FeatureCollection",
        "features": [{"geometry": {"type": "Point", "coordinates": [0, 0]}}],
    }
    assert refused(
        {"index": "ndvi", "collection": series, "items": ["d0"], "zones": bad_zones}, editor
    ) == (400, "zone 1 is a Point, not a polygon")
    # Who: no token, a token that may not write the target.
    assert refused({"index": "ndvi", "collection": series, "items": ["d0"]})[0] == 401
    status, _ = refused({"index": "ndvi", "collection": series, "items": ["d0"]}, api.outsider)
    assert status == 403
    # Inputs on different grids.
    make_dataset(api, "mixed")
    for n, shift in enumerate((0, 10)):  # the second one 10 m east
        values = [[(2, 5) if n == 0 else (5, 2)] * 3] * 3
        with MemoryFile(date_file(values)) as mem, mem.open() as src:
            moved = from_origin(ORIGIN[0] + shift, ORIGIN[1], 10, 10)
            profile = {**src.profile, "transform": moved}
            pixels = src.read()
        with MemoryFile() as out:
            with out.open(**profile) as dst:
                dst.write(pixels)
            data = bytes(out.read())
        query = f"?bands=red,nir&datetime=2020-0{n + 1}-01T00:00:00Z"
        assert wait(api, upload(api, "mixed", f"m{n}.tif", data, query)["job"])["state"] == "done"
    assert refused({"index": "vci", "collection": f"{ORG}.mixed"}, editor) == (
        422,
        "the inputs are not on one grid (same CRS, transform and size); "
        "resample them to one grid first",
    )
    assert stac(api, f"/api/v1/datasets/{ORG}/drought").json()["version"] == 0


def test_an_input_the_caller_may_not_read_does_not_exist_for_it(api: Api) -> None:
    load_scene(api, "secret", access="private")
    admin = api.auth(api.admin)
    r = api.http.post("/api/v1/organizations", json={"name": "startup"}, headers=admin)
    assert r.status_code == 201, r.text
    r = api.http.put(
        "/api/v1/organizations/startup/members",
        json={"user": "startup", "role": "editor"},
        headers=admin,
    )
    assert r.status_code == 204, r.text
    r = api.http.post(
        "/api/v1/datasets", json={"org": "startup", "name": "mine"}, headers=api.auth(api.outsider)
    )
    assert r.status_code == 201, r.text

    def ask(collection: str) -> Any:
        body = {"index": "ndvi", "collection": collection, "target": "startup/mine"}
        return api.http.post("/api/v1/indices", json=body, headers=api.auth(api.outsider))

    secret, absent = ask(f"{ORG}.secret"), ask(f"{ORG}.absent")
    assert (secret.status_code, absent.status_code) == (404, 404)
    assert secret.json()["error"]["message"] == absent.json()["error"]["message"].replace(
        "absent", "secret"
    )
    assert stac(api, "/api/v1/datasets/startup/mine", api.outsider).json()["version"] == 0
