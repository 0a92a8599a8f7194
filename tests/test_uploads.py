"""Resumable upload sessions: what is kept, what is thrown away, and when."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub
from tests.conftest import Api

ORG = "ministere-sante"


def open_session(api: Api, dataset: str, files: list[dict]) -> dict:
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": ORG, "name": dataset},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    r = api.http.post(
        f"/api/v1/datasets/{ORG}/{dataset}/uploads",
        json={"files": files, "message": "lot de mars"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_a_file_that_does_not_match_its_announced_hash_is_discarded(api: Api) -> None:
    good, bad = b"a,b\n1,2\n", b"tampered"
    s = open_session(
        api,
        "vaccination",
        [
            {"name": "good.csv", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()},
            {
                "name": "bad.csv",
                "size": len(bad),
                "sha256": hashlib.sha256(b"original").hexdigest(),
            },
        ],
    )
    auth = api.auth(api.editor)
    for name, data in (("good.csv", good), ("bad.csv", bad)):
        r = api.http.put(f"/api/v1/uploads/{s['id']}/files/{name}", content=data, headers=auth)
        assert r.json()["received"] == len(data)
    r = api.http.post(f"/api/v1/uploads/{s['id']}/commit", headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["file"] == "bad.csv"
    assert hashlib.sha256(bad).hexdigest() in r.json()["error"]["message"]
    # The bad file must be sent again; nothing is in the catalog yet.
    status = api.http.get(f"/api/v1/uploads/{s['id']}", headers=auth).json()
    assert [(f["name"], f["received"]) for f in status["files"]] == [
        ("good.csv", len(good)),
        ("bad.csv", 0),
    ]
    assert api.http.get(f"/api/v1/datasets/{ORG}/vaccination").json()["version"] == 0
    assert not api.hub.blobs.exists(hashlib.sha256(bad).hexdigest())

    fixed = b"original"
    api.http.put(f"/api/v1/uploads/{s['id']}/files/bad.csv", content=fixed, headers=auth)
    done = api.http.post(f"/api/v1/uploads/{s['id']}/commit", headers=auth).json()
    assert done["version"] == 1
    assert [f["name"] for f in done["files"]] == ["bad.csv", "good.csv"]
    versions = api.http.get(f"/api/v1/datasets/{ORG}/vaccination/versions").json()["versions"]
    assert versions[0]["message"] == "lot de mars"
    assert versions[0]["created_by"] == "nadia"


def test_an_aborted_session_keeps_nothing(api: Api) -> None:
    s = open_session(api, "brouillon", [{"name": "x.bin", "size": 10}])
    auth = api.auth(api.editor)
    api.http.put(f"/api/v1/uploads/{s['id']}/files/x.bin", content=b"12345", headers=auth)
    assert api.http.delete(f"/api/v1/uploads/{s['id']}", headers=auth).status_code == 204
    assert not (api.hub.settings.uploads_dir / s["id"]).exists()
    r = api.http.put(f"/api/v1/uploads/{s['id']}/files/x.bin?offset=5", content=b"6", headers=auth)
    assert r.status_code == 409
    assert r.json()["error"]["message"] == f"upload session {s['id']} is aborted"
    assert api.http.get(f"/api/v1/uploads/{s['id']}", headers=auth).json()["state"] == "aborted"


def test_sessions_nobody_touches_expire(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), upload_session_ttl_s=0)
    hub = Hub(settings)
    _, token = hub.accounts.add_user("nadia", admin=True)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(hub)) as http:
        http.post("/api/v1/organizations", json={"name": ORG}, headers=auth)
        http.post("/api/v1/datasets", json={"org": ORG, "name": "vieux"}, headers=auth)
        s = http.post(
            f"/api/v1/datasets/{ORG}/vieux/uploads",
            json={"files": [{"name": "a", "size": 3}]},
            headers=auth,
        ).json()
        http.put(f"/api/v1/uploads/{s['id']}/files/a", content=b"ab", headers=auth)
        assert hub.uploads.purge_expired() == 1
        assert http.get(f"/api/v1/uploads/{s['id']}", headers=auth).json()["state"] == "expired"
        assert list(settings.uploads_dir.iterdir()) == []


def test_a_session_must_list_files_once_with_sizes(api: Api) -> None:
    api.http.post(
        "/api/v1/datasets", json={"org": ORG, "name": "liste"}, headers=api.auth(api.editor)
    )
    url = f"/api/v1/datasets/{ORG}/liste/uploads"
    auth = api.auth(api.editor)
    cases = [
        ({"files": []}, "files: List should have at least 1 item after validation, not 0"),
        (
            {"files": [{"name": "a", "size": 1}, {"name": "a", "size": 2}]},
            "file 'a' is listed twice",
        ),
        ({"files": [{"name": "a", "size": -1}]}, "size of 'a' must be a whole number of bytes"),
        (
            {"files": [{"name": "a", "size": 1, "sha256": "abc"}]},
            "sha256 of 'a' must be 64 hex digits",
        ),
        (
            {"files": [{"name": "a", "size": 1, "sha256": "z" * 64}]},
            "sha256 of 'a' must be 64 hex digits",
        ),
    ]
    for body, message in cases:
        r = api.http.post(url, json=body, headers=auth)
        assert r.status_code == 400, body
        assert r.json()["error"]["message"] == message
    r = api.http.post(
        url, json={"files": [{"name": "a", "size": 1}]}, headers=api.auth(api.outsider)
    )
    assert r.status_code == 403
