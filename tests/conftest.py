"""Fixtures: a hub in a temporary folder, the app in-process, and real servers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from khazna import db
from khazna.app import create_app
from khazna.catalog.search import FTS_TABLE as SEARCH_TABLE
from khazna.config import Settings
from khazna.hub import Hub
from khazna.storage.blobstore import LocalBlobStore
from khazna.storage.location import parse_s3_url
from khazna.storage.s3 import S3BlobStore, make_client
from tests.seaweedfs import SeaweedFS

REPO = Path(__file__).resolve().parent.parent
_SHARED = REPO.parent / "shared" / "data"
# The fixtures shipped with the repository are byte-exact copies of ../shared/data.
DATA = _SHARED if _SHARED.is_dir() else REPO / "khazna" / "demo" / "data"
# Every real fixture file, SOURCES.md included: all of them must round-trip byte-exact.
DATA_FILES = sorted(p for p in DATA.rglob("*") if p.is_file())
# KHAZNA_TEST_STORAGE=s3 runs every test with blobs and Parquet in SeaweedFS, a fresh bucket
# per test; the default keeps them on local disk.
S3_MODE = os.environ.get("KHAZNA_TEST_STORAGE", "local") == "s3"
local_disk_only = pytest.mark.skipif(S3_MODE, reason="looks at local blob files by nature")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the whole session, started on first use."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_url(seaweed: SeaweedFS) -> Iterator[str]:
    """KHAZNA_STORAGE_URL for a fresh, empty bucket, deleted after the test."""
    bucket = seaweed.new_bucket()
    yield f"s3://{bucket}?endpoint={seaweed.endpoint}"
    seaweed.drop_bucket(bucket)


@pytest.fixture(autouse=True)
def _storage_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In S3 mode, hubs made in-process and `khazna serve` subprocesses (which inherit the
    environment) store their bytes in a bucket of their own test."""
    if S3_MODE:
        monkeypatch.setenv("KHAZNA_STORAGE_URL", request.getfixturevalue("s3_url"))
    else:  # hermetic whatever the developer's shell holds
        monkeypatch.delenv("KHAZNA_STORAGE_URL", raising=False)
    monkeypatch.delenv("KHAZNA_STORAGE_JURISDICTION", raising=False)
    # Encrypted hubs are made on purpose (tests/test_encryption.py), never by the shell.
    monkeypatch.delenv("KHAZNA_ENCRYPTION_KEY_FILE", raising=False)


# The metadata database of the tests: unset, each hub keeps its own SQLite file (the
# embedded default); a PostgreSQL URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres)
# gives every test empty databases on that server, made (khazna_t_*) and dropped at the
# end through that URL.
TEST_DATABASE_URL = os.environ.get("KHAZNA_TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith(("postgresql", "postgres:"))


class Databases:
    """Migrated PostgreSQL databases, reused from test to test: emptied after each one
    (rows deleted, id sequences restarted), which takes milliseconds where creating a
    database takes most of a second."""

    def __init__(self, url: str) -> None:
        self.url = make_url(db.engine_url(url))
        self.admin: Engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.made: list[str] = []
        self.free: list[str] = []

    def url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def blank(self) -> str:
        """A new database with nothing in it; its URL. Dropped at the end of the session."""
        name = f"khazna_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        self.made.append(name)
        return self.url_of(name)

    def acquire(self) -> str:
        """An empty database at the current schema; its URL."""
        if self.free:
            return self.free.pop()
        url = self.blank()
        engine = db.make_engine(url)
        db.create_schema(engine)
        engine.dispose()
        return url

    def release(self, url: str) -> None:
        engine = create_engine(db.engine_url(url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            # Whatever the test left connected (a killed server's last sessions) goes.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            sequences = conn.execute(
                text("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")
            ).scalars()
            # Children before parents, so no foreign key is in the way.
            tables = [SEARCH_TABLE, *(t.name for t in reversed(db.metadata.sorted_tables))]
            conn.exec_driver_sql(
                "BEGIN; "
                + "".join(f"DELETE FROM {t}; " for t in tables)
                + "".join(f"ALTER SEQUENCE {s} RESTART; " for s in sequences)
                + "COMMIT"
            )
        engine.dispose()
        self.free.append(url)

    def close(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        self.admin.dispose()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases | None]:
    if not ON_POSTGRES:
        yield None
        return
    made = Databases(TEST_DATABASE_URL)
    yield made
    made.close()


# The database of each hub folder a test serves (see ``database_for``).
_homes: dict[Path, str] = {}
_fresh: list[Callable[[], str]] = []


@pytest.fixture(autouse=True)
def database(databases: Databases | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """On PostgreSQL, ``KHAZNA_DATABASE_URL`` names an empty database for this test: the
    hubs it makes in-process and the commands it runs inherit it."""
    if databases is None:
        yield None
        return
    taken: list[str] = []

    def fresh() -> str:
        taken.append(databases.acquire())
        return taken[-1]

    monkeypatch.setenv("KHAZNA_DATABASE_URL", fresh())
    _fresh.append(fresh)
    try:
        yield taken[0]
    finally:
        _fresh.clear()
        _homes.clear()
        for url in taken:
            databases.release(url)


def database_for(home: Path) -> dict[str, str]:
    """The environment that gives a served hub folder its own database on PostgreSQL:
    the test's database for the first folder, a fresh one for each other, the same one
    when a folder is served again (a restart)."""
    if not _fresh:
        return {}
    home = home.resolve()
    if home not in _homes:
        taken = set(_homes.values())
        default = os.environ["KHAZNA_DATABASE_URL"]
        _homes[home] = _fresh[0]() if default in taken else default
    return {"KHAZNA_DATABASE_URL": _homes[home]}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(Settings.from_env(tmp_path / "hub"))
    yield h
    h.close()


@dataclass
class Api:
    """The app in-process, with tokens for a few users."""

    http: TestClient
    hub: Hub
    admin: str
    editor: str  # editor of organization "ministere-sante"
    outsider: str  # signed in, member of nothing

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(hub: Hub) -> Iterator[Api]:
    _, admin = hub.accounts.add_user("admin", admin=True)
    _, editor = hub.accounts.add_user("nadia")
    _, outsider = hub.accounts.add_user("startup")
    with TestClient(create_app(hub), raise_server_exceptions=False) as http:
        a = Api(http, hub, admin, editor, outsider)
        r = http.post(
            "/api/v1/organizations",
            json={"name": "ministere-sante", "title": {"fr": "Ministère de la Santé"}},
            headers=a.auth(admin),
        )
        assert r.status_code == 201, r.text
        r = http.put(
            "/api/v1/organizations/ministere-sante/members",
            json={"user": "nadia", "role": "editor"},
            headers=a.auth(admin),
        )
        assert r.status_code == 204, r.text
        yield a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    token: str  # an admin's
    # The server's own environment: its KHAZNA_HOME and database, for commands run on its
    # hub folder (a module's server may outlive the test whose database it started with).
    environ: dict[str, str] = field(default_factory=dict)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, **kw
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "KHAZNA_URL": self.url, "KHAZNA_TOKEN": self.token}


def khazna_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "khazna", *args]


def start_server(
    home: Path,
    extra_env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    token: str | None = None,
    demo: bool = False,
) -> LiveServer:
    """Run `khazna serve` on ``home`` (``--demo``: with the demo datasets); creates an admin
    "operator" unless given its token."""
    env = {**os.environ, "KHAZNA_HOME": str(home), **database_for(home), **(extra_env or {})}
    if token is None:
        out = subprocess.run(
            khazna_cmd("users", "add", "operator", "--admin"),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = out.stdout.strip().splitlines()[-1]
    port = free_port()
    log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        khazna_cmd("serve", "--port", str(port), *(["--demo"] if demo else [])),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((home / "server.log").read_text())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return LiveServer(url, home, proc, token, env)
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("khazna serve did not answer within 30 s")


def stop_server(server: LiveServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    home = tmp_path / "live"
    home.mkdir()
    server = start_server(home)
    yield server
    stop_server(server)


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with their own settings (limits, resource limits)."""
    servers: list[LiveServer] = []

    def make(
        extra_env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
    ) -> LiveServer:
        home = tmp_path / f"live{len(servers)}"
        home.mkdir()
        server = start_server(home, extra_env, preexec)
        servers.append(server)
        return server

    yield make
    for s in servers:
        stop_server(s)


def leftovers(home: Path) -> dict[str, list[str]]:
    """Temporary files (or objects and multipart uploads) and stored blobs of a hub, on local
    disk under its folder or in the bucket KHAZNA_STORAGE_URL names."""
    url = os.environ.get("KHAZNA_STORAGE_URL")
    if not url:
        return {
            "tmp": sorted(p.name for p in (home / "tmp").glob("*")),
            "blobs": sorted(p.name for p in (home / "blobs").glob("??/??/*")),
        }
    location = parse_s3_url(url)
    client = make_client(location)
    tmp = location.key("tmp", "")
    objects = client.list_objects_v2(Bucket=location.bucket, Prefix=tmp).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=location.bucket, Prefix=tmp).get("Uploads", [])
    store = S3BlobStore(location, "blobs", client)
    return {
        "tmp": sorted(o["Key"].rsplit("/", 1)[-1] for o in [*objects, *uploads]),
        "blobs": sorted(store.iter_hashes()),
    }


def stored_blobs(hub: Hub) -> list[str]:
    """The hashes of the originals a hub holds, wherever it keeps them."""
    return sorted(hub.blobs.iter_hashes())


def read_blob(hub: Hub, sha256: str) -> bytes:
    return b"".join(hub.blobs.read_range(sha256, 0, hub.blobs.size(sha256)))


def tamper_blob(hub: Hub, sha256: str, data: bytes | None) -> None:
    """Replace a stored blob's bytes behind the hub's back, or remove it (None)."""
    if isinstance(hub.blobs, LocalBlobStore):
        path = hub.blobs.path_of(sha256)
        path.unlink() if data is None else path.write_bytes(data)
        return
    assert isinstance(hub.blobs, S3BlobStore)
    key = hub.blobs.key_of(sha256)
    if data is None:
        hub.blobs.client.delete_object(Bucket=hub.blobs.bucket, Key=key)
    else:
        hub.blobs.client.put_object(Bucket=hub.blobs.bucket, Key=key, Body=data)
