"""Sentiment: sentiment_metrics becomes keyed (symbol, provider, ts_utc) with windows in
time, the contrarian signal and its strength apart, and a version; sentiment_data
gets a version too.

Both tables had no writer in fxstream; they are dropped and created in the new
shape. Both carry the version of each row (src_partition, src_offset: the
fx.sentiment position of the state that produced it), which the sink never lets go
backwards.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
F = sa.Float(53)


def _version() -> list[sa.Column]:
    return [
        sa.Column("src_partition", sa.Integer, nullable=True,
                  comment="fx.sentiment partition of the source message that produced this row"),
        sa.Column("src_offset", sa.BigInteger, nullable=True,
                  comment="logical offset of that source message (the row's version)"),
    ]


def upgrade() -> None:
    op.drop_table("sentiment_metrics")
    op.drop_table("sentiment_data")
    op.create_table(
        "sentiment_data",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False, comment="the observation's ts_ms"),
        sa.Column("long_pct", F, nullable=False),
        sa.Column("short_pct", F, nullable=False),
        sa.Column("total_traders", sa.BigInteger),
        sa.Column("confidence", F, comment="the provider's own, 0 to 1"),
        *_version(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "provider", "ts_utc"),
    )
    op.create_table(
        "sentiment_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False, comment="the observation's ts_ms"),
        sa.Column("long_pct", F, nullable=False),
        sa.Column("ma_5m", F, nullable=False, comment="time-weighted over (t - 5 min, t]"),
        sa.Column("ma_5m_full", sa.Boolean, nullable=False,
                  comment="an observation stands at t - 5 min"),
        sa.Column("ma_15m", F, nullable=False),
        sa.Column("ma_15m_full", sa.Boolean, nullable=False),
        sa.Column("ma_1h", F, nullable=False),
        sa.Column("ma_1h_full", sa.Boolean, nullable=False),
        sa.Column("change_1h", F, comment="long_pct minus the one standing an hour earlier"),
        sa.Column("contrarian_signal", sa.SmallInteger, nullable=False, comment="-1, 0 or +1"),
        sa.Column("contrarian_strength", F, nullable=False),
        sa.Column("ratio", F, nullable=False),
        sa.Column("confidence", F, nullable=False, comment="|long_pct - 50| / 50"),
        sa.Column("label", sa.Text, nullable=False),
        *_version(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "provider", "ts_utc"),
    )


def downgrade() -> None:
    op.drop_table("sentiment_metrics")
    op.drop_table("sentiment_data")
    op.create_table(
        "sentiment_data",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("long_pct", F, nullable=False),
        sa.Column("short_pct", F, nullable=False),
        sa.Column("total_traders", sa.BigInteger),
        sa.Column("confidence", F),
        sa.PrimaryKeyConstraint("symbol", "ts_utc", "provider"),
    )
    op.create_table(
        "sentiment_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("long_pct", F, nullable=False),
        sa.Column("ma_5m", F),
        sa.Column("ma_15m", F),
        sa.Column("ma_1h", F),
        sa.Column("change_1h", F),
        sa.Column("contrarian_signal", F),
        sa.Column("label", sa.Text),
        sa.Column("confidence", F),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "ts_utc"),
    )
