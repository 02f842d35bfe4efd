"""Pure producer modules: frame coalescing, the replay CSV, the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.csv_ticks import (
    CsvHeaderError,
    RowError,
    count_data_lines,
    parse_row,
    read_tick_csv,
)
from producers.framing import FrameCoalescer
from producers.synthetic import (
    DEFAULT_START_MS,
    FX_PAIRS,
    PIP_DECIMALS,
    START_PRICES,
    SyntheticTicks,
    price_decimals,
)

# ---------------------------------------------------------------- framing


def test_frame_goes_out_when_full() -> None:
    fc = FrameCoalescer(frame_size=3, linger_ms=1000)
    assert fc.add("EUR/USD", 1, 0.0) == []
    assert fc.add("GBP/USD", "g1", 0.0) == []
    assert fc.add("EUR/USD", 2, 1.0) == []
    assert fc.pending == 3
    assert fc.add("EUR/USD", 3, 2.0) == [("EUR/USD", [1, 2, 3])]
    assert fc.pending == 1
    assert fc.add("EUR/USD", 4, 3.0) == []
    assert fc.drain() == [("GBP/USD", ["g1"]), ("EUR/USD", [4])]
    assert fc.pending == 0


def test_frame_size_one_sends_every_tick_at_once() -> None:
    fc = FrameCoalescer(frame_size=1, linger_ms=50)
    assert fc.add("EUR/USD", "a", 0.0) == [("EUR/USD", ["a"])]
    assert fc.add("EUR/USD", "b", 0.0) == [("EUR/USD", ["b"])]
    assert fc.pending == 0
    assert fc.next_deadline() is None
    assert fc.due(10_000.0) == []
    assert fc.drain() == []


def test_linger_sends_quiet_symbol_measured_from_first_tick() -> None:
    fc = FrameCoalescer(frame_size=100, linger_ms=20)
    fc.add("EUR/USD", 1, 100.0)
    fc.add("USD/JPY", "j", 110.0)
    fc.add("EUR/USD", 2, 115.0)
    assert fc.due(119.9) == []
    assert fc.due(120.0) == [("EUR/USD", [1, 2])]
    assert fc.pending == 1
    assert fc.due(129.0) == []
    assert fc.due(130.0) == [("USD/JPY", ["j"])]
    assert fc.pending == 0
    # A new frame for the same symbol starts its own linger.
    fc.add("EUR/USD", 3, 131.0)
    assert fc.due(150.0) == []
    assert fc.due(151.0) == [("EUR/USD", [3])]


def test_next_deadline_follows_oldest_open_frame() -> None:
    fc = FrameCoalescer(frame_size=2, linger_ms=20)
    assert fc.next_deadline() is None
    fc.add("EUR/USD", 1, 5.0)
    fc.add("GBP/USD", 1, 8.0)
    assert fc.next_deadline() == 25.0
    # EUR/USD leaves by size: the deadline moves on to GBP/USD.
    assert fc.add("EUR/USD", 2, 9.0) == [("EUR/USD", [1, 2])]
    assert fc.next_deadline() == 28.0
    fc.add("EUR/USD", 3, 12.0)
    assert fc.next_deadline() == 28.0
    assert fc.due(28.0) == [("GBP/USD", [1])]
    assert fc.next_deadline() == 32.0
    fc.drain()
    assert fc.next_deadline() is None


def test_frame_left_by_size_is_not_sent_again_by_linger() -> None:
    fc = FrameCoalescer(frame_size=2, linger_ms=10)
    fc.add("EUR/USD", 1, 0.0)
    fc.add("EUR/USD", 2, 1.0)
    fc.add("EUR/USD", 3, 5.0)
    assert fc.due(10.0) == []
    assert fc.due(15.0) == [("EUR/USD", [3])]


def test_drain_keeps_first_added_order() -> None:
    fc = FrameCoalescer(frame_size=10, linger_ms=10)
    for symbol in ("C", "A", "B", "A", "C"):
        fc.add(symbol, symbol.lower(), 0.0)
    assert fc.drain() == [("C", ["c", "c"]), ("A", ["a", "a"]), ("B", ["b"])]
    assert fc.drain() == []


def test_ticks_of_a_symbol_are_never_reordered() -> None:
    fc = FrameCoalescer(frame_size=7, linger_ms=3)
    symbols = ["EUR/USD", "USD/JPY", "GBP/USD", "XAU/USD"]
    frames: list[tuple[str, list]] = []
    for n in range(5000):
        now = n * 0.25
        symbol = symbols[(n * n + 3 * n) % len(symbols)]
        frames += fc.add(symbol, (symbol, n), now)
        if n % 11 == 0:
            frames += fc.due(now)
    frames += fc.drain()
    assert fc.pending == 0
    seen: dict[str, list[int]] = {}
    for symbol, frame in frames:
        assert 1 <= len(frame) <= 7
        assert all(s == symbol for s, _ in frame)
        seen.setdefault(symbol, []).extend(n for _, n in frame)
    assert sum(len(v) for v in seen.values()) == 5000
    for numbers in seen.values():
        assert numbers == sorted(numbers)


def test_many_symbols_without_due_keep_bounded_bookkeeping() -> None:
    fc = FrameCoalescer(frame_size=2, linger_ms=10)
    out = []
    for n in range(10_000):
        out += fc.add(f"S{n % 3}", n, float(n))
    assert len(fc._order) < 100
    assert sum(len(f) for _, f in out) + fc.pending == 10_000


def test_frame_coalescer_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        FrameCoalescer(frame_size=0)
    with pytest.raises(ValueError):
        FrameCoalescer(linger_ms=-1)


# ---------------------------------------------------------------- csv

HEADER = "symbol,ts_ms,bid,ask,volume\n"


def _write(tmp_path: Path, text: str, name: str = "ticks.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_parse_row_full_and_partial() -> None:
    fields = [" EURUSD ", " 1704672000123 ", "1.0850", "1.0852", "2.5"]
    assert parse_row(fields, 2, "raw") == {
        "symbol": "EURUSD",
        "ts_ms": 1704672000123,
        "bid": 1.085,
        "ask": 1.0852,
        "volume": 2.5,
        "provider": "replay",
    }
    only_ask = parse_row(["USD/JPY", "0", "", "155.1", ""], 3, "raw", provider="ct")
    assert only_ask == {"symbol": "USD/JPY", "ts_ms": 0, "ask": 155.1, "provider": "ct"}
    only_bid = parse_row(["XAUUSD", "5", "2400.5", " ", "0"], 4, "raw")
    assert only_bid == {
        "symbol": "XAUUSD",
        "ts_ms": 5,
        "bid": 2400.5,
        "volume": 0.0,
        "provider": "replay",
    }


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        (["EURUSD", "1", "1.1", "1.2"], "5 fields"),
        (["EURUSD", "1", "1.1", "1.2", "1", "x"], "5 fields"),
        (["  ", "1", "1.1", "1.2", "1"], "symbol"),
        (["EURUSD", "abc", "1.1", "1.2", "1"], "ts_ms 'abc' is not an integer"),
        (["EURUSD", "1.5", "1.1", "1.2", "1"], "ts_ms"),
        (["EURUSD", "", "1.1", "1.2", "1"], "ts_ms"),
        (["EURUSD", "0x10", "1.1", "1.2", "1"], "ts_ms"),
        (["EURUSD", "1_000", "1.1", "1.2", "1"], "ts_ms"),
        (["EURUSD", "-5", "1.1", "1.2", "1"], "negative"),
        (["EURUSD", "9" * 5000, "1.1", "1.2", "1"], "out of range"),
        (["EURUSD", "1", "abc", "1.2", "1"], "bid"),
        (["EURUSD", "1", "0", "1.2", "1"], "bid"),
        (["EURUSD", "1", "-1.1", "1.2", "1"], "bid"),
        (["EURUSD", "1", "nan", "1.2", "1"], "bid"),
        (["EURUSD", "1", "1.1", "inf", "1"], "ask"),
        (["EURUSD", "1", "1.1", "0.0", "1"], "ask"),
        (["EURUSD", "1", "", "", "1"], "both empty"),
        (["EURUSD", "1", "1.1", "1.2", "-0.5"], "volume"),
        (["EURUSD", "1", "1.1", "1.2", "NaN"], "volume"),
        (["EURUSD", "1", "1.1", "1.2", "lots"], "volume"),
        (["EURUSD", "-0", "1.1", "1.2", "1"], "negative"),
        (["EURUSD", "32503680000001", "1.1", "1.2", "1"], "out of range"),
        (["EURUSD", "9223372036854775808", "1.1", "1.2", "1"], "out of range"),
        (["EURUSD", "1", "1e308", "1.2", "1"], "bid"),
        (["EURUSD", "1", "1.1", "1000000000.0000001", "1"], "ask"),
        (["EURUSD", "1", "1.1", "1.2", "1000000000000.0001"], "volume"),
        (["EURUSD", "1", "1.1", "1.2", "18446744073709551616"], "volume"),
        (["EURUSD", "1", "1.1", "1.2", "True"], "volume"),
        (["EUR\x00USD", "1", "1.1", "1.2", "1"], "control characters"),
        (["EURUSD\x85", "1", "1.1", "1.2", "1"], "control characters"),
        (["\tEURUSD", "1", "1.1", "1.2", "1"], "control characters"),
        (["A" * 33, "1", "1.1", "1.2", "1"], "longer than 32"),
    ],
)
def test_parse_row_rejects(fields: list[str], needle: str) -> None:
    with pytest.raises(RowError) as info:
        parse_row(fields, 7, "the raw line")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.line_no == 7
    assert err.reason == "bad_row"
    assert err.raw == "the raw line"
    assert needle in err.detail
    assert "line 7" in str(err)


def test_parse_row_takes_the_bounds_and_gives_plain_floats() -> None:
    row = parse_row(["EURUSD", "32503680000000", "1000000000", "1e-320", "-0.0"], 2, "raw")
    assert row == {"symbol": "EURUSD", "ts_ms": 32503680000000, "bid": 1e9, "ask": 1e-320,
                   "volume": 0.0, "provider": "replay"}
    assert [type(row[k]) for k in ("ts_ms", "bid", "ask", "volume")] == [int, float, float, float]
    assert str(row["volume"]) == "0.0"


@pytest.mark.parametrize("provider", ["", "p" * 65, "fe\x00ed", "x\x1b", "x\x9f"])
def test_parse_row_refuses_a_provider_with_control_characters(provider: str) -> None:
    with pytest.raises(ValueError, match="provider"):
        parse_row(["EURUSD", "1", "1.1", "1.2", ""], 2, "raw", provider=provider)


def test_read_tick_csv_yields_ticks_and_errors_with_line_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER
        + "EURUSD,1000,1.1,1.2,3\r\n"  # 2
        + "GBPUSD,oops,1.3,1.4,\n"  # 3
        + "\n"  # 4
        + "USDJPY,1002,,155.5,\n"  # 5
        + "USDJPY,1003,155.4\n"  # 6
        + "USDCHF,1004,0.9,0.91,1",  # 7, no final newline
    )
    rows = list(read_tick_csv(path, provider="file"))
    assert [n for n, _ in rows] == [2, 3, 4, 5, 6, 7]
    assert rows[0][1] == {
        "symbol": "EURUSD",
        "ts_ms": 1000,
        "bid": 1.1,
        "ask": 1.2,
        "volume": 3.0,
        "provider": "file",
    }
    bad = {n: item for n, item in rows if isinstance(item, RowError)}
    assert sorted(bad) == [3, 4, 6]
    assert bad[3].line_no == 3 and bad[3].raw == "GBPUSD,oops,1.3,1.4,"
    assert "ts_ms" in bad[3].detail
    assert bad[4].detail == "blank line" and bad[4].raw == ""
    assert "5 fields" in bad[6].detail
    assert rows[3][1] == {"symbol": "USDJPY", "ts_ms": 1002, "ask": 155.5, "provider": "file"}
    assert rows[5][1]["symbol"] == "USDCHF"
    assert count_data_lines(path) == 6


def test_read_tick_csv_handles_bom_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b'"EUR/USD",1,1.1,1.2,\n')
    rows = list(read_tick_csv(path))
    tick = {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "ask": 1.2, "provider": "replay"}
    assert rows == [(2, tick)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "symbol,ts_ms,bid,ask\nEURUSD,1,1.1,1.2\n",
        "symbol,ts,bid,ask,volume\n",
        "EURUSD,1,1.1,1.2,1\n",
        "Symbol,ts_ms,bid,ask,volume\n",
    ],
)
def test_read_tick_csv_header_errors(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(CsvHeaderError) as info:
        list(read_tick_csv(path))
    assert isinstance(info.value, ValueError)
    assert "symbol,ts_ms,bid,ask,volume" in str(info.value)


def test_count_data_lines(tmp_path: Path) -> None:
    assert count_data_lines(_write(tmp_path, "", "a.csv")) == 0
    assert count_data_lines(_write(tmp_path, HEADER, "b.csv")) == 0
    assert count_data_lines(_write(tmp_path, HEADER.rstrip("\n"), "c.csv")) == 0
    assert count_data_lines(_write(tmp_path, HEADER + "x\n\ny\n", "d.csv")) == 3
    big = HEADER + "EURUSD,1,1.1,1.2,1\n" * 300_000
    path = _write(tmp_path, big, "e.csv")
    assert count_data_lines(path) == 300_000
    assert sum(1 for _ in read_tick_csv(path)) == 300_000


# ---------------------------------------------------------------- synthetic

ALL = [*FX_PAIRS, "XAU/USD", "XAG/USD"]


def test_price_decimals() -> None:
    assert len(FX_PAIRS) == 28 and len(set(FX_PAIRS)) == 28
    assert PIP_DECIMALS["EUR/USD"] == 5
    assert PIP_DECIMALS["GBP/JPY"] == 3
    assert PIP_DECIMALS["XAU/USD"] == 2
    assert PIP_DECIMALS["XAG/USD"] == 3
    assert PIP_DECIMALS["USD/SEK"] == 5
    assert PIP_DECIMALS["TRY/JPY"] == 3
    assert PIP_DECIMALS["US30"] == 2
    assert PIP_DECIMALS.get("GER40") == 2
    assert price_decimals("EUR/JPY") == 3


def test_start_prices_are_realistic_and_stable() -> None:
    assert set(START_PRICES) >= set(ALL)
    assert 1.0 < START_PRICES["EUR/USD"] < 1.2
    assert 130 < START_PRICES["USD/JPY"] < 170
    assert 0.5 < START_PRICES["NZD/CHF"] < 0.7
    assert 2000 < START_PRICES["XAU/USD"] < 2800
    assert 20 < START_PRICES["XAG/USD"] < 35
    first = next(SyntheticTicks(["US30"], rate=10).ticks(count=1))
    again = next(SyntheticTicks(["US30"], rate=10, seed=9).ticks(count=1))
    assert abs(first["bid"] - again["bid"]) / first["bid"] < 0.01


def test_same_seed_same_ticks_other_seed_other_ticks() -> None:
    a = list(SyntheticTicks(ALL, rate=5000, seed=42).ticks(count=5000))
    b = list(SyntheticTicks(ALL, rate=5000, seed=42).ticks(count=5000))
    c = list(SyntheticTicks(ALL, rate=5000, seed=43).ticks(count=5000))
    assert a == b
    assert a != c
    assert a[0]["ts_ms"] >= DEFAULT_START_MS
    assert all(t["provider"] == "synthetic" for t in a)


def test_ticks_continue_across_calls() -> None:
    whole = list(SyntheticTicks(ALL, rate=1000, seed=5).ticks(count=3000))
    gen = SyntheticTicks(ALL, rate=1000, seed=5)
    parts = list(gen.ticks(count=1000)) + list(gen.ticks(count=2000))
    assert parts == whole


def test_ticks_are_well_formed() -> None:
    ticks = list(SyntheticTicks([*ALL, "US30"], rate=2000, seed=7).ticks(count=60_000))
    assert len(ticks) == 60_000
    last_ts = DEFAULT_START_MS
    shared_ms = 0
    for tick in ticks:
        decimals = PIP_DECIMALS[tick["symbol"]]
        bid, ask = tick["bid"], tick["ask"]
        assert isinstance(tick["ts_ms"], int)
        assert tick["ts_ms"] >= last_ts
        shared_ms += tick["ts_ms"] == last_ts
        last_ts = tick["ts_ms"]
        assert 0 < bid < ask
        assert round(bid, decimals) == bid and round(ask, decimals) == ask
        assert (ask - bid) * 10**decimals / 10 < 40  # spread in pips
        if "volume" in tick:
            assert 0.01 <= tick["volume"] <= 10.0
    assert shared_ms > 0
    assert set(ticks[0]) <= {"symbol", "ts_ms", "bid", "ask", "volume", "provider"}


def test_prices_move_and_spreads_vary() -> None:
    ticks = list(SyntheticTicks(ALL, rate=1000, seed=1).ticks(count=50_000))
    eur = [t for t in ticks if t["symbol"] == "EUR/USD"]
    assert len({t["bid"] for t in eur}) > 20
    spreads = {round(t["ask"] - t["bid"], 5) for t in eur}
    assert len(spreads) > 5
    assert all(abs(t["bid"] - START_PRICES["EUR/USD"]) < 0.02 for t in eur)


def test_majors_are_busier_than_crosses() -> None:
    ticks = list(SyntheticTicks(ALL, rate=1000, seed=3).ticks(count=100_000))
    counts: dict[str, int] = {}
    for tick in ticks:
        counts[tick["symbol"]] = counts.get(tick["symbol"], 0) + 1
    assert set(counts) == set(ALL)
    assert counts["EUR/USD"] > 3 * counts["AUD/NZD"]
    assert counts["USD/JPY"] > 2 * counts["CAD/CHF"]


def test_volume_absent_on_about_a_tenth() -> None:
    ticks = list(SyntheticTicks(ALL, rate=1000, seed=11).ticks(count=40_000))
    absent = sum("volume" not in t for t in ticks) / len(ticks)
    assert 0.05 < absent < 0.15


def test_count_and_duration_stop() -> None:
    assert list(SyntheticTicks(ALL, rate=100).ticks(count=0)) == []
    assert len(list(SyntheticTicks(ALL, rate=100).ticks(count=123))) == 123
    start = 1_700_000_000_000
    ticks = list(SyntheticTicks(ALL, rate=500, start_ms=start).ticks(duration_s=10))
    assert 2500 < len(ticks) < 10_000
    assert ticks[0]["ts_ms"] >= start
    assert ticks[-1]["ts_ms"] <= start + 10_000
    assert ticks[-1]["ts_ms"] > start + 9_000
    # Both given: whichever comes first.
    assert len(list(SyntheticTicks(ALL, rate=500).ticks(count=50, duration_s=10))) == 50
    few = list(SyntheticTicks(ALL, rate=500).ticks(count=10**6, duration_s=1))
    assert 100 < len(few) < 2000
    with pytest.raises(ValueError):
        next(SyntheticTicks(ALL, rate=100).ticks())
    with pytest.raises(ValueError):
        next(SyntheticTicks(ALL, rate=100).ticks(count=-1))


def test_average_rate_over_a_long_run() -> None:
    for seed in (0, 1):
        ticks = SyntheticTicks(["EUR/USD", "USD/JPY", "XAU/USD"], rate=400, seed=seed)
        count = sum(1 for _ in ticks.ticks(duration_s=600))
        assert 0.85 * 400 * 600 < count < 1.15 * 400 * 600


def test_arrivals_are_bursty() -> None:
    ticks = SyntheticTicks(["EUR/USD"], rate=1000, seed=2).ticks(duration_s=120)
    per_second: dict[int, int] = {}
    for tick in ticks:
        per_second[tick["ts_ms"] // 1000] = per_second.get(tick["ts_ms"] // 1000, 0) + 1
    busiest, quietest = max(per_second.values()), min(per_second.values())
    assert busiest > 2 * quietest


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SyntheticTicks([], rate=10)
    with pytest.raises(ValueError):
        SyntheticTicks(["EUR/USD"], rate=0)
    with pytest.raises(ValueError):
        SyntheticTicks(["EUR/USD", "EUR/USD"], rate=10)


def test_a_synthetic_span_is_as_given_or_60_s_unless_a_count_ends_it() -> None:
    from pipeline.cli import synthetic_span

    assert synthetic_span(None, None) == 60.0
    assert synthetic_span(None, 70_000) is None
    assert synthetic_span(0, None) is None
    assert synthetic_span(0, 5) is None
    assert synthetic_span(30.0, 70_000) == 30.0
