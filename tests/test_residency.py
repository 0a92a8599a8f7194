"""Residency: a dataset may require its bytes to stay under one jurisdiction; the hub's
storage declares its own (KHAZNA_STORAGE_JURISDICTION, here MA) and refuses any other.

Runs on whichever backend the suite uses (local disk, or S3 with KHAZNA_TEST_STORAGE=s3).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from khazna import db
from khazna.access.accounts import Principal, operator_name
from khazna.config import Settings
from khazna.demo import load_demo, manifest
from khazna.errors import ResidencyRefused
from khazna.hub import Hub
from tests.conftest import Api, leftovers, stored_blobs
from tests.test_tables_api import ORG, REGIONS, wait_job

API = "/api/v1"
ROOT = Principal(1, "root", is_admin=True)  # reads the whole audit log


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hub]:
    monkeypatch.setenv("KHAZNA_STORAGE_JURISDICTION", "MA")
    h = Hub(Settings.from_env(tmp_path / "hub"))
    yield h
    h.close()


def _kind() -> str:
    return "s3" if os.environ.get("KHAZNA_STORAGE_URL") else "local"


def refused(r: Any, required: str, name: str) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"] == {
        "code": "residency",
        "message": f"dataset {ORG}/{name} requires its data to stay in {required}, but this "
        f"hub's storage ({_kind()}) is in MA; nothing was stored",
        "required": required,
        "storage": "MA",
    }


def create(api: Api, name: str, **fields: Any) -> dict[str, Any]:
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": name, **fields}, headers=api.auth(api.editor)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_dataset_says_where_its_bytes_are(api: Api) -> None:
    info = create(api, "ici", residency="ma")
    assert info["residency"] == "MA"
    assert info["storage"]["kind"] == _kind()
    assert info["storage"]["jurisdiction"] == "MA"
    assert info["storage"]["location"] == (
        "local disk" if _kind() == "local" else info["storage"]["location"]
    )
    assert "@" not in info["storage"]["location"] and "endpoint" not in info["storage"]["location"]


def test_a_put_to_a_dataset_that_must_stay_elsewhere_is_refused_and_stores_nothing(
    api: Api,
) -> None:
    create(api, "ailleurs", residency="FR")
    r = api.http.put(
        f"{API}/datasets/{ORG}/ailleurs/files/a.csv",
        content=b"x\n1\n",
        headers=api.auth(api.editor),
    )
    refused(r, "FR", "ailleurs")
    assert stored_blobs(api.hub) == []
    assert leftovers(api.hub.settings.home)["tmp"] == []
    assert api.http.get(f"{API}/datasets/{ORG}/ailleurs").json()["version"] == 0


def test_an_upload_session_is_refused_at_open_and_at_commit(api: Api) -> None:
    create(api, "session")
    data = b"id\n1\n"
    r = api.http.post(
        f"{API}/datasets/{ORG}/session/uploads",
        json={"files": [{"name": "a.csv", "size": len(data)}]},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    session = r.json()["id"]
    r = api.http.put(
        f"{API}/uploads/{session}/files/a.csv?offset=0",
        content=data,
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    # The publisher's rule changes while the bytes wait in staging.
    r = api.http.patch(
        f"{API}/datasets/{ORG}/session", json={"residency": "FR"}, headers=api.auth(api.editor)
    )
    assert r.status_code == 200, r.text
    r = api.http.post(f"{API}/uploads/{session}/commit", headers=api.auth(api.editor))
    refused(r, "FR", "session")
    assert stored_blobs(api.hub) == []
    r = api.http.post(
        f"{API}/datasets/{ORG}/session/uploads",
        json={"files": [{"name": "b.csv", "size": 1}]},
        headers=api.auth(api.editor),
    )
    refused(r, "FR", "session")


def test_requiring_another_jurisdiction_once_files_are_stored_is_refused(api: Api) -> None:
    create(api, "deja")
    r = api.http.put(
        f"{API}/datasets/{ORG}/deja/files/a.bin", content=b"bytes", headers=api.auth(api.editor)
    )
    assert r.status_code == 200
    r = api.http.patch(
        f"{API}/datasets/{ORG}/deja", json={"residency": "FR"}, headers=api.auth(api.editor)
    )
    refused(r, "FR", "deja")
    r = api.http.patch(
        f"{API}/datasets/{ORG}/deja", json={"residency": "MA"}, headers=api.auth(api.editor)
    )
    assert (r.status_code, r.json()["residency"]) == (200, "MA")
    r = api.http.patch(
        f"{API}/datasets/{ORG}/deja", json={"residency": "Maroc"}, headers=api.auth(api.editor)
    )
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "residency"


def test_derived_parquet_is_refused_when_the_rule_changed_before_the_ingest(api: Api) -> None:
    """The ingest runs later than the upload: it checks again before storing Parquet."""
    create(api, "tardif")
    api.hub.stop_workers()  # hold the ingest until the rule has changed
    r = api.http.put(
        f"{API}/datasets/{ORG}/tardif/files/{REGIONS.name}",
        content=REGIONS.read_bytes(),
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    job = r.json()["job"]["id"]
    before = stored_blobs(api.hub)
    assert before == [hashlib.sha256(REGIONS.read_bytes()).hexdigest()]
    # Only the hub's operator can move a dataset under a rule its stored bytes break: here
    # straight in the database, as a migration or a mistake would.
    with api.hub.engine.begin() as conn:
        conn.execute(update(db.datasets).values(residency="FR"))
    api.hub.runner.run_pending()
    done = wait_job(api, job)
    assert done["state"] == "failed"
    assert "requires its data to stay in FR" in done["error"]
    assert list(api.hub.derived.iter_hashes()) == []
    # No request was refused: the job writes the refusal to the audit log itself.
    denied = api.hub.audit.entries(ROOT, action="denied")["entries"]
    assert [(e["actor"], e["org"], e["dataset"], e["client"], e["detail"]) for e in denied] == [
        (
            "khazna",
            ORG,
            "tardif",
            "job",
            {
                "status": 403,
                "rule": f"dataset {ORG}/tardif requires its data to stay in FR, but this hub's "
                f"storage ({_kind()}) is in MA; nothing was stored",
                "job": job,
                "job_kind": "ingest_table",
                "file": REGIONS.name,
            },
        )
    ]


def test_the_demo_loader_logs_a_residency_refusal(hub: Hub) -> None:
    load_demo(hub)
    # A rule set behind the hub's back on datasets whose bytes are stored.
    with hub.engine.begin() as conn:
        conn.execute(update(db.datasets).values(residency="FR"))
    with pytest.raises(ResidencyRefused) as refusal:
        load_demo(hub)
    first = manifest()["datasets"][0]["name"]
    denied = hub.audit.entries(ROOT, action="denied")["entries"]
    assert [(e["actor"], e["org"], e["dataset"], e["client"], e["detail"]) for e in denied] == [
        (
            operator_name(),
            "demo",
            first,
            "cli",
            {"status": 403, "rule": refusal.value.message, "command": "serve --demo"},
        )
    ]
    assert refusal.value.message.startswith(f"dataset demo/{first} requires its data to stay in FR")
    assert hub.verify().ok
