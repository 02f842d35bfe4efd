"""TickRecord, the typed decode behind the candle fold's fast path, against the plain
JSON path it stands in for: it takes nothing the plain path refuses, and where the
fold takes a frame of it, the state and the bars are the plain path's."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import orjson
import pytest

from pipeline.core.candles import CandleConfig, FoldResult, fold
from pipeline.core.ticks import MAX_PRICE, MAX_TS_MS, MAX_VOLUME, TickRecord

NOW = 1_709_500_000_000  # two days after T0: a tick past NOW + 60 s is from the future
T0 = 1_709_323_200_000
CONFIG = CandleConfig.from_names(("1m", "5m", "1h", "1d"), lateness_ms=5_000,
                                 close_grace_ms=2_000,
                                 known_symbols=frozenset({"EUR/USD", "GBP/USD"}),
                                 orderflow=True)
DECODE = msgspec.json.Decoder(list[TickRecord]).decode

# One change each to an ordinary tick: values at and past every bound, wrong types,
# nulls, unknown fields, text the fold refuses, times the fold refuses.
EDGES: list[dict[str, Any]] = [
    {"bid": 2, "ask": 3}, {"bid": 0}, {"bid": -1.0}, {"bid": MAX_PRICE},
    {"bid": MAX_PRICE * 1.000001}, {"bid": 1e308, "ask": 1e308}, {"bid": True},
    {"bid": None}, {"ask": None}, {"bid": "1.1"}, {"bid": 10**30},
    {"volume": -0.0}, {"volume": 0}, {"volume": MAX_VOLUME}, {"volume": MAX_VOLUME * 2},
    {"volume": None}, {"volume": 2**63}, {"volume": -1.0}, {"volume": 7},
    {"ts_ms": float(T0)}, {"ts_ms": MAX_TS_MS}, {"ts_ms": MAX_TS_MS + 1}, {"ts_ms": 2**64},
    {"ts_ms": -1}, {"ts_ms": NOW + 60_001}, {"ts_ms": NOW + 59_000}, {"ts_ms": T0 - 60_000},
    {"provider": None}, {"provider": "feed"}, {"provider": "other"}, {"provider": ""},
    {"provider": "fe\u0000ed"}, {"provider": "x" * 65}, {"provider": 5},
    {"symbol": "eurusd"}, {"symbol": "EUR/USD\u0000"}, {"symbol": "GBP/USD"},
    {"extra": 1}, {"extra": "\u00ff"},
]


# In a stream: not the one valid tick a day and more ahead, which would make every later
# tick of its symbol late.
STREAM_EDGES = [e for e in EDGES if e.get("ts_ms") != NOW + 59_000]


def run(stream: list[tuple[str, bytes]], typed: bool) -> tuple[dict[str, Any], list[Any],
                                                              list[Any], int]:
    """Fold every message as the runtime does: with ``typed``, through TickRecord where
    the frame decodes into it, folded again from the plain decode when the fold
    refuses anything. Returns the final states, every bar sent, every reject and how
    many messages the typed path took whole."""
    states: dict[str, Any] = {}
    outputs: list[Any] = []
    rejects: list[Any] = []
    taken = 0
    for offset, (symbol, raw) in enumerate(stream):
        try:
            plain = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        items = plain if isinstance(plain, list) else [plain]
        result: FoldResult | None = None
        if typed:
            try:
                records = DECODE(raw)
            except ValueError:
                records = None
            if records is not None:
                result = fold(states.get(symbol), symbol, records, offset, NOW, CONFIG)
                if result.rejected:
                    result = None
                else:
                    taken += 1
        if result is None:
            result = fold(states.get(symbol), symbol, items, offset, NOW, CONFIG)
        states[symbol] = result.state
        outputs.extend(result.candles)
        rejects.extend(result.rejected)
    return states, outputs, rejects, taken


def ordinary(ts: int, rng: random.Random, symbol: str = "EUR/USD") -> dict[str, Any]:
    bid = round(1.1 + rng.uniform(-0.01, 0.01), 5)
    return {"symbol": symbol, "ts_ms": ts, "bid": bid, "ask": round(bid + 0.0002, 5),
            "volume": round(rng.uniform(0, 3), 2), "provider": "feed"}


@pytest.mark.parametrize("change", EDGES, ids=repr)
def test_the_record_takes_nothing_the_plain_path_refuses(change: dict[str, Any]) -> None:
    rng = random.Random(1)
    clean = [ordinary(T0 + i * 100, rng) for i in range(5)]
    frame = [*clean[:2], {**clean[2], **change}, *clean[3:]]
    raw = json.dumps(frame).encode()
    plain = fold(None, "EUR/USD", orjson.loads(raw), 0, NOW, CONFIG)
    try:
        records = DECODE(raw)
    except ValueError:
        return  # the plain path alone decides
    typed = fold(None, "EUR/USD", records, 0, NOW, CONFIG)
    if plain.rejected:
        assert typed.rejected, "the typed path took a frame the plain path refuses part of"
    if not typed.rejected:  # as the changelog and the topic would hold them: 1 != 1.0
        assert (orjson.dumps((typed.state, typed.candles))
                == orjson.dumps((plain.state, plain.candles)))


def test_streams_with_edge_values_fold_to_the_same_bars_either_way() -> None:
    rng = random.Random(7)
    stream: list[tuple[str, bytes]] = []
    clock = {"EUR/USD": T0, "GBP/USD": T0}
    for _ in range(1_500):
        symbol = rng.choice(("EUR/USD", "GBP/USD"))
        frame = []
        for _ in range(rng.randint(1, 12)):
            clock[symbol] += rng.choice((0, 1, 50, 700, 20_000))
            t = ordinary(clock[symbol] - rng.choice((0,) * 30 + (3_000, 9_000)), rng, symbol)
            if rng.random() < 0.03:
                t = {**t, **rng.choice(STREAM_EDGES)}
            if rng.random() < 0.05:
                t["provider"] = rng.choice(("feed", "other", None))
            if rng.random() < 0.05 and frame:
                t = dict(frame[-1])  # a repeated quote
            frame.append(t)
        stream.append((symbol, json.dumps(frame if rng.random() < 0.9 else frame[0]).encode()))

    plain = run(stream, typed=False)
    typed = run(stream, typed=True)
    assert orjson.dumps(typed[:3]) == orjson.dumps(plain[:3])  # ints and -0.0 told apart
    assert plain[2], "the stream holds ticks the fold refuses"
    assert typed[3] > len(stream) // 2, "most frames took the typed path"
