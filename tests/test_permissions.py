"""The permission matrix: every path that reveals a dataset or its data, at every access
level, for every kind of caller, answers exactly as docs/api.md#access-levels says.

The rules:
- metadata (dataset, versions, web page, ingest job, STAC collection and items) of
  public, registered and restricted datasets: 200 for everyone; of a private dataset:
  200 for its organization and hub admins, 404 for anyone else (its existence does not
  leak).
- data (downloads of every version, HEAD, rows, schema, profile, a STAC asset, a raster's
  COG): public 200; registered 401 without a token, 200 with one; restricted 401 without
  a token, 403 ("request access") for a signed-in user without a live approval (none, or
  expired), 200 for an approved user, a member or a hub admin; private as its metadata
  (200 or 404).
- SQL: a table the caller may not read does not exist for it (400, the same message as
  for a name that exists nowhere).
- a token restricted to other datasets: everything here is 404 (nothing exists for it),
  even for a hub admin's token; a read-only token reads as its user.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from khazna import db
from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub
from tests.conftest import DATA

API = "/api/v1"
ORG = "sante"
FILE = "regions.csv"
LEVELS = ("public", "registered", "restricted", "private")
REGIONS = (DATA / "tables" / "morocco_regions_rgph2024.csv").read_bytes().splitlines(True)
RASTER = "red.tif"
B04 = (DATA / "raster" / "S2A_29RKH_20200219_L2A_B04_red_100m_cog.tif").read_bytes()
# Each level's dataset holds a different number of regions: distinct files, distinct jobs,
# and a SQL count that says which table answered.
ROWS = {"public": 12, "registered": 11, "restricted": 10, "private": 9}
CALLERS = (
    "anonymous",
    "registered",
    "approved",
    "expired",
    "member",
    "admin",
    "read_only",
    "restricted_token",
)


def sql_name(level: str) -> str:
    return f"sante_{level}_regions"


@dataclass
class World:
    http: TestClient
    hub: Hub
    tokens: dict[str, str | None]
    jobs: dict[str, int]

    def headers(self, caller: str) -> dict[str, str]:
        token = self.tokens[caller]
        return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hub = Hub(Settings.from_env(tmp_path_factory.mktemp("matrix") / "hub"))
    accounts = hub.accounts
    _, admin = accounts.add_user("admin", admin=True)
    _, editor = accounts.add_user("nadia")
    _, member = accounts.add_user("karim")
    _, registered = accounts.add_user("startup")
    _, approved = accounts.add_user("chercheuse")
    _, expired = accounts.add_user("ancien")
    with TestClient(create_app(hub), raise_server_exceptions=False) as http:

        def call(method: str, url: str, token: str, **kw: Any) -> Any:
            r = http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw)
            assert r.status_code < 300, r.text
            return r.json() if r.content else None

        call("POST", f"{API}/organizations", admin, json={"name": ORG})
        call("POST", f"{API}/organizations", admin, json={"name": "autre"})
        for user, role in (("nadia", "editor"), ("karim", "member")):
            call(
                "PUT",
                f"{API}/organizations/{ORG}/members",
                admin,
                json={"user": user, "role": role},
            )
        jobs = {}
        for level in LEVELS:
            body = {
                "org": ORG,
                "name": level,
                "access": level,
                "tags": ["sante", f"niveau-{level}"],
            }
            body["title"] = {"fr": f"Régions {level}", "en": f"Regions zanzibar{level}"}
            call("POST", f"{API}/datasets", editor, json=body)
            data = b"".join(REGIONS[: ROWS[level] + 1])
            jobs[level] = call(
                "PUT", f"{API}/datasets/{ORG}/{level}/files/{FILE}", editor, content=data
            )["job"]["id"]
        # The same GeoTIFF in each: one job makes a STAC item in every one of them.
        raster_jobs = {
            job["id"]
            for level in LEVELS
            if (
                job := call(
                    "PUT", f"{API}/datasets/{ORG}/{level}/files/{RASTER}", editor, content=B04
                )["job"]
            )
        }
        call(
            "POST",
            f"{API}/datasets",
            admin,
            json={"org": "autre", "name": "ouvert", "tags": ["autre"]},
        )
        for job_id in [*jobs.values(), *raster_jobs]:
            deadline = time.monotonic() + 60
            while hub.jobs.get(job_id)["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert hub.jobs.get(job_id)["state"] == "done"
        for user, until in (("chercheuse", None), ("ancien", "2099-01-01")):
            token = approved if user == "chercheuse" else expired
            call(
                "POST",
                f"{API}/datasets/{ORG}/restricted/access-requests",
                token,
                json={"purpose": "thèse"},
            )
            call(
                "POST",
                f"{API}/datasets/{ORG}/restricted/access-requests/{user}/approve",
                editor,
                json={"until": until},
            )
        # The approval of "ancien" has run out (as if time had passed).
        with hub.engine.begin() as conn:
            conn.execute(
                update(db.access_requests)
                .where(db.access_requests.c.expires_at.is_not(None))
                .values(expires_at=db.utcnow())
            )
        read_only = call("POST", f"{API}/tokens", member, json={"scope": "read"})["token"]
        elsewhere = call("POST", f"{API}/tokens", admin, json={"datasets": ["autre/ouvert"]})[
            "token"
        ]
        tokens: dict[str, str | None] = {
            "anonymous": None,
            "registered": registered,
            "approved": approved,
            "expired": expired,
            "member": member,
            "admin": admin,
            "read_only": read_only,
            "restricted_token": elsewhere,
        }
        yield World(http, hub, tokens, jobs)
    hub.close()


def metadata_status(level: str, caller: str) -> int:
    if caller == "restricted_token":
        return 404
    if level == "private":
        return 200 if caller in ("member", "admin", "read_only") else 404
    return 200


def data_status(level: str, caller: str) -> int:
    if caller == "restricted_token":
        return 404
    if level == "public":
        return 200
    if level == "private":
        return 200 if caller in ("member", "admin", "read_only") else 404
    if caller == "anonymous":
        return 401
    if level == "registered":
        return 200
    return 200 if caller in ("approved", "member", "admin", "read_only") else 403


METADATA = {
    "dataset": ("GET", f"{API}/datasets/{ORG}/{{level}}"),
    "versions": ("GET", f"{API}/datasets/{ORG}/{{level}}/versions"),
    "page": ("GET", f"/datasets/{ORG}/{{level}}"),
    "job": ("GET", f"{API}/jobs/{{job}}"),
    "stac_collection": ("GET", f"/stac/collections/{ORG}.{{level}}"),
    "stac_items": ("GET", f"/stac/collections/{ORG}.{{level}}/items"),
    "stac_item": ("GET", f"/stac/collections/{ORG}.{{level}}/items/red"),
    "stac_queryables": ("GET", f"/stac/collections/{ORG}.{{level}}/queryables"),
}
DATA_PATHS = {
    "download": ("GET", f"{API}/datasets/{ORG}/{{level}}/files/{FILE}"),
    "download_v1": ("GET", f"{API}/datasets/{ORG}/{{level}}/files/{FILE}?version=1"),
    "head": ("HEAD", f"{API}/datasets/{ORG}/{{level}}/files/{FILE}"),
    "range": ("GET", f"{API}/datasets/{ORG}/{{level}}/files/{FILE}"),
    "rows": ("GET", f"/api/v1/tables/{ORG}/{{level}}/{FILE}/rows?limit=1"),
    "schema": ("GET", f"/api/v1/tables/{ORG}/{{level}}/{FILE}/schema"),
    "profile": ("GET", f"/api/v1/tables/{ORG}/{{level}}/{FILE}/profile"),
    "stac_asset": ("GET", f"{API}/datasets/{ORG}/{{level}}/files/{RASTER}"),
    "cog": ("GET", f"{API}/datasets/{ORG}/{{level}}/files/{RASTER}/cog"),
    "preview": ("GET", f"/stac/collections/{ORG}.{{level}}/items/red/preview.png"),
    "tile": ("GET", f"{API}/tiles/{ORG}.{{level}}/red/0/0/0.png"),
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("level", LEVELS)
def test_every_path_answers_by_level_and_caller(world: World, level: str, caller: str) -> None:
    got: dict[str, int] = {}
    expected: dict[str, int] = {}
    for kind, paths, rule in (
        ("meta", METADATA, metadata_status),
        ("data", DATA_PATHS, data_status),
    ):
        for name, (method, url) in paths.items():
            headers = world.headers(caller)
            if name == "range":
                headers = {**headers, "Range": "bytes=0-9"}
            r = world.http.request(
                method, url.format(level=level, job=world.jobs[level]), headers=headers
            )
            got[name] = r.status_code
            want = rule(level, caller)
            expected[name] = 206 if name == "range" and want == 200 else want
            if r.status_code == 403 and kind == "data" and method == "GET":
                message = r.json()["error"]["message"]
                assert message.startswith(
                    f"dataset {ORG}/{level} is restricted: "
                    "its data needs an approved access request"
                )
                assert f"POST /api/v1/datasets/{ORG}/{level}/access-requests" in message
            if r.status_code == 401 and method == "GET":
                assert r.json()["error"]["message"].endswith("send an API token")
    r = world.http.post(
        f"{API}/sql",
        json={"sql": f"SELECT count(*) FROM {sql_name(level)}"},
        headers=world.headers(caller),
    )
    got["sql"] = r.status_code
    readable = data_status(level, caller) == 200
    expected["sql"] = 200 if readable else 400
    if readable:
        assert r.json()["rows"] == [[ROWS[level]]]
    else:
        assert r.json()["error"]["message"].startswith(
            f"Catalog Error: Table with name {sql_name(level)} does not exist!"
        )
    assert got == expected


def test_search_counts_and_facets_do_not_leak(world: World) -> None:
    def found(caller: str, **params: str) -> dict[str, Any]:
        r = world.http.get(f"{API}/search", params=params, headers=world.headers(caller))
        assert r.status_code == 200, r.text
        return r.json()

    outsider_tags = {
        "sante": 3,
        "autre": 1,
        "niveau-public": 1,
        "niveau-registered": 1,
        "niveau-restricted": 1,
    }
    for caller in ("anonymous", "registered", "approved", "expired"):
        everything = found(caller)
        assert everything["count"] == 4
        assert sorted(f"{d['org']}/{d['name']}" for d in everything["results"]) == [
            "autre/ouvert",
            "sante/public",
            "sante/registered",
            "sante/restricted",
        ]
        assert everything["facets"]["org"] == {"sante": 3, "autre": 1}
        assert everything["facets"]["tag"] == outsider_tags
        assert everything["facets"]["format"] == {"CSV": 3, "GeoTIFF": 3}
        # The private dataset's own words find nothing, and are counted nowhere.
        assert found(caller, q="zanzibarprivate") == {
            "count": 0,
            "results": [],
            "facets": {"org": {}, "tag": {}, "format": {}, "license": {}},
        }
        assert found(caller, tag="niveau-private")["count"] == 0
        assert found(caller, org=ORG, limit="0")["count"] == 3
    for caller in ("member", "admin", "read_only"):
        everything = found(caller)
        assert everything["count"] == 5
        assert everything["facets"]["tag"] == {**outsider_tags, "sante": 4, "niveau-private": 1}
        assert everything["facets"]["format"] == {"CSV": 4, "GeoTIFF": 4}
        assert found(caller, q="zanzibarprivate")["count"] == 1
    only = found("restricted_token")
    assert (only["count"], [d["name"] for d in only["results"]]) == (1, ["ouvert"])
    assert only["facets"]["org"] == {"autre": 1}
    assert found("restricted_token", q="zanzibarpublic")["count"] == 0


@pytest.mark.parametrize(
    ("caller", "levels"),
    [
        ("anonymous", ["public", "registered", "restricted"]),
        ("expired", ["public", "registered", "restricted"]),
        ("member", ["private", "public", "registered", "restricted"]),
        ("read_only", ["private", "public", "registered", "restricted"]),
        ("restricted_token", []),
    ],
)
def test_stac_lists_and_counts_only_what_the_caller_may_see(
    world: World, caller: str, levels: list[str]
) -> None:
    headers = world.headers(caller)
    listed = world.http.get("/stac/collections", headers=headers).json()["collections"]
    assert [c["id"] for c in listed] == [f"{ORG}.{level}" for level in levels]
    for method in ("GET", "POST"):
        kw: dict[str, Any] = {"json": {}} if method == "POST" else {}
        page = world.http.request(method, "/stac/search", headers=headers, **kw).json()
        assert page["numberMatched"] == len(levels)
        assert [f["collection"] for f in page["features"]] == [f"{ORG}.{lv}" for lv in levels]
    # A CQL2 filter every item passes finds no more than the plain search.
    kw = {"params": {"filter": "id = 'red' OR id IS NULL"}}
    page = world.http.get("/stac/search", headers=headers, **kw).json()
    assert [f["collection"] for f in page["features"]] == [f"{ORG}.{lv}" for lv in levels]
    landing = world.http.get("/stac", headers=headers).json()
    children = [ln["href"].rsplit("/", 1)[-1] for ln in landing["links"] if ln["rel"] == "child"]
    assert children == [f"{ORG}.{level}" for level in levels]


@pytest.mark.parametrize(
    ("caller", "datasets"),
    [
        ("anonymous", ["public", "registered", "restricted"]),
        ("registered", ["public", "registered", "restricted"]),
        ("member", ["private", "public", "registered", "restricted"]),
        ("restricted_token", []),
    ],
)
def test_organization_pages_list_only_what_the_caller_may_see(
    world: World, caller: str, datasets: list[str]
) -> None:
    r = world.http.get(f"{API}/organizations/{ORG}", headers=world.headers(caller))
    assert r.status_code == 200
    assert [d["name"] for d in r.json()["datasets"]] == datasets
    page = world.http.get(f"/organizations/{ORG}", headers=world.headers(caller)).text
    assert ("Régions private" in page) == ("private" in datasets)


def test_sql_tables_the_caller_may_not_read_do_not_exist_even_in_joins_or_the_catalog(
    world: World,
) -> None:
    def sql(caller: str, query: str) -> Any:
        return world.http.post(f"{API}/sql", json={"sql": query}, headers=world.headers(caller))

    joined = (
        f"SELECT count(*) FROM {sql_name('public')} p JOIN {sql_name('private')} s USING (code)"
    )
    assert sql("member", joined).json()["rows"] == [[9]]
    refused = sql("registered", joined)
    nowhere = sql("registered", joined.replace(sql_name("private"), "sante_nowhere_regions"))
    assert refused.status_code == nowhere.status_code == 400
    assert refused.json()["error"]["message"] == nowhere.json()["error"]["message"].replace(
        "sante_nowhere_regions", sql_name("private")
    )
    # The catalog views list what the query may read, nothing more.
    listing = (
        "SELECT table_name FROM information_schema.tables WHERE EXISTS "
        f"(SELECT 1 FROM {sql_name('public')}) ORDER BY 1"
    )
    assert sql("registered", listing).json()["rows"] == [[sql_name("public")]]
    views = (
        "SELECT view_name FROM duckdb_views() WHERE NOT internal "
        f"AND EXISTS (SELECT 1 FROM {sql_name('public')})"
    )
    assert sql("anonymous", views).json()["rows"] == [[sql_name("public")]]
    # A near miss suggests nothing the caller may not read.
    typo = sql("registered", f"SELECT * FROM {sql_name('private')[:-1]}").json()["error"]["message"]
    assert sql_name("private") not in typo
    assert (
        sql_name("restricted")
        not in sql("expired", f"SELECT * FROM {sql_name('restricted')[:-1]}").text
    )


def test_an_admins_restricted_token_reaches_nothing_else(world: World) -> None:
    headers = world.headers("restricted_token")
    assert world.http.get(f"{API}/datasets/autre/ouvert", headers=headers).status_code == 200
    r = world.http.patch(f"{API}/datasets/{ORG}/public", json={"license": "x"}, headers=headers)
    assert r.status_code == 404
    r = world.http.put(
        f"{API}/organizations/{ORG}/members",
        json={"user": "startup", "role": "admin"},
        headers=headers,
    )
    assert r.status_code == 403
    assert (
        r.json()["error"]["message"]
        == f"managing members of {ORG!r} is outside what this token is restricted to"
    )


def test_a_read_only_token_reads_but_cannot_write(world: World) -> None:
    headers = world.headers("read_only")
    assert (
        world.http.post(f"{API}/sql", json={"sql": "SELECT 1"}, headers=headers).status_code == 200
    )
    r = world.http.put(f"{API}/datasets/{ORG}/private/files/x.txt", content=b"x", headers=headers)
    assert r.status_code == 403
    assert r.json()["error"]["message"] == (
        f"PUT /api/v1/datasets/{ORG}/private/files/x.txt needs a read-write token; "
        "this one has scope 'read'"
    )
