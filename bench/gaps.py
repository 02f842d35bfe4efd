"""How long `fxstream gaps` takes on a year of 1m bars for 30 symbols.

``python -m bench.gaps`` (on the running stack, or with DATABASE_URL set) makes its own
database ``fxstream_gaps_bench`` on that server, fills market_data_candles in SQL
(generate_series: every minute of 2024 outside the FX weekend, for 30 symbols, with one
bar in 997 left out, at different minutes per symbol), then times ``find_gaps`` over the
whole year for all 30 symbols, then over one day of it, and prints one JSON line. Only
PostgreSQL is used.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from pipeline.db.migrate import migrate
from pipeline.gaps import find_gaps, parse_instant
from pipeline.settings import DEFAULT_SYMBOLS, load_settings

DATABASE = "fxstream_gaps_bench"
FROM, TO = "2024-01-01", "2025-01-01"
DAY = "2024-06-04"  # one day of the same table, to show the cost follows the range
HOLE_EVERY = 997

FILL_SQL = """
INSERT INTO market_data_candles (symbol, timeframe, ts_utc, open, high, low, close,
                                 tick_volume, volume, provider_source, complete)
SELECT s.symbol, '1m', g.ts, 1.1, 1.2, 1.0, 1.15, 60, 0, 'bench', true
FROM unnest(%(symbols)s::text[]) WITH ORDINALITY AS s(symbol, n)
CROSS JOIN generate_series(%(from)s::bigint, %(to)s::bigint - 60000, 60000) AS g(ts)
WHERE extract(isodow FROM (to_timestamp(g.ts / 1000.0) AT TIME ZONE 'America/New_York')
                         + interval '7 hours') < 6
  AND (g.ts / 60000 + s.n * 131) %% %(every)s <> 0
"""


def main() -> None:
    settings = load_settings()
    if not settings.database_url:
        sys.exit("DATABASE_URL not set and no running stack: run `fxstream stack up` first")
    parts = urlsplit(settings.database_url)
    url = urlunsplit(parts._replace(path=f"/{DATABASE}"))
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    bench = settings.model_copy(update={"database_url": url,
                                        "kafka_bootstrap": settings.kafka_bootstrap
                                        or "127.0.0.1:9092"})  # migrations do not use it
    migrate(bench)
    symbols = list(DEFAULT_SYMBOLS[:30])
    from_ms, to_ms = parse_instant(FROM), parse_instant(TO)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        rows = conn.execute(FILL_SQL, {"symbols": symbols, "from": from_ms, "to": to_ms,
                                       "every": HOLE_EVERY}).rowcount
        conn.execute("VACUUM ANALYZE market_data_candles")
        fill_s = time.monotonic() - started
        started = time.monotonic()
        gaps = find_gaps(conn, symbols, "1m", from_ms, to_ms)
        gaps_s = time.monotonic() - started
        started = time.monotonic()
        day = find_gaps(conn, symbols, "1m", parse_instant(DAY), parse_instant(DAY) + 86_400_000)
        day_s = time.monotonic() - started
    print(orjson.dumps({"bars": rows, "symbols": len(symbols), "from": FROM, "to": TO,
                        "gaps": len(gaps), "missing_bars": sum(g.bars for g in gaps),
                        "fill_s": round(fill_s, 1), "gaps_s": round(gaps_s, 2),
                        "day": DAY, "day_gaps": len(day), "day_s": round(day_s, 3)}).decode())
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {DATABASE}")


if __name__ == "__main__":
    main()
