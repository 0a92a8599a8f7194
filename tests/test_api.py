"""The REST API in-process, told as the users' stories: a ministry publishes, people download.

Every assertion is exact: status codes, error codes, bytes, SHA-256 (computed here with
hashlib), version numbers and headers.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest

from tests.conftest import DATA, DATA_FILES, Api, leftovers, read_blob, stored_blobs

API = "/api/v1"
ORG = "ministere-sante"

# The media type each fixture must be served with, verbatim (no charset on text/csv).
EXPECTED_MEDIA_TYPES = {
    ".csv": "text/csv",
    ".tif": "image/tiff",
    ".dcm": "application/dicom",
    ".zip": "application/zip",
    ".stac.json": "application/geo+json",
    ".json": "application/json",
    ".ttl": "text/turtle",
    ".md": "text/markdown",
}

B04 = DATA / "raster" / "S2A_29RKH_20200219_L2A_B04_red_100m_cog.tif"
B08 = DATA / "raster" / "S2A_29RKH_20200219_L2A_B08_nir_100m_cog.tif"
REGIONS = DATA / "tables" / "morocco_regions_rgph2024.csv"
REGIONS_CP1256 = DATA / "tables" / "morocco_regions_rgph2024.cp1256.csv"
CAIRNS = DATA / "gtfs" / "cairns_gtfs.zip"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_media_type(name: str) -> str:
    for suffix in sorted(EXPECTED_MEDIA_TYPES, key=len, reverse=True):
        if name.endswith(suffix):
            return EXPECTED_MEDIA_TYPES[suffix]
    raise AssertionError(f"no expected media type for {name}")


def without_job(answer: dict[str, Any]) -> dict[str, Any]:
    """An upload's answer without its ingest job (tables are tests/test_tables_api.py's)."""
    return {k: v for k, v in answer.items() if k != "job"}


def listed(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A dataset's files without their ``table`` or ``raster`` entry (see
    tests/test_tables_api.py and tests/test_stac.py)."""
    return [{k: v for k, v in f.items() if k not in ("table", "raster")} for f in files]


def entry(name: str, data: bytes) -> dict[str, Any]:
    """A file as the API lists it."""
    return {
        "name": name,
        "size": len(data),
        "sha256": sha(data),
        "media_type": expected_media_type(name),
    }


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the JSON error shape, status and code; return the error object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"]
    err: dict[str, Any] = body["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    return err


def blobs_on_disk(api: Api) -> list[str]:
    """Blobs the hub holds: files on local disk or objects in its bucket."""
    return stored_blobs(api.hub)


def temporaries(api: Api) -> list[str]:
    """Uploads in progress: files in the hub's tmp/, or temporaries in its bucket."""
    return leftovers(api.hub.settings.home)["tmp"]


def files_url(dataset: str, file: str) -> str:
    return f"{API}/datasets/{ORG}/{dataset}/files/{file}"


def new_dataset(api: Api, name: str, access: str = "public") -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": name, "title": name, "access": access},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text


def put(api: Api, dataset: str, file: str, data: bytes, token: str | None = None) -> httpx.Response:
    headers = api.auth(token if token is not None else api.editor)
    return api.http.put(files_url(dataset, file), content=data, headers=headers)


def current_version(api: Api, dataset: str) -> int:
    r = api.http.get(f"{API}/datasets/{ORG}/{dataset}", headers=api.auth(api.admin))
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


# 1. organizations --------------------------------------------------------------------


def test_admin_creates_an_organization_and_reads_it_back(api: Api) -> None:
    title = {"fr": "Agence spatiale", "ar": "الوكالة الفضائية", "en": "Space agency"}
    r = api.http.post(
        f"{API}/organizations",
        json={"name": "agence-spatiale", "title": title},
        headers=api.auth(api.admin),
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"name", "title", "description", "created_at"}
    assert created["name"] == "agence-spatiale"
    assert created["title"] == title
    assert created["description"] == {}
    assert isinstance(created["created_at"], str) and created["created_at"]

    r = api.http.get(f"{API}/organizations/agence-spatiale")
    assert r.status_code == 200
    assert r.json() == {**created, "datasets": []}

    r = api.http.get(f"{API}/organizations")
    assert [o["name"] for o in r.json()["organizations"]] == ["agence-spatiale", ORG]


def test_a_signed_in_user_creates_an_organization_and_administers_it(api: Api) -> None:
    r = api.http.post(
        f"{API}/organizations",
        json={"name": "startup-lab", "title": "Laboratoire"},
        headers=api.auth(api.outsider),
    )
    assert r.status_code == 201, r.text
    assert r.json()["title"] == {"fr": "Laboratoire"}
    r = api.http.get(f"{API}/me", headers=api.auth(api.outsider))
    assert r.json() == {
        "name": "startup",
        "is_admin": False,
        "organizations": {"startup-lab": "admin"},
    }


def test_organization_without_title_gets_its_name_as_french_title(api: Api) -> None:
    r = api.http.post(f"{API}/organizations", json={"name": "onda"}, headers=api.auth(api.admin))
    assert r.status_code == 201, r.text
    assert r.json()["title"] == {"fr": "onda"}


def test_duplicate_organization_is_a_conflict(api: Api) -> None:
    r = api.http.post(f"{API}/organizations", json={"name": ORG}, headers=api.auth(api.admin))
    err = error(r, 409, "conflict")
    assert ORG in err["message"]


@pytest.mark.parametrize(
    "name",
    ["Sante", "sante publique", "-sante", "a" * 101, "é", "sante-", "", "sante/publique"],
    ids=[
        "uppercase",
        "space",
        "leading-dash",
        "101-chars",
        "e-acute",
        "trailing-dash",
        "empty",
        "slash",
    ],
)
def test_bad_organization_names_are_refused_with_the_rule(api: Api, name: str) -> None:
    r = api.http.post(f"{API}/organizations", json={"name": name}, headers=api.auth(api.admin))
    err = error(r, 400, "invalid_name")
    assert err["message"] == (
        f"invalid organization name {name!r}: use 1 to 100 lowercase letters a-z, digits, "
        "'-' or '_', starting and ending with a letter or digit"
    )
    assert err["field"] == "organization"
    r = api.http.get(f"{API}/organizations")
    assert [o["name"] for o in r.json()["organizations"]] == [ORG]


def test_organization_name_of_exactly_100_characters_is_accepted(api: Api) -> None:
    name = "a" * 100
    r = api.http.post(f"{API}/organizations", json={"name": name}, headers=api.auth(api.admin))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer kz_not-a-real-token"}, {"Authorization": "Basic xyz"}],
    ids=["no-token", "wrong-token", "basic-scheme"],
)
def test_creating_an_organization_needs_a_valid_bearer_token(
    api: Api, headers: dict[str, str]
) -> None:
    r = api.http.post(f"{API}/organizations", json={"name": "anonyme"}, headers=headers)
    error(r, 401, "unauthorized")
    r = api.http.get(f"{API}/organizations")
    assert [o["name"] for o in r.json()["organizations"]] == [ORG]


def test_bearer_without_a_token_is_refused(api: Api) -> None:
    r = api.http.get(f"{API}/me", headers={"Authorization": "Bearer "})
    error(r, 401, "unauthorized")


# 2. datasets -------------------------------------------------------------------------


def test_editor_creates_a_multilingual_dataset(api: Api) -> None:
    title = {"fr": "Recensement 2024", "ar": "الإحصاء العام 2024", "en": "2024 census"}
    description = {
        "fr": "Population légale par région.",
        "ar": "السكان القانونيون حسب الجهة.",
        "en": "Legal population by region.",
    }
    r = api.http.post(
        f"{API}/datasets",
        json={
            "org": ORG,
            "name": "recensement-2024",
            "title": title,
            "description": description,
            "tags": ["population", "census", "population"],
            "license": "CC-BY-4.0",
            "access": "public",
        },
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["created_at"] == created["updated_at"]
    assert {k: v for k, v in created.items() if k not in ("created_at", "updated_at")} == {
        "org": ORG,
        "name": "recensement-2024",
        "title": title,
        "description": description,
        "tags": ["census", "population"],
        "license": "CC-BY-4.0",
        "access": "public",
        "residency": None,
        "storage": api.hub.storage.as_dict(),
        "version": 0,
        "files": [],
    }

    r = api.http.get(f"{API}/datasets/{ORG}/recensement-2024")
    assert r.status_code == 200
    assert r.json() == created
    r = api.http.get(f"{API}/datasets/{ORG}/recensement-2024/versions")
    assert r.json() == {"versions": []}


def test_plain_string_title_is_stored_as_french(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": "hopitaux", "title": "Liste des hôpitaux"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["title"] == {"fr": "Liste des hôpitaux"}
    assert body["description"] == {}
    assert body["tags"] == []
    assert body["license"] == ""
    assert body["access"] == "public"
    assert body["version"] == 0
    assert body["files"] == []


def test_bad_access_level_is_refused(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": "secret", "access": "secret"},
        headers=api.auth(api.editor),
    )
    err = error(r, 400, "bad_request")
    assert err["message"] == (
        "access must be one of public, registered, restricted, private; got 'secret'"
    )
    error(
        api.http.get(f"{API}/datasets/{ORG}/secret", headers=api.auth(api.admin)), 404, "not_found"
    )


def test_bad_tag_is_an_invalid_name(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": "tagged", "tags": ["ok", "Pas Bon"]},
        headers=api.auth(api.editor),
    )
    err = error(r, 400, "invalid_name")
    assert err["message"].startswith("invalid tag name 'Pas Bon': use 1 to 100 lowercase")
    assert err["field"] == "tag"


def test_bad_dataset_name_is_an_invalid_name(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "Mon Jeu"}, headers=api.auth(api.editor)
    )
    err = error(r, 400, "invalid_name")
    assert err["field"] == "dataset"


def test_only_editors_create_datasets_in_an_organization(api: Api) -> None:
    body = {"org": ORG, "name": "intrus"}
    error(
        api.http.post(f"{API}/datasets", json=body, headers=api.auth(api.outsider)),
        403,
        "forbidden",
    )
    error(api.http.post(f"{API}/datasets", json=body), 401, "unauthorized")
    error(
        api.http.get(f"{API}/datasets/{ORG}/intrus", headers=api.auth(api.admin)), 404, "not_found"
    )
    # The hub's admin may.
    r = api.http.post(f"{API}/datasets", json=body, headers=api.auth(api.admin))
    assert r.status_code == 201, r.text


def test_dataset_in_unknown_organization_is_not_found(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets", json={"org": "nulle-part", "name": "x"}, headers=api.auth(api.admin)
    )
    err = error(r, 404, "not_found")
    assert "nulle-part" in err["message"]


def test_duplicate_dataset_is_a_conflict(api: Api) -> None:
    new_dataset(api, "doublon")
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "doublon"}, headers=api.auth(api.editor)
    )
    err = error(r, 409, "conflict")
    assert err["message"] == f"dataset {ORG}/doublon already exists"


def test_editor_changes_title_tags_and_access(api: Api) -> None:
    new_dataset(api, "vaccination")
    r = api.http.patch(
        f"{API}/datasets/{ORG}/vaccination",
        json={
            "title": {"fr": "Vaccination", "ar": "التلقيح"},
            "tags": ["vaccins", "enfants"],
            "access": "registered",
        },
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["title"] == {"fr": "Vaccination", "ar": "التلقيح"}
    assert changed["tags"] == ["enfants", "vaccins"]
    assert changed["access"] == "registered"
    assert changed["version"] == 0
    r = api.http.get(f"{API}/datasets/{ORG}/vaccination")
    assert r.json() == changed

    r = api.http.patch(
        f"{API}/datasets/{ORG}/vaccination", json={"owner": "x"}, headers=api.auth(api.editor)
    )
    err = error(r, 400, "bad_request")
    assert "owner" in err["message"]
    r = api.http.patch(
        f"{API}/datasets/{ORG}/vaccination", json={"access": "nope"}, headers=api.auth(api.editor)
    )
    error(r, 400, "bad_request")
    r = api.http.patch(
        f"{API}/datasets/{ORG}/vaccination", json={"title": ""}, headers=api.auth(api.editor)
    )
    assert error(r, 400, "bad_request")["message"] == "title is required"
    r = api.http.patch(
        f"{API}/datasets/{ORG}/vaccination", json={"tags": []}, headers=api.auth(api.outsider)
    )
    error(r, 403, "forbidden")
    r = api.http.patch(f"{API}/datasets/{ORG}/vaccination", json={"tags": []})
    error(r, 401, "unauthorized")
    assert api.http.get(f"{API}/datasets/{ORG}/vaccination").json() == changed


def test_unknown_dataset_is_not_found(api: Api) -> None:
    err = error(api.http.get(f"{API}/datasets/{ORG}/inexistant"), 404, "not_found")
    assert err["message"] == f"no dataset {ORG}/inexistant"
    error(api.http.get(f"{API}/datasets/nulle-part/inexistant"), 404, "not_found")
    error(api.http.get(f"{API}/datasets/{ORG}/inexistant/versions"), 404, "not_found")
    error(api.http.get(files_url("inexistant", "a.csv")), 404, "not_found")
    error(put(api, "inexistant", "a.csv", b"x"), 404, "not_found")


# 3. files and versions ---------------------------------------------------------------


def test_every_fixture_uploads_as_a_new_version_and_downloads_byte_exact(api: Api) -> None:
    new_dataset(api, "tout")
    contents: dict[str, bytes] = {}
    for number, path in enumerate(DATA_FILES, start=1):
        data = path.read_bytes()
        r = put(api, "tout", path.name, data)
        assert r.status_code == 200, r.text
        assert without_job(r.json()) == {
            "name": path.name,
            "sha256": sha(data),
            "size": len(data),
            "version": number,
        }
        contents[path.name] = data
    last = len(DATA_FILES)
    assert len(contents) == last  # fixture names are unique

    r = api.http.get(f"{API}/datasets/{ORG}/tout")
    assert r.json()["version"] == last
    assert listed(r.json()["files"]) == [entry(n, contents[n]) for n in sorted(contents)]

    for number, path in enumerate(DATA_FILES, start=1):
        data = contents[path.name]
        r = api.http.get(files_url("tout", path.name))
        assert r.status_code == 200, r.text
        assert r.content == data
        assert sha(r.content) == sha(data)
        assert r.headers["etag"] == f'"{sha(data)}"'
        assert r.headers["content-type"] == expected_media_type(path.name)
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["x-khazna-version"] == str(last)
        assert r.headers["accept-ranges"] == "bytes"
        # The version that introduced the file serves it too.
        r = api.http.get(files_url("tout", path.name), params={"version": number})
        assert r.status_code == 200, r.text
        assert r.content == data
        assert r.headers["x-khazna-version"] == str(number)
        if number > 1:
            r = api.http.get(files_url("tout", path.name), params={"version": number - 1})
            error(r, 404, "not_found")

    # CSV files come back without a charset: the cp1256 one is not UTF-8.
    for name in (REGIONS.name, REGIONS_CP1256.name):
        assert api.http.get(files_url("tout", name)).headers["content-type"] == "text/csv"
    assert blobs_on_disk(api) == sorted(sha(d) for d in contents.values())
    assert temporaries(api) == []


def test_blobs_are_stored_under_their_hash(api: Api) -> None:
    new_dataset(api, "rangement")
    data = REGIONS.read_bytes()
    assert put(api, "rangement", "regions.csv", data).status_code == 200
    digest = sha(data)
    assert read_blob(api.hub, digest) == data


def test_identical_content_is_stored_once_and_makes_no_new_version(api: Api) -> None:
    new_dataset(api, "dedup")
    data = REGIONS.read_bytes()
    r = put(api, "dedup", "regions.csv", data)
    assert without_job(r.json()) == {
        "name": "regions.csv",
        "sha256": sha(data),
        "size": len(data),
        "version": 1,
    }
    # The same bytes again under the same name: nothing changes.
    r = put(api, "dedup", "regions.csv", data)
    assert r.status_code == 200, r.text
    assert without_job(r.json()) == {
        "name": "regions.csv",
        "sha256": sha(data),
        "size": len(data),
        "version": 1,
    }
    versions = api.http.get(f"{API}/datasets/{ORG}/dedup/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1]

    # The same bytes under another name: a new version, still one blob.
    r = put(api, "dedup", "copie.csv", data)
    assert without_job(r.json()) == {
        "name": "copie.csv",
        "sha256": sha(data),
        "size": len(data),
        "version": 2,
    }
    files = api.http.get(f"{API}/datasets/{ORG}/dedup").json()["files"]
    assert listed(files) == [entry("copie.csv", data), entry("regions.csv", data)]
    assert blobs_on_disk(api) == [sha(data)]
    assert api.http.get(files_url("dedup", "copie.csv")).content == data
    assert api.http.get(files_url("dedup", "regions.csv")).content == data

    # Another dataset with the same bytes shares the blob too.
    new_dataset(api, "dedup-bis")
    assert put(api, "dedup-bis", "r.csv", data).json()["version"] == 1
    assert blobs_on_disk(api) == [sha(data)]
    assert temporaries(api) == []


def test_an_empty_file_is_a_file(api: Api) -> None:
    new_dataset(api, "vide")
    r = put(api, "vide", "vide.csv", b"")
    assert without_job(r.json()) == {
        "name": "vide.csv",
        "sha256": sha(b""),
        "size": 0,
        "version": 1,
    }
    r = api.http.get(files_url("vide", "vide.csv"))
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"


def test_replacing_a_file_makes_a_version_and_keeps_the_old_bytes(api: Api) -> None:
    new_dataset(api, "bandes")
    red, nir = B04.read_bytes(), B08.read_bytes()
    assert put(api, "bandes", "bande.tif", red).json()["version"] == 1
    r = put(api, "bandes", "bande.tif", nir)
    assert without_job(r.json()) == {
        "name": "bande.tif",
        "sha256": sha(nir),
        "size": len(nir),
        "version": 2,
    }

    r = api.http.get(files_url("bandes", "bande.tif"))
    assert r.content == nir
    assert r.headers["x-khazna-version"] == "2"
    assert r.headers["etag"] == f'"{sha(nir)}"'
    assert r.headers["cache-control"] == "public, no-cache"
    r = api.http.get(files_url("bandes", "bande.tif"), params={"version": 1})
    assert r.status_code == 200
    assert r.content == red
    assert r.headers["x-khazna-version"] == "1"
    assert r.headers["etag"] == f'"{sha(red)}"'
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert api.http.get(files_url("bandes", "bande.tif"), params={"version": 2}).content == nir

    versions = api.http.get(f"{API}/datasets/{ORG}/bandes/versions").json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert [v["files"] for v in versions] == [[entry("bande.tif", nir)], [entry("bande.tif", red)]]
    assert [v["created_by"] for v in versions] == ["nadia", "nadia"]
    assert blobs_on_disk(api) == sorted([sha(red), sha(nir)])

    err = error(
        api.http.get(files_url("bandes", "bande.tif"), params={"version": 99}), 404, "not_found"
    )
    assert err["message"] == f"dataset {ORG}/bandes has no version 99 (latest is 2)"
    error(api.http.get(files_url("bandes", "bande.tif"), params={"version": 0}), 400, "bad_request")
    error(
        api.http.get(files_url("bandes", "bande.tif"), params={"version": -1}), 400, "bad_request"
    )
    error(
        api.http.get(files_url("bandes", "bande.tif"), params={"version": "x"}), 400, "bad_request"
    )
    error(api.http.get(files_url("bandes", "autre.tif")), 404, "not_found")


def test_versions_list_newest_first_with_each_versions_files(api: Api) -> None:
    new_dataset(api, "historique")
    a, b, c = REGIONS.read_bytes(), REGIONS_CP1256.read_bytes(), CAIRNS.read_bytes()
    put(api, "historique", "regions.csv", a)
    r = api.http.put(
        files_url("historique", "regions-ar.csv"),
        content=b,
        headers={**api.auth(api.editor), "X-Khazna-Message": "version arabe"},
    )
    assert r.json()["version"] == 2
    put(api, "historique", "gtfs.zip", c)

    versions = api.http.get(f"{API}/datasets/{ORG}/historique/versions").json()["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert versions[1]["message"] == "version arabe"
    assert [v["files"] for v in versions] == [
        [entry("gtfs.zip", c), entry("regions-ar.csv", b), entry("regions.csv", a)],
        [entry("regions-ar.csv", b), entry("regions.csv", a)],
        [entry("regions.csv", a)],
    ]
    for v in versions:
        assert set(v) == {"version", "created_at", "created_by", "message", "files"}


def test_deleting_a_file_makes_a_version_without_it(api: Api) -> None:
    new_dataset(api, "suppression")
    a, c = REGIONS.read_bytes(), CAIRNS.read_bytes()
    put(api, "suppression", "regions.csv", a)
    put(api, "suppression", "gtfs.zip", c)

    error(api.http.delete(files_url("suppression", "regions.csv")), 401, "unauthorized")
    error(
        api.http.delete(files_url("suppression", "regions.csv"), headers=api.auth(api.outsider)),
        403,
        "forbidden",
    )
    assert current_version(api, "suppression") == 2

    r = api.http.delete(files_url("suppression", "regions.csv"), headers=api.auth(api.editor))
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 3}

    assert api.http.get(f"{API}/datasets/{ORG}/suppression").json()["files"] == [
        entry("gtfs.zip", c)
    ]
    error(api.http.get(files_url("suppression", "regions.csv")), 404, "not_found")
    r = api.http.get(files_url("suppression", "regions.csv"), params={"version": 2})
    assert r.status_code == 200
    assert r.content == a
    versions = api.http.get(f"{API}/datasets/{ORG}/suppression/versions").json()["versions"]
    assert [v["files"] for v in versions] == [
        [entry("gtfs.zip", c)],
        [entry("gtfs.zip", c), entry("regions.csv", a)],
        [entry("regions.csv", a)],
    ]
    # The blob stays: version 2 still refers to it.
    assert blobs_on_disk(api) == sorted([sha(a), sha(c)])

    r = api.http.delete(files_url("suppression", "regions.csv"), headers=api.auth(api.editor))
    error(r, 404, "not_found")
    assert current_version(api, "suppression") == 3


def test_uploads_need_an_editor_and_leave_nothing_when_refused(api: Api) -> None:
    new_dataset(api, "protege")
    data = REGIONS.read_bytes()
    r = api.http.put(files_url("protege", "regions.csv"), content=data)
    error(r, 401, "unauthorized")
    error(put(api, "protege", "regions.csv", data, token=api.outsider), 403, "forbidden")
    error(put(api, "protege", "regions.csv", data, token="kz_faux"), 401, "unauthorized")
    assert current_version(api, "protege") == 0
    assert api.http.get(f"{API}/datasets/{ORG}/protege/versions").json() == {"versions": []}
    assert blobs_on_disk(api) == []
    assert temporaries(api) == []

    # The hub's admin may write anywhere.
    r = put(api, "protege", "regions.csv", data, token=api.admin)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1


@pytest.mark.parametrize("file", [".hidden", "a%5Cb", "%20espace", "fin%20", "a%09b"])
def test_bad_file_names_are_refused(api: Api, file: str) -> None:
    new_dataset(api, "noms")
    r = put(api, "noms", file, b"data")
    err = error(r, 400, "invalid_name")
    assert err["field"] == "file"
    assert current_version(api, "noms") == 0
    assert blobs_on_disk(api) == []
    assert temporaries(api) == []


def test_a_file_name_of_256_bytes_is_refused(api: Api) -> None:
    new_dataset(api, "long")
    error(put(api, "long", "a" * 256, b"x"), 400, "invalid_name")
    assert put(api, "long", "a" * 255, b"x").json()["version"] == 1


def test_unicode_file_names_work(api: Api) -> None:
    new_dataset(api, "arabe")
    data = REGIONS_CP1256.read_bytes()
    name = "جهات المغرب.csv"
    r = put(api, "arabe", name, data)
    assert without_job(r.json()) == {
        "name": name,
        "sha256": sha(data),
        "size": len(data),
        "version": 1,
    }
    r = api.http.get(files_url("arabe", name))
    assert r.content == data
    assert r.headers["content-disposition"] == (
        "attachment; filename*=UTF-8''"
        "%D8%AC%D9%87%D8%A7%D8%AA%20%D8%A7%D9%84%D9%85%D8%BA%D8%B1%D8%A8.csv"
    )


def test_announced_sha256_mismatch_is_refused_and_leaves_nothing(api: Api) -> None:
    new_dataset(api, "integrite")
    data = B04.read_bytes()
    wrong = sha(b"something else")
    r = api.http.put(
        files_url("integrite", "b04.tif"),
        content=data,
        headers={**api.auth(api.editor), "X-Content-SHA256": wrong},
    )
    err = error(r, 422, "unprocessable")
    assert err["message"] == f"content SHA-256 is {sha(data)}, but the client announced {wrong}"
    assert blobs_on_disk(api) == []
    assert temporaries(api) == []
    assert current_version(api, "integrite") == 0
    error(api.http.get(files_url("integrite", "b04.tif")), 404, "not_found")

    # The right digest, in upper case, is accepted.
    r = api.http.put(
        files_url("integrite", "b04.tif"),
        content=data,
        headers={**api.auth(api.editor), "X-Content-SHA256": sha(data).upper()},
    )
    assert without_job(r.json()) == {
        "name": "b04.tif",
        "sha256": sha(data),
        "size": len(data),
        "version": 1,
    }
    assert blobs_on_disk(api) == [sha(data)]
    assert temporaries(api) == []


# 4. downloads with Range -------------------------------------------------------------


@pytest.fixture
def raster(api: Api) -> bytes:
    new_dataset(api, "sentinel")
    data = B04.read_bytes()
    assert put(api, "sentinel", B04.name, data).status_code == 200
    return data


def get_raster(api: Api, headers: dict[str, str]) -> httpx.Response:
    return api.http.get(files_url("sentinel", B04.name), headers=headers)


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-500", -500, -1),
        ("bytes=-10", -10, -1),  # bytes=<size-10>- is below, it needs the size
        ("bytes=5-5", 5, 5),
    ],
)
def test_range_reads_on_a_satellite_band(
    api: Api, raster: bytes, spec: str, first: int, last: int
) -> None:
    size = len(raster)
    first, last = first % size, last % size
    r = get_raster(api, {"Range": spec})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["etag"] == f'"{sha(raster)}"'
    assert r.headers["content-type"] == "image/tiff"
    assert r.content == raster[first : last + 1]


def test_open_ended_and_clamped_ranges(api: Api, raster: bytes) -> None:
    size = len(raster)
    r = get_raster(api, {"Range": f"bytes={size - 10}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    assert r.content == raster[-10:]

    r = get_raster(api, {"Range": f"bytes={size - 100}-{size + 5000}"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    assert r.content == raster[-100:]

    r = get_raster(api, {"Range": f"bytes=-{size + 5000}"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    assert r.content == raster

    r = get_raster(api, {"Range": f"bytes={size - 1}-{size - 1}"})
    assert r.status_code == 206
    assert r.content == raster[-1:]


@pytest.mark.parametrize("offset", [0, 1, 1000])
def test_range_starting_at_or_after_the_end_is_not_satisfiable(
    api: Api, raster: bytes, offset: int
) -> None:
    size = len(raster)
    r = get_raster(api, {"Range": f"bytes={size + offset}-"})
    error(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"] == f"bytes */{size}"


def test_empty_suffix_range_is_not_satisfiable(api: Api, raster: bytes) -> None:
    r = get_raster(api, {"Range": "bytes=-0"})
    error(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"] == f"bytes */{len(raster)}"


@pytest.mark.parametrize(
    "spec", ["bytes=0-1,5-6", "items=0-9", "bytes=9-3", "bytes=-", "bytes=abc", "bytes=0-1, 5-6"]
)
def test_ranges_the_hub_does_not_serve_get_the_whole_file(
    api: Api, raster: bytes, spec: str
) -> None:
    r = get_raster(api, {"Range": spec})
    assert r.status_code == 200, r.text
    assert "content-range" not in r.headers
    assert r.headers["content-length"] == str(len(raster))
    assert r.content == raster


def test_conditional_requests(api: Api, raster: bytes) -> None:
    etag = f'"{sha(raster)}"'
    r = get_raster(api, {"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    r = get_raster(api, {"If-None-Match": f'"other", W/{etag}'})
    assert r.status_code == 304
    r = get_raster(api, {"If-None-Match": '"other"'})
    assert r.status_code == 200
    assert r.content == raster

    # If-Range with the current ETag: the range; with another: the whole file.
    r = get_raster(api, {"Range": "bytes=0-99", "If-Range": etag})
    assert r.status_code == 206
    assert r.content == raster[:100]
    r = get_raster(api, {"Range": "bytes=0-99", "If-Range": f'"{sha(b"old")}"'})
    assert r.status_code == 200
    assert "content-range" not in r.headers
    assert r.content == raster


def test_head_gives_the_headers_without_the_body(api: Api, raster: bytes) -> None:
    url = files_url("sentinel", B04.name)
    r = api.http.head(url)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(raster))
    assert r.headers["etag"] == f'"{sha(raster)}"'
    assert r.headers["content-type"] == "image/tiff"
    assert r.headers["x-khazna-version"] == "1"
    assert r.headers["accept-ranges"] == "bytes"

    r = api.http.head(url, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206
    assert r.content == b""
    assert r.headers["content-length"] == "100"
    assert r.headers["content-range"] == f"bytes 0-99/{len(raster)}"

    assert api.http.head(files_url("sentinel", "absent.tif")).status_code == 404


def test_repr_digest_is_the_sha256(api: Api, raster: bytes) -> None:
    r = get_raster(api, {})
    expected = base64.b64encode(hashlib.sha256(raster).digest()).decode()
    assert r.headers["repr-digest"] == f"sha-256=:{expected}:"


# 5. access levels --------------------------------------------------------------------


def test_a_private_dataset_exists_only_for_its_organization(api: Api) -> None:
    new_dataset(api, "dossiers-patients", access="private")
    data = REGIONS.read_bytes()
    assert put(api, "dossiers-patients", "d.csv", data).json()["version"] == 1
    meta = f"{API}/datasets/{ORG}/dossiers-patients"

    for headers in ({}, api.auth(api.outsider)):
        error(api.http.get(meta, headers=headers), 404, "not_found")
        error(api.http.get(meta + "/versions", headers=headers), 404, "not_found")
        error(
            api.http.get(files_url("dossiers-patients", "d.csv"), headers=headers), 404, "not_found"
        )
        r = api.http.get(f"{API}/organizations/{ORG}", headers=headers)
        assert r.json()["datasets"] == []
        r = api.http.get(f"{API}/search", headers=headers)
        assert [d["name"] for d in r.json()["results"]] == []
    # Writing to it as an outsider does not reveal it either.
    error(put(api, "dossiers-patients", "x.csv", b"x", token=api.outsider), 404, "not_found")

    for token in (api.editor, api.admin):
        r = api.http.get(meta, headers=api.auth(token))
        assert r.status_code == 200, r.text
        assert r.json()["access"] == "private"
        assert listed(r.json()["files"]) == [entry("d.csv", data)]
        r = api.http.get(files_url("dossiers-patients", "d.csv"), headers=api.auth(token))
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["cache-control"] == "private, no-cache"
        r = api.http.get(f"{API}/organizations/{ORG}", headers=api.auth(token))
        assert [d["name"] for d in r.json()["datasets"]] == ["dossiers-patients"]
    assert current_version(api, "dossiers-patients") == 1


def test_a_registered_dataset_needs_a_token_for_its_data_only(api: Api) -> None:
    new_dataset(api, "statistiques", access="registered")
    data = REGIONS.read_bytes()
    put(api, "statistiques", "regions.csv", data)
    url = files_url("statistiques", "regions.csv")

    r = api.http.get(f"{API}/datasets/{ORG}/statistiques")
    assert r.status_code == 200
    assert r.json()["access"] == "registered"
    assert listed(r.json()["files"]) == [entry("regions.csv", data)]
    # The version history is metadata too: anyone who sees the dataset sees it.
    history = api.http.get(f"{API}/datasets/{ORG}/statistiques/versions")
    assert history.status_code == 200
    assert [(v["version"], v["files"]) for v in history.json()["versions"]] == [
        (1, [entry("regions.csv", data)])
    ]

    err = error(api.http.get(url), 401, "unauthorized")
    assert "registered" in err["message"]
    assert api.http.head(url).status_code == 401
    error(api.http.get(url, headers={"Range": "bytes=0-9"}), 401, "unauthorized")

    r = api.http.get(url, headers=api.auth(api.outsider))
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["cache-control"] == "private, no-cache"
    r = api.http.get(url, headers={**api.auth(api.outsider), "Range": "bytes=0-9"})
    assert r.status_code == 206
    assert r.content == data[:10]


# 6. client mistakes are never 500 ----------------------------------------------------


def test_malformed_json_is_a_bad_request(api: Api) -> None:
    r = api.http.post(
        f"{API}/organizations",
        content=b'{"name": "x",',
        headers={**api.auth(api.admin), "Content-Type": "application/json"},
    )
    error(r, 400, "bad_request")
    r = api.http.post(
        f"{API}/datasets",
        content=b"\xff\xfe not json",
        headers={**api.auth(api.admin), "Content-Type": "application/json"},
    )
    error(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/organizations", {}),
        ("/organizations", {"title": "sans nom"}),
        ("/organizations", {"name": 5}),
        ("/organizations", []),
        ("/organizations", "ministere"),
        ("/datasets", {"org": ORG}),
        ("/datasets", {"name": "x"}),
        ("/datasets", {"org": ORG, "name": "x", "tags": "sante"}),
        ("/datasets", {"org": ORG, "name": "x", "tags": [1, 2]}),
    ],
)
def test_missing_or_mistyped_fields_are_bad_requests(api: Api, path: str, body: object) -> None:
    r = api.http.post(API + path, json=body, headers=api.auth(api.admin))
    error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "body",
    [
        {"org": ORG, "name": "x", "title": ["liste"]},
        {"org": ORG, "name": "x", "title": {"FR": "majuscules"}},
        {"org": ORG, "name": "x", "title": {"fr": 5}},
    ],
)
def test_malformed_multilingual_text_is_refused(api: Api, body: object) -> None:
    r = api.http.post(f"{API}/datasets", json=body, headers=api.auth(api.editor))
    assert r.status_code == 400, r.text
    # Not a name: titles and language codes are plain bad requests.
    assert r.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "params",
    [
        {"offset": str(10**30)},
        {"offset": "-1"},
        {"limit": "1001"},
        {"limit": "x"},
        {"q": "x", "offset": str(2**63)},
    ],
)
def test_search_paging_out_of_range_is_a_bad_request(api: Api, params: dict[str, str]) -> None:
    error(api.http.get(f"{API}/search", params=params), 400, "bad_request")


def test_search_with_the_largest_offset_is_empty(api: Api) -> None:
    new_dataset(api, "quelconque")
    r = api.http.get(f"{API}/search", params={"offset": str(2**63 - 1)})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == []


def test_unknown_routes_and_methods_answer_json_errors(api: Api) -> None:
    err = error(api.http.get(f"{API}/nope"), 404, "not_found")
    assert err["message"] == "Not Found"
    error(api.http.get(f"{API}/datasets/{ORG}"), 404, "not_found")
    error(api.http.post(f"{API}/health"), 405, "method_not_allowed")


# 7. health and documentation ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", f"{API}/health"])
def test_health(api: Api, path: str) -> None:
    r = api.http.get(path)
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert isinstance(r.json()["version"], str)


def test_docs_and_openapi(api: Api) -> None:
    r = api.http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/api/v1/openapi.json" in r.text

    r = api.http.get(f"{API}/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/api/v1/datasets/{org}/{name}/files/{file}" in paths
    assert set(paths["/api/v1/datasets/{org}/{name}/files/{file}"]) >= {"get", "put", "delete"}
    assert "/api/v1/organizations" in paths
    assert "/api/v1/datasets" in paths
    # Generated clients need one operationId per operation.
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert sorted(ids) == sorted(set(ids))


def test_fixtures_are_real_files(api: Api) -> None:
    """The test data is the real thing, not placeholders."""
    assert len(DATA_FILES) >= 11
    assert B04.read_bytes()[:4] in (b"II*\x00", b"MM\x00*")
    assert CAIRNS.read_bytes()[:4] == b"PK\x03\x04"
    dcm = next(p for p in DATA_FILES if p.suffix == ".dcm")
    assert dcm.read_bytes()[128:132] == b"DICM"


def test_titles_and_descriptions_are_bounded_plain_text(api: Api) -> None:
    def create(**fields: Any) -> httpx.Response:
        body = {"org": ORG, "name": "textes", **fields}
        return api.http.post(f"{API}/datasets", json=body, headers=api.auth(api.editor))

    err = error(create(title="x" * 301), 400, "bad_request")
    assert err["message"] == "title is 301 characters long; the limit is 300"
    err = error(create(title={"ar": "عنوان", "fr": "y" * 301}), 400, "bad_request")
    assert err["message"] == "title[fr] is 301 characters long; the limit is 300"
    err = error(create(description="ok\x00hidden"), 400, "bad_request")
    assert err["message"] == "description contains control characters"
    assert current_version_or_none(api, "textes") is None

    multi_line = "Première ligne.\nDeuxième ligne.\tFin."
    r = create(title="t" * 300, description=multi_line)
    assert r.status_code == 201, r.text
    assert r.json()["description"] == {"fr": multi_line}


def current_version_or_none(api: Api, dataset: str) -> int | None:
    r = api.http.get(f"{API}/datasets/{ORG}/{dataset}", headers=api.auth(api.admin))
    return None if r.status_code == 404 else int(r.json()["version"])


def test_a_malformed_announced_digest_is_a_bad_request(api: Api) -> None:
    new_dataset(api, "empreinte")
    r = api.http.put(
        files_url("empreinte", "a.csv"),
        content=b"a\n",
        headers={**api.auth(api.editor), "X-Content-SHA256": "zz"},
    )
    assert error(r, 400, "bad_request")["message"] == (
        "X-Content-SHA256 must be 64 hexadecimal digits"
    )
    assert current_version(api, "empreinte") == 0
    assert temporaries(api) == []


def test_a_version_message_may_be_written_in_any_language(api: Api) -> None:
    new_dataset(api, "messages")
    raw = {**api.auth(api.editor), "X-Khazna-Message": "mise à jour".encode()}
    assert (
        api.http.put(files_url("messages", "a.csv"), content=b"1\n", headers=raw).status_code == 200
    )
    encoded = {**api.auth(api.editor), "X-Khazna-Message": "%D8%AA%D8%AD%D8%AF%D9%8A%D8%AB"}
    assert (
        api.http.put(files_url("messages", "a.csv"), content=b"2\n", headers=encoded).status_code
        == 200
    )
    history = api.http.get(f"{API}/datasets/{ORG}/messages/versions").json()["versions"]
    assert [v["message"] for v in history] == ["تحديث", "mise à jour"]


def test_a_wrong_token_is_refused_even_where_anonymous_callers_are_welcome(api: Api) -> None:
    wrong = {"Authorization": "Bearer kz_wrong"}
    for path in ("/organizations", "/search?q=x", "/health", f"/datasets/{ORG}/absent"):
        r = api.http.get(API + path, headers=wrong)
        assert error(r, 401, "unauthorized")["message"] == "invalid or revoked API token"
    assert api.http.get(API + "/organizations").status_code == 200
