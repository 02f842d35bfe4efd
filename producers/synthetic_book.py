"""Synthetic order books on the synthetic ticks' path, deterministic for a seed.

Each book's best bid and best ask are one synthetic tick's (producers.synthetic,
same symbols, rate, seed and start: the same mids, spreads and times), so the
DOM metrics and the candles of one seed describe the same market. Below the
best levels, each side has 1 to ``levels`` more levels 1 to 3 points apart, with
sizes in units (a long-tailed number of 100,000-unit lots). The book's own draws
come from a generator of their own, so the ticks' path is untouched.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import Settings
from pipeline.symbols import count_refused
from producers.book_publisher import BookPublisher
from producers.synthetic import SyntheticTicks, price_decimals

LOT_UNITS = 100_000.0


class SyntheticBooks:
    """Deterministic book snapshots, one per synthetic tick."""

    def __init__(self, symbols: Sequence[str], rate: float, seed: int = 0,
                 start_ms: int | None = None, provider: str = "synthetic",
                 levels: int = 10) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.ticks = SyntheticTicks(symbols, rate=rate, seed=seed, start_ms=start_ms,
                                    provider=provider)
        self.levels = levels
        self._rng = random.Random(f"book-{seed}")
        self._scale = {s: 10 ** price_decimals(s) for s in symbols}

    def books(self, count: int | None = None, duration_s: float | None = None
              ) -> Iterator[dict[str, Any]]:
        """One snapshot per tick of ``SyntheticTicks.ticks(count, duration_s)``."""
        for tick in self.ticks.ticks(count=count, duration_s=duration_s):
            yield self.book_of(tick)

    def book_of(self, tick: dict[str, Any]) -> dict[str, Any]:
        symbol = tick["symbol"]
        scale = self._scale[symbol]
        return {"symbol": symbol, "ts_ms": tick["ts_ms"], "provider": tick["provider"],
                "bids": self._side(round(tick["bid"] * scale), -1, scale),
                "asks": self._side(round(tick["ask"] * scale), 1, scale)}

    def _side(self, best_pts: int, direction: int, scale: int) -> list[list[float]]:
        rng = self._rng
        out = []
        pts = best_pts
        for _ in range(rng.randint(1, self.levels)):
            if pts <= 0:
                break
            lots = min(max(round(math.exp(rng.gauss(0.5, 1.0)), 1), 0.1), 50.0)
            out.append([pts / scale, float(round(lots * LOT_UNITS))])
            pts += direction * rng.randint(1, 3)
        return out


@dataclass
class SyntheticBookReport:
    snapshots: int = 0
    messages: int = 0
    seconds: float = 0.0
    # published items of symbols the configuration does not accept (the worker refuses them)
    refused: dict[str, int] = field(default_factory=dict)


def run_synthetic_books(settings: Settings, symbols: list[str], rate: float,
                        duration_s: float | None, count: int | None = None, seed: int = 0,
                        paced: bool = True, frame_size: int | None = None,
                        live_time: bool = True, levels: int = 10,
                        should_stop: Callable[[], bool] = lambda: False) -> SyntheticBookReport:
    """Generate books (same seed, same books) and publish them framed on the DOM topic.

    paced: hold to ``rate`` snapshots per second of wall time. live_time: stamp them
    with the wall clock instead of the generator's fixed 2024 event time."""
    start_ms = int(time.time() * 1000) if live_time else None
    generator = SyntheticBooks(symbols, rate=rate, seed=seed, start_ms=start_ms, levels=levels)
    publisher = BookPublisher(settings, frame_size=frame_size)
    report = SyntheticBookReport()
    wall_start = time.monotonic()
    first_ts: int | None = None
    accepted = frozenset(settings.symbols)
    books = (generator.books(count=count, duration_s=duration_s)
             if count is not None or duration_s is not None else _endless(generator))
    for book in books:
        if paced:
            first_ts = book["ts_ms"] if first_ts is None else first_ts
            due = wall_start + (book["ts_ms"] - first_ts) / 1000
            while (wait := due - time.monotonic()) > 0:
                publisher.tick()
                time.sleep(min(wait, 0.005))
        publisher.publish(book["symbol"], book)
        report.snapshots += 1
        count_refused(report.refused, book["symbol"], accepted)
        if report.snapshots % 2048 == 0:
            publisher.tick()
            if should_stop():
                break
    publisher.flush()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - wall_start
    return report


def _endless(generator: SyntheticBooks) -> Iterator[dict[str, Any]]:
    while True:
        yield from generator.books(duration_s=60.0)
