"""A zip of band files uploaded as one file: kept byte-exact, each raster member made a COG,
grouped into one scene with the STAC item the zip holds; a zip without rasters is just a
file; a damaged member or a zip over the bounds is refused at upload."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_validate

from khazna.geo import bundles
from tests.conftest import DATA, Api
from tests.test_stac import B04, B08, ORG, SCENE, SIDECAR, make_dataset, stac, upload, wait


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def put(api: Api, dataset: str, name: str, data: bytes) -> Any:
    return api.http.put(
        f"/api/v1/datasets/{ORG}/{dataset}/files/{name}",
        content=data,
        headers=api.auth(api.editor),
    )


SCENE_ZIP = {
    f"bands/{B04.name}": B04.read_bytes(),
    f"bands/{B08.name}": B08.read_bytes(),
    SIDECAR.name: SIDECAR.read_bytes(),
}


def test_a_zip_of_band_files_becomes_one_item_with_a_cog_per_band(api: Api) -> None:
    make_dataset(api, "zips")
    data = zipped(SCENE_ZIP)
    answer = upload(api, "zips", "scene.zip", data)
    state = wait(api, answer["job"])
    assert state["state"] == "done", state
    assert state["result"]["members"] == [f"bands/{B04.name}", f"bands/{B08.name}"]
    # The upload stays the zip, byte for byte.
    assert stac(api, f"/api/v1/datasets/{ORG}/zips/files/scene.zip").content == data
    files = stac(api, f"/api/v1/datasets/{ORG}/zips").json()["files"]
    assert files[0]["raster"] == {
        "status": "ready",
        "members": [f"bands/{B04.name}", f"bands/{B08.name}"],
    }
    item = stac(api, f"/stac/collections/{ORG}.zips/items/{SCENE}").json()
    assert sorted(item["assets"]) == ["nir", "red", "thumbnail"]
    assert item["properties"]["eo:cloud_cover"] == 4.051854  # from the zip's STAC item
    red = item["assets"]["red"]
    files_url = f"http://testserver/api/v1/datasets/{ORG}/zips/files"
    assert red["href"] == f"{files_url}/scene.zip/cog?member=bands/{B04.name}&version=1"
    assert red["eo:bands"][0]["common_name"] == "red"
    for key, source in (("red", B04), ("nir", B08)):
        r = stac(api, item["assets"][key]["href"])
        assert r.status_code == 200
        disposition = f"attachment; filename*=UTF-8''{source.stem}.cog.tif"
        assert r.headers["content-disposition"] == disposition
        with MemoryFile(r.content) as mem:
            assert cog_validate(mem.name, quiet=True)[0]
            with mem.open() as got, rasterio.open(source) as src:
                assert np.array_equal(got.read(), src.read())
                assert got.transform == src.transform
    part = stac(api, red["href"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert stac(api, f"{files_url}/scene.zip/cog?member=nope.tif").status_code == 404
    # The zipped scene works like any other: its picture, and NDVI next to it.
    assert stac(api, f"/stac/collections/{ORG}.zips/items/{SCENE}/preview.png").status_code == 200
    make_dataset(api, "ndvi")
    body = {"index": "ndvi", "collection": f"{ORG}.zips", "target": f"{ORG}/ndvi"}
    r = api.http.post("/api/v1/indices", json=body, headers=api.auth(api.editor))
    assert r.status_code == 202, r.text
    assert wait(api, r.json()["job"])["state"] == "done"
    # khazna verify re-hashes the members' COGs too.
    report = api.hub.verify()
    assert report.ok, report.problems


def test_a_zip_without_rasters_is_just_a_file(api: Api) -> None:
    make_dataset(api, "plain")
    csv = (DATA / "tables" / "morocco_regions_rgph2024.csv").read_bytes()
    answer = upload(api, "plain", "tables.zip", zipped({"regions.csv": csv}))
    assert wait(api, answer["job"])["state"] == "done"
    files = stac(api, f"/api/v1/datasets/{ORG}/plain").json()["files"]
    assert "raster" not in files[0]
    assert stac(api, f"/stac/collections/{ORG}.plain").status_code == 404


def test_a_zip_with_a_damaged_band_or_over_the_bounds_is_refused(api: Api) -> None:
    make_dataset(api, "bad")
    whole = B04.read_bytes()
    damaged = zipped({"B04.tif": whole[: len(whole) // 2], "B08.tif": B08.read_bytes()})
    r = put(api, "bad", "scene.zip", damaged)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("'scene.zip': 'B04.tif' is truncated: band 1, block (0, 0)")
    assert message.endswith("; nothing was stored")
    assert not api.hub.blobs.exists(hashlib.sha256(damaged).hexdigest())
    twice = zipped({"a/B04.tif": whole, "b/B04.tif": whole})
    r = put(api, "bad", "twice.zip", twice)
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "'twice.zip': holds two members named 'B04.tif' (in different folders); nothing was stored"
    )
    api.hub.rasters.max_member_bytes = 1 << 20
    r = put(api, "bad", "big.zip", zipped({"B04.tif": whole}))
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        f"'big.zip': member 'B04.tif' expands to {len(whole)} bytes, over the "
        "1048576-byte limit of one file; nothing was stored"
    )
    assert stac(api, f"/api/v1/datasets/{ORG}/bad").json()["version"] == 0


def test_a_member_that_expands_a_thousandfold_is_refused(tmp_path: Any) -> None:
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zipped({"zeros.tif": bytes(20 << 20)}, zipfile.ZIP_LZMA))
    with pytest.raises(bundles.BadBundle, match=r"member 'zeros\.tif' expands over 1000 times"):
        bundles.members(bomb, 1 << 30)
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(bundles.BadBundle, match="is not a readable zip"):
        bundles.members(not_zip, 1 << 30)
