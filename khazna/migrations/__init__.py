"""Schema migrations (Alembic), run by the hub at every start.

``khazna/db.py`` is the schema as the code expects it; each file in ``versions/`` takes a
database one step towards it. A test compares the two on SQLite and PostgreSQL, so a
change to ``db.py`` without its migration fails the suite. How to add one: docs/deploy.md.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

HERE = Path(__file__).resolve().parent
# The schema that ``metadata.create_all`` made before migrations existed.
INITIAL = "0001"
# Held while one process migrates, so hubs starting together on one PostgreSQL
# database do not create the same tables twice. Any fixed number: "khazna" in ASCII.
_PG_LOCK = 0x6B68617A6E61
_running = threading.Lock()

# Tables outside ``db.metadata``: the search index, which differs by database (SQLite
# FTS5 and its shadow tables, a tsvector table on PostgreSQL), made by the migrations.
UNMANAGED_PREFIX = "dataset_search"


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """What autogenerate compares: everything but the search index."""
    return not (type_ == "table" and name is not None and name.startswith(UNMANAGED_PREFIX))


def config(connection: Connection | None = None) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def head() -> str:
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """``alembic upgrade head``; a database made before migrations is stamped first.

    One process migrates at a time, in one transaction; the others wait for it, then
    find the database at head.
    """
    # Alembic keeps its running migration in module globals: one thread at a time.
    with _running, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        else:
            # Takes SQLite's write lock now, before reading the revision.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        revision = current(conn)
        if revision == head():
            return
        cfg = config(conn)
        if revision is None and inspect(conn).has_table("datasets"):
            # Made by create_all before migrations existed: it holds the initial schema.
            command.stamp(cfg, INITIAL)
        command.upgrade(cfg, "head")
