"""Candle versions: the source position (partition, logical offset) of each bar state.

The sink updates a stored bar only when the incoming one is not older: the
stored row has no version, the partitions differ, or the incoming offset is at
least the stored one. Existing rows keep NULL (version unknown).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("market_data_candles", sa.Column(
        "src_partition", sa.Integer, nullable=True,
        comment="fx.ticks partition of the source message that produced this bar state"))
    op.add_column("market_data_candles", sa.Column(
        "src_offset", sa.BigInteger, nullable=True,
        comment="logical offset of that source message (the bar state's version)"))


def downgrade() -> None:
    op.drop_column("market_data_candles", "src_offset")
    op.drop_column("market_data_candles", "src_partition")
