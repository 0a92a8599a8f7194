"""Satellite rasters: a GeoTIFF upload becomes a Cloud Optimized GeoTIFF and a STAC item,
band files of one scene become one item, and the STAC API at /stac finds them, with the
access levels of the catalog."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import cql2
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.io import MemoryFile
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from khazna.demo import load_demo
from khazna.geo.scenes import group
from tests.conftest import DATA, REPO, Api

RASTER = DATA / "raster"
SCENE = "S2A_29RKH_20200219_0_L2A"
SIDECAR = RASTER / f"{SCENE}.stac.json"
B04 = RASTER / "S2A_29RKH_20200219_L2A_B04_red_100m_cog.tif"
B08 = RASTER / "S2A_29RKH_20200219_L2A_B08_nir_100m_cog.tif"
ORG = "ministere-sante"  # the organization the api fixture makes


def expected_bbox(path: Path) -> list[float]:
    """WGS84 bounds computed from the file's own transform and size, with pyproj."""
    with rasterio.open(path) as src:
        t, width, height, crs = src.transform, src.width, src.height, src.crs.to_string()
    west, north = t.c, t.f
    east, south = t.c + t.a * width, t.f + t.e * height
    return list(
        Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform_bounds(
            west, south, east, north, densify_pts=21
        )
    )


def plain_geotiff(source: Path, window: Window | None = None) -> bytes:
    """The source's pixels (or a window of them) as a striped, untiled GeoTIFF: not a COG."""
    with rasterio.open(source) as src:
        window = window or Window(0, 0, src.width, src.height)
        data = src.read(window=window)
        profile = {
            "driver": "GTiff",
            "width": int(window.width),
            "height": int(window.height),
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.window_transform(window),
            "nodata": src.nodata,
            "tiled": False,
        }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        return bytes(mem.read())


def make_dataset(api: Api, name: str, access: str = "public", **kw: Any) -> None:
    body = {"org": ORG, "name": name, "access": access, **kw}
    r = api.http.post("/api/v1/datasets", json=body, headers=api.auth(api.editor))
    assert r.status_code == 201, r.text


def upload(api: Api, dataset: str, name: str, data: bytes, query: str = "") -> dict[str, Any]:
    r = api.http.put(
        f"/api/v1/datasets/{ORG}/{dataset}/files/{name}{query}",
        content=data,
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait(api: Api, job: dict[str, Any] | None) -> dict[str, Any]:
    assert job is not None
    deadline = time.monotonic() + 120
    while (state := api.hub.jobs.get(job["id"]))["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return state


def load_scene(api: Api, dataset: str = "s2", access: str = "public") -> None:
    make_dataset(api, dataset, access, title={"en": "Sentinel-2 L2A"}, license="CC-BY-4.0")
    upload(api, dataset, SIDECAR.name, SIDECAR.read_bytes())
    jobs = [upload(api, dataset, p.name, p.read_bytes())["job"] for p in (B04, B08)]
    for job in jobs:
        assert wait(api, job)["state"] == "done"


def stac(api: Api, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = {**(api.auth(token) if token else {}), **kw.pop("headers", {})}
    return api.http.get(path, headers=headers, **kw)


# ingest ----------------------------------------------------------------------------------


def test_two_sentinel_band_files_and_their_stac_item_make_one_item(api: Api) -> None:
    load_scene(api)
    r = stac(api, f"/stac/collections/{ORG}.s2/items/{SCENE}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/geo+json"
    item = r.json()
    assert item["id"] == SCENE
    assert item["collection"] == f"{ORG}.s2"
    assert item["bbox"] == pytest.approx(expected_bbox(B04), abs=1e-9)
    west, south, east, north = item["bbox"]
    assert item["geometry"]["coordinates"][0] == [
        [west, south],
        [east, south],
        [east, north],
        [west, north],
        [west, south],
    ]
    props = item["properties"]
    assert props["datetime"] == "2020-02-19T11:34:25.405000Z"  # from the uploaded item
    assert props["platform"] == "sentinel-2a"
    assert props["eo:cloud_cover"] == 4.051854
    # The grid of the stored 100 m files, not the 10 m one the original item describes.
    assert props["proj:code"] == "EPSG:32629"
    assert props["proj:shape"] == [1098, 1098]
    assert props["proj:transform"] == [100.0, 0.0, 199980.0, 0.0, -100.0, 2800020.0]
    assert "proj:epsg" not in props
    assert sorted(item["assets"]) == ["nir", "red", "thumbnail"]
    red, nir = item["assets"]["red"], item["assets"]["nir"]
    assert red["eo:bands"][0]["common_name"] == "red"
    assert nir["eo:bands"][0]["common_name"] == "nir"
    assert red["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    # Already COGs: the assets are the uploads themselves, at the version they are in.
    base = f"http://testserver/api/v1/datasets/{ORG}/s2/files"
    assert red["href"] == f"{base}/{B04.name}?version=3"
    assert nir["href"] == f"{base}/{B08.name}?version=3"
    assert stac(api, red["href"]).content == B04.read_bytes()
    # Its "COG" is the upload itself, under the name every COG has.
    cog = stac(api, f"/api/v1/datasets/{ORG}/s2/files/{B04.name}/cog")
    assert cog.status_code == 200 and cog.content == B04.read_bytes()
    assert "S2A_29RKH_20200219_L2A_B04_red_100m_cog.cog.tif" in cog.headers["content-disposition"]
    assert cog_validate_bytes(B04.read_bytes())
    assert set(item["stac_extensions"]) == {
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    }
    dataset = stac(api, f"/api/v1/datasets/{ORG}/s2").json()
    rasters = {f["name"]: f.get("raster") for f in dataset["files"]}
    assert rasters[SIDECAR.name] is None
    assert rasters[B04.name]["status"] == "ready"
    assert rasters[B04.name]["converted"] is False
    # The collection's extent is its items'.
    c = stac(api, f"/stac/collections/{ORG}.s2").json()
    assert c["extent"]["spatial"]["bbox"] == [item["bbox"]]
    assert c["extent"]["temporal"]["interval"] == [[props["datetime"], props["datetime"]]]
    assert c["title"] == "Sentinel-2 L2A"
    assert c["license"] == "CC-BY-4.0"


def test_a_geotiff_that_is_not_a_cog_is_converted_and_kept_byte_exact(api: Api) -> None:
    make_dataset(api, "plain")
    original = plain_geotiff(B04)
    assert not cog_validate_bytes(original)
    job = upload(api, "plain", "red.tif", original, "?datetime=2021-05-01T10:00:00Z")["job"]
    state = wait(api, job)
    assert state["state"] == "done", state
    assert state["result"]["converted"] is True
    item = stac(api, f"/stac/collections/{ORG}.plain/items/red").json()
    assert item["properties"]["datetime"] == "2021-05-01T10:00:00Z"
    assert item["bbox"] == pytest.approx(expected_bbox(B04), abs=1e-9)
    href = item["assets"]["data"]["href"]
    assert href == f"http://testserver/api/v1/datasets/{ORG}/plain/files/red.tif/cog?version=1"
    converted = stac(api, href)
    assert converted.status_code == 200
    assert cog_validate_bytes(converted.content)
    with MemoryFile(converted.content) as mem, mem.open() as cog, rasterio.open(B04) as src:
        assert np.array_equal(cog.read(), src.read())
        assert cog.transform == src.transform and cog.crs == src.crs
    # The download of the file is still the upload, byte for byte.
    assert stac(api, f"/api/v1/datasets/{ORG}/plain/files/red.tif").content == original
    # And a range of the COG is a range.
    part = stac(api, href, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == converted.content[:100]
    # khazna verify re-hashes the derived COG as well as the upload.
    report = api.hub.verify()
    assert report.ok, report.problems
    assert report.blobs_checked == 2


def cog_validate_bytes(data: bytes) -> bool:
    with MemoryFile(data) as mem:
        valid, _, _ = cog_validate(mem.name, quiet=True)
    return bool(valid)


def test_a_corrupt_geotiff_is_refused_at_upload_and_nothing_is_stored(api: Api) -> None:
    make_dataset(api, "broken")
    upload(api, "broken", "notes.txt", b"version 1")
    whole = B04.read_bytes()
    damaged = {
        "garbage": b"II*\x00" + b"\x00" * 5000,
        "header only": whole[:4096],  # the header survives, the image data does not
        # The overviews (first in a COG) still read; the full-resolution tiles are cut off.
        "truncated": whole[: len(whole) // 2],
    }
    for kind, data in damaged.items():
        r = api.http.put(
            f"/api/v1/datasets/{ORG}/broken/files/red.tif",
            content=data,
            headers=api.auth(api.editor),
        )
        assert r.status_code == 422, (kind, r.text)
        error = r.json()["error"]
        assert error["code"] == "unprocessable"
        assert error["message"].startswith("'red.tif' is not a readable GeoTIFF: "), kind
        assert error["message"].endswith("; nothing was stored")
        assert not api.hub.blobs.exists(hashlib.sha256(data).hexdigest()), kind
    assert "is truncated: band 1, block (0, 0) ends at byte " in error["message"]
    dataset = stac(api, f"/api/v1/datasets/{ORG}/broken").json()
    assert (dataset["version"], [f["name"] for f in dataset["files"]]) == (1, ["notes.txt"])
    assert [p.name for p in api.hub.rasters.work_dir.glob("upload-*")] == []  # no spool left
    # Through a resumable upload session: refused at its commit, the version not made.
    data = damaged["truncated"]
    files = [{"name": "red.tif", "size": len(data)}]
    session = api.http.post(
        f"/api/v1/datasets/{ORG}/broken/uploads",
        json={"files": files},
        headers=api.auth(api.editor),
    ).json()["id"]
    sent = api.http.put(
        f"/api/v1/uploads/{session}/files/red.tif", content=data, headers=api.auth(api.editor)
    )
    assert sent.status_code == 200, sent.text
    r = api.http.post(f"/api/v1/uploads/{session}/commit", headers=api.auth(api.editor))
    assert r.status_code == 422
    assert "is truncated" in r.json()["error"]["message"]
    assert stac(api, f"/api/v1/datasets/{ORG}/broken").json()["version"] == 1
    assert stac(api, f"/stac/collections/{ORG}.broken").status_code == 404


def test_a_tiff_without_coordinates_stays_a_plain_file(api: Api) -> None:
    make_dataset(api, "scans")
    with rasterio.open(B04) as src:
        pixels = src.read(window=Window(0, 0, 64, 64))
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=64, height=64, count=1, dtype="uint16") as dst:
            dst.write(pixels)
        picture = bytes(mem.read())
    job = upload(api, "scans", "scan.tif", picture)["job"]
    state = wait(api, job)
    assert state["state"] == "failed"
    error = "'scan.tif' is not a readable GeoTIFF: has no coordinate reference system"
    assert state["error"] == f"{error} (not georeferenced)"
    assert stac(api, f"/api/v1/datasets/{ORG}/scans/files/scan.tif").content == picture
    raster = stac(api, f"/api/v1/datasets/{ORG}/scans").json()["files"][0]["raster"]
    assert raster == {"status": "failed", "error": state["error"]}
    r = stac(api, f"/api/v1/datasets/{ORG}/scans/files/scan.tif/cog")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unprocessable"
    assert stac(api, f"/stac/collections/{ORG}.scans").status_code == 404


def stacked(*sources: Path) -> bytes:
    """One plain (striped, not COG) GeoTIFF with the sources' single bands, in that order."""
    with rasterio.open(sources[0]) as first:
        profile = {
            "driver": "GTiff",
            "width": first.width,
            "height": first.height,
            "count": len(sources),
            "dtype": first.dtypes[0],
            "crs": first.crs,
            "transform": first.transform,
            "nodata": first.nodata,
            "tiled": False,
        }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            for band, path in enumerate(sources, start=1):
                with rasterio.open(path) as src:
                    dst.write(src.read(1), band)
        return bytes(mem.read())


def test_the_band_order_given_at_upload_names_the_bands_of_a_multiband_geotiff(
    api: Api,
) -> None:
    make_dataset(api, "multi")
    scene = stacked(B08, B04)  # NIR first, then red
    job = upload(api, "multi", "scene.tif", scene, "?bands=nir,red&datetime=2020-02-19T11:34:25Z")
    assert wait(api, job["job"])["state"] == "done"
    item = stac(api, f"/stac/collections/{ORG}.multi/items/scene").json()
    assert item["properties"]["datetime"] == "2020-02-19T11:34:25Z"
    asset = item["assets"]["data"]
    assert asset["eo:bands"] == [
        {"name": "nir", "common_name": "nir"},
        {"name": "red", "common_name": "red"},
    ]
    converted = stac(api, asset["href"]).content
    assert cog_validate_bytes(converted)
    with MemoryFile(converted) as mem, mem.open() as cog:
        assert cog.count == 2
        with rasterio.open(B08) as nir, rasterio.open(B04) as red:
            assert np.array_equal(cog.read(1), nir.read(1))
            assert np.array_equal(cog.read(2), red.read(1))
    # Names that are not eo common names are kept, without a role.
    job = upload(api, "multi", "other.tif", stacked(B04, B08), "?bands=rouge,b8")
    assert wait(api, job["job"])["state"] == "done"
    other = stac(api, f"/stac/collections/{ORG}.multi/items/other").json()
    assert other["assets"]["data"]["eo:bands"] == [{"name": "rouge"}, {"name": "b8"}]


def test_band_names_that_do_not_fit_the_file_are_refused_and_nothing_is_stored(
    api: Api,
) -> None:
    make_dataset(api, "multi")
    scene = stacked(B08, B04)
    for query, status, message in (
        ("?bands=red", 422, "bands names 1 band(s) (red) but 'scene.tif' has 2"),
        (
            "?bands=nir,red,blue",
            422,
            "bands names 3 band(s) (nir, red, blue) but 'scene.tif' has 2",
        ),
        ("?bands=nir,,red", 400, "bands must be band names separated by commas"),
        ("?bands=nir,NIR", 400, "bands names a band twice: 'nir,NIR'"),
    ):
        r = api.http.put(
            f"/api/v1/datasets/{ORG}/multi/files/scene.tif{query}",
            content=scene,
            headers=api.auth(api.editor),
        )
        assert r.status_code == status, (query, r.text)
        assert r.json()["error"]["message"].startswith(message), r.text
        assert r.json()["error"]["field"] == "bands"
    assert not api.hub.blobs.exists(hashlib.sha256(scene).hexdigest())
    assert stac(api, f"/api/v1/datasets/{ORG}/multi").json()["version"] == 0


def test_an_upload_datetime_that_is_not_rfc3339_is_refused(api: Api) -> None:
    make_dataset(api, "dates")
    r = api.http.put(
        f"/api/v1/datasets/{ORG}/dates/files/red.tif?datetime=yesterday",
        content=B04.read_bytes(),
        headers=api.auth(api.editor),
    )
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "datetime"


# search ----------------------------------------------------------------------------------

# Five windows of the red band, 100 rows high from the top: each its own item. Three have a
# datetime given at upload, two have none.
TILES = {
    "t0": "2020-01-01T00:00:00Z",
    "t1": "2020-06-01T00:00:00Z",
    "t2": "2021-01-01T00:00:00Z",
    "t3": None,
    "t4": None,
}


@pytest.fixture
def tiles(api: Api) -> dict[str, list[float]]:
    make_dataset(api, "tiles")
    boxes = {}
    for n, (name, when) in enumerate(TILES.items()):
        window = Window(0, n * 200, 100, 100)
        query = f"?datetime={when}" if when else ""
        job = upload(api, "tiles", f"{name}.tif", plain_geotiff(B04, window), query)["job"]
        assert wait(api, job)["state"] == "done"
        with rasterio.open(B04) as src:
            west, south, east, north = rasterio.windows.bounds(window, src.transform)
            boxes[name] = list(
                Transformer.from_crs(
                    src.crs.to_string(), "EPSG:4326", always_xy=True
                ).transform_bounds(west, south, east, north, densify_pts=21)
            )
    return boxes


def ids(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [f["id"] for f in r.json()["features"]]


def test_search_by_datetime_interval_open_ranges_and_instants(api: Api, tiles: Any) -> None:
    def found(value: str) -> list[str]:
        return ids(stac(api, "/stac/search", params={"datetime": value}))

    assert found("2020-01-01T00:00:00Z/2020-12-31T23:59:59Z") == ["t0", "t1"]
    assert found("../2020-03-01T00:00:00Z") == ["t0"]
    assert found("2020-03-01T00:00:00Z/..") == ["t1", "t2"]
    assert found("2020-06-01T00:00:00Z") == ["t1"]
    assert found("2020-06-01T02:00:00+02:00") == ["t1"]  # the same instant
    # Without a datetime filter, items with no datetime are there too.
    assert ids(stac(api, "/stac/search")) == ["t0", "t1", "t2", "t3", "t4"]
    for bad in ("2020-01-01", "../..", "2021-01-01T00:00:00Z/2020-01-01T00:00:00Z", "x"):
        r = stac(api, "/stac/search", params={"datetime": bad})
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "bad_request"


def test_search_by_bbox_intersects_and_ids(api: Api, tiles: dict[str, list[float]]) -> None:
    west, south, east, north = tiles["t2"]
    inside = f"{west + 0.001},{south + 0.001},{east - 0.001},{north - 0.001}"
    assert ids(stac(api, "/stac/search", params={"bbox": inside})) == ["t2"]
    assert ids(stac(api, "/stac/search", params={"bbox": "20,20,21,21"})) == []
    point = {"type": "Point", "coordinates": [(west + east) / 2, (south + north) / 2]}
    r = api.http.post("/stac/search", json={"intersects": point})
    assert ids(r) == ["t2"]
    assert ids(stac(api, "/stac/search", params={"intersects": json.dumps(point)})) == ["t2"]
    r = api.http.post("/stac/search", json={"intersects": point, "bbox": [-12, 24, -10, 26]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "give bbox or intersects, not both"
    assert ids(stac(api, "/stac/search", params={"ids": "t4,t0,nope"})) == ["t0", "t4"]
    r = api.http.post("/stac/search", json={"ids": ["t1"], "collections": [f"{ORG}.tiles"]})
    assert ids(r) == ["t1"]
    assert ids(api.http.post("/stac/search", json={"collections": ["autre.x"]})) == []
    for bad in ({"bbox": "1,2,3,4"}, {"bbox": [1, 2, 3]}, {"limit": 0}, {"intersects": 5}):
        assert api.http.post("/stac/search", json=bad).status_code == 400, bad
    assert api.http.post("/stac/search", content=b"[").status_code == 400


def test_following_next_links_yields_exactly_number_matched(api: Api, tiles: Any) -> None:
    # GET, on /stac/search and on a collection's items, then POST.
    for path in ("/stac/search?limit=2", f"/stac/collections/{ORG}.tiles/items?limit=2"):
        seen: list[str] = []
        url: str | None = path
        while url is not None:
            page = stac(api, url).json()
            assert page["numberMatched"] == 5
            seen += [f["id"] for f in page["features"]]
            url = next((ln["href"] for ln in page["links"] if ln["rel"] == "next"), None)
        assert seen == list(TILES)
    seen, body = [], {"limit": 2, "collections": [f"{ORG}.tiles"]}
    while body is not None:
        page = api.http.post("/stac/search", json=body).json()
        seen += [f["id"] for f in page["features"]]
        body = next((ln["body"] for ln in page["links"] if ln["rel"] == "next"), None)
    assert seen == list(TILES)


def test_a_limit_above_the_maximum_is_clamped(api: Api, tiles: Any) -> None:
    page = stac(api, "/stac/search", params={"limit": 10**9}).json()
    assert page["numberReturned"] == 5
    assert [ln["rel"] for ln in page["links"]] == ["self", "root"]


# filter (CQL2) -------------------------------------------------------------------------


def filtered(api: Api, text: str, token: str | None = None, **params: Any) -> list[str]:
    """The ids a cql2-text filter finds, by GET; the same filter as cql2-json, by POST and by
    GET, must find the same."""
    got = ids(stac(api, "/stac/search", token, params={"filter": text, **params}))
    as_json = cql2.parse_text(text).to_json()
    lists = {k: v.split(",") for k, v in params.items() if k in ("ids", "collections")}
    body = {"filter": as_json, "filter-lang": "cql2-json", "limit": 100, **params, **lists}
    assert (
        ids(api.http.post("/stac/search", json=body, headers=api.auth(token) if token else {}))
        == got
    )
    again = {"filter": json.dumps(as_json), "filter-lang": "cql2-json", **params}
    assert ids(stac(api, "/stac/search", token, params=again)) == got
    return got


def test_a_cql2_filter_on_datetime_and_id_keeps_items_without_a_datetime_out(
    api: Api, tiles: Any
) -> None:
    assert filtered(api, "datetime > TIMESTAMP('2020-03-01T00:00:00Z')") == ["t1", "t2"]
    assert filtered(api, "datetime IS NULL") == ["t3", "t4"]
    assert filtered(api, "NOT (datetime IS NULL)") == ["t0", "t1", "t2"]
    # Null compared is unknown, so NOT of it is unknown too: t3 and t4 are in neither.
    assert filtered(api, "NOT (datetime > TIMESTAMP('2020-03-01T00:00:00Z'))") == ["t0"]
    assert filtered(api, "id IN ('t0', 't3') OR datetime >= TIMESTAMP('2021-01-01T00:00:00Z')") == [
        "t0",
        "t2",
        "t3",
    ]
    assert filtered(api, "T_BEFORE(datetime, TIMESTAMP('2020-06-01T00:00:00Z'))") == ["t0"]
    assert filtered(api, f"collection = '{ORG}.tiles' AND id <> 't1'") == ["t0", "t2", "t3", "t4"]
    # With the other parameters: all of them hold.
    assert filtered(api, "datetime IS NULL", ids="t0,t4") == ["t4"]


def test_filtered_pages_follow_next_links_to_exactly_number_matched(api: Api, tiles: Any) -> None:
    url: str | None = "/stac/search?limit=1&filter=NOT%20(id%20%3D%20%27t2%27)"
    seen: list[str] = []
    while url is not None:
        page = stac(api, url).json()
        assert (page["numberMatched"], page["numberReturned"]) == (4, 1)
        seen += [f["id"] for f in page["features"]]
        url = next((ln["href"] for ln in page["links"] if ln["rel"] == "next"), None)
    assert seen == ["t0", "t1", "t3", "t4"]
    items = f"/stac/collections/{ORG}.tiles/items"
    assert ids(stac(api, items, params={"filter": "id LIKE 't_' AND id > 't2'"})) == ["t3", "t4"]


def test_a_filter_on_the_properties_of_a_real_sentinel_item(api: Api, tiles: Any) -> None:
    load_scene(api)  # eo:cloud_cover 4.051854, platform sentinel-2a; the tiles have neither
    assert filtered(api, "eo:cloud_cover < 10") == [SCENE]
    assert filtered(api, "eo:cloud_cover >= 5") == []
    assert filtered(api, "eo:cloud_cover BETWEEN 4.05 AND 4.06") == [SCENE]
    assert filtered(api, "platform = 'sentinel-2a' AND collection = 'ministere-sante.s2'") == [
        SCENE
    ]
    assert filtered(api, "CASEI(platform) = casei('SENTINEL-2A')") == [SCENE]
    assert filtered(api, "platform LIKE 'sentinel%' OR id = 't0'") == [SCENE, "t0"]
    assert filtered(api, "A_CONTAINS(instruments, ('msi'))") == [SCENE]
    # BETWEEN as the CQL2 JSON drafts wrote it, which stac-api-validator still sends.
    drafted = {"op": "between", "args": [{"property": "eo:cloud_cover"}, [4, 5]]}
    assert ids(api.http.post("/stac/search", json={"filter": drafted})) == [SCENE]
    # A name no item has is null on every item (queryables allow additional properties).
    assert filtered(api, "mission LIKE 'sentinel%'") == []
    assert len(filtered(api, "mission IS NULL")) == 6
    # The scene covers the tiles, which are windows of its red band: a point in t2 is in both.
    with rasterio.open(B04) as src:
        window = Window(0, 2 * 200, 100, 100)
        x, y = src.xy(window.row_off + 50, window.col_off + 50)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)
    point = f"S_INTERSECTS(geometry, POINT({lon} {lat}))"
    assert filtered(api, point) == [SCENE, "t2"]
    assert filtered(api, f"{point} AND eo:cloud_cover IS NULL") == ["t2"]


def test_a_filter_never_finds_an_item_the_caller_may_not_read(api: Api) -> None:
    load_scene(api, "secret", access="private")
    for token in (None, api.outsider):
        page = stac(api, "/stac/search", token, params={"filter": "eo:cloud_cover < 10"}).json()
        assert (page["numberMatched"], page["features"]) == (0, [])
        r = stac(api, f"/stac/collections/{ORG}.secret/queryables", token)
        assert r.status_code == 404
        assert "eo:cloud_cover" not in stac(api, "/stac/queryables", token).json()["properties"]
    assert filtered(api, "eo:cloud_cover < 10", api.editor) == [SCENE]


def test_bad_filters_are_400s_that_say_why(api: Api, tiles: Any) -> None:
    def refused(params: dict[str, Any] | None = None, body: Any = None) -> str:
        if body is not None:
            r = api.http.post("/stac/search", json=body)
        else:
            r = stac(api, "/stac/search", params=params)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_request"
        return str(error["field"]) + ": " + str(error["message"])

    assert refused({"filter": "id = "}).startswith("filter: filter is not valid cql2-text: ")
    assert refused({"filter": "{", "filter-lang": "cql2-json"}).startswith(
        "filter: filter is not valid cql2-json: "
    )
    assert refused({"filter": "id = 't0'", "filter-lang": "cql4"}) == (
        "filter-lang: filter-lang 'cql4' is not supported: use cql2-text or cql2-json"
    )
    assert refused({"filter": "id = 't0'", "filter-crs": "EPSG:4326"}) == (
        "filter-crs: filter-crs must be http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    )
    assert refused({"filter": "shout(id) = 'T0'"}) == (
        "filter: filter uses shout, which this hub does not support"
    )
    assert refused(body={"filter": 5, "filter-lang": "cql2-text"}) == (
        "filter: a cql2-text filter must be a string"
    )
    crs84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    assert filtered(api, "id = 't0'", **{"filter-crs": crs84}) == ["t0"]


def test_queryables_list_what_the_items_have(api: Api, tiles: Any) -> None:
    load_scene(api)
    r = stac(api, "/stac/queryables")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/schema+json"
    root = r.json()
    assert root["$id"] == "http://testserver/stac/queryables"
    assert root["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    assert (root["type"], root["additionalProperties"]) == ("object", True)
    props = root["properties"]
    assert list(props)[:4] == ["id", "collection", "geometry", "datetime"]
    assert props["eo:cloud_cover"] == {"type": "number"}
    assert props["platform"] == {"type": "string"}
    assert props["instruments"] == {"type": "array"}
    assert props["mgrs:utm_zone"] == {"type": "integer"}
    assert props["created"] == {"type": "string", "format": "date-time"}
    tiles_url = f"/stac/collections/{ORG}.tiles/queryables"
    mine = stac(api, tiles_url).json()
    assert mine["$id"] == f"http://testserver{tiles_url}"
    assert "eo:cloud_cover" not in mine["properties"]
    assert stac(api, f"/stac/collections/{ORG}.nothing/queryables").status_code == 404
    rel = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
    landing = stac(api, "/stac").json()
    assert [ln["href"] for ln in landing["links"] if ln["rel"] == rel] == [
        "http://testserver/stac/queryables"
    ]
    collection = stac(api, f"/stac/collections/{ORG}.tiles").json()
    assert [ln["href"] for ln in collection["links"] if ln["rel"] == rel] == [
        f"http://testserver{tiles_url}"
    ]
    conforms = stac(api, "/stac/conformance").json()["conformsTo"]
    for cls in ("cql2-text", "cql2-json", "basic-cql2", "advanced-comparison-operators"):
        assert f"http://www.opengis.net/spec/cql2/1.0/conf/{cls}" in conforms
    assert "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter" in conforms


# access ------------------------------------------------------------------------------------


def test_a_private_dataset_has_no_collection_for_outsiders(api: Api) -> None:
    load_scene(api, "secret", access="private")
    for token in (None, api.outsider):
        assert stac(api, f"/stac/collections/{ORG}.secret", token).status_code == 404
        items = f"/stac/collections/{ORG}.secret/items/{SCENE}"
        assert stac(api, items, token).status_code == 404
        assert stac(api, f"/stac/collections/{ORG}.secret/items", token).status_code == 404
        assert stac(api, "/stac/collections", token).json()["collections"] == []
        assert stac(api, "/stac/search", token).json()["numberMatched"] == 0
        children = [ln for ln in stac(api, "/stac", token).json()["links"] if ln["rel"] == "child"]
        assert children == []
        # The asset's URL is the file's: the download route refuses it as it refuses files.
        r = stac(api, f"/api/v1/datasets/{ORG}/secret/files/{B04.name}", token)
        assert r.status_code == 404
    page = stac(api, "/stac/search", api.editor).json()
    assert [f["id"] for f in page["features"]] == [SCENE]
    assert [c["id"] for c in stac(api, "/stac/collections", api.editor).json()["collections"]] == [
        f"{ORG}.secret"
    ]


def test_a_dataset_without_rasters_is_not_a_collection(api: Api) -> None:
    make_dataset(api, "tables")
    upload(
        api,
        "tables",
        "regions.csv",
        (DATA / "tables" / "morocco_regions_rgph2024.csv").read_bytes(),
    )
    r = stac(api, f"/stac/collections/{ORG}.tables")
    assert r.status_code == 404
    assert "holds no rasters" in r.json()["error"]["message"]
    assert stac(api, "/stac/collections/no-dot").status_code == 404


def test_every_stac_route_is_documented(api: Api) -> None:
    doc = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    for route in api.http.app.routes:  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path.startswith("/stac"):
            for method in sorted(set(route.methods) - {"HEAD"}):
                assert f"`{method} {path}`" in doc, (method, path)


def test_landing_page_and_conformance(api: Api) -> None:
    landing = stac(api, "/stac").json()
    assert landing["type"] == "Catalog"
    rels = {(ln["rel"], ln.get("method")) for ln in landing["links"]}
    assert {("search", "GET"), ("search", "POST"), ("conformance", None), ("data", None)} <= rels
    conforms = stac(api, "/stac/conformance").json()["conformsTo"]
    assert conforms == landing["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search" in conforms
    desc = stac(api, "/stac/api")
    assert desc.headers["content-type"] == "application/vnd.oai.openapi+json;version=3.0"
    assert "/stac/search" in desc.json()["paths"]


def test_the_demo_scene_is_one_item_of_the_demo_collection(api: Api) -> None:
    load_demo(api.hub)
    deadline = time.monotonic() + 120
    while api.hub.jobs.pending():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    page = stac(api, "/stac/collections/demo.sentinel2-29rkh-2020-02-19/items").json()
    assert page["numberMatched"] == 1
    item = page["features"][0]
    assert item["id"] == SCENE
    assert sorted(item["assets"]) == ["nir", "red", "thumbnail"]
    assert item["bbox"] == pytest.approx(expected_bbox(B08), abs=1e-9)


def test_a_sidecar_with_a_malformed_datetime_gives_an_item_without_one(api: Api) -> None:
    make_dataset(api, "odd")
    sidecar = json.loads(SIDECAR.read_text())
    sidecar["properties"]["datetime"] = "février 2020"
    upload(api, "odd", SIDECAR.name, json.dumps(sidecar).encode())
    assert wait(api, upload(api, "odd", B04.name, B04.read_bytes())["job"])["state"] == "done"
    item = stac(api, f"/stac/collections/{ORG}.odd/items/{SCENE}").json()
    assert item["properties"]["datetime"] is None
    assert sorted(item["assets"]) == ["red", "thumbnail"]
    assert ids(stac(api, "/stac/search", params={"datetime": "../2030-01-01T00:00:00Z"})) == []


def test_band_files_join_the_sidecar_they_share_the_most_leading_tokens_with() -> None:
    def sidecar(item_id: str) -> dict[str, Any]:
        assets = {"red": {"href": "s3://x/B04.tif"}, "nir": {"href": "s3://x/B08.tif"}}
        return {"type": "Feature", "id": item_id, "assets": assets}

    scenes = group(
        [
            "S2A_29RKH_20200219_B04.tif",
            "S2A_29RKH_20200219_B08.tif",
            "S2A_29RKH_20200301_red.tif",
            "S2B_other_B04.tif",
            "elsewhere.tif",
        ],
        {
            "S2A_29RKH_20200219.stac.json": sidecar("scene-a"),
            "S2A_29RKH_20200301.stac.json": sidecar("scene-b"),
        },
    )
    assert [(s.item_id, s.files) for s in scenes] == [
        ("S2B_other_B04", {"data": "S2B_other_B04.tif"}),  # shares no leading token
        ("elsewhere", {"data": "elsewhere.tif"}),
        (
            "scene-a",
            {"red": "S2A_29RKH_20200219_B04.tif", "nir": "S2A_29RKH_20200219_B08.tif"},
        ),
        ("scene-b", {"red": "S2A_29RKH_20200301_red.tif"}),
    ]
