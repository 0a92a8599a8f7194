"""The audit log, told as the operator's and the publisher's stories: every access leaves
an entry, entries cannot be edited, deleted or re-ordered unnoticed, and an export can be
checked by anyone with the hub's public key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from khazna import db
from khazna.access.accounts import Principal, operator_name
from khazna.access.audit import GENESIS, AuditNote, entry_hash
from khazna.config import Settings
from khazna.hub import Hub
from tests.conftest import DATA, Api, khazna_cmd
from tests.test_tables_api import publish

API = "/api/v1"
ORG = "ministere-sante"
REGIONS = DATA / "tables" / "morocco_regions_rgph2024.csv"
PROVINCES = DATA / "tables" / "morocco_provinces_rgph2024.csv"
REGIONS_SHA = hashlib.sha256(REGIONS.read_bytes()).hexdigest()
# Fields whose values depend on the moment or the chain; compared separately.
VOLATILE = ("seq", "at", "prev_hash", "hash")


def run(*args: str, home: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KHAZNA_HOME": str(home), **extra_env}
    return subprocess.run(khazna_cmd(*args), env=env, capture_output=True, text=True)


def all_entries(api: Api) -> list[dict[str, Any]]:
    """Every entry, oldest first, as the hub admin reads them."""
    r = api.http.get(f"{API}/audit", params={"limit": 1000}, headers=api.auth(api.admin))
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["entries"]))


def stable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in VOLATILE}


def token_id(api: Api, token: str) -> int:
    tid = api.hub.accounts.authenticate(token).token_id
    assert tid is not None
    return tid


# what gets written -----------------------------------------------------------------------


def test_creating_an_organization_and_adding_a_member_are_the_first_entries(api: Api) -> None:
    admin = token_id(api, api.admin)
    assert [stable(e) for e in all_entries(api)] == [
        {
            "actor": "admin",
            "token_id": admin,
            "action": "organization.create",
            "org": ORG,
            "dataset": None,
            "version": None,
            "detail": {},
            "client": "testclient",
        },
        {
            "actor": "admin",
            "token_id": admin,
            "action": "membership.change",
            "org": ORG,
            "dataset": None,
            "version": None,
            "detail": {"user": "nadia", "role": "editor"},
            "client": "testclient",
        },
    ]


def test_an_upload_and_a_download_leave_exact_entries(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": "vaccination", "access": "registered"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    url = f"{API}/datasets/{ORG}/vaccination/files/{REGIONS.name}"
    r = api.http.put(url, content=REGIONS.read_bytes(), headers=api.auth(api.editor))
    assert r.status_code == 200, r.text
    r = api.http.get(url, headers=api.auth(api.outsider))
    assert r.status_code == 200 and r.content == REGIONS.read_bytes()
    r = api.http.get(url, headers={**api.auth(api.outsider), "Range": "bytes=0-9"})
    assert r.status_code == 206
    # HEAD sends no data: no entry.
    assert api.http.head(url, headers=api.auth(api.outsider)).status_code == 200

    editor, outsider = token_id(api, api.editor), token_id(api, api.outsider)
    subject = {"org": ORG, "dataset": "vaccination", "client": "testclient"}
    size = REGIONS.stat().st_size
    assert [stable(e) for e in all_entries(api)[2:]] == [
        {
            "actor": "nadia",
            "token_id": editor,
            "action": "dataset.create",
            "version": 0,
            "detail": {"access": "registered"},
            **subject,
        },
        {
            "actor": "nadia",
            "token_id": editor,
            "action": "upload",
            "version": 1,
            "detail": {"files": [{"name": REGIONS.name, "sha256": REGIONS_SHA, "size": size}]},
            **subject,
        },
        {
            "actor": "startup",
            "token_id": outsider,
            "action": "download",
            "version": 1,
            "detail": {"file": REGIONS.name, "sha256": REGIONS_SHA, "status": 200},
            **subject,
        },
        {
            "actor": "startup",
            "token_id": outsider,
            "action": "download",
            "version": 1,
            "detail": {
                "file": REGIONS.name,
                "sha256": REGIONS_SHA,
                "status": 206,
                "range": f"bytes 0-9/{size}",
            },
            **subject,
        },
    ]


def test_a_committed_upload_session_is_one_upload_entry(api: Api) -> None:
    data = b"annee,cas\n2024,12\n"
    digest = hashlib.sha256(data).hexdigest()
    auth = api.auth(api.editor)
    assert api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "paludisme"}, headers=auth
    ).is_success
    s = api.http.post(
        f"{API}/datasets/{ORG}/paludisme/uploads",
        json={"files": [{"name": "cas.csv", "size": len(data)}]},
        headers=auth,
    ).json()
    assert api.http.put(f"{API}/uploads/{s['id']}/files/cas.csv", content=data, headers=auth)
    assert api.http.post(f"{API}/uploads/{s['id']}/commit", headers=auth).status_code == 200
    assert stable(all_entries(api)[-1]) == {
        "actor": "nadia",
        "token_id": token_id(api, api.editor),
        "action": "upload",
        "org": ORG,
        "dataset": "paludisme",
        "version": 1,
        "detail": {
            "session": s["id"],
            "files": [{"name": "cas.csv", "sha256": digest, "size": len(data)}],
        },
        "client": "testclient",
    }


def test_a_query_is_logged_with_its_sql_once_per_dataset_it_read(api: Api) -> None:
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    publish(api, "provinces", (PROVINCES.name, PROVINCES.read_bytes()))
    regions = "ministere_sante_recensement_morocco_regions_rgph2024"
    provinces = "ministere_sante_provinces_morocco_provinces_rgph2024"
    before = len(all_entries(api))

    one = f"SELECT count(*) AS n FROM {regions}"
    r = api.http.post(f"{API}/sql", json={"sql": one}, headers=api.auth(api.outsider))
    assert r.status_code == 200, r.text
    both = f"SELECT count(*) FROM {regions} r, {provinces} p WHERE false"
    r = api.http.post(f"{API}/sql", json={"sql": both}, headers={"Accept": "text/csv"})
    assert r.status_code == 200, r.text
    r = api.http.post(f"{API}/sql", json={"sql": "SELECT 1"})
    assert r.status_code == 200, r.text

    outsider = token_id(api, api.outsider)
    query = {"action": "query", "client": "testclient", "version": 1}
    new = all_entries(api)[before:]
    assert [stable(e) for e in new] == [
        {
            "actor": "startup",
            "token_id": outsider,
            "org": ORG,
            "dataset": "recensement",
            "detail": {"sql": one, "tables": [regions], "format": "json"},
            **query,
        },
        {
            "actor": None,
            "token_id": None,
            "org": ORG,
            "dataset": "provinces",
            "detail": {"sql": both, "tables": sorted([regions, provinces]), "format": "csv"},
            **query,
        },
        {
            "actor": None,
            "token_id": None,
            "org": ORG,
            "dataset": "recensement",
            "detail": {"sql": both, "tables": sorted([regions, provinces]), "format": "csv"},
            **query,
        },
        {
            "actor": None,
            "token_id": None,
            "org": None,
            "dataset": None,
            "detail": {"sql": "SELECT 1", "tables": [], "format": "json"},
            **{**query, "version": None},
        },
    ]
    # The two entries of one query are consecutive and share their time.
    assert new[2]["seq"] == new[1]["seq"] + 1 and new[2]["at"] == new[1]["at"]


def test_a_query_is_logged_with_the_version_its_tables_are_of(api: Api) -> None:
    # The second upload makes version 2 of the dataset: the table is now that version's.
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    publish(api, "recensement", (PROVINCES.name, PROVINCES.read_bytes()))
    regions = "ministere_sante_recensement_morocco_regions_rgph2024"
    before = len(all_entries(api))
    one = f"SELECT count(*) FROM {regions}"
    r = api.http.post(f"{API}/sql", json={"sql": one})
    assert r.json()["rows"] == [[12]]
    (entry,) = all_entries(api)[before:]
    assert (entry["action"], entry["org"], entry["dataset"], entry["version"]) == (
        "query",
        ORG,
        "recensement",
        2,
    )


def test_reading_a_table_leaves_rows_schema_and_profile_entries(api: Api) -> None:
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    base = f"{API}/tables/{ORG}/recensement/{REGIONS.name}"
    auth = api.auth(api.outsider)
    assert (
        api.http.get(f"{base}/rows?limit=2&sort=-population_2024", headers=auth).status_code == 200
    )
    assert api.http.get(f"{base}/schema", headers=auth).status_code == 200
    assert api.http.get(f"{base}/profile?version=1", headers=auth).status_code == 200
    sql_name = "ministere_sante_recensement_morocco_regions_rgph2024"
    common = {
        "actor": "startup",
        "token_id": token_id(api, api.outsider),
        "org": ORG,
        "dataset": "recensement",
        "version": 1,
        "client": "testclient",
    }
    file = {"file": REGIONS.name, "sql_name": sql_name}
    assert [stable(e) for e in all_entries(api)[-3:]] == [
        {"action": "rows", "detail": {**file, "query": "limit=2&sort=-population_2024"}, **common},
        {"action": "schema", "detail": file, **common},
        {"action": "profile", "detail": file, **common},
    ]


def test_every_refusal_is_logged_with_the_rule_that_refused(api: Api) -> None:
    auth = api.auth(api.editor)
    for name, access in (("dossiers", "restricted"), ("inscrits", "registered")):
        r = api.http.post(
            f"{API}/datasets", json={"org": ORG, "name": name, "access": access}, headers=auth
        )
        assert r.status_code == 201, r.text
        r = api.http.put(f"{API}/datasets/{ORG}/{name}/files/a.txt", content=b"x", headers=auth)
        assert r.status_code == 200, r.text
    before = len(all_entries(api))

    restricted = f"{API}/datasets/{ORG}/dossiers/files/a.txt"
    r = api.http.get(restricted, headers=api.auth(api.outsider))
    assert r.status_code == 403
    registered = f"{API}/datasets/{ORG}/inscrits/files/a.txt"
    assert api.http.get(registered).status_code == 401
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "pirate"}, headers=api.auth(api.outsider)
    )
    assert r.status_code == 403

    outsider = token_id(api, api.outsider)
    assert [stable(e) for e in all_entries(api)[before:]] == [
        {
            "actor": "startup",
            "token_id": outsider,
            "action": "denied",
            "org": ORG,
            "dataset": "dossiers",
            "version": None,
            "detail": {
                "status": 403,
                "rule": f"dataset {ORG}/dossiers is restricted: its data needs an approved "
                f"access request (POST /api/v1/datasets/{ORG}/dossiers/access-requests, or "
                f"khazna access request {ORG}/dossiers --purpose TEXT) or membership of its "
                "organization",
                "method": "GET",
                "path": restricted,
            },
            "client": "testclient",
        },
        {
            "actor": None,
            "token_id": None,
            "action": "denied",
            "org": ORG,
            "dataset": "inscrits",
            "version": None,
            "detail": {
                "status": 401,
                "rule": f"dataset {ORG}/inscrits is registered: its data needs a signed-in "
                "user; send an API token",
                "method": "GET",
                "path": registered,
            },
            "client": "testclient",
        },
        {
            "actor": "startup",
            "token_id": outsider,
            "action": "denied",
            "org": None,
            "dataset": None,
            "version": None,
            "detail": {
                "status": 403,
                "rule": f"creating datasets in {ORG!r} needs its editor role",
                "method": "POST",
                "path": f"{API}/datasets",
            },
            "client": "testclient",
        },
    ]


def test_an_access_level_change_is_a_permission_change(api: Api) -> None:
    auth = api.auth(api.editor)
    assert api.http.post(f"{API}/datasets", json={"org": ORG, "name": "lits"}, headers=auth)
    r = api.http.patch(f"{API}/datasets/{ORG}/lits", json={"access": "private"}, headers=auth)
    assert r.status_code == 200, r.text
    last = all_entries(api)[-1]
    assert (last["action"], last["dataset"], last["detail"]) == (
        "permission.change",
        "lits",
        {"changes": {"access": "private"}},
    )


# who may read it -------------------------------------------------------------------------


def test_a_publisher_reads_only_their_organizations_entries(api: Api) -> None:
    admin = api.auth(api.admin)
    assert api.http.post(f"{API}/organizations", json={"name": "onee"}, headers=admin)
    for name, access in (("barrages", "public"), ("compteurs", "private")):
        r = api.http.post(
            f"{API}/datasets", json={"org": "onee", "name": name, "access": access}, headers=admin
        )
        assert r.status_code == 201, r.text
    assert api.http.post(f"{API}/datasets", json={"org": ORG, "name": "lits"}, headers=admin)
    r = api.http.put(f"{API}/datasets/{ORG}/lits/files/a.txt", content=b"1", headers=admin)
    assert r.status_code == 200
    assert api.http.get(f"{API}/datasets/{ORG}/lits/files/a.txt").status_code == 200

    everything = all_entries(api)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    ours = [e for e in everything if e["org"] == ORG]
    assert {e["org"] for e in everything} == {ORG, "onee"}

    nadia = api.auth(api.editor)
    r = api.http.get(f"{API}/audit", headers=nadia)
    assert r.status_code == 200
    assert r.json() == {"count": len(ours), "entries": list(reversed(ours))}
    r = api.http.get(f"{API}/audit", params={"dataset": f"{ORG}/lits"}, headers=nadia)
    lits = [e for e in ours if e["dataset"] == "lits"]
    assert [e["action"] for e in lits] == ["dataset.create", "upload", "download"]
    assert r.json() == {"count": 3, "entries": list(reversed(lits))}
    r = api.http.get(
        f"{API}/audit",
        params={"dataset": f"{ORG}/lits", "action": "download", "limit": 1},
        headers=nadia,
    )
    assert r.json() == {"count": 1, "entries": [lits[2]]}

    # Another organization's log: refused, and a private dataset of it does not exist.
    r = api.http.get(f"{API}/audit", params={"dataset": "onee/barrages"}, headers=nadia)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = api.http.get(f"{API}/audit", params={"dataset": "onee/compteurs"}, headers=nadia)
    assert (r.status_code, r.json()["error"]["message"]) == (404, "no dataset onee/compteurs")
    r = api.http.get(f"{API}/audit", params={"org": "onee"}, headers=nadia)
    assert r.status_code == 403
    # Someone who publishes nothing, and nobody.
    r = api.http.get(f"{API}/audit", headers=api.auth(api.outsider))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert api.http.get(f"{API}/audit").status_code == 401
    # A plain member of the organization is not a publisher.
    r = api.http.put(
        f"{API}/organizations/{ORG}/members",
        json={"user": "startup", "role": "member"},
        headers=admin,
    )
    assert r.status_code == 204
    assert api.http.get(f"{API}/audit", headers=api.auth(api.outsider)).status_code == 403

    # The admin sees everything, the refusals above included.
    after = all_entries(api)
    assert after[: len(everything)] == everything
    assert [(e["action"], e["detail"].get("status")) for e in after[len(everything) :]] == [
        ("denied", 403),
        ("denied", 403),
        ("denied", 403),
        ("denied", 401),
        ("membership.change", None),
        ("denied", 403),
    ]
    r = api.http.get(f"{API}/audit", params={"limit": 1, "offset": 1}, headers=admin)
    assert r.json() == {"count": len(after), "entries": [after[-2]]}


# the chain --------------------------------------------------------------------------------


def test_each_entry_hashes_the_one_before(api: Api) -> None:
    entries = all_entries(api)
    assert len(entries) == 2
    prev = GENESIS
    for e in entries:
        content = {k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        content_hash = hashlib.sha256(canonical.encode()).hexdigest()
        link = json.dumps(
            {"content_hash": content_hash, "prev_hash": prev, "seq": e["seq"]},
            sort_keys=True,
            separators=(",", ":"),
        )
        assert e["prev_hash"] == prev
        assert e["hash"] == hashlib.sha256(link.encode()).hexdigest()
        assert e["hash"] == entry_hash(e["seq"], prev, content_hash)
        prev = e["hash"]
    report = api.hub.verify()
    assert (report.ok, report.audit_entries_checked, report.checkpoints_checked) == (True, 2, 0)


def test_appends_from_many_threads_and_two_processes_make_one_chain(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    hub = Hub(Settings.from_env(home))
    who = Principal(user_id=None, name="robot", token_id=7)

    stop = threading.Event()
    appended: list[int] = []

    def append() -> None:
        # Until the other process is done, so that both write at the same time.
        i = 0
        while not stop.is_set() or i < 20:
            hub.audit.record(who, "download", org="o", dataset="d", detail={"i": i})
            i += 1
        appended.append(i)

    script = (
        "from khazna.config import Settings\n"
        "from khazna.hub import Hub\n"
        "hub = Hub(Settings.from_env())\n"
        "import time\n"
        "for i in range(100):\n"
        "    hub.audit.record(None, 'read', detail={'i': i}, client='other')\n"
        # A pause between its appends, as between requests: the threads' appends land between
        # them (without one, SQLite may let one side take every turn for a while).
        "    time.sleep(0.005)\n"
    )
    other = subprocess.Popen(
        [khazna_cmd()[0], "-c", script], env={**os.environ, "KHAZNA_HOME": str(home)}
    )
    threads = [threading.Thread(target=append) for _ in range(3)]
    for t in threads:
        t.start()
    code = other.wait(60)
    stop.set()
    for t in threads:
        t.join()
    assert code == 0
    total = 100 + sum(appended)
    report = hub.audit.verify()
    assert (report.entries, report.problems) == (total, [])
    assert hub.audit.entries(Principal(1, "root", is_admin=True), limit=1)["count"] == total
    with hub.engine.connect() as conn:
        clients = list(conn.exec_driver_sql("SELECT client FROM audit_entries ORDER BY seq"))
    clients = [c for (c,) in clients]
    # The other process's entries are among the threads', not all before or after them.
    first, last = clients.index("other"), len(clients) - 1 - clients[::-1].index("other")
    assert None in clients[first:last], (first, last, total)
    hub.close()


def test_the_head_is_signed_every_n_entries(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), audit_checkpoint_every=3)
    hub = Hub(settings)
    for i in range(7):
        hub.audit.record(None, "read", detail={"i": i})
    with hub.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT seq, hash FROM audit_checkpoints ORDER BY seq").all()
        hashes = dict(conn.exec_driver_sql("SELECT seq, hash FROM audit_entries").all())
    assert [(seq, h) for seq, h in rows] == [(3, hashes[3]), (6, hashes[6])]
    key = tmp_path / "hub" / "keys" / "audit-ed25519.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    report = hub.verify()
    assert (report.ok, report.checkpoints_checked) == (True, 2)
    hub.close()


@pytest.fixture
def logged_hub(tmp_path: Path) -> Path:
    """A hub folder with five entries, made by a user the CLI created."""
    home = tmp_path / "hub"
    done = run("users", "add", "amina", "--admin", home=home)
    assert done.returncode == 0, done.stderr
    hub = Hub(Settings.from_env(home))
    who = hub.accounts.authenticate(done.stdout.strip().splitlines()[-1])
    for org, name in (("hcp", "rgph"), ("onee", "barrages"), ("hcp", "rgph"), ("hcp", "emploi")):
        hub.audit.record(who, "download", org=org, dataset=name, version=1, client="10.0.0.7")
    hub.close()
    return home


def sql(home: Path, statement: str) -> None:
    """Straight into the hub's metadata database (SQLite or PostgreSQL), past the hub."""
    engine = db.make_engine(Settings.from_env(home).database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_khazna_verify_passes_on_an_untouched_chain(logged_hub: Path) -> None:
    done = run("verify", home=logged_hub)
    assert done.returncode == 0, done.stdout
    assert "5 audit entries and 0 signed checkpoint(s) checked" in done.stdout
    assert "0 problem(s)" in done.stdout


def test_the_operators_decisions_on_the_hub_folder_are_logged(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    hub = Hub(Settings.from_env(home))
    system = hub.accounts.system_principal()
    _, token = hub.accounts.add_user("startup")
    hub.catalog.create_organization(system, "sante")
    hub.catalog.create_dataset(system, "sante", "dossiers", access="restricted")
    hub.access_requests.ask(hub.accounts.authenticate(token), "sante", "dossiers", "thèse")
    ref = "sante/dossiers"
    approved = run("access", "approve", ref, "startup", "--until", "2099-06-30", home=home)
    assert approved.returncode == 0, approved.stderr
    refused = run("access", "refuse", ref, "startup", "--reason", "fin du projet", home=home)
    assert refused.returncode == 0, refused.stderr
    found = hub.audit.entries(Principal(1, "root", is_admin=True))
    assert [
        (e["actor"], e["token_id"], e["action"], e["org"], e["dataset"], e["detail"], e["client"])
        for e in reversed(found["entries"])
    ] == [
        (
            operator_name(),
            None,
            "access.approve",
            "sante",
            "dossiers",
            {"user": "startup", "until": "2099-07-01T00:00:00+00:00"},
            "cli",
        ),
        (
            operator_name(),
            None,
            "access.refuse",
            "sante",
            "dossiers",
            {"user": "startup", "reason": "fin du projet"},
            "cli",
        ),
    ]
    assert "@" in operator_name()
    # A refused decision writes nothing.
    unknown = run("access", "refuse", "sante/nulle", "startup", "--reason", "x", home=home)
    assert unknown.returncode == 1
    assert hub.audit.entries(Principal(1, "root", is_admin=True))["count"] == 2
    hub.close()
    done = run("verify", home=home)
    assert done.returncode == 0, done.stdout
    assert "2 audit entries and 0 signed checkpoint(s) checked" in done.stdout


@pytest.mark.parametrize(
    ("tampering", "first"),
    [
        (
            ["UPDATE audit_entries SET actor = 'personne' WHERE seq = 3"],
            "audit entry 3: altered: its content no longer hashes to",
        ),
        (
            ["DELETE FROM audit_entries WHERE seq = 3"],
            "audit entry 3: missing: the chain jumps from entry 2 to 4 (entry 3 deleted)",
        ),
        (
            [
                "UPDATE audit_entries SET seq = -1 WHERE seq = 3",
                "UPDATE audit_entries SET seq = 3 WHERE seq = 4",
                "UPDATE audit_entries SET seq = 4 WHERE seq = -1",
            ],
            "audit entry 3: does not follow entry 2",
        ),
        (
            ["DELETE FROM audit_entries WHERE seq = 5"],
            "audit entry 5: missing: the chain ends at entry 4 but its head records 5 entries",
        ),
    ],
    ids=["edit", "delete", "swap", "delete-last"],
)
def test_khazna_verify_reports_where_the_chain_was_tampered_with(
    logged_hub: Path, tampering: list[str], first: str
) -> None:
    for statement in tampering:
        sql(logged_hub, statement)
    done = run("verify", home=logged_hub)
    assert done.returncode == 1
    damaged = [line for line in done.stdout.splitlines() if line.startswith("DAMAGED")]
    assert damaged[0].startswith(f"DAMAGED {first}"), done.stdout


def test_a_rewritten_chain_is_caught_by_its_signed_checkpoint(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), audit_checkpoint_every=2)
    hub = Hub(settings)
    for i in range(5):
        hub.audit.record(None, "read", detail={"i": i})
    # Someone with the database but not the key edits entry 3 and re-hashes the rest.
    with hub.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_entries SET actor = 'personne' WHERE seq = 3")
    from khazna.access.audit import AuditEntry

    with hub.engine.begin() as conn:
        prev = conn.exec_driver_sql("SELECT hash FROM audit_entries WHERE seq = 2").scalar_one()
        rows = conn.exec_driver_sql("SELECT * FROM audit_entries WHERE seq >= 3 ORDER BY seq")
        for row in rows.all():
            entry = dataclasses.replace(AuditEntry.from_row(row), prev_hash=prev)
            prev = entry.computed_hash()
            conn.execute(
                text("UPDATE audit_entries SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": entry.prev_hash, "h": prev, "s": entry.seq},
            )
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})
    problems = [str(p) for p in hub.audit.verify().problems]
    assert problems == [
        "audit entry 4: differs from the signed checkpoint made at this position: "
        "the chain was rewritten"
    ]
    # Moving the checkpoint along too breaks its signature.
    with hub.engine.begin() as conn:
        new = conn.exec_driver_sql("SELECT hash FROM audit_entries WHERE seq = 4").scalar_one()
        conn.execute(text("UPDATE audit_checkpoints SET hash = :h WHERE seq = 4"), {"h": new})
    problems = [str(p) for p in hub.audit.verify().problems]
    assert problems == [
        "audit entry 4: its checkpoint's signature does not verify with the hub key"
    ]
    hub.close()


# export and offline check -----------------------------------------------------------------


def test_an_export_checks_offline_and_a_modified_one_fails(
    logged_hub: Path, tmp_path: Path
) -> None:
    public = run("audit", "public-key", home=logged_hub)
    assert public.returncode == 0, public.stderr
    key = public.stdout.strip()
    assert key.startswith("ed25519:") and len(key) == len("ed25519:") + 44
    pub_file = logged_hub / "keys" / "audit-ed25519.pub"
    assert pub_file.read_text() == key + "\n"

    export = tmp_path / "audit.jsonl"
    done = run("audit", "export", "-o", str(export), home=logged_hub)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [x["type"] for x in lines] == [
        "khazna-audit-export",
        *["entry"] * 6,
        "checkpoint",
    ]
    assert (lines[0]["public_key"], lines[0]["dataset"]) == (key, None)
    # users add, four downloads, and the export itself.
    assert [x["action"] for x in lines[1:7]] == ["user.create", *["download"] * 4, "audit.export"]
    assert (lines[1]["actor"], lines[1]["client"], lines[1]["detail"]) == (
        operator_name(),
        "cli",
        {"user": "amina", "admin": True},
    )
    assert (lines[-1]["seq"], lines[-1]["hash"]) == (6, lines[6]["hash"])
    assert "6 entries; checkpoint at 6 signed by key" in done.stderr

    # The offline check needs no hub folder: run it from elsewhere.
    elsewhere = tmp_path / "nowhere"
    ok = run("audit", "check", str(export), "--public-key", key, home=elsewhere)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK, 6 entries and 0 as hashes only, chain 1-6 signed at" in ok.stdout
    assert not elsewhere.exists()
    ok = run("audit", "check", str(export), "--public-key", str(pub_file), home=elsewhere)
    assert ok.returncode == 0, ok.stdout

    # The same export with entry 3's client changed.
    forged = tmp_path / "forged.jsonl"
    changed = [dict(x, client="192.168.1.1") if x.get("seq") == 3 else x for x in lines[:-1]]
    forged.write_text("".join(json.dumps(x) + "\n" for x in [*changed, lines[-1]]))
    bad = run("audit", "check", str(forged), "--public-key", key, home=elsewhere)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith("BAD audit entry 3: altered")
    assert "damaged, first bad position 3" in bad.stdout

    # Entry 4 left out.
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(json.dumps(x) + "\n" for x in lines if x.get("seq") != 4))
    bad = run("audit", "check", str(cut), "--public-key", key, home=elsewhere)
    assert bad.returncode == 1
    assert "BAD audit entry 4: missing: the chain jumps from entry 3 to 5" in bad.stdout

    # A key that is not the hub's.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from khazna.access.audit import public_key_text

    other = public_key_text(Ed25519PrivateKey.generate().public_key())
    wrong = run("audit", "check", str(export), "--public-key", other, home=elsewhere)
    assert wrong.returncode == 1
    assert (
        f"BAD audit entry 6: the checkpoint's signature does not verify with the public key "
        f"{other}" in wrong.stdout
    )
    garbage = run("audit", "check", str(export), "--public-key", "ed25519:abc", home=elsewhere)
    assert garbage.returncode == 1
    assert "a public key is 'ed25519:' and 44 base64 characters" in garbage.stderr


def test_a_dataset_export_shows_its_entries_and_only_hashes_of_the_others(
    logged_hub: Path, tmp_path: Path
) -> None:
    export = tmp_path / "rgph.jsonl"
    done = run("audit", "export", "-o", str(export), "--dataset", "hcp/rgph", home=logged_hub)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(x["type"], x.get("seq")) for x in lines] == [
        ("khazna-audit-export", None),
        ("redacted", 1),
        ("entry", 2),
        ("redacted", 3),
        ("entry", 4),
        ("redacted", 5),
        ("redacted", 6),
        ("checkpoint", 6),
    ]
    assert sorted(lines[1]) == ["content_hash", "hash", "prev_hash", "seq", "type"]
    text = export.read_text()
    assert "barrages" not in text and "user.create" not in text and "audit.export" not in text
    key = run("audit", "public-key", home=logged_hub).stdout.strip()
    ok = run("audit", "check", str(export), "--public-key", key, home=tmp_path / "x")
    assert ok.returncode == 0, ok.stdout
    assert "OK, 2 entries for hcp/rgph and 4 as hashes only, chain 1-6" in ok.stdout


def test_a_lost_head_row_is_remade_from_the_last_entry(tmp_path: Path) -> None:
    hub = Hub(Settings.from_env(tmp_path / "hub"))
    for i in range(3):
        hub.audit.record(None, "read", detail={"i": i})
    hub.close()
    sql(tmp_path / "hub", "DELETE FROM audit_head")
    hub = Hub(Settings.from_env(tmp_path / "hub"))
    assert hub.audit.record(None, "read").seq == 4
    report = hub.audit.verify()
    assert (report.entries, report.problems) == (4, [])
    hub.close()


@pytest.mark.parametrize(
    ("trusted", "client"),
    [(None, "203.0.113.7"), ("192.0.2.1", "127.0.0.1")],
    ids=["behind-a-trusted-proxy", "forwarded-header-from-a-stranger"],
)
def test_the_audit_log_sees_the_client_behind_a_trusted_proxy(
    live_factory: Any, trusted: str | None, client: str
) -> None:
    # By default a proxy on the same machine (127.0.0.1) is believed; KHAZNA_TRUSTED_PROXIES
    # names others, and then a header from anyone else is ignored.
    server = live_factory({"KHAZNA_TRUSTED_PROXIES": trusted} if trusted else {})
    with server.client() as c:
        r = c.post(
            "/api/v1/sql",
            json={"sql": "SELECT 42"},
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert r.json()["rows"] == [[42]]
        entries = c.get("/api/v1/audit", params={"limit": 10}).json()["entries"]
    query = next(e for e in entries if e["action"] == "query")
    assert (query["client"], query["detail"]["sql"]) == (client, "SELECT 42")


# a change and its entry: one transaction ----------------------------------------------------

# The changes whose entry is written in their transaction, each as (what to set up, the
# request, what the hub looks like without the change, what it looks like with it).


def _upload(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    auth = api.auth(api.editor)
    r = api.http.post(f"{API}/datasets", json={"org": ORG, "name": "lits"}, headers=auth)
    assert r.status_code == 201, r.text
    request = {"method": "PUT", "url": f"{API}/datasets/{ORG}/lits/files/lits.csv"}
    return {**request, "content": b"region,lits\nOriental,812\n", "headers": auth}, {
        "actor": "nadia",
        "token_id": token_id(api, api.editor),
        "action": "upload",
        "org": ORG,
        "dataset": "lits",
        "version": 1,
        "detail": {
            "files": [
                {
                    "name": "lits.csv",
                    "sha256": hashlib.sha256(b"region,lits\nOriental,812\n").hexdigest(),
                    "size": 25,
                }
            ]
        },
        "client": "testclient",
    }


def _upload_state(api: Api) -> Any:
    r = api.http.get(f"{API}/datasets/{ORG}/lits", headers=api.auth(api.editor))
    versions = api.http.get(f"{API}/datasets/{ORG}/lits/versions", headers=api.auth(api.editor))
    return (
        r.json()["version"],
        [f["name"] for f in r.json()["files"]],
        len(versions.json()["versions"]),
    )


def _membership(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    request = {"method": "PUT", "url": f"{API}/organizations/{ORG}/members"}
    return {
        **request,
        "json": {"user": "nadia", "role": "member"},
        "headers": api.auth(api.admin),
    }, {
        "actor": "admin",
        "token_id": token_id(api, api.admin),
        "action": "membership.change",
        "org": ORG,
        "dataset": None,
        "version": None,
        "detail": {"user": "nadia", "role": "member"},
        "client": "testclient",
    }


def _membership_state(api: Api) -> Any:
    return api.http.get(f"{API}/me", headers=api.auth(api.editor)).json()["organizations"]


def _revocation(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    auth = api.auth(api.outsider)
    r = api.http.post(f"{API}/tokens", json={"label": "notebook"}, headers=auth)
    assert r.status_code == 201, r.text
    request = {"method": "DELETE", "url": f"{API}/tokens/{r.json()['id']}", "headers": auth}
    return request, {
        "actor": "startup",
        "token_id": token_id(api, api.outsider),
        "action": "token.revoke",
        "org": None,
        "dataset": None,
        "version": None,
        "detail": {"token": r.json()["id"]},
        "client": "testclient",
    }


def _revocation_state(api: Api) -> Any:
    tokens = api.http.get(f"{API}/tokens", headers=api.auth(api.outsider)).json()["tokens"]
    return [(t["label"], t["state"]) for t in tokens]


CHANGES = {
    "upload": (_upload, _upload_state, (0, [], 0), (1, ["lits.csv"], 1)),
    "membership": (_membership, _membership_state, {ORG: "editor"}, {ORG: "member"}),
    "token-revocation": (
        _revocation,
        _revocation_state,
        [("notebook", "active"), ("created with the user", "active")],
        [("notebook", "revoked"), ("created with the user", "active")],
    ),
}


def _lose_connection(conn: Any, entries: Any) -> None:
    # As if the process died between its last statement and its commit: the database
    # connection goes, and the database rolls back what it had not committed.
    conn.invalidate()


def _raise(conn: Any, entries: Any) -> None:
    raise RuntimeError("failure after the audit entry was written, before the commit")


@pytest.mark.parametrize("how", [_raise, _lose_connection], ids=["error", "lost-connection"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_that_fails_before_its_commit_leaves_neither_it_nor_its_entry(
    api: Api, change: str, how: Any
) -> None:
    setup, state, without, done = CHANGES[change]
    request, entry = setup(api)
    before = all_entries(api)
    assert state(api) == without

    # The seam: a hook called in the change's transaction after its entry was appended.
    api.hub.audit.after_append.append(how)
    try:
        r = api.http.request(**request)
    finally:
        api.hub.audit.after_append.remove(how)
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "internal", "message": "internal error; the hub's log has the details"}
    }
    assert state(api) == without
    assert all_entries(api) == before
    report = api.hub.verify()
    assert (report.ok, report.audit_entries_checked) == (True, len(before))

    # Made again, the change and its entry are there, the entry next in the chain.
    r = api.http.request(**request)
    assert r.status_code in (200, 204), r.text
    after = all_entries(api)
    assert after[: len(before)] == before
    assert [stable(e) for e in after[len(before) :]] == [entry]
    assert after[-1]["seq"] == len(before) + 1
    assert state(api) == done
    assert api.hub.verify().ok


@pytest.mark.parametrize("change", list(CHANGES))
def test_when_the_audit_log_cannot_be_written_the_change_is_not_made(api: Api, change: str) -> None:
    setup, state, without, done = CHANGES[change]
    request, entry = setup(api)
    before = all_entries(api)
    # A stray row where the next entry goes: the append breaks the log's primary key.
    stray = len(before) + 1
    with api.hub.engine.begin() as conn:
        conn.execute(
            db.audit_entries.insert().values(
                seq=stray, at="2026-01-01T00:00:00+00:00", action="stray", detail="{}",
                prev_hash=GENESIS, hash=GENESIS,
            )
        )  # fmt: skip

    r = api.http.request(**request)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "audit_failure"
    assert error["message"].startswith(
        f"the audit log could not be written (IntegrityError), so {entry['action']!r} was not "
        "made; nothing changed"
    )
    assert state(api) == without
    with api.hub.engine.begin() as conn:
        conn.execute(db.audit_entries.delete().where(db.audit_entries.c.seq == stray))
    assert all_entries(api) == before
    assert api.hub.verify().ok

    r = api.http.request(**request)
    assert r.status_code in (200, 204), r.text
    assert [stable(e) for e in all_entries(api)[len(before) :]] == [entry]
    assert state(api) == done
    assert api.hub.verify().ok


def test_a_checkpoint_of_a_change_rolled_back_is_not_kept(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), audit_checkpoint_every=2)
    hub = Hub(settings)
    system = hub.accounts.system_principal()
    hub.audit.record(None, "read")
    hub.audit.after_append.append(_raise)
    with pytest.raises(RuntimeError):
        note = AuditNote(system, "organization.create", {}, "cli")
        hub.catalog.create_organization(system, "sante", note=note)
    hub.audit.after_append.clear()
    with hub.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_checkpoints").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM organizations").scalar() == 0
    hub.catalog.create_organization(system, "sante", note=note)
    report = hub.verify()
    assert (report.ok, report.audit_entries_checked, report.checkpoints_checked) == (True, 2, 1)
    hub.close()


def test_token_creation_and_revocation_are_logged(api: Api) -> None:
    auth = api.auth(api.outsider)
    r = api.http.post(
        f"{API}/tokens",
        json={"label": "lecture", "scope": "read", "expires_at": "2099-12-31"},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    made = r.json()["id"]
    assert api.http.delete(f"{API}/tokens/{made}", headers=auth).status_code == 204
    # Revoked already: nothing changes, nothing is written.
    assert api.http.delete(f"{API}/tokens/{made}", headers=auth).status_code == 204
    common = {
        "actor": "startup",
        "token_id": token_id(api, api.outsider),
        "org": None,
        "dataset": None,
        "version": None,
        "client": "testclient",
    }
    assert [stable(e) for e in all_entries(api)[2:]] == [
        {
            "action": "token.create",
            "detail": {
                "label": "lecture",
                "scope": "read",
                "expires_at": "2100-01-01T00:00:00Z",
                "datasets": None,
                "organizations": None,
                "token": made,
            },
            **common,
        },
        {"action": "token.revoke", "detail": {"token": made}, **common},
    ]


def test_concurrent_changes_and_reads_make_one_chain_in_the_order_of_the_versions(
    tmp_path: Path,
) -> None:
    # On PostgreSQL (KHAZNA_TEST_DATABASE_URL) the writers take the chain's head as a row
    # lock in their own transactions; on SQLite they queue on the process's writer lock.
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), audit_checkpoint_every=7)
    hub = Hub(settings)
    system = hub.accounts.system_principal()
    hub.catalog.create_organization(system, "sante")
    names = ("lits", "vaccins")
    for name in names:
        hub.catalog.create_dataset(system, "sante", name)
    commits_per_thread, failures = 6, []

    def write(worker: int) -> None:
        try:
            for i in range(commits_per_thread):
                data = f"worker,i\n{worker},{i}\n".encode()
                writer = hub.blobs.writer(1 << 20)
                writer.write(data)
                blob = writer.commit()
                note = AuditNote(system, "upload", {"worker": worker, "i": i}, "cli")
                hub.catalog.commit_version(
                    system, "sante", names[worker % 2], {"a.csv": blob}, note=note
                )
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    def read() -> None:
        for i in range(30):
            hub.audit.record(None, "download", org="sante", dataset="lits", detail={"i": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    report = hub.verify()
    uploads = 4 * commits_per_thread
    assert (report.ok, report.problems, report.audit_entries_checked) == (True, [], uploads + 30)
    assert report.checkpoints_checked == (uploads + 30) // 7
    with hub.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT dataset, version, detail FROM audit_entries WHERE action = 'upload' "
            "ORDER BY seq"
        ).all()
    for name in names:
        # Each dataset's versions appear in the log in the order they were made, each once,
        # and each entry names the version that holds what its writer uploaded.
        logged = [(int(v), json.loads(detail)) for d, v, detail in rows if d == name]
        assert [v for v, _ in logged] == list(range(1, uploads // 2 + 1))
        made = {
            v["version"]: v["files"][0]["sha256"]
            for v in hub.catalog.versions(system, "sante", name)
        }
        assert {
            v: hashlib.sha256(f"worker,i\n{d['worker']},{d['i']}\n".encode()).hexdigest()
            for v, d in logged
        } == made
    hub.close()
