"""The sink runtime's two decoding paths agree: the record type is a fast filter, the
declaration's decode (the schema) the authority, and rows keep message order."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import msgspec
import orjson
import pytest

import schemas
from consumers.candle_sink import CANDLES, TIMEFRAME_NAMES, WRITE_COLUMNS, CandleRecord
from consumers.runtime import MessageOrigins, PickedOrigins, SinkRuntime
from pipeline.settings import Settings


class _Message:
    """What `SinkRuntime._decode` reads of a confluent-kafka message: its value."""

    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def value(self) -> bytes | None:
        return self._value


def _candle(**changes: Any) -> dict[str, Any]:
    candle = {"v": 1, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 1_704_672_000_000,
              "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15, "tick_volume": 3,
              "volume": 2.5, "provider_source": "p", "complete": False, "src_partition": 4,
              "src_offset": 17}
    candle.update(changes)
    return {k: v for k, v in candle.items() if v is not _ABSENT}


_ABSENT = object()

# Values at and past every edge the schema draws, and some it does not draw.
_EDGES: list[dict[str, Any]] = [
    {}, {"v": 2}, {"v": 1.0}, {"v": True}, {"symbol": ""}, {"symbol": "x" * 32},
    {"symbol": "x" * 33}, {"symbol": "EUR\x00USD"}, {"symbol": 7}, {"timeframe": "0m"},
    {"timeframe": "9999d"}, {"timeframe": "10000d"}, {"timeframe": "1s"}, {"ts_utc": -1},
    {"ts_utc": 0}, {"ts_utc": 2**64}, {"ts_utc": 1.5}, {"ts_utc": True}, {"open": 0},
    {"open": 1}, {"open": -1e-300}, {"open": 1e308}, {"open": "1.1"}, {"open": None},
    {"tick_volume": 0}, {"tick_volume": 1}, {"tick_volume": 2.0}, {"volume": -0.0},
    {"volume": -1e-9}, {"volume": 0}, {"complete": 1}, {"complete": None},
    {"provider_source": None}, {"provider_source": "p" * 64}, {"provider_source": "p" * 65},
    {"provider_source": _ABSENT}, {"src_partition": _ABSENT, "src_offset": _ABSENT},
    {"src_partition": None}, {"src_partition": 2**31 - 1}, {"src_partition": 2**31},
    {"src_partition": -1}, {"src_offset": 2**63 - 1}, {"src_offset": 2**63},
    {"src_offset": 2**70}, {"high": _ABSENT}, {"extra": [1, 2]},
]


@pytest.mark.parametrize("changes", _EDGES, ids=lambda c: repr(c)[:40])
def test_the_record_type_accepts_nothing_the_schema_refuses(changes: dict[str, Any]) -> None:
    raw = json.dumps(_candle(**changes)).encode()  # stdlib: integers past 64 bits too
    try:
        msgspec.json.decode(raw, type=CandleRecord)
    except msgspec.ValidationError:
        return  # refused by the fast path: the schema decides (see the next test)
    schemas.validate("candle", orjson.loads(raw))


def _runtime() -> SinkRuntime:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", database_url="postgresql://x@127.0.0.1:9/x")
    return SinkRuntime(CANDLES, settings)


def test_fast_and_schema_paths_give_the_same_rows_in_message_order() -> None:
    """A batch mixing what the record type takes, what only the schema takes (ints as
    prices, an integral float as a version 1), and what neither takes."""
    runtime = _runtime()
    values: list[bytes | None] = []
    expected_rows = []
    expected_rejected = []
    ts = itertools.count(1_704_672_000_000, 60_000)
    for m in range(12):
        kind = m % 4
        if kind == 0:  # a frame the fast path takes
            frame = [_candle(ts_utc=next(ts)), _candle(ts_utc=next(ts), timeframe="5m")]
        elif kind == 1:  # a single candle the fast path refuses and the schema accepts
            frame = _candle(ts_utc=next(ts), v=1.0)
        elif kind == 2:  # a frame with one invalid candle
            frame = [_candle(ts_utc=next(ts)), _candle(ts_utc=next(ts), volume=-1)]
        else:  # not JSON at all
            values.append(b"{not json")
            expected_rejected.append((m, None))
            continue
        values.append(orjson.dumps(frame))
        items = frame if isinstance(frame, list) else [frame]
        for i, c in enumerate(items):
            where = i if isinstance(frame, list) else None
            if c.get("volume", 0) < 0:
                expected_rejected.append((m, where))
            else:
                expected_rows.append(((m, where), tuple(c.get(k) for k in WRITE_COLUMNS)))
    decoded = runtime._decode([_Message(v) for v in values])
    assert list(zip(decoded.origins, decoded.rows, strict=True)) == expected_rows
    assert sorted((r.message, r.index) for r in decoded.rejected) == sorted(expected_rejected)
    assert all(r.detail for r in decoded.rejected)


def test_an_empty_frame_makes_no_row_and_a_missing_value_is_refused() -> None:
    decoded = _runtime()._decode([_Message(b"[]"), _Message(None)])
    assert decoded.rows == []
    assert [(r.message, r.index) for r in decoded.rejected] == [(1, None)]


def test_text_that_is_not_utf_8_is_refused_as_invalid_json() -> None:
    """msgspec raises UnicodeDecodeError, not one of its own errors, for a string field
    that is not UTF-8: the fast path must hand that message to ``decode`` too."""
    good = orjson.dumps([_candle()])
    bad = [good.replace(b'"EUR/USD"', b'"EUR/\xffUSD"'),
           good.replace(b'"p"', b'"\xed\xa0\x80"')]  # an encoded surrogate
    decoded = _runtime()._decode([_Message(v) for v in [good, *bad]])
    assert [o for o, _ in zip(decoded.origins, decoded.rows, strict=True)] == [(0, 0)]
    assert sorted(r.message for r in decoded.rejected) == [1, 2]


def test_the_timeframe_literal_admits_exactly_what_the_schema_pattern_admits() -> None:
    pattern = re.compile(r"^[1-9][0-9]{0,3}[mhd]$")
    candidates = {f"{n}{unit}" for n in range(0, 10_001) for unit in "smhdw"}
    candidates |= {"01m", " 1m", "1m ", "1M", "", "m", "1"}
    admitted = set(TIMEFRAME_NAMES)
    assert {c for c in candidates if pattern.fullmatch(c)} == admitted & candidates
    assert admitted <= candidates


def test_origins_kept_per_message_answer_as_a_list_of_them_would() -> None:
    origins = MessageOrigins()
    explicit: list[tuple[int, int | None]] = []
    for m, (count, framed) in enumerate([(3, True), (1, False), (0, True), (2, True),
                                         (1, False)]):
        origins.add(m, count, framed)
        explicit += [(m, i) for i in range(count)] if framed else [(m, None)] * count
    assert len(origins) == len(explicit)
    assert list(origins) == explicit
    assert [origins[i] for i in range(len(origins))] == explicit
    assert origins[-1] == explicit[-1]
    with pytest.raises(IndexError):
        origins[len(explicit)]
    keep = [0, 3, 6]
    assert list(PickedOrigins(origins, keep)) == [explicit[i] for i in keep]
