"""The simulator's history: tick data and trendbars, deterministic for a seed.

Tick data comes from the synthetic generator run one hour at a time (one tick a second
on average per symbol, seeded by symbol and hour), so any range can be served without
generating what lies before it. Trendbars come from a smooth deterministic price path
sampled per minute. History is consistent with itself, not with the live stream.

Paging, as the producer's backfill will use it:
- tick data: at most ``TICK_PAGE`` ticks per answer, the newest of the range first,
  ``hasMore`` when older ticks remain; ask again with ``toTimestamp`` = the oldest
  timestamp received. A page never splits the ticks of one millisecond.
- trendbars: at most ``min(count, TRENDBAR_PAGE)`` bars, the newest of the range, listed
  oldest first; ask again with ``toTimestamp`` = the first bar's open time.
Spans longer than ``TICK_SPAN_MAX_MS`` / ``TRENDBAR_SPAN_MAX_MS[period]`` and ranges with
``from >= to`` are refused with INCORRECT_BOUNDARIES.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

from producers.synthetic import SyntheticTicks, start_price

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
TICK_PAGE = 5_000
TRENDBAR_PAGE = 5_000
TICK_SPAN_MAX_MS = 7 * DAY_MS
HISTORY_RATE = 1.0  # ticks per second per symbol

# ProtoOATrendbarPeriod name -> minutes
PERIOD_MINUTES = {"M1": 1, "M2": 2, "M3": 3, "M4": 4, "M5": 5, "M10": 10, "M15": 15,
                  "M30": 30, "H1": 60, "H4": 240, "H12": 720, "D1": 1440, "W1": 10080,
                  "MN1": 43200}
TRENDBAR_SPAN_MAX_MS = {name: (35 * DAY_MS if minutes < 60 else
                               366 * DAY_MS if minutes < 1440 else 3660 * DAY_MS)
                        for name, minutes in PERIOD_MINUTES.items()}


class BoundaryError(ValueError):
    """A history request whose range the simulator refuses (INCORRECT_BOUNDARIES)."""


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


@lru_cache(maxsize=256)
def hour_ticks(symbol: str, hour_start_ms: int, seed: int) -> tuple[tuple[int, int, int], ...]:
    """(ts_ms, bid raw, ask raw) of one hour of history, oldest first."""
    gen = SyntheticTicks([symbol], rate=HISTORY_RATE, seed=_seed(seed, symbol, hour_start_ms),
                         start_ms=hour_start_ms, provider="history")
    out = []
    for t in gen.ticks(duration_s=3600):
        if t["ts_ms"] < hour_start_ms + HOUR_MS:
            out.append((t["ts_ms"], round(t["bid"] * 100_000), round(t["ask"] * 100_000)))
    return tuple(out)


def tick_page(symbol: str, ask: bool, from_ms: int, to_ms: int, seed: int,
              page: int = TICK_PAGE) -> tuple[list[tuple[int, int]], bool]:
    """Ticks with from_ms <= ts < to_ms, newest first, at most ``page``; and hasMore."""
    if from_ms >= to_ms or from_ms < 0:
        raise BoundaryError(f"fromTimestamp {from_ms} must be >= 0 and < toTimestamp {to_ms}")
    if to_ms - from_ms > TICK_SPAN_MAX_MS:
        raise BoundaryError(f"tick data spans at most {TICK_SPAN_MAX_MS // DAY_MS} days")
    side = 2 if ask else 1
    out: list[tuple[int, int]] = []
    hour = (to_ms - 1) // HOUR_MS * HOUR_MS
    while hour + HOUR_MS > from_ms:
        for tick in reversed(hour_ticks(symbol, hour, seed)):
            if from_ms <= tick[0] < to_ms:
                if len(out) == page:
                    # One more exists: drop the oldest millisecond if this one shares it.
                    if tick[0] == out[-1][0]:
                        oldest = out[-1][0]
                        while out and out[-1][0] == oldest:
                            out.pop()
                    return out, True
                out.append((tick[0], tick[side]))
        hour -= HOUR_MS
    return out, False


def _minute_price(symbol: str, minute: int, seed: int) -> float:
    base = start_price(symbol)
    phase = _seed(seed, symbol) % 1000
    noise = (_seed(seed, symbol, minute) % 2001 - 1000) / 1000
    return base * (1 + 0.01 * math.sin(2 * math.pi * (minute + phase) / 10080)
                   + 0.002 * math.sin(2 * math.pi * (minute + phase) / 360) + 0.0003 * noise)


def trendbars(symbol: str, period: str, from_ms: int, to_ms: int, count: int | None,
              seed: int, digits: int) -> list[tuple[int, int, int, int, int, int]]:
    """(open time ms, low raw, open raw, high raw, close raw, volume) of the newest bars
    opening in [from_ms, to_ms), oldest first."""
    if period not in PERIOD_MINUTES:
        raise BoundaryError(f"unknown period {period}")
    if from_ms >= to_ms or from_ms < 0:
        raise BoundaryError(f"fromTimestamp {from_ms} must be >= 0 and < toTimestamp {to_ms}")
    if to_ms - from_ms > TRENDBAR_SPAN_MAX_MS[period]:
        raise BoundaryError(f"{period} trendbars span at most "
                            f"{TRENDBAR_SPAN_MAX_MS[period] // DAY_MS} days")
    minutes = PERIOD_MINUTES[period]
    limit = min(count or TRENDBAR_PAGE, TRENDBAR_PAGE)
    scale = 10 ** digits
    bar_ms = minutes * MINUTE_MS

    def raw(minute: int) -> int:
        return round(_minute_price(symbol, minute, seed) * scale) * (100_000 // scale)

    out = []
    start = (to_ms - 1) // bar_ms * bar_ms
    while start >= from_ms and len(out) < limit:
        m0 = start // MINUTE_MS
        stride = max(1, minutes // 60)
        samples = [raw(m) for m in range(m0, m0 + minutes, stride)] + [raw(m0 + minutes - 1)]
        open_raw, close_raw = raw(m0 - 1), samples[-1]
        high = max(*samples, open_raw)
        low = min(*samples, open_raw)
        volume = 1 + _seed(seed, symbol, period, start) % (50 * minutes)
        out.append((start, low, open_raw, high, close_raw, volume))
        start -= bar_ms
    out.reverse()
    return out
