"""Plain reference sentiment metrics for checking the pipeline's sentiment_metrics and
sentiment_data.

Deliberately not streaming and not sharing a line with pipeline/core: it takes every
observation in arrival order, decides for each whether it is accepted or
dead-lettered (and why), then computes every metric from the full, final list of
its symbol's and provider's accepted observations. Easy to check by hand, not fast.

The contract, written out again here on purpose:

* an observation is a dict with symbol (1-32 characters without control characters,
  that normalizes), ts_ms (an integer 0 .. 3000-01-01), provider (1-64 characters
  without control characters), long_pct and short_pct (numbers 0 .. 100, their sum
  at most ``tolerance`` from 100), total_traders (absent/None or an integer
  0 .. 10**12) and confidence (absent/None or a number 0 .. 1);
* it is late when more than the lateness behind the newest accepted observation of
  its symbol and provider, in the future when more than the tolerance ahead of now;
* of several accepted observations of one symbol and provider at one millisecond,
  the last to arrive counts;
* the value at time x is the long_pct of the newest observation at or before x;
* the mean over a window W at an observation time t: the integral of that value over
  (t - W, t] divided by W, when some observation is at or before t - W; otherwise
  the integral from the first observation to t divided by that span (the window is
  not full), and at the first observation itself its own long_pct;
* change_1h: long_pct at t minus the value at t - 1 h, None when nothing is there;
* contrarian signal -1 above 70, +1 below 30, else 0; strength -(L - 50) / 50 above
  70, (50 - L) / 50 below 30, else 0; ratio (L - 50) / 50; confidence |L - 50| / 50;
  label bullish above 60, bearish below 40, else neutral.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from tests.reference_candles import normalize_symbol

LAST_TS = 32_503_680_000_000
HOUR = 60 * 60 * 1000
WINDOW_NAMES = {"5m": 5 * 60 * 1000, "15m": 15 * 60 * 1000, "1h": HOUR}

METRIC_FIELDS = ("long_pct", "ma_5m", "ma_5m_full", "ma_15m", "ma_15m_full", "ma_1h",
                 "ma_1h_full", "change_1h", "contrarian_signal", "contrarian_strength", "ratio",
                 "confidence", "label")
DATA_FIELDS = ("long_pct", "short_pct", "total_traders", "confidence")


@dataclass
class RefSentiment:
    metrics: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)


def _control(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in text)


def _num(x: Any) -> bool:
    return type(x) in (int, float)


def check(obs: Any, tolerance: float = 1.0) -> str | None:
    """Why an observation is refused, or None (the clock and lateness rules aside)."""
    if not isinstance(obs, dict):
        return "invalid_observation"
    ts = obs.get("ts_ms")
    if type(ts) is float and ts == int(ts):
        ts = int(ts)
    if type(ts) is not int or not 0 <= ts <= LAST_TS:
        return "invalid_observation"
    provider = obs.get("provider")
    if type(provider) is not str or not 1 <= len(provider) <= 64 or _control(provider):
        return "invalid_observation"
    symbol = obs.get("symbol")
    if type(symbol) is not str or not 1 <= len(symbol) <= 32 or _control(symbol):
        return "invalid_observation"
    if normalize_symbol(symbol) is None:
        return "bad_symbol"
    for name in ("long_pct", "short_pct"):
        if not _num(obs.get(name)):
            return "invalid_observation"
        if not (obs[name] >= 0 and obs[name] <= 100):
            return "pct_out_of_range"
    if abs(obs["long_pct"] + obs["short_pct"] - 100) > tolerance:
        return "pct_sum"
    traders = obs.get("total_traders")
    if traders is not None:
        if type(traders) is float and traders == int(traders):
            traders = int(traders)
        if type(traders) is not int or traders < 0 or traders > 10**12:
            return "invalid_observation"
    confidence = obs.get("confidence")
    if confidence is not None and (not _num(confidence) or not 0 <= confidence <= 1):
        return "invalid_observation"
    return None


def value_at(points: list[tuple[int, float]], x: int) -> float | None:
    """The long_pct standing at x: the newest observation at or before x."""
    best = None
    for ts, value in points:
        if ts <= x:
            best = value
    return best


def window_mean(points: list[tuple[int, float]], t: int, width: int) -> tuple[float, bool]:
    lo = t - width
    full = any(ts <= lo for ts, _ in points)
    begin = lo if full else points[0][0]
    if begin == t:
        return value_at(points, t), False  # type: ignore[return-value]
    cuts = [begin] + [ts for ts, _ in points if begin < ts < t] + [t]
    pieces = []
    for a, b in itertools.pairwise(cuts):
        pieces.append(value_at(points, a) * (b - a))  # type: ignore[operator]
    return math.fsum(pieces) / (t - begin), full


def metrics_at(points: list[tuple[int, float]], t: int) -> dict[str, Any]:
    level = value_at(points, t)
    assert level is not None
    out: dict[str, Any] = {"long_pct": level}
    for name, width in WINDOW_NAMES.items():
        mean, full = window_mean(points, t, width)
        out[f"ma_{name}"] = mean
        out[f"ma_{name}_full"] = full
    before = value_at(points, t - HOUR)
    out["change_1h"] = None if before is None else level - before
    if level > 70:
        out["contrarian_signal"], out["contrarian_strength"] = -1, -(level - 50) / 50
    elif level < 30:
        out["contrarian_signal"], out["contrarian_strength"] = 1, (50 - level) / 50
    else:
        out["contrarian_signal"], out["contrarian_strength"] = 0, 0.0
    out["ratio"] = (level - 50) / 50
    out["confidence"] = abs(level - 50) / 50
    out["label"] = "bullish" if level > 60 else "bearish" if level < 40 else "neutral"
    return out


def reference_sentiment(observations: list[Any], *, lateness_ms: int = 300_000,
                        known_symbols: set[str] | None = None, now_ms: int | None = None,
                        future_tolerance_ms: int = 60_000, tolerance: float = 1.0
                        ) -> RefSentiment:
    """Metrics, raw rows and dead letters of ``observations`` (arrival order)."""
    import time

    now = int(time.time() * 1000) if now_ms is None else now_ms
    ref = RefSentiment()
    newest: dict[tuple[str, str], int] = {}
    kept: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for index, obs in enumerate(observations):
        reason = check(obs, tolerance)
        if reason is None:
            symbol = normalize_symbol(obs["symbol"])
            assert symbol is not None
            ts = int(obs["ts_ms"])
            series = (symbol, obs["provider"])
            if known_symbols is not None and symbol not in known_symbols:
                reason = "unknown_symbol"
            elif ts > now + future_tolerance_ms:
                reason = "future"
            elif series in newest and ts < newest[series] - lateness_ms:
                reason = "late"
        if reason is not None:
            ref.dead_letters.append((index, reason))
            continue
        newest[series] = max(newest.get(series, ts), ts)
        kept.setdefault(series, {})[ts] = obs  # a later arrival at the same time replaces
    for (symbol, provider), by_ts in kept.items():
        points = sorted((ts, float(o["long_pct"])) for ts, o in by_ts.items())
        for ts, obs in by_ts.items():
            ref.metrics[(symbol, provider, ts)] = metrics_at(points, ts)
            traders = obs.get("total_traders")
            confidence = obs.get("confidence")
            ref.data[(symbol, provider, ts)] = {
                "long_pct": float(obs["long_pct"]), "short_pct": float(obs["short_pct"]),
                "total_traders": None if traders is None else int(traders),
                "confidence": None if confidence is None else float(confidence)}
    return ref


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
            return False
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def compare(expected: dict[Any, dict[str, Any]], actual: dict[Any, dict[str, Any]],
            fields: tuple[str, ...]) -> list[str]:
    """Every difference between the reference's rows and the pipeline's, by key."""
    out = [f"missing {k}" for k in expected if k not in actual]
    out += [f"unexpected {k}" for k in actual if k not in expected]
    for k, exp in expected.items():
        got = actual.get(k)
        if got is None:
            continue
        for f in fields:
            if not same(exp[f], got[f]):
                out.append(f"{k} {f}: expected {exp[f]!r}, got {got[f]!r}")
    return out


def reference_orderflow(ticks: list[Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """The orderflow observations of accepted ticks (tests.reference_candles.RefTick, in
    arrival order): per symbol and minute of event time, the ticks priced above the
    symbol's previous accepted tick (up) and below it (down); for every minute with
    some, (symbol, the minute's end) -> (100 * up / (up + down), 100 * down / (up + down))."""
    previous: dict[str, float] = {}
    counts: dict[tuple[str, int], list[int]] = {}
    for tick in ticks:
        before = previous.get(tick.symbol)
        previous[tick.symbol] = tick.price
        if before is None or tick.price == before:
            continue
        minute_end = tick.ts_ms - tick.ts_ms % 60_000 + 60_000
        up_down = counts.setdefault((tick.symbol, minute_end), [0, 0])
        if tick.price > before:
            up_down[0] += 1
        else:
            up_down[1] += 1
    return {key: (100 * up / (up + down), 100 * down / (up + down))
            for key, (up, down) in counts.items()}


def reference_orderbook(snapshots: list[Any], refused: set[int], levels: int
                        ) -> dict[tuple[str, int], tuple[float, float]]:
    """The orderbook observations of the snapshots not ``refused`` (input indexes, as
    tests.reference_dom says): per symbol and minute, each snapshot's bid and ask depth
    over the top ``levels`` levels stands from its time to the next one's in the minute
    (of several at one millisecond the last to arrive), the last to the minute's end;
    (symbol, the minute's end) -> (100 * B / (B + A), 100 * A / (B + A)) of the
    depth-times-duration sums B and A, when B + A > 0."""
    by_minute: dict[tuple[str, int], dict[int, tuple[float, float]]] = {}
    for index, snap in enumerate(snapshots):
        if index in refused:
            continue
        symbol = normalize_symbol(snap["symbol"])
        assert symbol is not None
        ts = int(snap["ts_ms"])
        bid = math.fsum(float(size) for _, size in snap["bids"][:levels])
        ask = math.fsum(float(size) for _, size in snap["asks"][:levels])
        by_minute.setdefault((symbol, ts - ts % 60_000), {})[ts] = (bid, ask)  # later wins
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for (symbol, start), points in by_minute.items():
        times = sorted(points)
        ends = [*times[1:], start + 60_000]
        big_b = math.fsum(points[t][0] * (end - t) for t, end in zip(times, ends, strict=True))
        big_a = math.fsum(points[t][1] * (end - t) for t, end in zip(times, ends, strict=True))
        if big_b + big_a > 0:
            out[(symbol, start + 60_000)] = (100 * big_b / (big_b + big_a),
                                             100 * big_a / (big_b + big_a))
    return out
