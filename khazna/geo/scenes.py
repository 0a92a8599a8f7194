"""How the raster files of a dataset version become STAC items.

Grouping (docs/api.md#stac): a ``NAME.stac.json`` file holding a STAC Item describes one
scene. A raster file joins that scene when a token of its name (split on ``_``, ``-`` and
``.``) is the stem of one of the Item's asset hrefs (``B04`` for ``.../B04.tif``) or one of
its asset keys (``red``), and its name shares at least its first token with the sidecar's
name; with several such sidecars, the one sharing the longest run of leading tokens wins.
The asset keeps the Item's key, title, roles and ``eo:bands``; the item keeps the Item's
id and properties (datetime, platform, cloud cover...). Every other raster file is an item
of its own, named after the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SIDECAR_SUFFIX = ".stac.json"
_TOKENS = re.compile(r"[_.\-]+")
# Properties the hub computes from the stored rasters rather than copying.
_OWN_PROPERTIES = ("proj:epsg", "proj:code", "proj:shape", "proj:transform", "proj:bbox")


def tokens(name: str) -> list[str]:
    return [t for t in _TOKENS.split(name) if t]


def _usable_id(value: object) -> bool:
    """An id a URL path segment and the database's 255 characters can hold."""
    return isinstance(value, str) and 0 < len(value) <= 200 and "/" not in value


def _shared_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x.lower() != y.lower():
            break
        n += 1
    return n


@dataclass
class Scene:
    item_id: str
    # asset key -> file name
    files: dict[str, str] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None
    sidecar_file: str | None = None


def _asset_key(sidecar: dict[str, Any], file_tokens: set[str]) -> str | None:
    assets = sidecar.get("assets")
    if not isinstance(assets, dict):
        return None
    for key, asset in assets.items():  # the href's stem first: it names the band file
        href = asset.get("href") if isinstance(asset, dict) else None
        if isinstance(href, str):
            stem = href.rsplit("/", 1)[-1].split(".", 1)[0].lower()
            if stem and stem in file_tokens:
                return str(key)
    for key in assets:
        if str(key).lower() in file_tokens:
            return str(key)
    return None


def group(rasters: list[str], sidecars: dict[str, dict[str, Any]]) -> list[Scene]:
    """Scenes of a version: ``rasters`` are file names, ``sidecars`` file name -> Item."""
    scenes: dict[str, Scene] = {}
    for sidecar_name, item in sorted(sidecars.items()):
        item_id = str(item.get("id"))
        if _usable_id(item.get("id")) and item_id not in scenes:
            scenes[item_id] = Scene(item_id, sidecar=item, sidecar_file=sidecar_name)
    alone: list[Scene] = []
    for name in sorted(rasters):
        name_tokens = tokens(name)
        lowered = {t.lower() for t in name_tokens}
        best: tuple[int, Scene, str] | None = None
        for scene in scenes.values():
            assert scene.sidecar is not None and scene.sidecar_file is not None
            shared = _shared_prefix(name_tokens, tokens(scene.sidecar_file))
            key = _asset_key(scene.sidecar, lowered)
            if shared == 0 or key is None or key in scene.files:
                continue
            if best is None or shared > best[0]:
                best = (shared, scene, key)
        if best is not None:
            best[1].files[best[2]] = name
        else:
            stem = name.rsplit(".", 1)[0]
            alone.append(Scene(stem, files={"data": name}))
    taken = {s.item_id for s in scenes.values() if s.files}
    out = [s for s in scenes.values() if s.files]
    for scene in alone:  # a file named like a sidecar's item keeps a distinct id
        while scene.item_id in taken:
            scene.item_id += "-file"
        taken.add(scene.item_id)
        out.append(scene)
    return sorted(out, key=lambda s: s.item_id)


def build_item(
    scene: Scene, infos: dict[str, dict[str, Any]], datetimes: dict[str, str | None]
) -> dict[str, Any]:
    """The item (without links; each asset names its ``file``) from the scene's files'
    raster info (by file name) and the datetime given at upload (by file name)."""
    props: dict[str, Any] = {}
    src_assets: dict[str, Any] = {}
    if scene.sidecar is not None:
        given = scene.sidecar.get("properties")
        if isinstance(given, dict):
            props = {k: v for k, v in given.items() if k not in _OWN_PROPERTIES}
        if isinstance(scene.sidecar.get("assets"), dict):
            src_assets = scene.sidecar["assets"]
    when = props.get("datetime")
    if when is None:
        for f in scene.files.values():
            when = datetimes.get(f) or infos[f].get("datetime")
            if when:
                break
    props["datetime"] = when
    if when is None and not ("start_datetime" in props and "end_datetime" in props):
        props.pop("start_datetime", None)
        props.pop("end_datetime", None)
    bboxes = [infos[f]["bbox"] for f in scene.files.values()]
    west = min(b[0] for b in bboxes)
    south = min(b[1] for b in bboxes)
    east = max(b[2] for b in bboxes)
    north = max(b[3] for b in bboxes)
    grids = {
        (infos[f]["crs"], tuple(infos[f]["shape"]), tuple(infos[f]["transform"]))
        for f in scene.files.values()
    }
    if len(grids) == 1:  # one grid for every asset: say it once, on the item
        crs, shape, transform = next(iter(grids))
        props["proj:code"] = crs if crs.startswith("EPSG:") else None
        props["proj:shape"] = list(shape)
        props["proj:transform"] = list(transform)
    assets: dict[str, Any] = {}
    for key, file_name in sorted(scene.files.items()):
        info = infos[file_name]
        asset: dict[str, Any] = {
            "file": file_name,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
        }
        given_asset = src_assets.get(key)
        if "eo:bands" in info:  # named at upload: that wins over the file and the sidecar
            asset["eo:bands"] = info["eo:bands"]
        if isinstance(given_asset, dict):
            for k in ("title", "roles", "eo:bands"):
                if k in given_asset and (k != "eo:bands" or k not in asset):
                    asset[k] = given_asset[k]
        elif "eo:bands" not in asset and any(b.get("name") for b in info["bands"]):
            asset["eo:bands"] = [
                {"name": b.get("name") or f"b{i + 1}"} for i, b in enumerate(info["bands"])
            ]
        if len(grids) > 1:
            asset["proj:code"] = info["crs"] if info["crs"].startswith("EPSG:") else None
            asset["proj:shape"] = info["shape"]
            asset["proj:transform"] = info["transform"]
        assets[key] = asset
    return {
        "id": scene.item_id,
        "bbox": [west, south, east, north],
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[west, south], [east, south], [east, north], [west, north], [west, south]]
            ],
        },
        "properties": props,
        "assets": assets,
    }
