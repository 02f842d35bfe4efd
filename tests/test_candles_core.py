"""The pure candle fold against the independent reference, without Kafka."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import schemas
from pipeline.core.candles import CandleConfig, all_bars, closed_by_clock, fold
from pipeline.core.ticks import TickError, parse_tick
from pipeline.symbols import SymbolError, normalize_symbol
from producers.csv_ticks import RowError, read_tick_csv
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.reference_candles import compare_candles, reference_from_csv

TFS = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
NOW = 2_000_000_000_000  # far after the data: the wall clock has closed every bar
CONFIG = CandleConfig.from_names(TFS, lateness_ms=300_000, close_grace_ms=2_000,
                                 known_symbols=frozenset(KNOWN_SYMBOLS))


def messages_from_csv(path: Path, frame_size: int, seed: int
                      ) -> tuple[list[tuple[str, list[Any]]], list[int]]:
    """What `fxstream produce replay` sends: per-symbol frames, bad rows kept apart."""
    rng = random.Random(seed)
    bad_lines: list[int] = []
    buffers: dict[str, list[Any]] = {}
    out: list[tuple[str, list[Any]]] = []
    for line_no, item in read_tick_csv(path):
        if isinstance(item, RowError):
            bad_lines.append(line_no)
            continue
        try:
            symbol = normalize_symbol(item["symbol"])
        except SymbolError:
            bad_lines.append(line_no)
            continue
        buf = buffers.setdefault(symbol, [])
        buf.append(item)
        if len(buf) >= (frame_size if frame_size == 1 else rng.randint(1, frame_size)):
            out.append((symbol, buf))
            buffers[symbol] = []
    out.extend((s, b) for s, b in buffers.items() if b)
    return out, bad_lines


def run_fold(messages: list[tuple[str, list[Any]]], crash_every: int = 0, seed: int = 0
             ) -> tuple[dict[tuple[str, str, int], dict[str, Any]], Counter[str]]:
    """Fold every message in order; with crash_every, replay from an older snapshot."""
    rng = random.Random(seed)
    states: dict[str, dict[str, Any]] = {}
    snapshots: dict[str, dict[str, Any]] = {}
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    rejected: dict[tuple[int, int], str] = {}
    i = committed = 0
    while i < len(messages):
        symbol, ticks = messages[i]
        result = fold(states.get(symbol), symbol, ticks, i, NOW, CONFIG)
        if not result.skipped:
            states[symbol] = result.state
        for c in result.candles:
            schemas.validate("candle", c)
            latest[(c["symbol"], c["timeframe"], c["ts_utc"])] = c
        for r in result.rejected:
            rejected[(i, r.index)] = r.reason  # identity (offset, index): repeats collapse
        i += 1
        if crash_every and i % crash_every == 0:
            if rng.random() < 0.5:
                # A crash: the consumer resumes at the last committed offset; each symbol's
                # changelog holds either the state at that commit or a newer one.
                for sym in list(states):
                    if rng.random() < 0.5:
                        states[sym] = snapshots.get(sym) or states.pop(sym)
                i = committed
            else:
                committed, snapshots = i, dict(states)  # an offset commit
    return latest, Counter(rejected.values())


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ticks.csv"
    write_adversarial_csv(path, seed=11, ticks_per_symbol=2500)
    return path


@pytest.mark.parametrize(("frame_size", "crash_every"), [(1, 0), (50, 0), (500, 0), (40, 7)])
def test_fold_equals_reference(adversarial: Path, frame_size: int, crash_every: int) -> None:
    ref = reference_from_csv(str(adversarial), timeframes=TFS, lateness_ms=300_000,
                             known_symbols=set(KNOWN_SYMBOLS))
    messages, bad_lines = messages_from_csv(adversarial, frame_size, seed=frame_size)
    latest, reasons = run_fold(messages, crash_every=crash_every, seed=3)
    assert compare_candles(ref.candles, latest) == []
    assert all(c["complete"] for c in latest.values())
    expected = Counter(d.reason for d in ref.dead_letters)
    assert expected["late"] >= 20 and expected["unknown_symbol"] > 0
    assert reasons["late"] == expected["late"]
    assert reasons["unknown_symbol"] == expected["unknown_symbol"]
    assert len(bad_lines) == expected["bad_row"]


def test_replayed_message_is_skipped() -> None:
    ticks = [{"symbol": "EUR/USD", "ts_ms": 60_000 + i, "bid": 1.1, "ask": 1.1002 + i * 1e-5}
             for i in range(5)]
    first = fold(None, "EUR/USD", ticks, 10, 0, CONFIG)
    again = fold(first.state, "EUR/USD", ticks, 10, 0, CONFIG)
    older = fold(first.state, "EUR/USD", ticks, 9, 0, CONFIG)
    assert again.skipped and older.skipped and not again.candles
    assert first.state["counts"]["ticks"] == 5


def test_forming_bar_is_sent_once_per_message_and_closes_on_event_time() -> None:
    cfg = CandleConfig.from_names(("1m", "5m"), lateness_ms=60_000)
    ticks = [{"symbol": "EUR/USD", "ts_ms": 60_000 + i * 100, "bid": 1.0 + i, "ask": 1.0 + i}
             for i in range(10)]
    r1 = fold(None, "EUR/USD", ticks, 0, 0, cfg)
    assert [(c["timeframe"], c["complete"]) for c in r1.candles] == [("1m", False), ("5m", False)]
    assert r1.candles[0]["tick_volume"] == 10
    # a tick exactly at the 1m bar's end closes it and opens the next one
    r2 = fold(r1.state, "EUR/USD", [{"symbol": "EURUSD", "ts_ms": 120_000, "bid": 5.0}], 1, 0, cfg)
    got = [(c["timeframe"], c["ts_utc"], c["complete"]) for c in r2.candles]
    assert got == [("1m", 60_000, True), ("1m", 120_000, False), ("5m", 0, False)]


def test_late_tick_revises_a_closed_bar_and_it_is_sent_again() -> None:
    cfg = CandleConfig.from_names(("1m",), lateness_ms=120_000)
    tick = {"symbol": "EUR/USD", "bid": 1.0, "ask": 1.0}
    r1 = fold(None, "EUR/USD", [{**tick, "ts_ms": 60_500}, {**tick, "ts_ms": 130_000}], 0, 0, cfg)
    r2 = fold(r1.state, "EUR/USD", [{**tick, "ts_ms": 60_100, "bid": 0.5, "ask": 0.5}], 1, 0, cfg)
    assert [(c["ts_utc"], c["complete"], c["open"], c["low"], c["tick_volume"])
            for c in r2.candles] == [(60_000, True, 0.5, 0.5, 2)]
    r3 = fold(r2.state, "EUR/USD", [{**tick, "ts_ms": 9_000}], 2, 0, cfg)
    assert [r.reason for r in r3.rejected] == ["late"] and not r3.candles


def test_bars_leave_the_state_once_out_of_reach() -> None:
    cfg = CandleConfig.from_names(("1m",), lateness_ms=60_000)
    state = None
    for i in range(30):
        t = {"symbol": "EUR/USD", "ts_ms": i * 60_000, "bid": 1.0}
        state = fold(state, "EUR/USD", [t], i, 0, cfg).state
    assert len(state["bars"]["1m"]) <= 3


def test_clock_closes_quiet_bars_and_recovery_resends_all() -> None:
    cfg = CandleConfig.from_names(("1m", "1h"), close_grace_ms=2_000)
    r = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 60_000, "bid": 1.0}], 0, 0, cfg)
    assert closed_by_clock(r.state, 121_999, cfg) == []
    closed = closed_by_clock(r.state, 122_000, cfg)
    assert [(c["timeframe"], c["complete"]) for c in closed] == [("1m", True)]
    assert [(c["timeframe"], c["complete"]) for c in all_bars(r.state, 122_000, cfg)] == [
        ("1m", True), ("1h", False)]


def test_rejects_carry_index_and_reason() -> None:
    ticks = [{"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.0}, {"symbol": "GBP/USD", "ts_ms": 2,
             "bid": 1.0}, "garbage", {"symbol": "EUR/USD", "ts_ms": 3}, {"symbol": "\x01",
             "ts_ms": 3, "bid": 1.0}]
    r = fold(None, "EUR/USD", ticks, 0, 0, CandleConfig.from_names(("1m",)))
    assert [(x.index, x.reason) for x in r.rejected] == [
        (1, "symbol_mismatch"), (2, "invalid_tick"), (3, "invalid_tick"), (4, "bad_symbol")]
    assert r.accepted == 1


def test_changed_configuration_keeps_offsets_not_bars() -> None:
    a = CandleConfig.from_names(("1m",))
    b = CandleConfig.from_names(("1m", "5m"))
    r = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.0}], 5, 0, a)
    assert fold(r.state, "EUR/USD", [], 5, 0, b).skipped
    r2 = fold(r.state, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 2, "bid": 1.0}], 6, 0, b)
    assert r2.state["cfg"] == b.fingerprint and r2.state["counts"]["ticks"] == 2


TICK_CASES: list[Any] = [
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": 1, "ask": 1.1, "bid": None, "volume": 0},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 2, "ask": 3, "volume": 1.5, "provider": "x"},
    {"symbol": "EUR/USD", "ts_ms": 1},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": None, "ask": None},
    {"symbol": "EUR/USD", "ts_ms": -1, "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": 1.5, "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": True, "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": "1", "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 0},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": False},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": "1.1"},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "volume": -1},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "volume": "1"},
    {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "provider": 5},
    {"symbol": "", "ts_ms": 1, "bid": 1.1},
    {"symbol": 7, "ts_ms": 1, "bid": 1.1},
    {"ts_ms": 1, "bid": 1.1},
    {"symbol": "EUR/USD", "ts_ms": 99_999_999_999_999, "bid": 1.1},
    [1],
    "text",
    None,
]


@pytest.mark.parametrize("case", TICK_CASES)
def test_hot_path_check_agrees_with_the_schema(case: Any) -> None:
    try:
        parse_tick(case)
        accepted = True
    except TickError as exc:
        accepted = exc.reason == "bad_symbol"  # the schema does not normalize symbols
    assert accepted == schemas.is_valid("tick", case)


def test_fast_and_full_tick_checks_fold_alike() -> None:
    """Canonical float ticks take the fold's fast path; spelled-out ones the full check."""
    base = [{"ts_ms": 60_000 + i * 7, "bid": 1.1 + i * 1e-5, "ask": 1.1002 + i * 1e-5,
             "volume": 0.5 + i, "provider": "p"} for i in range(50)]
    base += [{"ts_ms": 60_100, "bid": 1.2, "ask": 1.2002}, {"ts_ms": -1, "bid": 1.0, "ask": 1.0},
             {"ts_ms": 60_200, "bid": float("nan"), "ask": 1.0}]
    fast = fold(None, "EUR/USD", [{**t, "symbol": "EUR/USD"} for t in base], 0, 0, CONFIG)
    full = fold(None, "EUR/USD", [{**t, "symbol": "eur-usd"} for t in base], 0, 0, CONFIG)
    assert fast.candles == full.candles and len(fast.candles) == 7
    assert fast.state == full.state
    assert [(r.index, r.reason) for r in fast.rejected] == [(51, "invalid_tick"),
                                                             (52, "invalid_tick")]
    assert [(r.index, r.reason) for r in full.rejected] == [(51, "invalid_tick"),
                                                             (52, "invalid_tick")]
