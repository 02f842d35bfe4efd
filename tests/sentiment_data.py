"""Adversarial positioning observations for the sentiment tests, deterministic for a seed.

Series (symbol, provider): EUR/USD from two providers, USD/JPY and XAU/USD from one.
Uneven spacing (several in one millisecond, seconds, minutes, gaps longer than an
hour), levels that cross every threshold, sums off 100 inside the tolerance, absent
optional fields, spelling variants of the symbol, late observations inside the
lateness and beyond it. `bad_observations` gives one refused observation of every
kind the CSV can carry; `bad_items` adds the ones only JSON can.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

T0 = 1_709_323_200_000  # 2024-03-01 20:00:00 UTC
KNOWN = ("EUR/USD", "USD/JPY", "XAU/USD")
SERIES = (("EUR/USD", "myfxbook"), ("EUR/USD", "ig"), ("USD/JPY", "myfxbook"),
          ("XAU/USD", "ig"))
SPELLING = {"EUR/USD": "eurusd", "USD/JPY": "USD_JPY", "XAU/USD": "XAUUSD"}
LATENESS_MS = 600_000
STEPS_MS = (0, 1_000, 7_000, 30_000, 30_000, 30_000, 60_000, 90_000, 240_000, 900_000,
            3_700_000, 7_200_000)
CSV_HEADER = ("symbol", "ts_ms", "provider", "long_pct", "short_pct", "total_traders",
              "confidence")


def adversarial_observations(seed: int = 1, per_series: int = 200) -> list[dict[str, Any]]:
    """Observations of SERIES in arrival order, late ones among them."""
    rng = random.Random(seed)
    streams: list[list[dict[str, Any]]] = []
    for symbol, provider in SERIES:
        ts = T0 + rng.randint(0, 50_000)
        level = rng.uniform(20, 80)
        out: list[dict[str, Any]] = []
        for k in range(per_series):
            level = min(99.0, max(1.0, level + rng.gauss(0, 6)))
            if k > 5 and rng.random() < 0.12:
                back = (rng.randint(1, LATENESS_MS) if rng.random() < 0.7
                        else LATENESS_MS + rng.randint(1, 60_000))
                obs_ts = ts - back
            else:
                ts += rng.choice(STEPS_MS)
                obs_ts = ts
            long_pct = round(level, 1)
            short_pct = round(100 - long_pct + rng.choice([0, 0, 0, 0.3, -0.5, 1.0]), 1)
            obs: dict[str, Any] = {
                "symbol": SPELLING[symbol] if rng.random() < 0.2 else symbol, "ts_ms": obs_ts,
                "provider": provider, "long_pct": long_pct, "short_pct": short_pct}
            if rng.random() < 0.7:
                obs["total_traders"] = rng.randint(0, 200_000)
            if rng.random() < 0.5:
                obs["confidence"] = round(rng.random(), 3)
            out.append(obs)
        streams.append(out)
    arrival: list[dict[str, Any]] = []
    cursors = {i: 0 for i in range(len(streams))}
    while cursors:
        i = rng.choice(sorted(cursors))
        arrival.append(streams[i][cursors[i]])
        cursors[i] += 1
        if cursors[i] == len(streams[i]):
            del cursors[i]
    return arrival


def bad_observations(now_ms: int) -> list[tuple[dict[str, Any], str]]:
    """One refused observation of every kind a CSV row can carry, with its reason."""

    def obs(**kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"symbol": "EUR/USD", "ts_ms": T0 + 5, "provider": "myfxbook",
                                "long_pct": 60.0, "short_pct": 40.0}
        base.update(kw)
        return {k: v for k, v in base.items() if v is not None}

    return [
        (obs(long_pct=101.0, short_pct=-1.0), "pct_out_of_range"),
        (obs(long_pct=40.0, short_pct=100.5), "pct_out_of_range"),
        (obs(long_pct=60.0, short_pct=30.0), "pct_sum"),
        (obs(long_pct=50.6, short_pct=50.6), "pct_sum"),
        (obs(provider=None), "invalid_observation"),
        (obs(ts_ms=32_503_680_000_001), "invalid_observation"),
        (obs(total_traders=-5), "invalid_observation"),
        (obs(confidence=1.5), "invalid_observation"),
        (obs(symbol="EUR$USD"), "bad_symbol"),
        (obs(ts_ms=now_ms + 86_400_000), "future"),
        (obs(symbol="AUD/CAD"), "unknown_symbol"),
    ]


def bad_items() -> list[tuple[Any, str]]:
    """Refused observations only JSON can carry (types, shapes, control characters)."""
    good: dict[str, Any] = {"symbol": "EUR/USD", "ts_ms": T0 + 7, "provider": "myfxbook",
                            "long_pct": 55.0, "short_pct": 45.0}
    return [
        ({**good, "long_pct": "55"}, "invalid_observation"),
        ({**good, "short_pct": True}, "invalid_observation"),
        ({**good, "ts_ms": "soon"}, "invalid_observation"),
        ({**good, "ts_ms": -1}, "invalid_observation"),
        ({**good, "provider": "my\x00fxbook"}, "invalid_observation"),
        ({**good, "provider": ""}, "invalid_observation"),
        ({**good, "total_traders": 1.5}, "invalid_observation"),
        ({**good, "symbol": "EUR/USD\x85"}, "invalid_observation"),
        ([55.0, 45.0], "invalid_observation"),
    ]


def write_csv(path: Path, observations: list[dict[str, Any]],
              extra_lines: tuple[str, ...] = ()) -> Path:
    """The replay CSV: empty fields for absent values; ``extra_lines`` appended raw."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        for obs in observations:
            writer.writerow(["" if obs.get(c) is None else repr(obs[c])
                             if isinstance(obs[c], float) else obs[c] for c in CSV_HEADER])
        for line in extra_lines:
            fh.write(line + "\n")
    return path
