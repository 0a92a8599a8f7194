"""The schema comes from the Alembic migrations, and they match khazna/db.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select

from khazna import db, migrations
from khazna.access.accounts import SYSTEM_USER
from khazna.config import Settings
from khazna.hub import Hub
from tests.conftest import ON_POSTGRES, Databases

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not ON_POSTGRES, reason="needs KHAZNA_TEST_DATABASE_URL naming a PostgreSQL server"
        ),
    ),
]


def blank_url(backend: str, tmp_path: Path, databases: Databases | None) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'blank.db'}"
    assert databases is not None
    return databases.blank()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migrations_make_exactly_the_schema_of_db_py(
    backend: str, tmp_path: Path, databases: Databases | None
) -> None:
    # A change to db.py without its migration fails here: see docs/deploy.md.
    engine = db.make_engine(blank_url(backend, tmp_path, databases))
    db.create_schema(engine)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        context = MigrationContext.configure(
            conn, opts={"include_name": migrations.include_name, "compare_type": True}
        )
        assert compare_metadata(context, db.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert {t.name for t in db.metadata.sorted_tables} | {"alembic_version"} <= tables
    assert "dataset_search" in tables  # the search index, made by the migration too
    engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hubs_starting_together_migrate_once(
    backend: str, tmp_path: Path, databases: Databases | None
) -> None:
    url = blank_url(backend, tmp_path, databases)
    errors: list[BaseException] = []

    def start(n: int) -> None:
        try:
            Hub(Settings(home=tmp_path / f"hub{n}", database_url=url)).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
    engine.dispose()


def test_a_hub_made_before_migrations_existed_is_adopted_with_its_data(tmp_path: Path) -> None:
    # SQLite only by nature: the hubs made by create_all (before Alembic) were all SQLite.
    home = tmp_path / "old-hub"
    home.mkdir()
    url = f"sqlite:///{home / 'khazna.db'}"
    engine = db.make_engine(url)
    # What db.create_schema's create_all made then: the schema of the first migration (which
    # builds the search index too), without Alembic's record of it.
    with engine.begin() as conn:
        cfg = migrations.config(conn)
        command.upgrade(cfg, migrations.INITIAL)
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.execute(insert(db.users).values(name="amina", is_admin=True, created_at=db.utcnow()))
    engine.dispose()

    hub = Hub(Settings(home=home, database_url=url))
    with hub.engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        assert conn.execute(select(db.users.c.name).order_by(db.users.c.id)).scalars().all() == [
            "amina"
        ]
    org = hub.catalog.create_organization(hub.accounts.system_principal(), "hcp")
    assert org["name"] == "hcp"
    hub.close()
    with sqlite3.connect(home / "khazna.db") as raw:
        version = raw.execute("SELECT version_num FROM alembic_version").fetchall()
        users = raw.execute("SELECT name FROM users ORDER BY id").fetchall()
    assert version == [(migrations.head(),)]
    assert users == [("amina",), (SYSTEM_USER,)]
