"""Gap detection on the real PostgreSQL: holes across the FX weekend, across both US
daylight-saving changes, at day and month boundaries, adjacent holes merging, holidays,
and the CLI's table and JSON.

The stored bars are made in SQL (generate_series) with the weekend written out here as
literal UTC times, not computed by fxstream, so a slip in the market calendar shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import psycopg
import pytest

from pipeline.core.market_hours import (
    closed_intervals,
    expected_bar_spans,
    trading_day,
    trading_day_bounds,
)
from pipeline.core.timeframes import parse_timeframe
from pipeline.db.migrate import migrate
from pipeline.gaps import Gap, find_gaps, parse_instant
from pipeline.settings import Settings
from tests.pipeline_helpers import run_cli

MIN = 60_000
T = parse_instant


# --- the calendar, pure -----------------------------------------------------------------------


def test_trading_day_bounds_follow_new_york_daylight_saving() -> None:
    # Winter (EST, UTC-5): 17:00 New York is 22:00 UTC; summer (EDT, UTC-4): 21:00 UTC.
    assert trading_day_bounds(date(2024, 1, 17)) == (T("2024-01-16T22:00"), T("2024-01-17T22:00"))
    assert trading_day_bounds(date(2024, 7, 17)) == (T("2024-07-16T21:00"), T("2024-07-17T21:00"))
    # The day DST starts (Sunday 2024-03-10) is 23 hours long, the day it ends 25.
    start, end = trading_day_bounds(date(2024, 3, 10))
    assert (start, end) == (T("2024-03-09T22:00"), T("2024-03-10T21:00"))
    start, end = trading_day_bounds(date(2024, 11, 3))
    assert (start, end) == (T("2024-11-02T21:00"), T("2024-11-03T22:00"))
    assert trading_day(T("2024-01-16T21:59:59.999")) == date(2024, 1, 16)
    assert trading_day(T("2024-01-16T22:00")) == date(2024, 1, 17)


def test_weekends_and_holidays_are_closed_stretches() -> None:
    assert closed_intervals(T("2024-03-04"), T("2024-03-18")) == [
        (T("2024-03-08T22:00"), T("2024-03-10T21:00")),  # Friday EST -> Sunday EDT
        (T("2024-03-15T21:00"), T("2024-03-17T21:00"))]
    assert closed_intervals(T("2024-10-28"), T("2024-11-05")) == [
        (T("2024-11-01T21:00"), T("2024-11-03T22:00"))]  # Friday EDT -> Sunday EST
    # A Monday holiday joins the weekend before it.
    assert closed_intervals(T("2024-05-22"), T("2024-05-29"), [date(2024, 5, 27)]) == [
        (T("2024-05-24T21:00"), T("2024-05-27T21:00"))]


def test_expected_bars_overlap_open_time_and_lie_inside_the_range() -> None:
    day = parse_timeframe("1d")
    assert expected_bar_spans(T("2024-03-07"), T("2024-03-12"), day) == [
        (T("2024-03-07"), T("2024-03-08")), (T("2024-03-10"), T("2024-03-11"))]
    four = parse_timeframe("4h")
    # The Friday 20:00 bar holds the close (22:00), the Sunday 20:00 bar the open (21:00).
    assert expected_bar_spans(T("2024-03-08T16:00"), T("2024-03-11"), four) == [
        (T("2024-03-08T16:00"), T("2024-03-08T20:00")),
        (T("2024-03-10T20:00"), T("2024-03-10T20:00"))]
    # A range that does not hold a whole bar holds none.
    assert expected_bar_spans(T("2024-03-07T10:30"), T("2024-03-07T11:20"),
                              parse_timeframe("1h")) == []
    # Daily bars rolling at 22:00 UTC.
    assert expected_bar_spans(T("2024-01-16T22:00"), T("2024-01-18T22:00"), day,
                              day_start_ms=22 * 60 * MIN) == [
        (T("2024-01-16T22:00"), T("2024-01-17T22:00"))]


# --- gaps in PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def db(make_settings: Callable[..., Settings]) -> tuple[Settings, psycopg.Connection]:
    settings = make_settings()
    migrate(settings)
    conn = psycopg.connect(settings.database_url, autocommit=True)
    yield settings, conn
    conn.close()


def fill(conn: psycopg.Connection, symbol: str, timeframe: str, from_ms: int, to_ms: int,
         closed: list[tuple[int, int]] = ()) -> None:
    """Bars every ``timeframe`` step in [from_ms, to_ms), none starting in ``closed``."""
    step = parse_timeframe(timeframe).ms
    conn.execute(
        "INSERT INTO market_data_candles (symbol, timeframe, ts_utc, open, high, low, close, "
        "tick_volume, volume, provider_source, complete) "
        "SELECT %s, %s, ts, 1, 1, 1, 1, 1, 0, 'test', true "
        "FROM generate_series(%s::bigint, %s::bigint - %s, %s::bigint) AS g(ts) "
        "WHERE NOT EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::bigint[]) AS c(a, b) "
        "                  WHERE ts >= c.a AND ts < c.b)",
        (symbol, timeframe, from_ms, to_ms, step, step, [c[0] for c in closed],
         [c[1] for c in closed]))


def hole(conn: psycopg.Connection, symbol: str, timeframe: str, from_ms: int, to_ms: int
         ) -> None:
    conn.execute("DELETE FROM market_data_candles WHERE symbol = %s AND timeframe = %s "
                 "AND ts_utc >= %s AND ts_utc < %s", (symbol, timeframe, from_ms, to_ms))


def gap(symbol: str, a: str, b: str, timeframe: str = "1m") -> Gap:
    from_ms, to_ms = T(a), T(b)
    return Gap(symbol, timeframe, from_ms, to_ms, (to_ms - from_ms) // parse_timeframe(
        timeframe).ms)


# The weekends around the 2024 US daylight-saving changes, in UTC, written out.
MARCH_WEEKEND = (T("2024-03-08T22:00"), T("2024-03-10T21:00"))
NOVEMBER_WEEKEND = (T("2024-11-01T21:00"), T("2024-11-03T22:00"))


def test_holes_at_the_close_and_the_open_around_the_march_change(db) -> None:
    _, conn = db
    a, b = T("2024-03-08T12:00"), T("2024-03-11T12:00")
    fill(conn, "EUR/USD", "1m", a, b, [MARCH_WEEKEND])
    assert find_gaps(conn, ["EUR/USD"], "1m", a, b) == []
    hole(conn, "EUR/USD", "1m", T("2024-03-08T21:30"), T("2024-03-08T22:00"))
    hole(conn, "EUR/USD", "1m", T("2024-03-10T21:00"), T("2024-03-10T21:10"))
    # Two ranges, one ending at the Friday close, one starting at the Sunday open: the
    # weekend between them is neither reported nor does it join them.
    assert find_gaps(conn, ["EUR/USD"], "1m", a, b) == [
        gap("EUR/USD", "2024-03-08T21:30", "2024-03-08T22:00"),
        gap("EUR/USD", "2024-03-10T21:00", "2024-03-10T21:10")]


def test_holes_at_the_close_and_the_open_around_the_november_change(db) -> None:
    _, conn = db
    a, b = T("2024-11-01T00:00"), T("2024-11-04T06:00")
    fill(conn, "USD/JPY", "1m", a, b, [NOVEMBER_WEEKEND])
    assert find_gaps(conn, ["USD/JPY"], "1m", a, b) == []
    hole(conn, "USD/JPY", "1m", T("2024-11-01T20:59"), T("2024-11-01T21:00"))
    hole(conn, "USD/JPY", "1m", T("2024-11-03T22:00"), T("2024-11-03T22:01"))
    hole(conn, "USD/JPY", "1m", T("2024-11-04T05:59"), T("2024-11-04T06:00"))
    assert find_gaps(conn, ["USD/JPY"], "1m", a, b) == [
        gap("USD/JPY", "2024-11-01T20:59", "2024-11-01T21:00"),
        gap("USD/JPY", "2024-11-03T22:00", "2024-11-03T22:01"),
        gap("USD/JPY", "2024-11-04T05:59", "2024-11-04T06:00")]


def test_a_hole_across_the_weekend_is_two_ranges_and_other_symbols_are_apart(db) -> None:
    _, conn = db
    a, b = T("2024-03-08T20:00"), T("2024-03-10T23:00")
    fill(conn, "EUR/USD", "1m", a, b, [MARCH_WEEKEND])
    fill(conn, "GBP/USD", "1m", a, b, [MARCH_WEEKEND])
    hole(conn, "EUR/USD", "1m", T("2024-03-08T21:00"), T("2024-03-10T22:00"))
    assert find_gaps(conn, ["EUR/USD", "GBP/USD", "USD/CHF"], "1m", a, b) == [
        gap("EUR/USD", "2024-03-08T21:00", "2024-03-08T22:00"),
        gap("EUR/USD", "2024-03-10T21:00", "2024-03-10T22:00"),
        gap("USD/CHF", "2024-03-08T20:00", "2024-03-08T22:00"),  # nothing stored at all
        gap("USD/CHF", "2024-03-10T21:00", "2024-03-10T23:00")]


def test_a_hole_over_midnight_and_the_month_end_is_one_range(db) -> None:
    _, conn = db
    a, b = T("2024-01-31T12:00"), T("2024-02-01T12:00")  # Wednesday to Thursday
    fill(conn, "EUR/USD", "1m", a, b)
    hole(conn, "EUR/USD", "1m", T("2024-01-31T23:58"), T("2024-02-01T00:03"))
    hole(conn, "EUR/USD", "1m", T("2024-02-01T00:00"), T("2024-02-01T00:01"))  # again, inside
    assert find_gaps(conn, ["EUR/USD"], "1m", a, b) == [
        gap("EUR/USD", "2024-01-31T23:58", "2024-02-01T00:03")]
    # Hourly: the midnight bar missing, and the range's edges cut bars out.
    fill(conn, "EUR/USD", "1h", a, b)
    hole(conn, "EUR/USD", "1h", T("2024-02-01T00:00"), T("2024-02-01T01:00"))
    assert find_gaps(conn, ["EUR/USD"], "1h", a + 1, b) == [
        gap("EUR/USD", "2024-02-01T00:00", "2024-02-01T01:00", "1h")]
    assert find_gaps(conn, ["EUR/USD"], "1h", T("2024-02-01T00:30"), b) == []


def test_adjacent_holes_merge_and_separate_ones_do_not(db) -> None:
    _, conn = db
    a, b = T("2024-06-04T00:00"), T("2024-06-05T00:00")
    fill(conn, "XAU/USD", "1m", a, b)
    hole(conn, "XAU/USD", "1m", T("2024-06-04T10:00"), T("2024-06-04T10:05"))
    hole(conn, "XAU/USD", "1m", T("2024-06-04T10:05"), T("2024-06-04T10:10"))
    hole(conn, "XAU/USD", "1m", T("2024-06-04T10:11"), T("2024-06-04T10:12"))
    hole(conn, "XAU/USD", "1m", T("2024-06-04T23:59"), T("2024-06-05T00:00"))
    assert find_gaps(conn, ["XAU/USD"], "1m", a, b) == [
        gap("XAU/USD", "2024-06-04T10:00", "2024-06-04T10:10"),
        gap("XAU/USD", "2024-06-04T10:11", "2024-06-04T10:12"),
        gap("XAU/USD", "2024-06-04T23:59", "2024-06-05T00:00")]
    # Other timeframes of the same symbol are not this one's bars.
    assert find_gaps(conn, ["XAU/USD"], "5m", a, b) == [gap("XAU/USD", "2024-06-04T00:00",
                                                            "2024-06-05T00:00", "5m")]


def test_daily_bars_and_holidays(db) -> None:
    _, conn = db
    a, b = T("2024-12-20"), T("2024-12-31")
    # Daily bars on every weekday UTC and Sunday (which holds the open); not Saturday.
    days = ["2024-12-20", "2024-12-22", "2024-12-23", "2024-12-24", "2024-12-26",
            "2024-12-27", "2024-12-29", "2024-12-30"]
    for d in days:
        fill(conn, "EUR/USD", "1d", T(d), T(d) + 86_400_000)
    # The 25th is missing: a gap, holiday or not, because the bar of the 25th UTC also
    # holds 22:00 to 24:00, the start of the trading day of the 26th.
    assert find_gaps(conn, ["EUR/USD"], "1d", a, b) == [
        gap("EUR/USD", "2024-12-25", "2024-12-26", "1d")]
    assert find_gaps(conn, ["EUR/USD"], "1d", a, b, holidays=[date(2024, 12, 25)]) == [
        gap("EUR/USD", "2024-12-25", "2024-12-26", "1d")]
    # Hourly bars of the holiday's trading day are not expected.
    a, b = T("2024-12-24T20:00"), T("2024-12-26T00:00")
    fill(conn, "EUR/USD", "1h", T("2024-12-24T20:00"), T("2024-12-24T22:00"))
    fill(conn, "EUR/USD", "1h", T("2024-12-25T22:00"), T("2024-12-26T00:00"))
    assert find_gaps(conn, ["EUR/USD"], "1h", a, b, holidays=[date(2024, 12, 25)]) == []
    assert find_gaps(conn, ["EUR/USD"], "1h", a, b) == [
        gap("EUR/USD", "2024-12-24T22:00", "2024-12-25T22:00", "1h")]


def test_bars_not_yet_ended_are_not_gaps(db) -> None:
    _, conn = db
    a, b = T("2024-06-04T10:00"), T("2024-06-04T11:00")
    assert find_gaps(conn, ["EUR/USD"], "1m", a, b, now_ms=T("2024-06-04T10:02:30")) == [
        gap("EUR/USD", "2024-06-04T10:00", "2024-06-04T10:02")]


def test_the_cli_prints_a_table_and_json(db, tmp_path: Path) -> None:
    settings, conn = db
    settings = settings.model_copy(update={"market_holidays": (date(2024, 3, 7),)})
    fill(conn, "EUR/USD", "1m", T("2024-03-06T00:00"), T("2024-03-06T01:00"))
    hole(conn, "EUR/USD", "1m", T("2024-03-06T00:10"), T("2024-03-06T00:12"))
    args = ["gaps", "--symbols", "eurusd,GBP-USD", "--timeframe", "1m",
            "--from", "2024-03-06T00:00", "--to", "2024-03-06T01:00"]
    out = run_cli(settings, [*args, "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"symbol": "EUR/USD", "timeframe": "1m", "from_ms": T("2024-03-06T00:10"),
         "to_ms": T("2024-03-06T00:12"), "bars": 2, "from": "2024-03-06T00:10:00Z",
         "to": "2024-03-06T00:12:00Z"},
        {"symbol": "GBP/USD", "timeframe": "1m", "from_ms": T("2024-03-06T00:00"),
         "to_ms": T("2024-03-06T01:00"), "bars": 60, "from": "2024-03-06T00:00:00Z",
         "to": "2024-03-06T01:00:00Z"}]
    table = run_cli(settings, args, tmp_path)
    assert table.returncode == 0, table.stderr
    assert "2024-03-06T00:10:00Z" in table.stdout and "2 gaps, 62 missing bars" in table.stdout
    # The holiday of the settings (trading day 2024-03-07 starts 03-06 22:00 UTC).
    late = run_cli(settings, ["gaps", "--symbols", "EUR/USD", "--from", "2024-03-06T21:00",
                              "--to", "2024-03-06T23:00", "--json"], tmp_path)
    assert json.loads(late.stdout) == [
        {"symbol": "EUR/USD", "timeframe": "1m", "from_ms": T("2024-03-06T21:00"),
         "to_ms": T("2024-03-06T22:00"), "bars": 60, "from": "2024-03-06T21:00:00Z",
         "to": "2024-03-06T22:00:00Z"}]
    bad = run_cli(settings, ["gaps", "--from", "yesterday"], tmp_path)
    assert bad.returncode == 2 and "--from" in bad.stderr


def test_holidays_must_be_dates() -> None:
    from pipeline.settings import SettingsError, load_settings

    assert load_settings(env={"FXSTREAM_MARKET_HOLIDAYS": "2024-12-25,2024-01-01"}
                         ).market_holidays == (date(2024, 1, 1), date(2024, 12, 25))
    with pytest.raises(SettingsError, match=r"market_holidays.*2024-13-01"):
        load_settings(env={"FXSTREAM_MARKET_HOLIDAYS": "2024-13-01"})
