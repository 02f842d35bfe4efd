"""Direct reads of a source topic, outside the consumer group: its identity and ranges.

Faust's consumer can deliver a partition past offsets whose processing a
rebalance dropped; the runtime then reads the skipped range here and applies it
first. A range may have holes that no consumer ever sees as messages
(transaction markers, compacted or expired records), so a read ends when the
consumer's position reaches the end of the range, not when a message with the
last offset arrives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger("fxstream.runtime.source")

RawMessage = tuple[bytes | None, bytes | None, int]  # key, value, Kafka offset


@dataclass(frozen=True)
class TopicIdentity:
    topic_id: str
    partitions: int


def describe_topic(bootstrap: str, topic: str, timeout_s: float = 15.0) -> TopicIdentity:
    """The topic's id (new whenever the topic is re-created) and partition count."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)
    desc = futures[topic].result(timeout=timeout_s + 5)
    return TopicIdentity(str(desc.topic_id), len(desc.partitions))


@dataclass
class RangeRead:
    messages: list[RawMessage]
    missing: tuple[int, int] | None = None  # [start, stop) that no longer exists


def read_range(bootstrap: str, topic: str, partition: int, start: int, stop: int,
               timeout_s: float = 60.0) -> RangeRead:
    """Messages with Kafka offsets in [start, stop) of one partition.

    Offsets below the partition's log start (deleted by retention or with the
    topic) are reported in ``missing`` and skipped; offsets the log holds but that
    carry no message (transaction markers, compaction) are simply passed over.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fxstream-reread",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    out: list[RawMessage] = []
    missing = None
    try:
        tp = TopicPartition(topic, partition)
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        if start < low:
            missing = (start, min(low, stop))
            start = low
        stop_at = min(stop, high)  # nothing past the end can be read, now or later
        if start >= stop_at:
            return RangeRead(out, missing)
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        position = start
        while position < stop_at:
            if time.monotonic() > deadline:
                raise TimeoutError(f"re-reading {topic}[{partition}] {start}..{stop - 1}: "
                                   f"stuck at {position} after {timeout_s:.0f} s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        position = max(position, msg.offset())
                        continue
                    raise KafkaException(err)
                if msg.offset() < stop:
                    out.append((msg.key(), msg.value(), msg.offset()))
                position = max(position, msg.offset() + 1)
            # The position moves past markers and compacted offsets without a message.
            (pos,) = consumer.position([TopicPartition(topic, partition)])
            if pos.offset >= 0:
                position = max(position, pos.offset)
    finally:
        consumer.close()
    return RangeRead(out, missing)


def watermarks(bootstrap: str, topic: str, partitions: list[int], timeout_s: float = 10.0
               ) -> dict[int, tuple[int, int]]:
    """(low, high) watermark offsets of some partitions of a topic, from the broker."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fxstream-watermarks",
                         "enable.auto.commit": False})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                for p in partitions}
    finally:
        consumer.close()
