"""The pure parts of backfill: which stretches to fetch, and which bars a stretch settles.

Intervals are [start, end) in epoch ms. History is fetched in steps on a grid of
``chunk_ms`` (aligned to the epoch), so runs with other ranges meet the same step
boundaries. The candle fold (pipeline.core.candles) carries its state from one step to
the next; a bar is written once the fetched history covers it whole: it starts at or
after the start of the fold's contiguous history (``coverage_from``) and ends at or
before the end of the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.core.timeframes import Timeframe

Interval = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals joined; empty ones dropped."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract_intervals(wanted: Iterable[Interval], done: Iterable[Interval]) -> list[Interval]:
    """What of ``wanted`` no interval of ``done`` covers."""
    out: list[Interval] = []
    done_sorted = merge_intervals(done)
    for start, end in merge_intervals(wanted):
        cursor = start
        for d_start, d_end in done_sorted:
            if d_end <= cursor or d_start >= end:
                continue
            if d_start > cursor:
                out.append((cursor, d_start))
            cursor = max(cursor, d_end)
            if cursor >= end:
                break
        if cursor < end:
            out.append((cursor, end))
    return out


def chunk_interval(interval: Interval, chunk_ms: int) -> list[Interval]:
    """``interval`` cut at the multiples of ``chunk_ms``."""
    start, end = interval
    out: list[Interval] = []
    while start < end:
        step_end = min(end, (start // chunk_ms + 1) * chunk_ms)
        out.append((start, step_end))
        start = step_end
    return out


def settled_bars(candles: Iterable[dict[str, Any]], timeframes: Sequence[Timeframe],
                 coverage_from: int, step_from: int, step_to: int) -> list[dict[str, Any]]:
    """The newest version of each bar that the history up to ``step_to`` covers whole and
    that ends inside this step (bars ending earlier were settled by an earlier step),
    marked complete: history is final."""
    duration = {tf.name: tf.ms for tf in timeframes}
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for candle in candles:
        ms = duration.get(candle.get("timeframe", ""))
        if ms is None:  # not a candle (an order-flow record) or another timeframe
            continue
        start = candle["ts_utc"]
        if start >= coverage_from and step_from < start + ms <= step_to:
            newest[(candle["timeframe"], start)] = {**candle, "complete": True}
    return [newest[k] for k in sorted(newest, key=lambda k: (duration[k[0]], k[1]))]


def bars_from_minutes(minutes: Sequence[dict[str, Any]], symbol: str,
                      timeframes: Sequence[Timeframe], day_start_ms: int, step_from: int,
                      step_to: int, provider: str) -> list[dict[str, Any]]:
    """Bars of every timeframe built from one-minute bars (oldest first) that lie wholly in
    [step_from, step_to): open of the first minute, close of the last, extremes, and the
    minutes' tick volumes summed. ``minutes`` are dicts with ts_ms, open, high, low, close,
    volume (ticks)."""
    out: list[dict[str, Any]] = []
    for tf in timeframes:
        bars: dict[int, dict[str, Any]] = {}
        for m in minutes:
            start = tf.start_of(m["ts_ms"], day_start_ms)
            if start < step_from or start + tf.ms > step_to:
                continue
            bar = bars.get(start)
            if bar is None:
                bars[start] = {
                    "v": 1, "symbol": symbol, "timeframe": tf.name, "ts_utc": start,
                    "open": m["open"], "high": m["high"], "low": m["low"],
                    "close": m["close"], "tick_volume": int(m["volume"]), "volume": 0.0,
                    "complete": True, "provider_source": provider}
                continue
            bar["high"] = max(bar["high"], m["high"])
            bar["low"] = min(bar["low"], m["low"])
            bar["close"] = m["close"]
            bar["tick_volume"] += int(m["volume"])
        out.extend(bars[s] for s in sorted(bars))
    return out
