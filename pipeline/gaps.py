"""`fxstream gaps`: the bars missing from market_data_candles, as ranges, in one query.

The expected bars are the bars of the timeframe that lie wholly inside [from, to), end
by the wall clock, and overlap open market time (pipeline.core.market_hours: the FX
weekend, Friday 17:00 to Sunday 17:00 New York time, and the holidays of the settings
are closed). The market calendar is computed once in Python, as a handful of runs of
consecutive expected bars; PostgreSQL then does the set logic in ONE statement:
``generate_series`` over those runs, crossed with the symbols, minus the stored bars
(an anti-join on the primary key), and the missing bars merged into ranges by the
gaps-and-islands rule (``ts - step * row_number()`` is constant along a run of
consecutive missing bars). Nothing loops per bar.

Missing bars either side of a closed stretch are two ranges, each ending at the
close or starting at the open.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from pipeline.core.market_hours import expected_bar_spans
from pipeline.core.timeframes import parse_timeframe

GAPS_SQL = """
WITH runs AS (
    SELECT first_ts, last_ts FROM unnest(%(firsts)s::bigint[], %(lasts)s::bigint[])
        AS r(first_ts, last_ts)
), expected AS (
    SELECT g.ts FROM runs, generate_series(runs.first_ts, runs.last_ts, %(step)s::bigint)
        AS g(ts)
), missing AS (
    SELECT s.symbol, e.ts
    FROM unnest(%(symbols)s::text[]) AS s(symbol) CROSS JOIN expected e
    WHERE NOT EXISTS (SELECT 1 FROM market_data_candles c
                      WHERE c.symbol = s.symbol AND c.timeframe = %(timeframe)s
                        AND c.ts_utc = e.ts
                        -- the same, said of the whole set: the stored side stays small
                        AND c.symbol = ANY(%(symbols)s::text[])
                        AND c.ts_utc BETWEEN %(lo)s::bigint AND %(hi)s::bigint)
), islands AS (
    SELECT symbol, ts, ts - %(step)s::bigint * row_number() OVER (
        PARTITION BY symbol ORDER BY ts) AS island
    FROM missing
)
SELECT symbol, min(ts) AS from_ms, max(ts) + %(step)s::bigint AS to_ms, count(*) AS bars
FROM islands GROUP BY symbol, island ORDER BY symbol, from_ms
"""


@dataclass(frozen=True)
class Gap:
    """Consecutive missing bars of one symbol: [from_ms, to_ms), ``bars`` of them."""

    symbol: str
    timeframe: str
    from_ms: int
    to_ms: int
    bars: int

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "from": iso_utc(self.from_ms), "to": iso_utc(self.to_ms)}


def find_gaps(conn: psycopg.Connection[Any], symbols: Sequence[str], timeframe: str,
              from_ms: int, to_ms: int, *, day_start_ms: int = 0,
              holidays: Iterable[date] = (), now_ms: int | None = None) -> list[Gap]:
    """The missing bars of ``timeframe`` lying wholly in [from_ms, to_ms) and ended by
    ``now_ms`` (the wall clock by default), merged into ranges, by symbol and time."""
    tf = parse_timeframe(timeframe)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    spans = expected_bar_spans(from_ms, min(to_ms, now), tf, day_start_ms, holidays)
    if not spans or not symbols:
        return []
    rows = conn.execute(GAPS_SQL, {
        "firsts": [s[0] for s in spans], "lasts": [s[1] for s in spans], "step": tf.ms,
        "symbols": list(symbols), "timeframe": tf.name, "lo": spans[0][0],
        "hi": spans[-1][1]}).fetchall()
    return [Gap(symbol, tf.name, int(a), int(b), int(n)) for symbol, a, b, n in rows]


def iso_utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_INSTANT = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_instant(text: str) -> int:
    """``2024-03-04``, ``2024-03-04T10:30``, ``2024-03-04T10:30:00Z`` (UTC unless an
    offset is given) or epoch milliseconds, as epoch milliseconds."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    if not _INSTANT.match(raw):
        raise ValueError(f"{text!r} is not a date, a date and time (UTC unless an offset "
                         "is given) or epoch milliseconds")
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)
