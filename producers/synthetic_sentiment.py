"""A synthetic positioning feed, plausible enough for the demo and the benchmark and
deterministic for a seed.

Per symbol and provider, long_pct follows a mean-reverting walk (retail positioning
drifts slowly and leans against the trend, so it stays between a few and 95 %);
now and then the crowd piles into one side for a while (an episode pulls the level
towards 20 or 80 %, so the contrarian thresholds are crossed), then reverts.
Providers report every ``interval_s`` seconds with some jitter, long and short
summing to 100 after rounding to a tenth, with a trader count that wanders around a
per-symbol size and a confidence that grows with it.
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
from producers.synthetic import DEFAULT_START_MS

REVERSION_PER_HOUR = 0.8  # how fast the level returns to its mean
VOLATILITY_PER_HOUR = 9.0  # points of long_pct per sqrt(hour)
EPISODE_PROBABILITY_PER_HOUR = 0.6


@dataclass
class _Series:
    symbol: str
    provider: str
    rng: random.Random
    level: float
    mean: float
    home: float
    traders: float
    episode_left_h: float = 0.0


class SyntheticPositioning:
    """Deterministic positioning observations of every (symbol, provider), in time order."""

    def __init__(self, symbols: Sequence[str], interval_s: float = 30.0, seed: int = 0,
                 start_ms: int | None = None, providers: Sequence[str] = ("synthetic",)) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_ms = max(1, round(interval_s * 1000))
        self.start_ms = DEFAULT_START_MS if start_ms is None else start_ms
        self.series = []
        for symbol in symbols:
            for provider in providers:
                rng = random.Random(f"positioning-{seed}-{symbol}-{provider}")
                home = rng.uniform(35.0, 65.0)
                self.series.append(_Series(symbol, provider, rng, home, home, home,
                                           rng.uniform(2_000, 60_000)))

    def observations(self, count: int | None = None, duration_s: float | None = None
                     ) -> Iterator[dict[str, Any]]:
        end = None if duration_s is None else self.start_ms + duration_s * 1000
        produced = 0
        step = 0
        while True:
            base = self.start_ms + step * self.interval_ms
            batch = [self._next(s, base) for s in self.series]
            batch.sort(key=lambda o: o["ts_ms"])
            for obs in batch:
                if (end is not None and obs["ts_ms"] >= end) or (
                        count is not None and produced >= count):
                    return
                yield obs
                produced += 1
            step += 1

    def _next(self, s: _Series, base_ms: int) -> dict[str, Any]:
        rng = s.rng
        dt_h = self.interval_ms / 3_600_000
        if s.episode_left_h > 0:
            s.episode_left_h -= dt_h
            if s.episode_left_h <= 0:
                s.mean = s.home
        elif rng.random() < EPISODE_PROBABILITY_PER_HOUR * dt_h:
            s.mean = rng.choice((20.0, 80.0))
            s.episode_left_h = rng.uniform(0.2, 1.5)
        s.level += (REVERSION_PER_HOUR * (s.mean - s.level) * dt_h
                    + VOLATILITY_PER_HOUR * math.sqrt(dt_h) * rng.gauss(0.0, 1.0))
        s.level = min(97.0, max(3.0, s.level))
        s.traders = max(100.0, s.traders * math.exp(0.02 * rng.gauss(0.0, 1.0)))
        long_pct = round(s.level, 1)
        jitter = rng.randint(0, self.interval_ms // 5) if self.interval_ms >= 5 else 0
        traders = int(s.traders)
        return {"symbol": s.symbol, "ts_ms": base_ms + jitter, "provider": s.provider,
                "long_pct": long_pct, "short_pct": round(100.0 - long_pct, 1),
                "total_traders": traders,
                "confidence": round(min(1.0, math.log10(traders) / 5), 3)}


@dataclass
class SyntheticSentimentReport:
    observations: int = 0
    messages: int = 0
    seconds: float = 0.0
    # published items of symbols the configuration does not accept (the worker refuses them)
    refused: dict[str, int] = field(default_factory=dict)


def run_synthetic_sentiment(settings: Settings, symbols: list[str], interval_s: float,
                            duration_s: float | None, count: int | None = None, seed: int = 0,
                            paced: bool = True, live_time: bool = True,
                            frame_size: int | None = None,
                            providers: Sequence[str] = ("synthetic",),
                            should_stop: Callable[[], bool] = lambda: False
                            ) -> SyntheticSentimentReport:
    """Generate observations (same seed, same feed) and publish them framed on the
    sentiment topic. paced: hold to their event time on the wall clock. live_time:
    stamp them from the wall clock instead of the generator's fixed 2024 start."""
    from producers.sentiment_replay import sentiment_publisher

    generator = SyntheticPositioning(symbols, interval_s=interval_s, seed=seed,
                                     start_ms=int(time.time() * 1000) if live_time else None,
                                     providers=providers)
    publisher = sentiment_publisher(settings, frame_size)
    report = SyntheticSentimentReport()
    wall_start = time.monotonic()
    first_ts: int | None = None
    accepted = frozenset(settings.symbols)
    for obs in generator.observations(count=count, duration_s=duration_s):
        if paced:
            first_ts = obs["ts_ms"] if first_ts is None else first_ts
            due = wall_start + (obs["ts_ms"] - first_ts) / 1000
            while (wait := due - time.monotonic()) > 0:
                publisher.tick()
                if should_stop():
                    break
                time.sleep(min(wait, 0.05))
        if should_stop():
            break
        publisher.publish(obs["symbol"], obs)
        report.observations += 1
        count_refused(report.refused, obs["symbol"], accepted)
        if report.observations % 256 == 0:
            publisher.tick()
    publisher.flush()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - wall_start
    return report
