"""When the FX market is open, and which bars it therefore should have.

The FX trading day D runs from 17:00 New York time on D-1 to 17:00 New York time on D
(the New York close), so its UTC bounds move with US daylight saving: 21:00 UTC in
summer, 22:00 UTC in winter. The market is closed on the trading days Saturday and
Sunday (Friday 17:00 to Sunday 17:00 New York time) and on the configured holidays
(trading-day dates, ``Settings.market_holidays``).

A bar is expected when it overlaps open time, so a daily bar that holds the Sunday
evening open is expected and one that lies wholly inside the weekend is not. These
functions are pure: times are epoch milliseconds, dates are ``datetime.date``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pipeline.core.timeframes import Timeframe

NEW_YORK = ZoneInfo("America/New_York")
CLOSE_HOUR = 17  # the New York close that ends one trading day and starts the next
_SHIFT = timedelta(hours=24 - CLOSE_HOUR)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


def trading_day(ts_ms: int) -> date:
    """The trading day holding the instant ``ts_ms``."""
    local = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(NEW_YORK)
    return (local.replace(tzinfo=None) + _SHIFT).date()


def trading_day_bounds(day: date) -> tuple[int, int]:
    """[start, end) of trading day ``day`` in epoch ms: 17:00 New York on the day before
    to 17:00 New York on the day."""
    start = datetime.combine(day - timedelta(days=1), time(CLOSE_HOUR), NEW_YORK)
    end = datetime.combine(day, time(CLOSE_HOUR), NEW_YORK)
    return _ms(start), _ms(end)


def is_closed(day: date, holidays: Iterable[date] = ()) -> bool:
    """Saturday and Sunday trading days and the holidays are closed."""
    return day.weekday() >= 5 or day in set(holidays)


def closed_intervals(from_ms: int, to_ms: int, holidays: Iterable[date] = ()
                     ) -> list[tuple[int, int]]:
    """The closed stretches that overlap [from_ms, to_ms), merged, in time order (not
    clipped: a stretch may start before ``from_ms`` or end after ``to_ms``)."""
    if from_ms >= to_ms:
        return []
    holiday_set = set(holidays)
    out: list[tuple[int, int]] = []
    day = trading_day(from_ms)
    last = trading_day(to_ms - 1)
    while day <= last:
        if is_closed(day, holiday_set):
            start, end = trading_day_bounds(day)
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        day += timedelta(days=1)
    return out


def open_intervals(from_ms: int, to_ms: int, holidays: Iterable[date] = ()
                   ) -> list[tuple[int, int]]:
    """[from_ms, to_ms) without the closed stretches, in time order."""
    out: list[tuple[int, int]] = []
    cursor = from_ms
    for start, end in closed_intervals(from_ms, to_ms, holidays):
        if start > cursor:
            out.append((cursor, min(start, to_ms)))
        cursor = max(cursor, end)
    if cursor < to_ms:
        out.append((cursor, to_ms))
    return out


def first_bar_at_or_after(ts_ms: int, tf: Timeframe, day_start_ms: int = 0) -> int:
    start = tf.start_of(ts_ms, day_start_ms)
    return start if start >= ts_ms else start + tf.ms


def expected_bar_spans(from_ms: int, to_ms: int, tf: Timeframe, day_start_ms: int = 0,
                       holidays: Iterable[date] = ()) -> list[tuple[int, int]]:
    """(first, last) open times of runs of consecutive bars of ``tf`` that lie wholly
    inside [from_ms, to_ms) and overlap open market time; the runs are disjoint and in
    time order, so generating every ``tf`` step from first to last of each gives every
    expected bar once."""
    first_in = first_bar_at_or_after(from_ms, tf, day_start_ms)
    last_in = tf.start_of(to_ms - tf.ms, day_start_ms)
    if first_in > last_in:
        return []
    spans: list[tuple[int, int]] = []
    for open_from, open_to in open_intervals(first_in, last_in + tf.ms, holidays):
        first = max(first_in, tf.start_of(open_from, day_start_ms))
        last = min(last_in, tf.start_of(open_to - 1, day_start_ms))
        if first > last:
            continue
        if spans and first <= spans[-1][1] + tf.ms:  # a bar reaching over a closed stretch
            spans[-1] = (spans[-1][0], max(spans[-1][1], last))
        else:
            spans.append((first, last))
    return spans
