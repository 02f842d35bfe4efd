"""The pure candle fold against the independent reference, without Kafka."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

import schemas
from pipeline.core import ticks as tick_rules
from pipeline.core.candles import CandleConfig, all_bars, closed_by_clock, fold
from pipeline.core.ticks import TickError, parse_tick
from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol
from producers.csv_ticks import RowError, parse_row, read_tick_csv
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.reference_candles import compare_candles, reference_from_csv

TFS = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
NOW = 2_000_000_000_000  # 2033, far after the data: a replay
T0 = 1_709_323_200_000  # Fri 2024-03-01 20:00:00 UTC
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


def run_fold(messages: list[tuple[str, list[Any]]], crash_every: int = 0, seed: int = 0,
             now_ms: int = NOW, config: CandleConfig = CONFIG,
             states: dict[str, dict[str, Any]] | None = None,
             ) -> tuple[dict[tuple[str, str, int], dict[str, Any]], Counter[str]]:
    """Fold every message in order; with crash_every, replay from an older snapshot.

    The symbols' final states are left in ``states`` when given."""
    rng = random.Random(seed)
    states = {} if states is None else states
    snapshots: dict[str, dict[str, Any]] = {}
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    rejected: dict[tuple[int, int], str] = {}
    i = committed = 0
    while i < len(messages):
        symbol, ticks = messages[i]
        result = fold(states.get(symbol), symbol, ticks, i, now_ms, config)
        if not result.skipped:
            states[symbol] = result.state
            orjson.dumps(result.state)  # the state can always be written
        for c in result.candles:
            schemas.validate("candle", c)
            # Complete by event time only: a tick at or past the bar's end has arrived.
            end = c["ts_utc"] + _TF_MS[c["timeframe"]]
            assert c["complete"] == (end <= result.state["max_ts"]), c
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


_TF_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
          "4h": 14_400_000, "1d": 86_400_000}


def close_quiet(states: dict[str, dict[str, Any]], latest: dict[tuple[str, str, int], Any],
                now_ms: int = NOW, config: CandleConfig = CONFIG) -> None:
    """What the worker's clock does once every symbol has been quiet for the grace."""
    for state in states.values():
        # A message arrived just now (or the arrival time is unknown): not quiet, no bar closes.
        assert closed_by_clock(state, now_ms, config, now_ms - config.close_grace_ms + 1) == []
        assert closed_by_clock(state, now_ms, config, None) == []
        for c in closed_by_clock(state, now_ms, config, now_ms - config.close_grace_ms):
            assert c["complete"]
            latest[(c["symbol"], c["timeframe"], c["ts_utc"])] = c


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
    states: dict[str, dict[str, Any]] = {}
    latest, reasons = run_fold(messages, crash_every=crash_every, seed=3, states=states)
    assert compare_candles(ref.candles, latest) == []
    # The replay's clock (NOW) is far past every bar, yet only event time closed bars: each
    # symbol's newest bars stay open until the symbol has been quiet for the grace.
    assert not all(c["complete"] for c in latest.values())
    close_quiet(states, latest)
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
    first = fold(None, "EUR/USD", ticks, 10, NOW, CONFIG)
    again = fold(first.state, "EUR/USD", ticks, 10, NOW, CONFIG)
    older = fold(first.state, "EUR/USD", ticks, 9, NOW, CONFIG)
    assert again.skipped and older.skipped and not again.candles
    assert first.state["counts"]["ticks"] == 5


def test_forming_bar_is_sent_once_per_message_and_closes_on_event_time() -> None:
    cfg = CandleConfig.from_names(("1m", "5m"), lateness_ms=60_000)
    ticks = [{"symbol": "EUR/USD", "ts_ms": 60_000 + i * 100, "bid": 1.0 + i, "ask": 1.0 + i}
             for i in range(10)]
    r1 = fold(None, "EUR/USD", ticks, 0, NOW, cfg)
    assert [(c["timeframe"], c["complete"]) for c in r1.candles] == [("1m", False), ("5m", False)]
    assert r1.candles[0]["tick_volume"] == 10
    # a tick exactly at the 1m bar's end closes it and opens the next one
    r2 = fold(r1.state, "EUR/USD", [{"symbol": "EURUSD", "ts_ms": 120_000, "bid": 5.0}], 1,
              NOW, cfg)
    got = [(c["timeframe"], c["ts_utc"], c["complete"]) for c in r2.candles]
    assert got == [("1m", 60_000, True), ("1m", 120_000, False), ("5m", 0, False)]


def test_late_tick_revises_a_closed_bar_and_it_is_sent_again() -> None:
    cfg = CandleConfig.from_names(("1m",), lateness_ms=120_000)
    tick = {"symbol": "EUR/USD", "bid": 1.0, "ask": 1.0}
    r1 = fold(None, "EUR/USD", [{**tick, "ts_ms": 60_500}, {**tick, "ts_ms": 130_000}], 0, NOW,
              cfg)
    r2 = fold(r1.state, "EUR/USD", [{**tick, "ts_ms": 60_100, "bid": 0.5, "ask": 0.5}], 1, NOW,
              cfg)
    assert [(c["ts_utc"], c["complete"], c["open"], c["low"], c["tick_volume"])
            for c in r2.candles] == [(60_000, True, 0.5, 0.5, 2)]
    r3 = fold(r2.state, "EUR/USD", [{**tick, "ts_ms": 9_000}], 2, NOW, cfg)
    assert [r.reason for r in r3.rejected] == ["late"] and not r3.candles


def test_bars_leave_the_state_once_out_of_reach() -> None:
    cfg = CandleConfig.from_names(("1m",), lateness_ms=60_000)
    state = None
    for i in range(30):
        t = {"symbol": "EUR/USD", "ts_ms": i * 60_000, "bid": 1.0}
        state = fold(state, "EUR/USD", [t], i, NOW, cfg).state
    assert len(state["bars"]["1m"]) <= 3


def test_clock_closes_quiet_bars_and_recovery_resends_all() -> None:
    cfg = CandleConfig.from_names(("1m", "1h"), close_grace_ms=2_000)
    r = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 60_000, "bid": 1.0}], 0, NOW, cfg)
    quiet_since = 60_000
    assert closed_by_clock(r.state, 121_999, cfg, quiet_since) == []
    closed = closed_by_clock(r.state, 122_000, cfg, quiet_since)
    assert [(c["timeframe"], c["complete"]) for c in closed] == [("1m", True)]
    # Not quiet for the grace (a message arrived 1.999 s ago), or not known to be: no bar closes.
    assert closed_by_clock(r.state, 122_000, cfg, 120_001) == []
    assert closed_by_clock(r.state, 10**13, cfg, None) == []
    assert [(c["timeframe"], c["complete"]) for c in closed_by_clock(r.state, 10**13, cfg, 0)
            ] == [("1m", True), ("1h", True)]
    # Recovery re-sends bars complete by event time (or DONE) only: whether the symbol is quiet
    # is not known then; the clock closes them again once it is.
    assert [(c["timeframe"], c["complete"]) for c in all_bars(r.state, 10**13, cfg)] == [
        ("1m", False), ("1h", False)]
    r2 = fold(r.state, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 120_000, "bid": 1.0}], 1, NOW,
              cfg)
    assert [(c["timeframe"], c["ts_utc"], c["complete"]) for c in all_bars(r2.state, 0, cfg)
            ] == [("1m", 60_000, True), ("1m", 120_000, False), ("1h", 0, False)]


def test_a_replay_closes_bars_by_event_time_only() -> None:
    """In a replay the wall clock is far past every bar while its ticks still arrive."""
    cfg = CandleConfig.from_names(("1m",), close_grace_ms=2_000)
    now = 1_800_000_000_000  # 2027: long after the ticks below

    def t(ts: int, bid: float) -> dict[str, Any]:
        return {"symbol": "EUR/USD", "ts_ms": ts, "bid": bid, "ask": bid + 0.0002}

    r1 = fold(None, "EUR/USD", [t(T0 + 1_000, 1.1)], 0, now, cfg)
    assert [(c["ts_utc"], c["complete"]) for c in r1.candles] == [(T0, False)]
    r2 = fold(r1.state, "EUR/USD", [t(T0 + 30_000, 1.2)], 1, now, cfg)
    assert [(c["ts_utc"], c["complete"], c["tick_volume"]) for c in r2.candles] == [
        (T0, False, 2)]
    # The replay goes on: the symbol is not quiet, so the clock closes nothing.
    assert closed_by_clock(r2.state, now, cfg, now - 10) == []
    r3 = fold(r2.state, "EUR/USD", [t(T0 + 60_000, 1.3)], 2, now, cfg)
    assert [(c["ts_utc"], c["complete"]) for c in r3.candles] == [(T0, True), (T0 + 60_000, False)]
    # The replay ended and the symbol has been quiet for the grace: the clock closes the rest.
    assert [(c["ts_utc"], c["complete"]) for c in closed_by_clock(r3.state, now, cfg, now - 2_000)
            ] == [(T0 + 60_000, True)]


def test_rejects_carry_index_and_reason() -> None:
    ticks = [{"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.0}, {"symbol": "GBP/USD", "ts_ms": 2,
             "bid": 1.0}, "garbage", {"symbol": "EUR/USD", "ts_ms": 3}, {"symbol": "\x01",
             "ts_ms": 3, "bid": 1.0}, {"symbol": "EUR/US", "ts_ms": 3, "bid": 1.0},
             {"symbol": "EUR/USD", "ts_ms": 10**9, "bid": 1.0}]
    r = fold(None, "EUR/USD", ticks, 0, 0, CandleConfig.from_names(("1m",)))
    assert [(x.index, x.reason) for x in r.rejected] == [
        (1, "symbol_mismatch"), (2, "invalid_tick"), (3, "invalid_tick"), (4, "invalid_tick"),
        (5, "bad_symbol"), (6, "future")]
    assert r.accepted == 1


def test_changed_configuration_keeps_offsets_not_bars() -> None:
    a = CandleConfig.from_names(("1m",))
    b = CandleConfig.from_names(("1m", "5m"))
    r = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.0}], 5, NOW, a)
    assert fold(r.state, "EUR/USD", [], 5, NOW, b).skipped
    r2 = fold(r.state, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": 2, "bid": 1.0}], 6, NOW, b)
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
    fast = fold(None, "EUR/USD", [{**t, "symbol": "EUR/USD"} for t in base], 0, NOW, CONFIG)
    full = fold(None, "EUR/USD", [{**t, "symbol": "eur-usd"} for t in base], 0, NOW, CONFIG)
    assert fast.candles == full.candles and len(fast.candles) == 7
    assert fast.state == full.state
    assert [(r.index, r.reason) for r in fast.rejected] == [(51, "invalid_tick"),
                                                             (52, "invalid_tick")]
    assert [(r.index, r.reason) for r in full.rejected] == [(51, "invalid_tick"),
                                                             (52, "invalid_tick")]


# ------------------------------------------------------------------------------------------------
# One definition of a valid tick: the schema, parse_tick, both paths of the fold and the CSV
# reader agree on every edge value.

MAX_TS = tick_rules.MAX_TS_MS
BASE_TICK: dict[str, Any] = {"symbol": "EUR/USD", "ts_ms": T0, "bid": 1.1, "ask": 1.1002,
                             "volume": 1.5, "provider": "feed"}
ABSENT = object()
NEXT_ABOVE_1E9 = 1_000_000_000.0000001  # the float right after 1e9
NEXT_ABOVE_1E12 = 1_000_000_000_000.0001  # the float right after 1e12
NUMBERS: list[Any] = [
    0, 1, -1, 0.0, -0.0, 1.0, 1.5, 1e-320, 5e-324, -1e-320, 1e9, NEXT_ABOVE_1E9, 10**9,
    10**9 + 1, 1e12, NEXT_ABOVE_1E12, 10**12, 10**12 + 1, T0, T0 + 0.5, float(T0), MAX_TS,
    MAX_TS + 1, float(MAX_TS), 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, float(2**64),
    10**30, 10**400, 1e308, 1.7976931348623157e308, float("inf"), float("-inf"), float("nan"),
    True, False, "1.1", "1", None, [1.1], {"v": 1},
]
EDGE_TICKS: list[dict[str, Any]] = [BASE_TICK]
for _field in ("ts_ms", "bid", "ask", "volume"):
    for _value in [*NUMBERS, ABSENT]:
        _tick = dict(BASE_TICK)
        if _value is ABSENT:
            del _tick[_field]
        else:
            _tick[_field] = _value
        EDGE_TICKS.append(_tick)
EDGE_TICKS += [{**BASE_TICK, "bid": v, "ask": v} for v in (1e308, 1e9, 10**9, 1e-320, 2**63)]
EDGE_TICKS += [{k: v for k, v in BASE_TICK.items() if k not in ("bid", "ask")}]
TEXTS: list[Any] = [
    "EUR/USD", "eurusd", " EURUSD ", "EUR-USD", "", " ", "a", "A" * 32, "A" * 33, "p" * 64,
    "p" * 65, "fe\x00ed", "\x00", "EUR/USD\x00", "\x01", "x\n", "\tEURUSD", "feed\x1b[0m",
    "EUR\x7fUSD", "feed\x80", "feed\x85", "feed\x9f", "feed\xa0", "fééd", "feed\u2028", "EUR/US",
    "???", None, 5, True, 1.5, b"feed", ["feed"],
]
for _field in ("symbol", "provider"):
    for _value in [*TEXTS, ABSENT]:
        _tick = dict(BASE_TICK)
        if _value is ABSENT:
            del _tick[_field]
        else:
            _tick[_field] = _value
        EDGE_TICKS.append(_tick)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _parse_outcome(raw: Any) -> str:
    try:
        tick = parse_tick(raw)
    except TickError as exc:
        assert exc.reason in ("invalid_tick", "bad_symbol")
        return exc.reason
    # What is accepted is plain: ints for the time, floats for prices and volume.
    assert type(tick.ts_ms) is int
    assert all(v is None or type(v) is float for v in (tick.bid, tick.ask, tick.volume))
    orjson.dumps(tick._asdict())
    return "ok"


ANY_SYMBOL = CandleConfig.from_names(TFS)


def _fold_outcome(raw: Any) -> str:
    """The fold's answer, keyed by the tick's symbol (when it has one), at a wall clock that
    puts no valid time in the future."""
    try:
        key = normalize_symbol(raw["symbol"])
    except (KeyError, TypeError, SymbolError):
        key = "EUR/USD"
    result = fold(None, key, [raw], 0, MAX_TS, ANY_SYMBOL)
    orjson.dumps(result.state)  # whatever came in, the state can be written
    if result.accepted:
        for bar in result.state["bars"]["1m"]:
            assert all(type(bar[k]) is float for k in (1, 2, 3, 4, 6)), bar
            assert all(type(bar[k]) is int for k in (0, 5, 7, 8)), bar
        for c in result.candles:
            schemas.validate("candle", c)
        return "ok"
    (rej,) = result.rejected
    return rej.reason


def _csv_text(value: Any) -> str | None:
    """The CSV spelling of a value: absent is empty; numbers as Python writes them."""
    if value is ABSENT or value is None:
        return ""
    if type(value) in (int, float):
        return repr(value)
    return None  # no CSV spelling (a bool, a string where a number belongs, ...)


def _csv_outcome(raw: dict[str, Any]) -> str | None:
    """None when the tick has no CSV spelling."""
    texts = [_csv_text(raw.get(k, ABSENT)) for k in ("ts_ms", "bid", "ask", "volume")]
    symbol, provider = raw.get("symbol", ABSENT), raw.get("provider", ABSENT)
    if None in texts or type(symbol) is not str or provider is ABSENT or provider is None:
        return None
    if type(raw.get("ts_ms")) is not int:
        return None  # the CSV writes a time as digits
    if any(c in symbol for c in ",\r\n\"") or symbol != symbol.strip():
        return None  # CSV syntax, not a value
    if type(provider) is not str:
        return None
    try:
        row = parse_row([symbol, *texts], 2, "raw", provider=provider)
    except RowError:
        return "invalid_tick"
    except ValueError:  # a provider the reader refuses outright
        assert not tick_rules.valid_provider(provider)
        return "invalid_tick"
    try:
        normalize_symbol(row["symbol"])
    except SymbolError:
        return "bad_symbol"
    return "ok"


@pytest.mark.parametrize("raw", EDGE_TICKS, ids=lambda t: repr(t)[:120])
def test_every_stage_agrees_on_edge_values(raw: dict[str, Any]) -> None:
    outcome = _parse_outcome(raw)
    # The schema cannot normalize symbols: "bad_symbol" is a valid tick to it. NaN and
    # infinity are no JSON values: the schema has no say on them.
    if _is_json(raw):
        assert schemas.is_valid("tick", raw) == (outcome != "invalid_tick")
    # The fold, on its fast path when the tick is canonical and on its full path when not.
    assert _fold_outcome(raw) == outcome
    if raw.get("symbol") == "EUR/USD":
        assert _fold_outcome({**raw, "symbol": "eur-usd"}) == outcome
    if type(raw.get("provider")) is str and raw.get("symbol") == "EUR/USD":
        # The fast path skips the character scan for the provider it saw last: it must
        # still refuse what the full check refused.
        first = {**BASE_TICK, "provider": raw["provider"], "ts_ms": 0, "bid": 2.2}
        second = fold(fold(None, "EUR/USD", [first], 0, MAX_TS, ANY_SYMBOL).state,
                      "EUR/USD", [raw], 1, MAX_TS, ANY_SYMBOL)
        assert (second.accepted == 1) == (outcome == "ok")
    csv = _csv_outcome(raw)
    assert csv is None or csv == outcome


@pytest.mark.parametrize("raw", TICK_CASES)
def test_every_stage_agrees_on_the_plain_cases(raw: Any) -> None:
    outcome = _parse_outcome(raw)
    assert schemas.is_valid("tick", raw) == (outcome != "invalid_tick")
    if type(raw) is dict and raw.get("symbol") in ("EUR/USD", "eur-usd"):
        assert _fold_outcome({**raw, "symbol": "EUR/USD"}) == outcome
        assert _fold_outcome({**raw, "symbol": "eur-usd"}) == outcome


def test_edge_values_cover_both_answers() -> None:
    outcomes = Counter(_parse_outcome(t) for t in EDGE_TICKS)
    assert outcomes["ok"] >= 30 and outcomes["invalid_tick"] >= 150 and outcomes["bad_symbol"]
    assert sum(_csv_outcome(t) is not None for t in EDGE_TICKS) >= 100


def test_the_schema_states_the_bounds_of_the_code() -> None:
    props = schemas.load_schema("tick")["allOf"][0]["properties"]
    assert (props["ts_ms"]["type"], props["ts_ms"]["minimum"], props["ts_ms"]["maximum"]) == (
        "integer", tick_rules.MIN_TS_MS, tick_rules.MAX_TS_MS)
    for side in ("bid", "ask"):
        assert props[side]["exclusiveMinimum"] == 0
        assert props[side]["maximum"] == tick_rules.MAX_PRICE
        assert "minimum" not in props[side]
    assert (props["volume"]["minimum"], props["volume"]["maximum"]) == (0, tick_rules.MAX_VOLUME)
    assert (props["provider"]["minLength"], props["provider"]["maxLength"]) == (
        1, tick_rules.MAX_PROVIDER_LENGTH)
    assert (props["symbol"]["minLength"], props["symbol"]["maxLength"]) == (
        1, MAX_SYMBOL_LENGTH)
    # The patterns refuse exactly the characters the code calls control characters.
    for name in ("provider", "symbol"):
        pattern = re.compile(props[name]["pattern"].replace("$", r"\Z"))
        for code in [*range(0x0, 0x3000), 0xFEFF, 0xFFFD, 0x10FFFF]:
            char = chr(code)
            assert (pattern.search(f"a{char}b") is None) == (
                tick_rules.CONTROL_CHARS.search(char) is not None), (name, hex(code))
    # The year 3000, as the comment says.
    assert tick_rules.MAX_TS_MS == 32_503_680_000_000
    # Every sum in a bar stays finite and a float: a day of ticks at the bounds.
    assert tick_rules.MAX_PRICE * 2 < 2.0**53 and tick_rules.MAX_VOLUME * 10**9 < 2.0**1023


def test_a_tick_from_the_future_is_refused_and_does_not_silence_the_symbol() -> None:
    now = T0 + 10 * 60_000
    tol = CONFIG.future_tolerance_ms
    assert tol == 60_000

    def t(ts: int, bid: Any, symbol: str = "EUR/USD") -> dict[str, Any]:
        return {"symbol": symbol, "ts_ms": ts, "bid": bid, "ask": bid}

    glitches = [t(32_472_144_000_000, 1.2), t(now + 86_400_000, 1.2), t(now + tol + 1, 1.2),
                t(now + tol + 1, 1, "eurusd")]  # fast path, and full path (int price, spelling)
    r1 = fold(None, "EUR/USD", [t(T0, 1.1), *glitches, t(now + tol, 1.3)], 0, now, CONFIG)
    assert [(x.index, x.reason) for x in r1.rejected] == [(i, "future") for i in range(1, 5)]
    assert "ahead of the wall clock" in r1.rejected[0].detail
    assert r1.state["max_ts"] == now + tol and r1.accepted == 2
    # The next real ticks are not late: the glitches did not move the newest time.
    r2 = fold(r1.state, "EUR/USD", [t(now + 1, 1.4), t(now + tol - 300_000, 1.5)], 1, now, CONFIG)
    assert r2.accepted == 2 and not r2.rejected
    # The tolerance is the config's; 0 allows nothing after the clock.
    strict = CandleConfig.from_names(("1m",), future_tolerance_ms=0)
    r3 = fold(None, "EUR/USD", [t(now, 1.1), t(now + 1, 1.1)], 0, now, strict)
    assert r3.accepted == 1 and [x.reason for x in r3.rejected] == ["future"]
    # Past the year-3000 cap a time is not a time at all.
    r4 = fold(None, "EUR/USD", [t(MAX_TS + 1, 1.1)], 0, MAX_TS + 10**9, CONFIG)
    assert [x.reason for x in r4.rejected] == ["invalid_tick"]


def test_accepted_edge_values_become_plain_floats_in_the_bar() -> None:
    ticks = [{"symbol": "EUR/USD", "ts_ms": T0, "bid": 10**9, "ask": 10**9, "volume": 10**12},
             {"symbol": "EUR/USD", "ts_ms": T0 + 1, "bid": 1e9, "volume": 1e12},
             {"symbol": "EUR/USD", "ts_ms": float(T0 + 2), "ask": 1e-320, "volume": -0.0},
             {"symbol": "EUR/USD", "ts_ms": T0 + 3, "bid": 1, "volume": 0}]
    r = fold(None, "EUR/USD", ticks, 0, NOW, CONFIG)
    assert r.accepted == 4
    (bar,) = r.state["bars"]["1m"]
    assert bar[1:7] == [1e9, 1e9, 1e-320, 1.0, 4, 2e12]
    assert [type(v) for v in bar[1:7]] == [float, float, float, float, int, float]
    assert orjson.loads(orjson.dumps(r.state)) == r.state
    # A bar of -0.0 volumes holds 0.0, as PostgreSQL and the schema expect.
    z = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": T0, "bid": 1.1, "volume": -0.0}],
             0, NOW, CONFIG)
    assert str(z.state["bars"]["1m"][0][6]) == "0.0"


def test_a_stored_provider_with_control_characters_is_forgotten() -> None:
    r = fold(None, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": T0, "bid": 1.1}], 0, NOW, CONFIG)
    old = {**r.state, "provider": "fe\x00ed"}  # written before the checks existed
    r2 = fold(old, "EUR/USD", [{"symbol": "EUR/USD", "ts_ms": T0 + 1, "bid": 1.2,
                                "provider": "fe\x00ed"}], 1, NOW, CONFIG)
    assert [x.reason for x in r2.rejected] == ["invalid_tick"]
    assert r2.state["provider"] is None and old["provider"] == "fe\x00ed"
    assert all(c["provider_source"] is None for c in r2.candles)


def test_bounds_and_future_rule_agree_with_the_reference(tmp_path: Path) -> None:
    """Boundary rows through the CSV reader and the fold, and through the reference, which
    writes the same bounds out on its own."""
    now = T0 + 3_600_000
    tol = CONFIG.future_tolerance_ms
    rows = [
        f"EUR/USD,{T0},1000000000,1000000000.0,1000000000000",  # every bound, met
        f"EUR/USD,{T0 + 1},1000000000.0000001,,",  # the float after 1e9
        f"EUR/USD,{T0 + 2},,1e9,1000000000000.0001",  # the float after 1e12
        f"EUR/USD,{T0 + 3},1e-320,5e-324,-0.0",
        f"EUR/USD,{T0 + 4},1e308,1e308,",
        f"EUR/USD,{T0 + 5},1.1,1.2,18446744073709551616",
        f"EUR/USD,{T0 + 6},9223372036854775808,,",
        f"GBP/USD,{now + tol},1.1,1.2,",  # exactly the tolerance ahead: accepted
        f"EUR/USD,{now + tol + 1},1.1,1.2,",  # one millisecond more: future
        "EUR/USD,32472144000000,1.1,1.2,",  # the year 2999: future
        f"EUR/USD,{MAX_TS},1.1,1.2,",  # the year 3000: future here, valid elsewhere
        f"EUR/USD,{MAX_TS + 1},1.1,1.2,",  # past the year 3000: a bad row
        f"EUR/USD,{2**63},1.1,1.2,",
        "EUR/USD,-0,1.1,1.2,",
        "EUR/USD\x00,1,1.1,1.2,",
        "EUR\x85USD,1,1.1,1.2,",
        f"EUR/USD,{T0 + 7},1.3,1.4,1",  # still accepted: no glitch moved the newest time
        f"GBP/USD,{now + tol - 1},1.1,1.2,",
    ]
    path = tmp_path / "edges.csv"
    path.write_text("symbol,ts_ms,bid,ask,volume\n" + "\n".join(rows) + "\n", encoding="utf-8")
    ref = reference_from_csv(str(path), timeframes=TFS, known_symbols=set(KNOWN_SYMBOLS),
                             now_ms=now)
    assert [(d.line_no, d.reason) for d in ref.dead_letters] == [
        (3, "bad_row"), (4, "bad_row"), (6, "bad_row"), (7, "bad_row"), (8, "bad_row"),
        (10, "future"), (11, "future"), (12, "future"), (13, "bad_row"), (14, "bad_row"),
        (15, "bad_row"), (16, "bad_row"), (17, "bad_row")]
    assert ref.candles[("EUR/USD", "1m", T0)].tick_volume == 3
    messages, bad_lines = messages_from_csv(path, 1, seed=1)
    assert bad_lines == [d.line_no for d in ref.dead_letters if d.reason == "bad_row"]
    states: dict[str, dict[str, Any]] = {}
    latest, reasons = run_fold(messages, now_ms=now, states=states)
    assert reasons == Counter(d.reason for d in ref.dead_letters if d.reason != "bad_row")
    close_quiet(states, latest, now_ms=now + 10**9)
    assert compare_candles(ref.candles, latest) == []
    # With the wall clock far enough ahead, the rows the clock refused are accepted.
    later = reference_from_csv(str(path), timeframes=TFS, known_symbols=set(KNOWN_SYMBOLS),
                               now_ms=MAX_TS)
    assert "future" not in {d.reason for d in later.dead_letters}
