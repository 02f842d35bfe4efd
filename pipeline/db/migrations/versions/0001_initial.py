"""Initial schema: candles, depth, sentiment, their metrics, and sink offsets.

Table and column names follow the older market-data services where they had
them; every epoch-millisecond column is BIGINT (ts_utc = bar OPEN time for
candles).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "market_data_candles",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("timeframe", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False, comment="epoch ms of the bar's open"),
        sa.Column("open", sa.Float(53), nullable=False),
        sa.Column("high", sa.Float(53), nullable=False),
        sa.Column("low", sa.Float(53), nullable=False),
        sa.Column("close", sa.Float(53), nullable=False),
        sa.Column("tick_volume", sa.BigInteger, nullable=False),
        sa.Column("volume", sa.Float(53), nullable=False),
        sa.Column("provider_source", sa.Text),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "timeframe", "ts_utc"),
    )
    op.create_table(
        "market_depth",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("bids", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column("asks", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column("mid_price", sa.Float(53)),
        sa.Column("spread", sa.Float(53)),
        sa.Column("imbalance", sa.Float(53)),
        sa.PrimaryKeyConstraint("symbol", "ts_utc", "provider"),
    )
    op.create_table(
        "dom_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("best_bid", sa.Float(53)),
        sa.Column("best_ask", sa.Float(53)),
        sa.Column("mid_price", sa.Float(53)),
        sa.Column("spread", sa.Float(53)),
        sa.Column("bid_depth", sa.Float(53), nullable=False),
        sa.Column("ask_depth", sa.Float(53), nullable=False),
        sa.Column("imbalance", sa.Float(53)),
        sa.Column("levels", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "ts_utc"),
    )
    op.create_table(
        "sentiment_data",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("long_pct", sa.Float(53), nullable=False),
        sa.Column("short_pct", sa.Float(53), nullable=False),
        sa.Column("total_traders", sa.BigInteger),
        sa.Column("confidence", sa.Float(53)),
        sa.PrimaryKeyConstraint("symbol", "ts_utc", "provider"),
    )
    op.create_table(
        "sentiment_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("long_pct", sa.Float(53), nullable=False),
        sa.Column("ma_5m", sa.Float(53)),
        sa.Column("ma_15m", sa.Float(53)),
        sa.Column("ma_1h", sa.Float(53)),
        sa.Column("change_1h", sa.Float(53)),
        sa.Column("contrarian_signal", sa.Float(53)),
        sa.Column("label", sa.Text),
        sa.Column("confidence", sa.Float(53)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "ts_utc"),
    )
    op.create_table(
        "sink_offsets",
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("consumer_group", "topic", "partition"),
    )


def downgrade() -> None:
    for table in ("sink_offsets", "sentiment_metrics", "sentiment_data", "dom_metrics",
                  "market_depth", "market_data_candles"):
        op.drop_table(table)
