"""The runtime's position records: a key's state with its position and the partition's
cursor, and the cursor record, read back."""

from __future__ import annotations

import orjson

from pipeline.runtime.positions import (
    Cursor,
    cursor_key,
    cursor_partition,
    decode_cursor,
    decode_envelope,
    decode_envelope_cursor,
    encode_cursor,
    encode_envelope,
    envelope,
    is_cursor_key,
)


def test_envelope_round_trip_and_legacy_state() -> None:
    state = {"v": 1, "symbol": "EUR/USD", "bars": {}}
    assert decode_envelope(encode_envelope(3, 41, state)) == (3, 41, state)
    legacy = orjson.dumps({"v": 1, "symbol": "EUR/USD", "offset": 17, "partition": 2})
    p, o, s = decode_envelope(legacy)
    assert (p, o, s["symbol"]) == (2, 17, "EUR/USD")


def test_envelope_carries_the_cursor_as_of_its_record() -> None:
    state = {"symbol": "EUR/USD", "text": "a\u0000b", "big": 10**18, "x": 1e308}
    # a record of its own: its position is the partition's cursor
    assert decode_envelope_cursor(encode_envelope(2, 7, state)) == (2, 7, 7, state)
    # a record before the end of its run: the cursor of the run before
    raw = envelope(2, 7, orjson.dumps(state), 3)
    assert raw == encode_envelope(2, 7, state, cursor=3)
    assert decode_envelope_cursor(raw) == (2, 7, 3, state)
    assert orjson.loads(raw) == {"p": 2, "o": 7, "c": 3, "s": state}
    # written one per message, before runs: the position is the cursor
    assert decode_envelope_cursor(orjson.dumps({"p": 1, "o": 5, "s": state})) == (1, 5, 5, state)
    assert decode_envelope_cursor(envelope(0, 0, b"{}", -1))[2] == -1


def test_cursor_round_trip_legacy_and_keys() -> None:
    c = Cursor(base=100, last=150, topic_id="abc")
    back = decode_cursor(encode_cursor(c))
    assert (back.base, back.last, back.topic_id, back.dirty) == (100, 150, "abc", False)
    assert decode_cursor(b"42").last == 42  # fxstream 0.1 wrote the bare offset
    key = cursor_key(11)
    assert is_cursor_key(key) and cursor_partition(key) == 11 and not is_cursor_key(b"EUR/USD")


def test_logical_offsets_continue_past_a_recreated_topic() -> None:
    c = Cursor(last=999)
    c.base = c.last + 1  # the topic was re-created: Kafka offsets start at 0 again
    assert c.logical(0) == 1000 and c.kafka_offset(1000) == 0

