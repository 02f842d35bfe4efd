"""Backfill against the cTrader simulator and the real PostgreSQL.

The reference bars are built by tests/reference_candles.py from the simulator's own
history ticks (simulators.ctrader.history.hour_ticks, the generator the server pages
from), not from what fxstream fetched. The simulator refuses more than 5 historical
requests a second, as Spotware does, and logs every tick-data request with the
connection it came on, which tells the runs of one test apart."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.core.backfill import (
    bars_from_minutes,
    chunk_interval,
    merge_intervals,
    settled_bars,
    subtract_intervals,
)
from pipeline.core.timeframes import parse_timeframe
from pipeline.db.migrate import migrate
from pipeline.gaps import find_gaps, parse_instant
from pipeline.settings import Settings
from producers.ctrader.backfill import merge_sides
from simulators.ctrader import history
from simulators.ctrader.launch import settings_for
from simulators.ctrader.market import instruments
from tests.conftest import wait_for
from tests.pipeline_helpers import Proc, db_candles, run_cli
from tests.reference_candles import compare_candles, reference_from_csv

T = parse_instant
HOUR = 3_600_000
SYMBOLS = ("EUR/USD", "USD/JPY")  # the simulator lists every major cross
DIGITS = {i.symbol: i.digits for i in instruments()}


# --- the pure parts ---------------------------------------------------------------------------


def test_bid_and_ask_tick_data_join_into_quotes() -> None:
    bids = [(1, 1.1), (3, 1.2), (3, 1.3), (5, 1.4)]
    asks = [(1, 1.5), (2, 1.6), (3, 1.7), (6, 1.8)]
    assert merge_sides(bids, asks) == [
        (1, 1.1, 1.5), (2, 1.1, 1.6), (3, 1.2, 1.7), (3, 1.3, 1.7), (5, 1.4, 1.7),
        (6, 1.4, 1.8)]
    assert merge_sides([], [(7, 2.0)]) == [(7, None, 2.0)]
    assert merge_sides([], []) == []


def test_intervals_subtract_merge_and_chunk() -> None:
    assert merge_intervals([(5, 7), (1, 3), (3, 4), (6, 9), (10, 10)]) == [(1, 4), (5, 9)]
    assert subtract_intervals([(0, 100)], [(10, 20), (15, 30), (90, 120)]) == [
        (0, 10), (30, 90)]
    assert subtract_intervals([(0, 10), (20, 30)], [(0, 30)]) == []
    assert chunk_interval((5, 27), 10) == [(5, 10), (10, 20), (20, 27)]


def test_only_bars_history_covers_whole_are_settled() -> None:
    tfs = (parse_timeframe("1m"), parse_timeframe("1h"))

    def bar(tf: str, ts: int) -> dict[str, Any]:
        return {"timeframe": tf, "ts_utc": ts, "open": 1.0, "complete": False}

    candles = [bar("1m", 0), bar("1m", 60_000), bar("1m", 120_000), bar("1h", 0),
               {"_topic": "sentiment", "symbol": "X"}]
    # The step [60 s, 180 s): the minutes ending inside it, not the hour (not over yet).
    assert [(c["timeframe"], c["ts_utc"], c["complete"]) for c in
            settled_bars(candles, tfs, 0, 60_000, 180_000)] == [
        ("1m", 60_000, True), ("1m", 120_000, True)]
    # Fetched history began at 60 s: the hour is never whole.
    assert [c["ts_utc"] for c in settled_bars(candles, tfs, 60_000, 0, HOUR)
            if c["timeframe"] == "1h"] == []
    assert [c["ts_utc"] for c in settled_bars(candles, tfs, 0, 0, HOUR)
            if c["timeframe"] == "1h"] == [0]


def test_bars_from_minutes() -> None:
    minutes = [{"ts_ms": i * 60_000, "open": 10 + i, "high": 20 + i, "low": 5 - i,
                "close": 11 + i, "volume": 3} for i in range(10)]
    out = bars_from_minutes(minutes, "EUR/USD", (parse_timeframe("5m"),), 0, 0, 480_000, "p")
    assert [(b["ts_utc"], b["open"], b["high"], b["low"], b["close"], b["tick_volume"])
            for b in out] == [(0, 10, 24, 1, 15, 15)]  # the 5-10 minute bar is not whole


# --- against the simulator --------------------------------------------------------------------


def reference(symbols: tuple[str, ...], from_ms: int, to_ms: int, timeframes: tuple[str, ...],
              not_before_ms: int = 0) -> dict[tuple[str, str, int], Any]:
    """Bars of the simulator's history ticks in [from_ms, to_ms), by the plain reference."""
    lines = ["symbol,ts_ms,bid,ask,volume"]
    for symbol in symbols:
        scale = 10 ** DIGITS[symbol]
        for hour in range(from_ms - from_ms % HOUR, to_ms, HOUR):
            for ts, bid, ask in history.hour_ticks(symbol, hour, 0):
                if max(from_ms, not_before_ms) <= ts < to_ms:
                    lines.append(f"{symbol},{ts},{round(bid * scale / 100_000) / scale},"
                                 f"{round(ask * scale / 100_000) / scale},")
    ref = reference_from_csv(lines, timeframes=timeframes, lateness_ms=10**12)
    assert not ref.dead_letters
    return ref.candles


@pytest.fixture
def sim(make_settings: Callable[..., Settings], tmp_path: Path
        ) -> Iterator[Callable[..., tuple[Settings, Path]]]:
    procs: list[Proc] = []

    def start(*args: str, **settings_kw: Any) -> tuple[Settings, Path]:
        # Paced at 4 a second against the simulator's 5 (the default 4.5 leaves a busy
        # machine's scheduling too little room to bunch two requests on arrival).
        values: dict[str, Any] = {"symbols": SYMBOLS, "backfill_chunk_minutes": 60,
                                  "ctrader_reconnect_max_s": 1.0, "log_level": "INFO",
                                  "ctrader_history_requests_per_s": 4.0}
        values.update(settings_kw)
        settings = make_settings(**values)
        migrate(settings)
        sim_dir = tmp_path / "sim"
        proc = Proc(settings, ["ctrader-sim", "--dir", str(sim_dir), "--port", "0",
                               "--historic", "--rate", "1", "--symbols", ",".join(SYMBOLS),
                               "--max-history-requests-per-s", "5", *args],
                    tmp_path / "sim.log")
        procs.append(proc)
        wait_for(lambda: (sim_dir / "endpoint.env").exists() or not proc.alive(), 60,
                 "the simulator to listen")
        assert proc.alive(), proc.tail()
        return settings_for(settings, sim_dir), tmp_path / "sim.log"

    yield start
    for proc in procs:
        proc.stop()


def store_live(settings: Settings, bars: dict[tuple[str, str, int], Any]) -> None:
    """Bars as the live sink writes them: with a version (partition, offset)."""
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO market_data_candles (symbol, timeframe, ts_utc, open, high, low, "
            "close, tick_volume, volume, provider_source, complete, src_partition, src_offset)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'ctrader', true, 0, %s)",
            [(b.symbol, b.timeframe, b.ts_utc, b.open, b.high, b.low, b.close, b.tick_volume,
              b.volume, 1000 + i) for i, b in enumerate(bars.values())])


def backfill(settings: Settings, tmp_path: Path, *args: str) -> str:
    out = run_cli(settings, ["backfill", "--symbols", ",".join(SYMBOLS), *args], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REQUEST_FREQUENCY_EXCEEDED" not in out.stderr
    return out.stdout


def tick_requests(sim_log: Path) -> list[tuple[int, str, int, int]]:
    """(connection, symbol, from, to) of every tick-data request the simulator answered."""
    pattern = re.compile(r"connection (\d+): tick data of (\S+) \w+ \[(\d+), (\d+)\)")
    return [(int(m[1]), m[2], int(m[3]), int(m[4]))
            for m in pattern.finditer(sim_log.read_text())]


DAY_FROM, DAY_TO = T("2024-03-05"), T("2024-03-06")  # a Tuesday
TFS = ("1m", "5m", "1h", "1d")


def test_backfill_fills_the_gaps_like_the_reference_and_keeps_live_bars(
        sim: Callable[..., tuple[Settings, Path]], tmp_path: Path) -> None:
    settings, _ = sim(timeframes=TFS)
    ref = reference(SYMBOLS, DAY_FROM, DAY_TO, TFS)
    # EUR/USD streamed live all day but for some holes; USD/JPY never did.
    live = {k: b for k, b in ref.items() if k[0] == "EUR/USD"}
    holes = [(k, T(a), T(b)) for k, a, b in (
        ("1m", "2024-03-05T10:03", "2024-03-05T10:07"),
        ("5m", "2024-03-05T10:05", "2024-03-05T10:10"),
        ("1m", "2024-03-05T14:00", "2024-03-05T15:00"),
        ("5m", "2024-03-05T14:00", "2024-03-05T15:00"),
        ("1h", "2024-03-05T14:00", "2024-03-05T15:00"),
        ("1m", "2024-03-05T23:59", "2024-03-06T00:00"))]
    for tf, a, b in holes:
        live = {k: v for k, v in live.items() if not (k[1] == tf and a <= k[2] < b)}
    # Inside the hour that is fetched again, one live bar holds less than history does
    # (the live stream began inside it), with a version: it must stay as it is.
    partial_key = ("EUR/USD", "1m", T("2024-03-05T14:30"))
    partial = dataclasses.replace(ref[partial_key], tick_volume=7, open=1.5)
    live[partial_key] = partial
    store_live(settings, live)
    with psycopg.connect(settings.database_url) as conn:
        before = {tf: find_gaps(conn, SYMBOLS, tf, DAY_FROM, DAY_TO) for tf in TFS}
    assert [(g.from_ms, g.to_ms) for g in before["1h"] if g.symbol == "EUR/USD"] == [
        (T("2024-03-05T14:00"), T("2024-03-05T15:00"))]
    assert [(g.from_ms, g.to_ms) for g in before["1m"] if g.symbol == "USD/JPY"] == [
        (DAY_FROM, DAY_TO)]

    out = backfill(settings, tmp_path, "--from", "2024-03-05", "--to", "2024-03-06",
                   "--gaps-only")
    assert "EUR/USD" in out and "USD/JPY" in out

    stored = db_candles(settings)
    expected = {**ref, partial_key: partial}
    assert compare_candles(expected, stored) == []
    assert stored[partial_key]["src_offset"] is not None  # the live row, untouched
    backfilled = {k for k in ref if k not in live}
    assert {stored[k]["provider_source"] for k in backfilled} == {"ctrader-history"}
    assert all(stored[k]["src_offset"] is None and stored[k]["complete"] for k in backfilled)
    for tf in TFS:
        out = run_cli(settings, ["gaps", "--symbols", ",".join(SYMBOLS), "--timeframe", tf,
                                 "--from", "2024-03-05", "--to", "2024-03-06", "--json"],
                      tmp_path)
        assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout + out.stderr
    with psycopg.connect(settings.database_url) as conn:
        kept = conn.execute("SELECT sum(kept_live) FROM backfill_progress WHERE symbol = "
                            "'EUR/USD'").fetchone()[0]
        # Fetched again but live: the minutes 10:07 to 10:09 (the gap of the 5-minute
        # bar reaches past the minutes' gap) and the partial minute 14:30.
        assert kept == 4

    # The whole range again: nothing is fetched twice, nothing live is overwritten.
    out = backfill(settings, tmp_path, "--from", "2024-03-05", "--to", "2024-03-06")
    assert compare_candles(expected, db_candles(settings)) == []


def test_an_interrupted_backfill_resumes_without_fetching_twice(
        sim: Callable[..., tuple[Settings, Path]], tmp_path: Path) -> None:
    tfs = ("1m", "5m", "1h")
    settings, sim_log = sim(timeframes=tfs)
    from_ms, to_ms = T("2024-03-05T00:00"), T("2024-03-05T10:00")
    args = ["backfill", "--symbols", ",".join(SYMBOLS), "--from", "2024-03-05T00:00",
            "--to", "2024-03-05T10:00"]
    first = Proc(settings, args, tmp_path / "backfill-1.log")

    def steps() -> list[tuple[str, int, int, Any]]:
        with psycopg.connect(settings.database_url) as conn:
            return conn.execute("SELECT symbol, from_ms, to_ms, fetched_at FROM "
                                "backfill_progress ORDER BY symbol, from_ms").fetchall()

    wait_for(lambda: len(steps()) >= 3 or not first.alive(), 120, "three steps written")
    assert first.alive(), "the backfill finished before it could be interrupted"
    first.kill9()
    done_first = steps()
    assert 3 <= len(done_first) < 20
    connections_first = {c for c, *_ in tick_requests(sim_log)}

    backfill(settings, tmp_path, "--from", "2024-03-05T00:00", "--to", "2024-03-05T10:00")
    done_all = steps()
    assert set(done_first) <= set(done_all)  # the first run's steps, untouched
    assert sorted((s, a, b) for s, a, b, _ in done_all) == sorted(
        (s, a, a + HOUR) for s in SYMBOLS for a in range(from_ms, to_ms, HOUR))
    second = [r for r in tick_requests(sim_log) if r[0] not in connections_first]
    assert second, "the second run fetched nothing"
    fetched_first = {(s, a) for s, a, _, _ in done_first}
    refetched = [r for r in second if (r[1], r[2] - r[2] % HOUR) in fetched_first]
    assert refetched == []
    assert compare_candles(reference(SYMBOLS, from_ms, to_ms, tfs), db_candles(settings)) == []


def test_trendbars_fill_what_tick_data_does_not_reach_and_tokens_are_refreshed(
        sim: Callable[..., tuple[Settings, Path]], tmp_path: Path) -> None:
    tfs = ("1m", "5m", "1h")
    # The simulator's tick data begins at 05:30, inside the step 05:00-06:00.
    horizon, until = T("2024-03-05T05:30"), T("2024-03-05T08:00")
    first_tick = min(ts for ts, _, _ in history.hour_ticks("EUR/USD", T("2024-03-05T05:00"), 0)
                     if ts >= horizon)
    assert first_tick < horizon + 60_000
    switch = horizon + 60_000  # the minutes up to and with the first tick's come from bars
    # Tokens that expire every 2 s: the run refreshes them as it goes.
    settings, _ = sim("--tick-history-from", "2024-03-05T05:30", "--token-ttl", "2",
                      timeframes=tfs, symbols=("EUR/USD",))
    out = run_cli(settings, ["backfill", "--symbols", "EUR/USD", "--from", "2024-03-05T04:00",
                             "--to", "2024-03-05T08:00"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "access token refreshed" in out.stderr
    expected: dict[tuple[str, str, int], Any] = {
        k: v for k, v in reference(("EUR/USD",), horizon, until, tfs).items() if k[2] >= switch}
    # Before: the simulator's M1 trendbars, summed up here on their own, into the bars that
    # fit wholly in the step 04:00-05:00 or in 05:00 up to the switch.
    scale = 10 ** DIGITS["EUR/USD"]
    minutes = history.trendbars("EUR/USD", "M1", T("2024-03-05T04:00"), switch, None, 0,
                                DIGITS["EUR/USD"])
    from_bars: dict[tuple[str, str, int], dict[str, Any]] = {}
    for tf in tfs:
        ms = parse_timeframe(tf).ms
        for start, low, open_raw, high, close_raw, volume in minutes:
            key = ("EUR/USD", tf, start - start % ms)
            price = [round(x * scale / 100_000) / scale for x in (open_raw, high, low,
                                                                 close_raw)]
            bar = from_bars.get(key)
            if bar is None:
                from_bars[key] = {"open": price[0], "high": price[1], "low": price[2],
                                  "close": price[3], "tick_volume": volume, "volume": 0.0}
            else:
                bar.update(high=max(bar["high"], price[1]), low=min(bar["low"], price[2]),
                           close=price[3], tick_volume=bar["tick_volume"] + volume)
    segments = [(T("2024-03-05T04:00"), T("2024-03-05T05:00")), (T("2024-03-05T05:00"), switch)]
    from_bars = {k: v for k, v in from_bars.items() if any(
        a <= k[2] and k[2] + parse_timeframe(k[1]).ms <= b for a, b in segments)}
    assert ("EUR/USD", "1h", T("2024-03-05T04:00")) in from_bars
    stored = db_candles(settings)
    # Neither the 05:30 five-minute bar nor the 05:00 hour is whole in either source.
    assert compare_candles({**from_bars, **expected}, stored) == []
    assert {v["provider_source"] for k, v in stored.items() if k[2] < switch} == {
        "ctrader-trendbars"}
    assert {v["provider_source"] for k, v in stored.items() if k[2] >= switch} == {
        "ctrader-history"}
    # A range that starts inside an hour: its minutes are written, the hour is not (the
    # history fetched does not hold all of it).
    out = run_cli(settings, ["backfill", "--symbols", "GBP/USD", "--from", "2024-03-05T10:30",
                             "--to", "2024-03-05T11:30", "--timeframes", "1m,1h"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    gbp = {k: v for k, v in db_candles(settings).items() if k[0] == "GBP/USD"}
    assert compare_candles(reference(("GBP/USD",), T("2024-03-05T10:30"),
                                     T("2024-03-05T11:30"), ("1m",)), gbp) == []


def test_backfill_without_credentials_says_which_are_missing(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(ctrader_secrets_file=tmp_path / "absent.env")
    out = run_cli(settings, ["backfill", "--symbols", "EUR/USD", "--from", "2024-03-05"],
                  tmp_path)
    assert out.returncode == 2
    assert "absent.env" in out.stderr and "cannot be read" in out.stderr
    bad = run_cli(settings, ["backfill", "--from", "2024-03-05", "--to", "2024-03-04"],
                  tmp_path)
    assert bad.returncode == 2 and "is not before --to" in bad.stderr
