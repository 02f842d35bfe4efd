"""The approach fxstream replaces, on the same ticks: poll a tick table, resample with pandas.

Like the old AggregatorService: every cycle, for each symbol, read the ticks of
the window since the previous cycle from PostgreSQL, resample them into bars of
each timeframe with pandas, and write the bars. (The old service ran every
other minute, so one cycle covers two minutes of ticks.) Runs in its own
virtualenv; imports nothing of fxstream. Prints one JSON line.

    python oldstyle_candles.py DATABASE_URL WINDOW_MS
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import psycopg

RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h",
         "1d": "1D"}


def main() -> None:
    url, window_ms = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(url) as conn:
        symbols = [r[0] for r in conn.execute(
            "SELECT DISTINCT symbol FROM market_data_ticks ORDER BY 1")]
        lo, hi = conn.execute("SELECT min(ts_utc), max(ts_utc) FROM market_data_ticks").fetchone()
        conn.execute("CREATE TABLE IF NOT EXISTS oldstyle_candles (symbol text, timeframe text, "
                     "ts_utc bigint, open float8, high float8, low float8, close float8, "
                     "tick_volume bigint, PRIMARY KEY (symbol, timeframe, ts_utc))")
        conn.commit()
        cycles, ticks, started = [], 0, time.monotonic()
        cursor = lo
        while cursor <= hi:
            cycle_start = time.monotonic()
            end = cursor + window_ms
            for symbol in symbols:
                rows = conn.execute(
                    "SELECT ts_utc, price FROM market_data_ticks WHERE symbol = %s AND "
                    "ts_utc >= %s AND ts_utc < %s ORDER BY ts_utc", (symbol, cursor, end)
                ).fetchall()
                if not rows:
                    continue
                ticks += len(rows)
                frame = pd.DataFrame(rows, columns=["ts_utc", "price"])
                frame.index = pd.to_datetime(frame["ts_utc"], unit="ms", utc=True)
                out = []
                for tf, rule in RULES.items():
                    bars = frame["price"].resample(rule).ohlc().dropna()
                    counts = frame["price"].resample(rule).count()
                    for ts, bar in bars.iterrows():
                        out.append((symbol, tf, int(ts.value // 1_000_000), bar["open"],
                                    bar["high"], bar["low"], bar["close"], int(counts[ts])))
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO oldstyle_candles VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
                        "ON CONFLICT (symbol, timeframe, ts_utc) DO UPDATE SET "
                        "close = EXCLUDED.close, high = EXCLUDED.high, low = EXCLUDED.low, "
                        "tick_volume = EXCLUDED.tick_volume", out)
            conn.commit()
            cycles.append(time.monotonic() - cycle_start)
            cursor = end
        seconds = time.monotonic() - started
    print(json.dumps({"ticks": ticks, "cycles": len(cycles), "seconds": seconds,
                      "seconds_per_cycle": sum(cycles) / len(cycles),
                      "ticks_per_s": ticks / seconds}))


if __name__ == "__main__":
    main()
