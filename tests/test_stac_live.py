"""A live `khazna serve` with the Sentinel-2 scene loaded: GDAL reads a window of a COG
over HTTP with range requests, pystac-client searches it, and stac-api-validator finds no
error in the core, collections, features, item-search and filter conformance classes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from pystac_client import Client
from rasterio.windows import Window

from tests.conftest import LiveServer
from tests.test_stac import B04, B08, SCENE, SIDECAR, plain_geotiff

DATASET = "esa/sentinel-2"
COLLECTION = "esa.sentinel-2"


def load(live: LiveServer) -> None:
    with live.client(timeout=60) as http:
        assert http.post("/api/v1/organizations", json={"name": "esa"}).status_code == 201
        body = {"org": "esa", "name": "sentinel-2", "license": "CC-BY-4.0"}
        assert http.post("/api/v1/datasets", json=body).status_code == 201
        jobs = []
        files = [(SIDECAR.name, SIDECAR.read_bytes(), "")]
        files += [(p.name, p.read_bytes(), "") for p in (B04, B08)]
        # A second item: a plain GeoTIFF the hub converts, with a datetime given at upload.
        window = Window(0, 0, 300, 200)
        files.append(
            ("red-window.tif", plain_geotiff(B04, window), "?datetime=2020-03-01T10:00:00Z")
        )
        for name, data, query in files:
            r = http.put(f"/api/v1/datasets/{DATASET}/files/{name}{query}", content=data)
            assert r.status_code == 200, r.text
            if r.json()["job"]:
                jobs.append(r.json()["job"]["id"])
        deadline = time.monotonic() + 120
        for job in jobs:
            while (state := http.get(f"/api/v1/jobs/{job}").json())["state"] not in (
                "done",
                "failed",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert state["state"] == "done", state


@pytest.mark.parametrize("asset", ["red", "converted"])
def test_gdal_reads_a_window_of_a_cog_over_http(live: LiveServer, asset: str) -> None:
    load(live)
    with live.client() as http:
        item_id = SCENE if asset == "red" else "red-window"
        item = http.get(f"/stac/collections/{COLLECTION}/items/{item_id}").json()
    href = item["assets"]["red" if asset == "red" else "data"]["href"]
    window = Window(col_off=200, row_off=128, width=64, height=48)  # inside both
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MULTIRANGE": "NO"}
    with rasterio.Env(**env), rasterio.open(f"/vsicurl/{href}") as remote:
        over_http = remote.read(1, window=window)
    with rasterio.open(B04) as local:
        expected = local.read(1, window=window)
    assert over_http.shape == (48, 64)
    assert np.array_equal(over_http, expected)
    assert int(expected.sum()) > 0  # a window with data in it, not all nodata
    # GDAL asked for ranges: the hub answered 206s and never the whole file.
    with live.client() as http:
        entries = http.get("/api/v1/audit", params={"action": "download"}).json()["entries"]
    statuses = {e["detail"]["status"] for e in entries if e["actor"] is None}
    assert statuses == {206}


def test_pystac_client_searches_the_hub(live: LiveServer) -> None:
    load(live)
    client = Client.open(f"{live.url}/stac")
    assert [c.id for c in client.get_collections()] == [COLLECTION]
    search = client.search(collections=[COLLECTION], bbox=[-11.5, 24.5, -11.4, 24.6])
    items = list(search.items())
    assert [i.id for i in items] == [SCENE]
    assert items[0].datetime is not None and items[0].datetime.isoformat().startswith("2020-02-19")
    assert sorted(items[0].assets) == ["nir", "red", "thumbnail"]
    march = client.search(datetime="2020-03-01/2020-03-31", max_items=10)
    assert [i.id for i in march.items()] == ["red-window"]
    assert client.search(limit=1).matched() == 2
    # Pages of one, in item id order (code points: upper case first).
    assert [i.id for i in client.search(limit=1).items()] == [SCENE, "red-window"]
    # A CQL2 filter, as pystac-client sends it (cql2-json by POST).
    cloudless = client.search(filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 5]})
    assert [i.id for i in cloudless.items()] == [SCENE]
    undated = client.search(filter="datetime IS NULL OR id = 'red-window'", filter_lang="cql2-text")
    assert [i.id for i in undated.items()] == ["red-window"]


def test_stac_api_validator_finds_no_error(live: LiveServer) -> None:
    load(live)
    point = {"type": "Point", "coordinates": [-11.5, 24.8]}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.stac_offline",
            "--root-url",
            f"{live.url}/stac",
            *("--conformance", "core", "--conformance", "collections"),
            *("--conformance", "features", "--conformance", "item-search"),
            *("--conformance", "filter"),
            *("--collection", COLLECTION, "--geometry", json.dumps(point)),
            "--validate-pagination",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert "Errors: none" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0
