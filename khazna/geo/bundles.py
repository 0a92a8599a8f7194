"""Zip files of band files: which members are rasters (or STAC Item sidecars), read one at
a time, within bounds. Nothing here knows about the hub.

A zip is a raster bundle when it holds at least one ``.tif``/``.tiff`` member. Its members
are listed from the central directory without reading them; each is then copied out on its
own, so a bundle of many bands needs the disk of one band at a time, never the memory.
Bounds stop a zip bomb: at most MAX_MEMBERS rasters, each at most ``max_member_bytes``
uncompressed, and no member that claims to expand more than MAX_RATIO times.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from khazna.geo.cog import is_raster
from khazna.geo.scenes import SIDECAR_SUFFIX

MAX_MEMBERS = 200
MAX_RATIO = 1000  # uncompressed size over compressed size, per member
MAX_SIDECAR_BYTES = 1 << 20


class BadBundle(Exception):
    """A zip that cannot be read, or whose members break the bounds."""


def is_bundle_name(file_name: str) -> bool:
    return file_name.lower().endswith(".zip")


@dataclass(frozen=True)
class Member:
    name: str  # its path in the zip, as written
    size: int  # uncompressed bytes

    @property
    def base(self) -> str:
        return PurePosixPath(self.name).name


def members(path: Path, max_member_bytes: int) -> tuple[list[Member], list[Member]]:
    """(raster members, sidecar members) of the zip at ``path``; both empty when it holds
    no raster. BadBundle when it is not a readable zip or breaks a bound."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadBundle(f"is not a readable zip: {exc}") from None
    rasters, sidecars = [], []
    for i in infos:
        base = PurePosixPath(i.filename).name
        if i.filename.startswith("__MACOSX/") or base.startswith("."):
            continue
        if is_raster(base):
            rasters.append(i)
        elif base.lower().endswith(SIDECAR_SUFFIX) and i.file_size <= MAX_SIDECAR_BYTES:
            sidecars.append(i)
    if not rasters:
        return [], []
    if len(rasters) > MAX_MEMBERS:
        raise BadBundle(f"holds {len(rasters)} rasters; at most {MAX_MEMBERS} per zip")
    bases = [PurePosixPath(i.filename).name for i in rasters + sidecars]
    if len(set(bases)) != len(bases):
        twice = sorted({b for b in bases if bases.count(b) > 1})[0]
        raise BadBundle(f"holds two members named {twice!r} (in different folders)")
    for i in rasters + sidecars:
        if i.file_size > max_member_bytes:
            raise BadBundle(
                f"member {i.filename!r} expands to {i.file_size} bytes, over the "
                f"{max_member_bytes}-byte limit of one file"
            )
        if i.compress_size and i.file_size / i.compress_size > MAX_RATIO:
            raise BadBundle(f"member {i.filename!r} expands over {MAX_RATIO} times: refused")
    return (
        [Member(i.filename, i.file_size) for i in rasters],
        [Member(i.filename, i.file_size) for i in sidecars],
    )


def extract(path: Path, member: Member, target: Path) -> Path:
    """Copy one member out to ``target``, never more bytes than it declared."""
    try:
        with zipfile.ZipFile(path) as z, z.open(member.name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # zipfile checks the size and CRC read
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise BadBundle(f"member {member.name!r} cannot be read: {exc}") from None
    return target


def read_small(path: Path, member: Member) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(member.name)
