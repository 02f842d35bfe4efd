"""Backfill progress: every stretch of history fetched and written, per symbol.

Written in the same transaction as the bars the stretch gave, so a stretch listed here
is never fetched again, and one that is not listed wrote nothing. ``state`` is the candle
fold's state after the stretch (pipeline.core.candles), so the next stretch continues the
fold where it ended; ``coverage_from`` is where that fold's contiguous history began.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_progress",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("from_ms", sa.BigInteger, nullable=False, comment="stretch start, epoch ms"),
        sa.Column("to_ms", sa.BigInteger, nullable=False, comment="stretch end (exclusive)"),
        sa.Column("source", sa.Text, nullable=False,
                  comment="ticks, trendbars, trendbars+ticks (tick data began inside "
                          "the stretch), or empty (the server had neither)"),
        sa.Column("ticks", sa.BigInteger, nullable=False),
        sa.Column("bars", sa.BigInteger, nullable=False, comment="bars written"),
        sa.Column("kept_live", sa.BigInteger, nullable=False,
                  comment="bars not written because a live (versioned) bar is stored"),
        sa.Column("state", postgresql.JSONB, nullable=False),
        sa.Column("coverage_from", sa.BigInteger, nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("symbol", "from_ms"),
    )


def downgrade() -> None:
    op.drop_table("backfill_progress")
