"""Read-only views of a running pipeline: consumer-group lag and the newest bars."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None
    end: int
    lag: int


def group_lag(settings: Settings, group: str, topic: str, timeout_s: float = 10.0
              ) -> list[PartitionLag]:
    """Committed offset, end offset and lag of ``group`` on every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = consumer.committed(tps, timeout=timeout_s)
        out = []
        for tp in committed:
            low, high = _watermarks(consumer, tp, timeout_s)
            done = tp.offset if tp.offset >= 0 else None
            out.append(PartitionLag(tp.partition, done, high, high - (done if done is not None
                                                                      else low)))
        return out
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """Watermarks, retried through the moments after a topic's creation or a broker restart
    when its partitions have no leader yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if (not err.retriable() and err.code() != KafkaError.NOT_LEADER_FOR_PARTITION) or (
                    time.monotonic() > deadline):
                raise
            time.sleep(0.2)


def total_lag(settings: Settings, group: str, topic: str) -> int:
    return sum(p.lag for p in group_lag(settings, group, topic))


def newest_bars(settings: Settings, timeframe: str = "1m") -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.database_url, connect_timeout=5, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (symbol) symbol, ts_utc, open, high, low, close, tick_volume, "
            "complete FROM market_data_candles WHERE timeframe = %s "
            "ORDER BY symbol, ts_utc DESC", (timeframe,)).fetchall()
    for row in rows:
        row["opened"] = datetime.fromtimestamp(row["ts_utc"] / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M")
    return rows
