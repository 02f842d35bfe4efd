"""Where each source partition stands, kept in the agent's own table.

Exactly-once with at most one changelog record per message: a key's table value
is an envelope holding the agent state together with the source position that
produced it (partition and logical offset) and the partition's durable cursor as
of that record (``c``: every message of the partition at or below it is in the
records up to this one). The worker writes the states of a run of messages
together (pipeline.runtime.worker): each touched key once, in the run's order of
keys, the record at the run's end last, carrying the run's end as its cursor; the
records before it carry the cursor of the run before. A message that stores no
key state (a rejected message, an unknown symbol) and ends a run writes the
partition's cursor record instead. All live in the same changelog partition, in
the order written, so a partition's cursor is the greatest ``c`` among its
records, whichever of them a crash kept: a key whose record landed past that
cursor skips, by its own position, the messages re-applied from it.

Logical offsets: ``base + Kafka offset``. The base starts at 0 and moves past the
old cursor when the source topic is found re-created (a new topic id), so
positions, and the versions downstream, never go backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CURSOR_PREFIX = b"\x00cursor/"


@dataclass(slots=True)
class Cursor:
    base: int = 0  # logical = base + Kafka offset
    last: int = -1  # last applied logical offset
    topic_id: str | None = None  # the source topic's id when the base was set
    dirty: bool = False  # base or topic id changed: write the record with the next message

    def logical(self, kafka_offset: int) -> int:
        return self.base + kafka_offset

    def kafka_offset(self, logical: int) -> int:
        return logical - self.base


def cursor_key(partition: int) -> bytes:
    return CURSOR_PREFIX + str(partition).encode()


def is_cursor_key(key: bytes) -> bool:
    return key.startswith(CURSOR_PREFIX)


def cursor_partition(key: bytes) -> int:
    return int(key[len(CURSOR_PREFIX):])


def encode_cursor(cursor: Cursor) -> bytes:
    return orjson.dumps({"base": cursor.base, "last": cursor.last, "topic_id": cursor.topic_id})


def decode_cursor(raw: bytes) -> Cursor:
    if raw.isdigit():  # written by fxstream 0.1: the bare last offset
        return Cursor(last=int(raw))
    value = orjson.loads(raw)
    return Cursor(base=int(value["base"]), last=int(value["last"]), topic_id=value["topic_id"])


def encode_envelope(partition: int, position: int, state: dict[str, Any],
                    cursor: int | None = None) -> bytes:
    """A key's table value; ``cursor`` defaults to ``position`` (a record of its own)."""
    return envelope(partition, position, orjson.dumps(state),
                    position if cursor is None else cursor)


def envelope(partition: int, position: int, state_json: bytes, cursor: int) -> bytes:
    """``encode_envelope`` around a state already encoded as JSON (the worker encodes a
    state once, when its message is applied, to check its size, and writes it later)."""
    return b'{"p":%d,"o":%d,"c":%d,"s":%b}' % (partition, position, cursor, state_json)


def decode_envelope(raw: bytes) -> tuple[int | None, int, dict[str, Any]]:
    """(partition, position, state). Values written by fxstream 0.1 held the candle
    state itself, with its partition and offset inside."""
    partition, position, _, state = decode_envelope_cursor(raw)
    return partition, position, state


def decode_envelope_cursor(raw: bytes) -> tuple[int | None, int, int, dict[str, Any]]:
    """(partition, position, durable cursor, state). Envelopes without a cursor were
    written one per message, so their position is their cursor."""
    value = orjson.loads(raw)
    if "s" in value and "o" in value:
        return value["p"], value["o"], value.get("c", value["o"]), value["s"]
    partition = value.get("partition")
    offset = int(value.get("offset", -1))
    return (partition if isinstance(partition, int) else None), offset, offset, value
