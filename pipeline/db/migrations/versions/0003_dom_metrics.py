"""DOM metrics: dom_metrics becomes bars keyed (symbol, timeframe, ts_utc), and
market_depth holds one sampled snapshot per symbol and sample period.

Both tables had the shape of one snapshot's metrics and no writer in fxstream;
they are dropped and created in the new shape. Both carry the version of each
row (src_partition, src_offset: the fx.dom position of the state that produced
it), which the sink never lets go backwards.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
F = sa.Float(53)


def _version() -> list[sa.Column]:
    return [
        sa.Column("src_partition", sa.Integer, nullable=True,
                  comment="fx.dom partition of the source message that produced this row"),
        sa.Column("src_offset", sa.BigInteger, nullable=True,
                  comment="logical offset of that source message (the row's version)"),
    ]


def upgrade() -> None:
    op.drop_table("dom_metrics")
    op.drop_table("market_depth")
    op.create_table(
        "dom_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("timeframe", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False, comment="epoch ms of the bar's open"),
        sa.Column("provider", sa.Text),
        sa.Column("open", F), sa.Column("high", F), sa.Column("low", F), sa.Column("close", F),
        sa.Column("spread_mean", F), sa.Column("spread_min", F), sa.Column("spread_max", F),
        sa.Column("depth_imbalance", F, comment="time-weighted, over the top depth_levels"),
        sa.Column("depth_levels", sa.Integer, nullable=False),
        sa.Column("microprice", F, comment="of the bar's last snapshot that has one"),
        sa.Column("weighted_mid", F, comment="of the bar's last snapshot that has one"),
        sa.Column("updates", sa.BigInteger, nullable=False),
        sa.Column("crossed", sa.BigInteger, nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        *_version(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "timeframe", "ts_utc"),
    )
    op.create_table(
        "market_depth",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bucket_utc", sa.BigInteger, nullable=False,
                  comment="epoch ms of the sample period's start"),
        sa.Column("ts_utc", sa.BigInteger, nullable=False, comment="the snapshot's own time"),
        sa.Column("provider", sa.Text),
        sa.Column("bids", JSONB, nullable=False),
        sa.Column("asks", JSONB, nullable=False),
        sa.Column("mid_price", F),
        sa.Column("spread", F),
        sa.Column("imbalance", F, comment="depth_imbalance over the top N levels"),
        *_version(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "bucket_utc"),
    )


def downgrade() -> None:
    op.drop_table("market_depth")
    op.drop_table("dom_metrics")
    op.create_table(
        "market_depth",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("bids", JSONB, nullable=False),
        sa.Column("asks", JSONB, nullable=False),
        sa.Column("mid_price", F),
        sa.Column("spread", F),
        sa.Column("imbalance", F),
        sa.PrimaryKeyConstraint("symbol", "ts_utc", "provider"),
    )
    op.create_table(
        "dom_metrics",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts_utc", sa.BigInteger, nullable=False),
        sa.Column("best_bid", F),
        sa.Column("best_ask", F),
        sa.Column("mid_price", F),
        sa.Column("spread", F),
        sa.Column("bid_depth", F, nullable=False),
        sa.Column("ask_depth", F, nullable=False),
        sa.Column("imbalance", F),
        sa.Column("levels", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "ts_utc"),
    )
