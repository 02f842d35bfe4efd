"""Timeframes and bar boundaries.

Bars are labelled by their OPEN time and cover [start, start + duration),
aligned to the UTC epoch. Daily bars may start at another minute of the UTC
day (``day_start_ms``), e.g. 22:00 for a New York 17:00 roll in winter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_FORM = re.compile(r"^([1-9][0-9]{0,3})([smhd])$")
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Timeframe:
    name: str
    ms: int

    def start_of(self, ts_ms: int, day_start_ms: int = 0) -> int:
        """Open time of the bar holding ``ts_ms``."""
        offset = day_start_ms if self.ms >= DAY_MS else 0
        return ts_ms - (ts_ms - offset) % self.ms


def parse_timeframe(name: str) -> Timeframe:
    """'1s', '1m', '5m', '4h', '1d' ... ; raises ValueError naming the bad value.

    Seconds serve the DOM metric bars; candle timeframes start at a minute
    (pipeline.settings refuses shorter ones)."""
    match = _FORM.match(str(name).strip())
    if not match:
        raise ValueError(f"timeframe {name!r} is not of the form <N>s, <N>m, <N>h or <N>d")
    count, unit = int(match.group(1)), match.group(2)
    ms = count * _UNITS_MS[unit]
    if ms > 7 * DAY_MS:
        raise ValueError(f"timeframe {name!r} is longer than a week")
    if ms < DAY_MS and DAY_MS % ms:
        raise ValueError(f"timeframe {name!r} does not divide a day evenly")
    return Timeframe(f"{count}{unit}", ms)
