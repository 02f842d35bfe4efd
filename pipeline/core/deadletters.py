"""Dead-letter records: a rejected input, its reason and its identity.

The identity (source topic or file, partition, offset or line, index inside a
frame) is also the record's key, so a repeat sent after a restart is
recognisable as the same rejection. The detail and the payload are redacted
(pipeline.redact): a rejected line may hold a connection string or a token, and the
dead-letter topic is read by more people than the secrets' owners.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.redact import redact

MAX_PAYLOAD_CHARS = 10_000


def dead_letter(*, reason: str, detail: str, stage: str, topic: str, partition: int,
                offset: int, index: int | None, payload: Any, symbol: str | None,
                now_ms: int) -> dict[str, Any]:
    """A record for the dead-letter topic (schemas/dead_letter.v1.json)."""
    if isinstance(payload, bytes | bytearray):
        text = bytes(payload).decode("utf-8", errors="replace")
    elif isinstance(payload, str):
        text = payload
    else:
        try:
            text = orjson.dumps(payload).decode()
        except TypeError:
            text = repr(payload)
    return {
        "v": 1, "reason": reason, "detail": redact(detail), "stage": stage,
        "source": {"topic": topic, "partition": partition, "offset": offset, "index": index},
        "symbol": symbol, "payload": redact(text[:MAX_PAYLOAD_CHARS + 1_000])[:MAX_PAYLOAD_CHARS],
        "failed_at_ms": now_ms,
    }  # fmt: skip


def dead_letter_key(record: dict[str, Any]) -> bytes:
    src = record["source"]
    index = "" if src["index"] is None else src["index"]
    return f"{src['topic']}:{src['partition']}:{src['offset']}:{index}".encode()
