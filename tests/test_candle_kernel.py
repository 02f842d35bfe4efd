"""The compiled loop of the candle fold (pipeline.core.candle_kernel) against the plain
Python loop it stands in for: on every frame of records the two give the same state,
bars, rejects and counts, byte for byte as orjson writes them; the kernel declines
(returns None) what it does not take whole instead of deciding it, and it neither
raises nor leaks on records built by hand with values no decoder would give."""

from __future__ import annotations

import dataclasses
import random
import sys
from typing import Any

import orjson
import pytest

from pipeline.core import candles
from pipeline.core.candles import CandleConfig, FoldResult, fold
from pipeline.core.ticks import MAX_PRICE, MAX_TS_MS, MAX_VOLUME, TickRecord, valid_provider

NOW = 1_709_500_000_000
T0 = 1_709_323_200_000
CONFIGS = [
    CandleConfig.from_names(("1m", "5m", "1h", "1d"), lateness_ms=5_000, orderflow=True,
                            known_symbols=frozenset({"EUR/USD", "GBP/USD"})),
    CandleConfig.from_names(("1m", "15m"), lateness_ms=60_000, orderflow=False),
    CandleConfig.from_names(("5m", "4h", "1d"), lateness_ms=10**30, day_start_ms=7_200_000,
                            orderflow=True),
]


def kernel() -> Any:
    if candles.candle_kernel is None:
        pytest.fail("pipeline.core.candle_kernel is not built: install fxstream where a C "
                    "compiler is found (make setup), or the fold runs its plain loop only")
    return candles.candle_kernel


def outcome(result: FoldResult) -> bytes:
    """Everything a fold decides, as the changelog and the topics would hold it."""
    return orjson.dumps({
        "state": result.state, "candles": result.candles, "skipped": result.skipped,
        "accepted": result.accepted, "duplicates": result.duplicates,
        "rejected": [(r.index, r.reason, r.detail, repr(r.tick)) for r in result.rejected],
    })


def record(ts: int, rng: random.Random, symbol: str = "EUR/USD", **change: Any) -> TickRecord:
    bid = round(1.1 + rng.uniform(-0.01, 0.01), 5)
    values = {"symbol": symbol, "ts_ms": ts, "bid": bid, "ask": round(bid + 0.0002, 5),
              "volume": round(rng.uniform(0, 3), 2), "provider": "feed", **change}
    return TickRecord(**values)


def edge(rng: random.Random) -> dict[str, Any]:
    # Not the valid tick at the very edge of the future tolerance: accepted, it would make
    # every later tick of its symbol late, and the rest of the stream a test of lateness.
    return rng.choice([
        {"bid": MAX_PRICE, "ask": MAX_PRICE}, {"bid": 5e-324, "ask": 5e-324},
        {"volume": -0.0}, {"volume": 0.0}, {"volume": MAX_VOLUME}, {"provider": None},
        {"provider": "other"}, {"provider": ""}, {"provider": "fe\u0000ed"},
        {"provider": "x" * 65}, {"symbol": "GBP/USD"}, {"ts_ms": NOW + 60_001},
        {"ts_ms": 0}, {"bid": 1.1, "ask": 1.1},
    ])


def stream(seed: int, symbols: tuple[str, ...] = ("EUR/USD", "GBP/USD"),
           edges: float = 0.02) -> list[tuple[str, list[TickRecord]]]:
    """Frames of records as a feed sends them: mostly in order, some ticks behind (late
    or inside the lateness, so earlier buckets and minutes come round again), repeated
    quotes, providers that change, and now and then a value at an edge."""
    rng = random.Random(seed)
    clock = dict.fromkeys(symbols, T0)
    out = []
    for _ in range(600):
        symbol = rng.choice(symbols)
        frame: list[TickRecord] = []
        for _ in range(rng.randint(1, 40)):
            clock[symbol] += rng.choice((0, 1, 50, 700, 20_000, 61_000))
            behind = rng.choice((3_000, 9_000, 70_000, 400_000)) if rng.random() < 0.02 else 0
            ts = clock[symbol] - behind
            tick = record(ts, rng, symbol)
            if rng.random() < edges:
                tick = TickRecord(**{**_fields(tick), **edge(rng)})
            if rng.random() < 0.05:
                tick = TickRecord(**{**_fields(tick), "provider": rng.choice(("feed", "b", None))})
            if rng.random() < 0.06 and frame:
                tick = frame[-1]  # a repeated quote
            elif rng.random() < 0.03 and frame:  # the same quote from another provider
                tick = TickRecord(**{**_fields(frame[-1]),
                                     "provider": rng.choice(("feed", "b", None, ""))})
            frame.append(tick)
        out.append((symbol, frame))
    return out


def _fields(tick: TickRecord) -> dict[str, Any]:
    return {name: getattr(tick, name) for name in TickRecord.__struct_fields__}


def fold_all(frames: list[tuple[str, list[TickRecord]]], config: CandleConfig,
             compiled: bool) -> list[bytes]:
    states: dict[str, Any] = {}
    decided = []
    for offset, (symbol, frame) in enumerate(frames):
        result = fold(states.get(symbol), symbol, frame, offset, NOW, config,
                      settled=offset - 3, compiled=compiled)
        states[symbol] = result.state
        decided.append(outcome(result))
    return decided


def test_the_kernel_is_built() -> None:
    assert candles.FOLD_LOOP == "compiled", kernel()


@pytest.mark.parametrize("config", CONFIGS, ids=("orderflow", "plain", "day-start"))
@pytest.mark.parametrize("seed", range(4))
def test_streams_of_records_fold_alike_compiled_and_plain(config: CandleConfig,
                                                          seed: int) -> None:
    frames = stream(seed)
    compiled = fold_all(frames, config, compiled=True)
    plain = fold_all(frames, config, compiled=False)
    for i, (a, b) in enumerate(zip(compiled, plain, strict=True)):
        assert a == b, f"frame {i} of seed {seed}: {a[:300]!r} != {b[:300]!r}"


def test_the_kernel_takes_clean_frames_and_declines_the_rest() -> None:
    """The stream tests are only worth something if the kernel takes most frames and
    declines the ones holding what it leaves to the plain loop."""
    scan = kernel().scan_records
    taken = declined = 0
    real = candles.candle_kernel.scan_records

    def counting(*args: Any) -> Any:
        nonlocal taken, declined
        result = real(*args)
        taken += result is not None
        declined += result is None
        return result

    try:
        candles.candle_kernel.scan_records = counting
        fold_all(stream(11, edges=0.01), CONFIGS[0], compiled=True)
    finally:
        candles.candle_kernel.scan_records = scan
    assert taken > 300 and declined > 50, (taken, declined)  # of 600 frames


LAYOUT = candles._RECORD_LAYOUT


def scan(ticks: list[Any], prev: Any = None, max_ts: Any = None, **kw: Any) -> Any:
    args = {"newest_ok": NOW + 60_000, "ok_provider": None, "lateness": 5_000,
            "bucket_ms": 60_000, "orderflow": True, "prev_price": None,
            "symbol": "EUR/USD", **kw}
    return kernel().scan_records(LAYOUT, ticks, args["symbol"], args["newest_ok"],
                                 args["ok_provider"], prev, max_ts, args["lateness"],
                                 args["bucket_ms"], args["orderflow"], args["prev_price"],
                                 valid_provider)


@pytest.mark.parametrize("change", [
    {"ts_ms": 2**70}, {"ts_ms": -1}, {"ts_ms": 1.5}, {"ts_ms": True}, {"bid": "1.1"},
    {"bid": 1}, {"ask": None}, {"volume": 10**40}, {"volume": None}, {"provider": 5},
    {"provider": "a\u0000"}, {"symbol": None}, {"symbol": b"EUR/USD"}, {"symbol": "GBP/USD"},
    {"ts_ms": NOW + 60_001}, {"ts_ms": T0 - 10_000},
], ids=repr)
def test_records_built_by_hand_are_declined_not_folded(change: dict[str, Any]) -> None:
    rng = random.Random(3)
    ticks = [record(T0 + i, rng) for i in range(3)]
    ticks[1] = TickRecord(**{**_fields(ticks[1]), **change})  # msgspec checks nothing here
    assert scan(ticks, max_ts=T0 + 1_000) is None
    assert scan([*ticks[:1], {"symbol": "EUR/USD"}]) is None  # not a record at all


@pytest.mark.parametrize("args", [
    {"prev": (T0, None, 1.1)}, {"prev": (T0, 1, 1.1)}, {"prev": [T0, 1.1, 1.1]},
    {"prev": (2**80, 1.1, 1.1)}, {"max_ts": 2**80}, {"max_ts": 1.0}, {"newest_ok": -1},
    {"newest_ok": 2**80}, {"lateness": 2**80}, {"bucket_ms": 0}, {"prev_price": 1},
], ids=repr)
def test_state_the_kernel_cannot_hold_in_c_is_declined(args: dict[str, Any]) -> None:
    assert scan([record(T0, random.Random(1))], **args) is None


def test_the_kernel_leaves_reference_counts_as_they_were() -> None:
    rng = random.Random(5)
    provider = "feed-" + str(rng.random())
    ticks = [record(T0 + i * 10, rng, provider=provider) for i in range(200)]
    before = [sys.getrefcount(provider), *(sys.getrefcount(t) for t in ticks)]
    for _ in range(50):
        assert scan(ticks, ok_provider=provider) is not None
        assert scan([*ticks, None]) is None
    after = [sys.getrefcount(provider), *(sys.getrefcount(t) for t in ticks)]
    assert after == before


def test_extreme_values_stay_exact() -> None:
    """Prices at the bounds, the smallest subnormal and the largest volume sum as
    Python's floats do, and the bar's volume keeps arrival order."""
    rng = random.Random(9)
    ticks = [record(T0 + i, rng, bid=b, ask=a, volume=v) for i, (b, a, v) in enumerate([
        (MAX_PRICE, MAX_PRICE, MAX_VOLUME), (5e-324, 5e-324, 0.1), (1e-300, MAX_PRICE, 0.2),
        (0.3, 0.7, 1e-17), (MAX_PRICE, 5e-324, -0.0), (1.0000000000000002, 1.0, 0.3)])]
    ticks.append(record(MAX_TS_MS - 5, rng))
    config = dataclasses.replace(CONFIGS[0], known_symbols=None)
    now = MAX_TS_MS
    a = fold(None, "EUR/USD", ticks, 0, now, config, compiled=True)
    b = fold(None, "EUR/USD", ticks, 0, now, config, compiled=False)
    assert outcome(a) == outcome(b)
    assert a.accepted == 7


def test_frames_at_the_boundaries_fold_alike_and_are_taken() -> None:
    """Each frame at one boundary of the loop, folded onto a state holding one tick:
    the kernel must take it (nothing here is refused) and decide as the plain loop."""
    rng = random.Random(2)
    config = CandleConfig.from_names(("1m", "5m"), lateness_ms=120_000, orderflow=True)
    base = record(T0 + 200_000, rng)
    q = _fields(base)
    frames = {
        "first of a bucket with volume -0.0": [record(T0 + 260_000, rng, volume=-0.0)],
        "same time and bid, another ask": [TickRecord(**{**q, "ask": q["ask"] + 0.0001})],
        "same time and ask, another bid": [TickRecord(**{**q, "bid": q["bid"] - 0.0001})],
        "the quote again, then another": [base, record(T0 + 200_000, rng)],
        "exactly the lateness behind": [record(T0 + 80_000, rng)],
        "ties in time keep the later close": [record(T0 + 220_000, rng, bid=1.2, ask=1.2),
                                              record(T0 + 220_000, rng, bid=1.3, ask=1.3),
                                              record(T0 + 219_000, rng, bid=1.0, ask=1.0)],
        "a minute back and forth": [record(T0 + 241_000, rng), record(T0 + 199_000, rng),
                                    record(T0 + 242_000, rng), record(T0 + 198_000, rng)],
        "a new valid provider": [record(T0 + 201_000, rng, provider="other")],
        "the quote again from another provider": [TickRecord(**{**q, "provider": "other"})],
        "the quote again with no provider": [TickRecord(**{**q, "provider": None})],
    }
    state = fold(None, "EUR/USD", [base], 0, NOW, config, compiled=False).state
    for name, frame in frames.items():
        a = fold(state, "EUR/USD", frame, 1, NOW, config, compiled=True)
        b = fold(state, "EUR/USD", frame, 1, NOW, config, compiled=False)
        assert outcome(a) == outcome(b), name
        assert not a.rejected, name
        taken = scan(frame, prev=tuple(state["prev"]), max_ts=state["max_ts"],
                     ok_provider=state["provider"], lateness=120_000, bucket_ms=60_000,
                     prev_price=(state["prev"][1] + state["prev"][2]) / 2)
        assert taken is not None, name
    refused = {
        "late": [record(T0 + 79_999, rng)],
        "the quote again with a provider that is not valid": [
            TickRecord(**{**q, "provider": ""})],
        "the quote again with NUL in its provider": [TickRecord(**{**q, "provider": "a\0"})],
    }
    for name, frame in refused.items():
        a = fold(state, "EUR/USD", frame, 1, NOW, config, compiled=True)
        b = fold(state, "EUR/USD", frame, 1, NOW, config, compiled=False)
        assert outcome(a) == outcome(b), name
        assert a.rejected, name
        assert scan(frame, prev=tuple(state["prev"]), max_ts=state["max_ts"],
                    ok_provider=state["provider"], lateness=120_000) is None, name


def test_what_only_hand_made_input_holds_folds_as_the_plain_loop_does() -> None:
    """A symbol of a str subclass, a record with a field deleted, a provider check
    that empties the frame: the kernel declines or stops, it never raises or reads
    past the list."""

    class Symbol(str):
        pass

    rng = random.Random(4)
    ticks = [record(T0 + i, rng) for i in range(3)]
    config = CONFIGS[1]
    a = fold(None, Symbol("EUR/USD"), ticks, 0, NOW, config, compiled=True)
    b = fold(None, Symbol("EUR/USD"), ticks, 0, NOW, config, compiled=False)
    assert outcome(a) == outcome(b)
    assert scan(ticks, symbol=Symbol("EUR/USD")) is None

    gone = record(T0 + 5, rng)
    del gone.provider
    assert scan([gone]) is None
    for compiled in (True, False):
        with pytest.raises(AttributeError):
            fold(None, "EUR/USD", [gone], 0, NOW, config, compiled=compiled)

    frame = [record(T0 + i, rng, provider="p") for i in range(50)]

    def emptying(provider: Any) -> bool:
        frame.clear()
        return True

    result = kernel().scan_records(LAYOUT, frame, "EUR/USD", NOW, None, None, None, 5_000,
                                   60_000, True, None, emptying)
    assert result is not None and result[4] == 1  # the one tick read before it emptied
