"""Unit tests of the reference aggregation and of the adversarial CSV generator."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.exactness_data import (
    GAP_END_MS,
    GAP_START_MS,
    KNOWN_SYMBOLS,
    MONDAY_MS,
    write_adversarial_csv,
)
from tests.reference_candles import (
    HEADER,
    RefCandle,
    RefDeadLetter,
    RefResult,
    RefTick,
    accepted_ticks,
    compare_candles,
    normalize_symbol,
    reference_from_csv,
    timeframe_ms,
)

T0 = 1_709_323_200_000  # Fri 2024-03-01 20:00:00 UTC


def csv(*rows: str) -> list[str]:
    return [HEADER, *rows]


def candle(result: RefResult, symbol: str, timeframe: str, ts: int) -> RefCandle:
    return result.candles[(symbol, timeframe, ts)]


# ------------------------------------------------------------------------------------------------
# Aggregation semantics


def test_same_millisecond_ties_for_open_and_close() -> None:
    result = reference_from_csv(
        csv(
            f"EUR/USD,{T0 + 20_000},1.5,1.5,1",
            f"EUR/USD,{T0 + 10_000},1.1,1.1,",  # smallest ts, earliest arrival -> open
            f"EUR/USD,{T0 + 10_000},1.2,1.2,2.5",
            f"EUR/USD,{T0 + 50_000},1.4,1.4,0.5",
            f"EUR/USD,{T0 + 50_000},1.3,1.3,",  # largest ts, latest arrival -> close
            f"EUR/USD,{T0 + 30_000},1.6,1.6,1",
        ),
        timeframes=("1m",),
    )
    assert result.dead_letters == []
    assert result.candles == {
        ("EUR/USD", "1m", T0): RefCandle(
            symbol="EUR/USD",
            timeframe="1m",
            ts_utc=T0,
            open=1.1,
            high=1.6,
            low=1.1,
            close=1.3,
            tick_volume=6,
            volume=5.0,
        )
    }


def test_resent_quote_counted_once() -> None:
    result = reference_from_csv(
        csv(
            f"EUR/USD,{T0 + 1_000},1.1,1.1,1",
            f"EUR/USD,{T0 + 1_000},1.1,1.1,5",  # re-sent, other volume: ignored
            f"eurusd,{T0 + 1_000},1.10,1.100,",  # same values, other spelling: ignored
            f"EUR/USD,{T0 + 2_000},1.1,1.1,2",  # same prices, new ts: counted
            f"EUR/USD,{T0 + 1_000},1.1,1.1,4",  # equals an older tick, not the previous: counted
            f"EUR/USD,{T0 + 3_000},1.2,,8",
            f"EUR/USD,{T0 + 3_000},1.2,,16",  # re-sent one-sided quote: ignored
            f"EUR/USD,{T0 + 3_000},,1.2,32",  # ask-only differs from bid-only: counted
        ),
        timeframes=("1m",),
    )
    assert result.dead_letters == []
    bar = candle(result, "EUR/USD", "1m", T0)
    assert bar.tick_volume == 5
    assert bar.volume == 1.0 + 2.0 + 4.0 + 8.0 + 32.0
    assert (bar.open, bar.high, bar.low, bar.close) == (1.1, 1.2, 1.1, 1.2)


def test_price_is_mid_or_present_side() -> None:
    result = reference_from_csv(
        csv(
            f"EUR/USD,{T0},1.08,1.08002,",
            f"GBP/USD,{T0},1.25,,",
            f"USD/JPY,{T0},,150.125,",
        ),
        timeframes=("1m",),
    )
    # (1.08 + 1.08002) / 2 in binary floating point, not the decimal 1.08001.
    assert candle(result, "EUR/USD", "1m", T0).open == 1.0800100000000001
    assert candle(result, "GBP/USD", "1m", T0).close == 1.25
    assert candle(result, "USD/JPY", "1m", T0).high == 150.125


def test_lateness_boundary() -> None:
    lines = csv(
        f"EUR/USD,{T0 + 600_000},1.1,1.1,",  # newest = T0+10min
        f"EUR/USD,{T0 + 300_000},1.2,1.2,",  # exactly 300 s behind: accepted
        f"EUR/USD,{T0 + 299_999},1.3,1.3,",  # 300.001 s behind: late (line 4)
        f"USD/JPY,{T0},150.0,150.0,",  # first tick of another symbol: accepted
        f"EUR/USD,{T0 + 900_000},1.4,1.4,",  # newest = T0+15min
        f"EUR/USD,{T0 + 600_000},1.5,1.5,",  # exactly at the boundary again: accepted
        f"EUR/USD,{T0 + 599_999},1.6,1.6,",  # late (line 8)
        f"EUR/USD,{T0 + 899_999},1.7,1.7,",  # behind but within: accepted
    )
    result = reference_from_csv(lines, timeframes=("1h",))
    assert result.dead_letters == [RefDeadLetter(4, "late"), RefDeadLetter(8, "late")]
    bar = candle(result, "EUR/USD", "1h", T0)
    assert bar.tick_volume == 5
    assert (bar.open, bar.high, bar.low, bar.close) == (1.2, 1.7, 1.1, 1.4)
    assert candle(result, "USD/JPY", "1h", T0).tick_volume == 1

    strict = reference_from_csv(lines, timeframes=("1h",), lateness_ms=0)
    assert [d.line_no for d in strict.dead_letters] == [3, 4, 7, 8, 9]


def test_late_tick_does_not_move_the_newest_time() -> None:
    result = reference_from_csv(
        csv(
            f"EUR/USD,{T0 + 1_000_000},1.1,1.1,",
            f"EUR/USD,{T0},1.2,1.2,",  # late
            f"EUR/USD,{T0 + 700_000},1.3,1.3,",  # 300 s behind the first tick: accepted
        ),
        timeframes=("1h",),
    )
    assert result.dead_letters == [RefDeadLetter(3, "late")]
    assert candle(result, "EUR/USD", "1h", T0).tick_volume == 2


def test_bar_labelled_by_open_time_and_half_open() -> None:
    result = reference_from_csv(
        csv(
            f"EUR/USD,{T0},1.1,1.1,",
            f"EUR/USD,{T0 + 59_999},1.2,1.2,",
            f"EUR/USD,{T0 + 60_000},1.3,1.3,",  # exactly start + 1m: next bar
            f"EUR/USD,{T0 + 299_999},1.4,1.4,",
            f"EUR/USD,{T0 + 300_000},1.5,1.5,",  # exactly start + 5m: next 5m bar
        ),
        timeframes=("1m", "5m"),
    )
    assert sorted(result.candles) == [
        ("EUR/USD", "1m", 1_709_323_200_000),
        ("EUR/USD", "1m", 1_709_323_260_000),
        ("EUR/USD", "1m", 1_709_323_440_000),
        ("EUR/USD", "1m", 1_709_323_500_000),
        ("EUR/USD", "5m", 1_709_323_200_000),
        ("EUR/USD", "5m", 1_709_323_500_000),
    ]
    first = candle(result, "EUR/USD", "1m", 1_709_323_200_000)
    assert (first.open, first.close, first.tick_volume) == (1.1, 1.2, 2)
    second = candle(result, "EUR/USD", "1m", 1_709_323_260_000)
    assert (second.open, second.close, second.tick_volume) == (1.3, 1.3, 1)
    five = candle(result, "EUR/USD", "5m", 1_709_323_200_000)
    assert (five.open, five.close, five.tick_volume) == (1.1, 1.4, 4)
    assert candle(result, "EUR/USD", "5m", 1_709_323_500_000).tick_volume == 1


def test_4h_and_1d_alignment() -> None:
    result = reference_from_csv(
        csv(
            "XAU/USD,1709323260000,2400.1,2400.3,",  # Fri 2024-03-01 20:01
            "XAU/USD,1709510399999,2401.0,2401.0,",  # Sun 2024-03-03 23:59:59.999
            "XAU/USD,1709510400000,2402.0,2402.0,",  # Mon 2024-03-04 00:00:00.000
            "XAU/USD,1709524799999,2403.0,2403.0,",  # Mon 03:59:59.999
            "XAU/USD,1709524800000,2404.0,2404.0,",  # Mon 04:00:00.000
        ),
        timeframes=("4h", "1d"),
    )
    assert sorted(k for k in result.candles if k[1] == "4h") == [
        ("XAU/USD", "4h", 1_709_323_200_000),  # Fri 20:00
        ("XAU/USD", "4h", 1_709_496_000_000),  # Sun 20:00
        ("XAU/USD", "4h", 1_709_510_400_000),  # Mon 00:00
        ("XAU/USD", "4h", 1_709_524_800_000),  # Mon 04:00
    ]
    assert sorted(k for k in result.candles if k[1] == "1d") == [
        ("XAU/USD", "1d", 1_709_251_200_000),  # Fri 2024-03-01
        ("XAU/USD", "1d", 1_709_424_000_000),  # Sun 2024-03-03
        ("XAU/USD", "1d", 1_709_510_400_000),  # Mon 2024-03-04
    ]
    monday = candle(result, "XAU/USD", "1d", 1_709_510_400_000)
    assert (monday.open, monday.close, monday.tick_volume) == (2402.0, 2404.0, 3)
    assert candle(result, "XAU/USD", "4h", 1_709_323_200_000).open == 2400.2


def test_timeframe_durations() -> None:
    assert timeframe_ms("1m") == 60_000
    assert timeframe_ms("15m") == 900_000
    assert timeframe_ms("4h") == 14_400_000
    assert timeframe_ms("1d") == 86_400_000
    for bad in ("0m", "1w", "m", "1 m", "01m", "1M"):
        with pytest.raises(ValueError):
            timeframe_ms(bad)


# ------------------------------------------------------------------------------------------------
# Symbols and bad rows


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("EUR/USD", "EUR/USD"),
        ("EURUSD", "EUR/USD"),
        ("eur/usd", "EUR/USD"),
        ("EUR-USD", "EUR/USD"),
        ("EUR_USD", "EUR/USD"),
        (" usdjpy ", "USD/JPY"),
        ("xauusd", "XAU/USD"),
        ("eur / usd", "EUR/USD"),
        ("Eur  Usd", "EUR/USD"),
        ("EUR//USD", "EUR/USD"),
        ("us30", "US30"),
        ("GER40", "GER40"),
        ("brk.b", "BRK.B"),
        ("EURUSDX", "EURUSDX"),
        ("EUR", "EUR"),
        ("A" * 32, "A" * 32),
        ("", None),
        ("   ", None),
        ("???", None),
        ("EUR/US", None),
        ("EURO/USD", None),
        ("EUR/USD/JPY", None),
        ("/EURUSD", None),
        ("EUR/U5D", None),
        ("EUR\tUSD", None),
        ("EUR\x7fUSD", None),
        ("US$30", None),
        ("ÉUR/USD", None),
        ("A" * 33, None),
    ],
)
def test_symbol_normalization(raw: str, expected: str | None) -> None:
    assert normalize_symbol(raw) == expected


def test_bad_rows_and_unknown_symbols() -> None:
    ts = T0
    result = reference_from_csv(
        csv(
            f"EUR/USD,{ts},1.1,1.1,",  # 2 ok
            "EUR/USD,notanumber,1.1,1.1,",  # 3
            f"EUR/USD,{ts},,,",  # 4 no side
            f"GBP/USD,{ts},-1,1.2,",  # 5 negative bid
            f"???,{ts},1.1,1.1,",  # 6 symbol
            f"EUR/USD,{ts},1.1,1.1",  # 7 four fields
            f"EUR/USD,{ts},1.1,1.1,1,2",  # 8 six fields
            "",  # 9 blank
            "  ",  # 10 blank
            f"EUR/USD,-{ts},1.1,1.1,",  # 11 negative ts
            f"EUR/USD,{ts}.0,1.1,1.1,",  # 12 non-integer ts
            f"EUR/USD,{ts},nan,1.1,",  # 13
            f"EUR/USD,{ts},1.1,inf,",  # 14
            f"EUR/USD,{ts},1.1,1e999,",  # 15 overflows to inf
            f"EUR/USD,{ts},0,1.1,",  # 16 zero bid
            f"EUR/USD,{ts},1.1,1.1,-1",  # 17 negative volume
            f"EUR/USD,{ts},1.1,1.1,x",  # 18
            f"EUR/USD,{ts}, 1.1,1.1,",  # 19 numeric fields are not stripped
            f"FOO/BAR,{ts},1.1,1.1,",  # 20 unknown
            f"foobar,{ts},1.1,1.1,",  # 21 unknown
            "FOO/BAR,nope,1.1,1.1,",  # 22 bad row wins over unknown
            f"EUR/USD,{ts + 1},1.1,,0",  # 23 ok
            "EUR/USD,0,1.1,1.1,",  # 24 ts 0 is valid but far too late here
        ),
        known_symbols=KNOWN_SYMBOLS,
        timeframes=("1m",),
    )
    bad = RefDeadLetter
    assert result.dead_letters == [
        *(bad(n, "bad_row") for n in range(3, 20)),
        bad(20, "unknown_symbol"),
        bad(21, "unknown_symbol"),
        bad(22, "bad_row"),
        bad(24, "late"),
    ]
    assert candle(result, "EUR/USD", "1m", T0).tick_volume == 2

    anything_goes = reference_from_csv(csv(f"FOO/BAR,{ts},1.1,1.1,"), timeframes=("1m",))
    assert anything_goes.dead_letters == []
    assert ("FOO/BAR", "1m", T0) in anything_goes.candles


def test_bounds_of_a_valid_row() -> None:
    ts = T0
    result = reference_from_csv(
        csv(
            f"EUR/USD,{ts},1000000000,1e9,1000000000000",  # 2 every bound, met
            f"EUR/USD,{ts},1000000000.0000001,,",  # 3 a price past one billion
            f"EUR/USD,{ts},,1e308,",  # 4
            f"EUR/USD,{ts},1.1,,1000000000000.0001",  # 5 a volume past one trillion
            f"EUR/USD,{ts},1.1,,18446744073709551616",  # 6
            f"EUR/USD,{ts + 1},1e-320,,-0.0",  # 7 tiny but above 0; -0.0 is no negative volume
            "EUR/USD,32503680000000,1.1,,",  # 8 the year 3000: the last valid time
            "EUR/USD,32503680000001,1.1,,",  # 9
            "EUR/USD,9223372036854775808,1.1,,",  # 10
            f"EUR/USD\x00,{ts},1.1,,",  # 11 NUL
            f"EUR\x85USD,{ts},1.1,,",  # 12 C1 control
            f"\x1fEURUSD,{ts},1.1,,",  # 13 a control character, even where strip would drop it
        ),
        timeframes=("1m",),
        now_ms=32503680000000,
    )
    assert result.dead_letters == [RefDeadLetter(n, "bad_row") for n in (3, 4, 5, 6, 9, 10, 11, 12,
                                                                         13)]
    assert candle(result, "EUR/USD", "1m", T0).tick_volume == 2
    assert candle(result, "EUR/USD", "1m", T0).low == 1e-320


def test_a_tick_too_far_ahead_of_the_clock_is_future() -> None:
    now = T0 + 600_000
    lines = csv(
        f"EUR/USD,{T0},1.1,1.1,",  # 2
        f"EUR/USD,{now + 60_001},1.2,1.2,",  # 3 future: does not move the newest time
        "EUR/USD,32472144000000,1.3,1.3,",  # 4 the year 2999: future
        f"EUR/USD,{now + 60_000},1.4,1.4,",  # 5 exactly the tolerance ahead: accepted
        f"FOO/BAR,{now + 10**9},1.5,1.5,",  # 6 unknown symbol wins over future
        f"EUR/USD,{now - 239_999},1.6,1.6,",  # 7 within 5 minutes of the newest: accepted
    )
    result = reference_from_csv(lines, timeframes=("1h",), now_ms=now, known_symbols=KNOWN_SYMBOLS)
    assert result.dead_letters == [RefDeadLetter(3, "future"), RefDeadLetter(4, "future"),
                                   RefDeadLetter(6, "unknown_symbol")]
    assert candle(result, "EUR/USD", "1h", T0).tick_volume == 3
    strict = reference_from_csv(lines, timeframes=("1h",), now_ms=now, future_tolerance_ms=0)
    assert [d.line_no for d in strict.dead_letters] == [3, 4, 5, 6]
    # By default the clock is the wall clock: the year 2999 is future, 2024 is not.
    default = reference_from_csv(lines, timeframes=("1h",))
    assert default.dead_letters == [RefDeadLetter(4, "future")]


def test_header_must_match_exactly() -> None:
    with pytest.raises(ValueError):
        reference_from_csv(["symbol,ts,bid,ask,volume", f"EUR/USD,{T0},1.1,1.1,"])
    with pytest.raises(ValueError):
        reference_from_csv([])


def test_reads_files_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(f"{HEADER}\r\nEUR/USD,{T0},1.1,1.1,\r\n\r\nbad\r\n", encoding="utf-8")
    result = reference_from_csv(path, timeframes=("1m",))
    assert result.dead_letters == [RefDeadLetter(3, "bad_row"), RefDeadLetter(4, "bad_row")]
    assert candle(result, "EUR/USD", "1m", T0).tick_volume == 1
    assert reference_from_csv(str(path), timeframes=("1m",)) == result


# ------------------------------------------------------------------------------------------------
# compare_candles


def _sample() -> dict[tuple[str, str, int], RefCandle]:
    return reference_from_csv(
        csv(f"EUR/USD,{T0},1.1,1.1,2", f"EUR/USD,{T0 + 1},1.2,1.2,1"), timeframes=("1m",)
    ).candles


def test_compare_candles_equal_with_objects_and_mappings() -> None:
    expected = _sample()
    assert compare_candles(expected, dict(expected)) == []
    as_rows = {
        key: {
            "open": Decimal("1.1"),
            "high": 1.2,
            "low": 1.1,
            "close": 1.2,
            "tick_volume": 2,
            "volume": 3.0 + 1e-12,
        }
        for key in expected
    }
    assert compare_candles(expected, as_rows) == []


def test_compare_candles_reports_differences() -> None:
    expected = _sample()
    key = ("EUR/USD", "1m", T0)
    wrong = {
        key: {
            "open": 1.1,
            "high": 1.2000000000000002,
            "low": 1.1,
            "close": 1.2,
            "tick_volume": 3,
            "volume": 3.1,
        },
        ("EUR/USD", "1m", T0 + 60_000): {"open": 1.0},
    }
    diffs = compare_candles(expected, wrong)
    assert len(diffs) == 4
    assert diffs[0].startswith("unexpected candle EUR/USD 1m 1709323260000")
    assert any("high expected 1.2" in d for d in diffs)
    assert any("tick_volume expected 2, got 3" in d for d in diffs)
    assert any("volume expected 3.0, got 3.1" in d for d in diffs)

    missing = compare_candles(expected, {})
    assert len(missing) == 1
    assert missing[0].startswith(
        "missing candle EUR/USD 1m 1709323200000 (2024-03-01 20:00:00 UTC)"
    )
    partial = compare_candles(expected, {key: {"open": 1.1}})
    assert len(partial) == 5 and all("missing in actual" in d for d in partial)


# ------------------------------------------------------------------------------------------------
# Adversarial generator


@pytest.fixture(scope="module")
def adversarial_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adversarial") / "ticks.csv"
    write_adversarial_csv(path)
    return path


def test_generator_is_deterministic(adversarial_csv: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.csv"
    write_adversarial_csv(again, seed=7)
    assert again.read_bytes() == adversarial_csv.read_bytes()
    other = tmp_path / "other.csv"
    write_adversarial_csv(other, seed=8)
    assert other.read_bytes() != adversarial_csv.read_bytes()


def test_generator_small_sizes_still_work(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    write_adversarial_csv(path, ticks_per_symbol=50, lateness_ms=60_000)
    result = reference_from_csv(path, known_symbols=KNOWN_SYMBOLS, lateness_ms=60_000)
    assert result.candles
    assert all(not GAP_START_MS <= ts < GAP_END_MS for (_, tf, ts) in result.candles if tf == "1m")


def test_generator_dead_letters(adversarial_csv: Path) -> None:
    result = reference_from_csv(adversarial_csv, known_symbols=KNOWN_SYMBOLS)
    reasons = [d.reason for d in result.dead_letters]
    assert reasons.count("late") >= 20
    assert reasons.count("bad_row") >= 10
    assert reasons.count("unknown_symbol") >= 1
    lines = adversarial_csv.read_text(encoding="utf-8").split("\n")
    assert lines[0] == HEADER
    assert 12_000 <= len(lines) <= 14_000


def _accepted(path: Path) -> list[RefTick]:
    ticks, _ = accepted_ticks(path, known_symbols=KNOWN_SYMBOLS)
    return ticks


def test_generator_contains_each_adversarial_case(adversarial_csv: Path) -> None:
    ticks = _accepted(adversarial_csv)
    text = adversarial_csv.read_text(encoding="utf-8")
    rows = text.split("\n")[1:-1]
    _, dead = accepted_ticks(adversarial_csv, known_symbols=KNOWN_SYMBOLS)
    resent = len(rows) - len(ticks) - len(dead)
    assert resent >= 20

    assert sum(1 for t in ticks if t.ts_ms % 60_000 == 0) >= 20
    assert {t.symbol for t in ticks if t.ts_ms == MONDAY_MS} == KNOWN_SYMBOLS
    assert sum(1 for t in ticks if t.bid is None) >= 20
    assert sum(1 for t in ticks if t.ask is None) >= 20
    for variant in ("EURUSD", "eur/usd", "EUR-USD", "EUR_USD", " usdjpy ", "xauusd"):
        assert text.count(f"\n{variant},") >= 5, variant

    newest: dict[str, int] = {}
    within = 0
    for t in ticks:
        if t.ts_ms < newest.get(t.symbol, t.ts_ms):
            within += 1
        newest[t.symbol] = max(newest.get(t.symbol, t.ts_ms), t.ts_ms)
    assert within >= 20

    same_ms: dict[tuple[str, int], set[float]] = {}
    for t in ticks:
        same_ms.setdefault((t.symbol, t.ts_ms), set()).add(t.price)
    assert sum(1 for prices in same_ms.values() if len(prices) > 1) >= 20


def test_generator_has_open_and_close_ties(adversarial_csv: Path) -> None:
    ticks = _accepted(adversarial_csv)
    candles = reference_from_csv(
        adversarial_csv, known_symbols=KNOWN_SYMBOLS, timeframes=("1m",)
    ).candles
    bars: dict[tuple[str, str, int], list[RefTick]] = {}
    for t in ticks:
        bars.setdefault((t.symbol, "1m", t.ts_ms - t.ts_ms % 60_000), []).append(t)

    open_ties = close_ties = 0
    for key, bar_ticks in bars.items():
        first_ts = min(t.ts_ms for t in bar_ticks)
        last_ts = max(t.ts_ms for t in bar_ticks)
        at_first = [t.price for t in bar_ticks if t.ts_ms == first_ts]
        at_last = [t.price for t in bar_ticks if t.ts_ms == last_ts]
        if len(set(at_first)) > 1:
            open_ties += 1
            assert candles[key].open == at_first[0]
        if len(set(at_last)) > 1:
            close_ties += 1
            assert candles[key].close == at_last[-1]
    assert open_ties >= 5
    assert close_ties >= 5


def test_generator_weekend_gap(adversarial_csv: Path) -> None:
    candles = reference_from_csv(adversarial_csv, known_symbols=KNOWN_SYMBOLS).candles
    starts = [ts for (_, tf, ts) in candles if tf in ("1m", "5m", "15m", "30m", "1h")]
    assert any(ts < GAP_START_MS for ts in starts)
    assert any(ts >= GAP_END_MS for ts in starts)
    assert not any(GAP_START_MS <= ts < GAP_END_MS for ts in starts)
    assert ("EUR/USD", "1d", MONDAY_MS) in candles
    assert ("EUR/USD", "4h", MONDAY_MS) in candles
