"""Where each source partition stands, kept in the agent's own table.

Exactly-once with one changelog record per message: a key's table value is an
envelope holding the agent state together with the source position that
produced it (partition and logical offset). A partition's cursor, the last
applied offset, is the greatest position among its keys; a message that stores
no key state (a rejected message, an unknown symbol) writes the partition's
cursor record instead. Both live in the same changelog partition, so the cursor
is recovered with the symbols, and messages are applied in order, so every
offset at or below the cursor has been applied.

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


def encode_envelope(partition: int, position: int, state: dict[str, Any]) -> bytes:
    return orjson.dumps({"p": partition, "o": position, "s": state})


def decode_envelope(raw: bytes) -> tuple[int | None, int, dict[str, Any]]:
    """(partition, position, state). Values written by fxstream 0.1 held the candle
    state itself, with its partition and offset inside."""
    value = orjson.loads(raw)
    if "s" in value and "o" in value:
        return value["p"], value["o"], value["s"]
    partition = value.get("partition")
    return (partition if isinstance(partition, int) else None), int(value.get("offset", -1)), value

