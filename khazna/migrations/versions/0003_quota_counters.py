"""quota counters shared by hub processes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_counters",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=30), nullable=False),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("unlogged", sa.BigInteger(), nullable=False),
        sa.Column("admitted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key", "rule"),
    )


def downgrade() -> None:
    op.drop_table("quota_counters")
