"""Alembic's entry point: the hub passes its connection; a developer's `alembic` command
connects to ``KHAZNA_DATABASE_URL`` (or the SQLite file of ``KHAZNA_HOME``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from khazna import db
from khazna.config import Settings
from khazna.migrations import include_name


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=db.metadata,
        include_name=include_name,
        # SQLite alters tables by copying them; PostgreSQL alters in place.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    engine = db.make_engine(Settings.from_env().database_url)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
