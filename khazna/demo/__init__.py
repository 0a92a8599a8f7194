"""The bundled real sample datasets (see SOURCES.md), loaded by ``khazna serve --demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from khazna.errors import NotFound, ResidencyRefused
from khazna.hub import Hub
from khazna.storage.blobstore import StoredBlob

DEMO_DIR = Path(__file__).parent
DATA_DIR = DEMO_DIR / "data"


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEMO_DIR / "manifest.json").read_text(encoding="utf-8"))
    return data


def load_demo(hub: Hub) -> list[str]:
    """Create or refresh the demo organization and datasets; safe to run any number of times.

    Returns the ``org/name`` of each dataset that got a new version.
    """
    spec = manifest()
    who = hub.accounts.system_principal()
    org = spec["organization"]
    try:
        hub.catalog.organization(org["name"])
    except NotFound:
        hub.catalog.create_organization(who, org["name"], org["title"], org["description"])
    changed = []
    for ds in spec["datasets"]:
        fields = {k: ds[k] for k in ("title", "description", "tags", "license", "access")}
        fields["tags"] = sorted(set(fields["tags"]))  # as the catalog returns them
        try:
            current = hub.catalog.dataset(who, org["name"], ds["name"])
        except NotFound:
            hub.catalog.create_dataset(who, org["name"], ds["name"], **fields)
            current = {"version": 0}
        else:
            if any(current[k] != v for k, v in fields.items()):
                hub.catalog.update_dataset(who, org["name"], ds["name"], fields)
        blobs: dict[str, StoredBlob | None] = {}
        for rel in ds["files"]:
            path = DATA_DIR / rel
            writer = hub.blobs.writer(hub.settings.max_upload_bytes)
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1024 * 1024):
                        writer.write(chunk)
                blobs[path.name] = writer.commit()
            except BaseException:
                writer.abort()
                raise
        try:
            committed = hub.catalog.commit_version(
                who, org["name"], ds["name"], blobs, message="demo data"
            )
        except ResidencyRefused as exc:
            # No request to log it: the operator's command does, as the API would.
            detail = {"status": exc.status, "rule": exc.message, "command": "serve --demo"}
            hub.audit.record(
                hub.accounts.operator_principal(),
                "denied",
                org=org["name"],
                dataset=ds["name"],
                detail=detail,
                client="cli",
            )
            raise
        if committed.version != current["version"]:
            changed.append(f"{org['name']}/{ds['name']}")
    return changed
