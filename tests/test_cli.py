"""The `khazna` command, as operators and users run it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select

from khazna import db
from khazna.config import Settings
from khazna.demo import DATA_DIR, load_demo, manifest
from khazna.hub import Hub
from tests.conftest import DATA, LiveServer, khazna_cmd, tamper_blob


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        khazna_cmd(*args), env=env or dict(os.environ), capture_output=True, text=True, cwd=cwd
    )


def test_users_add_prints_a_working_token_as_the_last_line(tmp_path: Path) -> None:
    env = {**os.environ, "KHAZNA_HOME": str(tmp_path / "hub")}
    done = run("users", "add", "amina", "--admin", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert token.startswith("kz_") and len(token) == 46
    hub = Hub(Settings.from_env(tmp_path / "hub"))
    who = hub.accounts.authenticate(token)
    assert (who.name, who.is_admin) == ("amina", True)
    # Only a hash of the token is stored.
    with hub.engine.connect() as conn:
        rows = [" ".join(map(str, r)) for r in conn.execute(select(db.tokens))]
    assert len(rows) == 1
    assert token not in rows[0]
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]
    if hub.engine.dialect.name == "sqlite":  # nor anywhere in the database file
        assert token.encode() not in (tmp_path / "hub" / "khazna.db").read_bytes()
    hub.close()

    again = run("users", "add", "amina", env=env)
    assert again.returncode == 1
    assert "user 'amina' already exists" in again.stderr
    bad = run("users", "add", "Amina Alaoui", env=env)
    assert bad.returncode == 1
    assert "invalid user name 'Amina Alaoui'" in bad.stderr


def test_push_pull_and_search_from_the_command_line(live: LiveServer, tmp_path: Path) -> None:
    env = {**live.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    regions = DATA / "tables" / "morocco_regions_rgph2024.csv"
    provinces = DATA / "tables" / "morocco_provinces_rgph2024.csv"
    pushed = run(
        "push",
        "hcp/rgph-2024",
        str(regions),
        str(provinces),
        "--title",
        "Recensement général 2024",
        "-m",
        "première publication",
        env=env,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "hcp/rgph-2024: version 1" in pushed.stdout
    assert hashlib.sha256(regions.read_bytes()).hexdigest() in pushed.stdout

    anonymous = {**env, "KHAZNA_TOKEN": ""}
    pulled = run("pull", "hcp/rgph-2024", "-o", str(tmp_path / "out"), env=anonymous)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / regions.name).read_bytes() == regions.read_bytes()
    assert (tmp_path / "out" / provinces.name).read_bytes() == provinces.read_bytes()

    # A second version; --version 1 still gets the first.
    changed = tmp_path / regions.name
    changed.write_bytes(regions.read_bytes() + b"99,99,Test,\xd8\xaa,1,1,1,1\n")
    assert run("push", "hcp/rgph-2024", str(changed), env=env).returncode == 0
    old = run("pull", "hcp/rgph-2024", "-o", str(tmp_path / "v1"), "--version", "1", env=anonymous)
    assert old.returncode == 0, old.stderr
    assert (tmp_path / "v1" / regions.name).read_bytes() == regions.read_bytes()
    versions = httpx.get(live.url + "/api/v1/datasets/hcp/rgph-2024/versions").json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["message"] == "première publication"

    found = run("search", "recensement", env=anonymous)
    assert found.returncode == 0, found.stderr
    assert "1 result(s)" in found.stdout
    assert "hcp/rgph-2024" in found.stdout


def test_client_commands_report_errors_in_one_line(live: LiveServer, tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("a\n1\n")
    wrong = {**live.env(), "KHAZNA_TOKEN": "kz_not-a-token", "XDG_CACHE_HOME": str(tmp_path)}
    denied = run("push", "hcp/x", str(f), env=wrong)
    assert denied.returncode == 1
    assert denied.stderr.strip() == "error: invalid or revoked API token"
    missing = run("pull", "hcp/nothing-here", "-o", str(tmp_path), env=live.env())
    assert missing.returncode == 1
    assert "no organization named 'hcp'" in missing.stderr or "no dataset hcp/nothing-here" in (
        missing.stderr
    )
    down = run("search", "x", env={**live.env(), "KHAZNA_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1
    assert "cannot reach the hub at http://127.0.0.1:9" in down.stderr


def test_verify_finds_a_damaged_or_missing_blob(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    hub = Hub(Settings.from_env(home))
    load_demo(hub)
    env = {**os.environ, "KHAZNA_HOME": str(home)}
    files = sum(len(d["files"]) for d in manifest()["datasets"])

    ok = run("verify", env=env)
    assert ok.returncode == 0, ok.stdout
    assert f"{files} blob(s) checked, 0 problem(s)" in ok.stdout

    csv = DATA_DIR / "tables" / "morocco_regions_rgph2024.csv"
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    tamper_blob(hub, digest, csv.read_bytes().replace(b"4030222", b"4030223"))
    tif = DATA_DIR / "raster" / "S2A_29RKH_20200219_L2A_B04_red_100m_cog.tif"
    gone = hashlib.sha256(tif.read_bytes()).hexdigest()
    tamper_blob(hub, gone, None)

    damaged = run("verify", env=env)
    assert damaged.returncode == 1
    assert f"blob {digest} is damaged" in damaged.stdout
    assert f"blob {gone} is missing" in damaged.stdout
    assert f"{files} blob(s) checked, 2 problem(s)" in damaged.stdout


def test_loading_the_demo_twice_changes_nothing(tmp_path: Path) -> None:
    hub = Hub(Settings.from_env(tmp_path / "hub"))
    first = load_demo(hub)
    assert sorted(first) == sorted(f"demo/{d['name']}" for d in manifest()["datasets"])
    who = hub.accounts.system_principal()
    before = {d["name"]: d for d in hub.catalog.datasets_of(who, "demo")}
    assert load_demo(hub) == []
    assert {d["name"]: d for d in hub.catalog.datasets_of(who, "demo")} == before
    assert all(d["version"] == 1 for d in before.values())
    regions = before["morocco-regions-rgph2024"]
    assert regions["title"]["fr"].startswith("Population")
    assert {f["name"] for f in regions["files"]} == {
        "morocco_regions_rgph2024.csv",
        "morocco_regions_rgph2024.cp1256.csv",
    }


def test_serve_demo_shows_the_demo_datasets_on_the_home_page(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "KHAZNA_HOME": str(tmp_path / "hub")}
    proc = subprocess.Popen(
        khazna_cmd("serve", "--demo", "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert page.status_code == 200
        for d in manifest()["datasets"]:
            assert f'href="/datasets/demo/{d["name"]}?lang=fr"' in page.text
        arabic = httpx.get(f"http://127.0.0.1:{port}/?lang=ar").text
        assert '<html lang="ar" dir="rtl">' in arabic
        regions = next(d for d in manifest()["datasets"] if d["name"] == "morocco-regions-rgph2024")
        assert regions["title"]["ar"] in arabic
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_user_for_an_unknown_organization_is_not_created(tmp_path: Path) -> None:
    env = {**os.environ, "KHAZNA_HOME": str(tmp_path / "hub")}
    refused = run("users", "add", "youssef", "--org", "nulle-part", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: no organization named 'nulle-part'"
    bad_role = run("users", "add", "youssef", "--org", "nulle-part", "--role", "chef", env=env)
    assert bad_role.returncode == 1
    # Nothing was created, so the name is still free and a token comes out.
    created = run("users", "add", "youssef", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("kz_")


def test_bad_configuration_is_reported_in_one_line(tmp_path: Path) -> None:
    base = {**os.environ, "KHAZNA_HOME": str(tmp_path / "hub")}
    cases = {
        "KHAZNA_BODY_IDLE_TIMEOUT_S=0": (
            "error: KHAZNA_BODY_IDLE_TIMEOUT_S must be more than 0 seconds"
        ),
        "KHAZNA_MAX_UPLOAD_BYTES=lots": (
            "error: KHAZNA_MAX_UPLOAD_BYTES must be a number of bytes, got 'lots'"
        ),
        "KHAZNA_DATABASE_URL=mysql://127.0.0.1/khazna": (
            "error: KHAZNA_DATABASE_URL must be an sqlite:/// or postgresql:// URL, "
            "got 'mysql://127.0.0.1/khazna'"
        ),
        # Port 9 (discard) has no database behind it; the password is not printed.
        "KHAZNA_DATABASE_URL=postgresql://khazna:secret@127.0.0.1:9/khazna": (
            "error: cannot open the metadata database "
            "postgresql+psycopg://khazna:***@127.0.0.1:9/khazna: connection failed: "
            'connection to server at "127.0.0.1", port 9 failed: Connection refused'
        ),
    }
    for setting, message in cases.items():
        name, value = setting.split("=", 1)
        done = run("verify", env={**base, name: value})
        assert done.returncode == 1, setting
        assert done.stderr.strip() == message
