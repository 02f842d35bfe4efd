"""Plain reference DOM metrics for checking the pipeline's dom_metrics and market_depth.

Deliberately not streaming and not sharing a line with pipeline/core: it takes every
snapshot in arrival order, decides for each whether it is accepted or dead-lettered
(and why), then builds every bar and every sample from the full list of its accepted
snapshots, sorted by (event time, arrival). Every bar is taken as complete: the tests
compare after the wall clock closed them. Easy to check by hand, not fast.

The contract, written out again here on purpose:

* a snapshot is a dict with symbol (text without control characters, 1-32 characters,
  that normalizes), ts_ms (an integer 0 .. 3000-01-01), provider (absent/None or 1-64
  characters without control characters), bids and asks (lists of [price, size] with
  0 < price <= 1e9 and 0 <= size <= 1e12, at most ``max_levels`` each, bid prices
  strictly falling and ask prices strictly rising);
* per snapshot: mid and spread need both sides; crossed = both sides and best bid >=
  best ask; microprice = (bb * ask_size1 + ba * bid_size1) / (bid_size1 + ask_size1);
  weighted_mid = mean of the two sides' size-weighted prices over their top 5 levels;
  imbalance = (B - A) / (B + A) over the top N levels' sizes, needing both sides; a
  zero denominator gives None;
* a bar of a timeframe: open/high/low/close of mid over the snapshots that have one;
  spread mean/min/max likewise; depth_imbalance: each snapshot stands from its time to
  the next snapshot's time in the bar (sorted by time, then arrival), the last to the
  bar's end, and the mean of the imbalances weighted by how long they stood (None ones
  left out); microprice and weighted_mid: of the last snapshot that has one;
  updates: how many; crossed: how many crossed or locked;
* a sample: the last snapshot (time, then arrival) of each symbol in each sample period.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from tests.reference_candles import normalize_symbol

LAST_TS = 32_503_680_000_000
TOP_PRICE = 1_000_000_000.0
TOP_SIZE = 1_000_000_000_000.0
WMID_LEVELS = 5
UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass
class RefDom:
    bars: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    samples: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in text)


def check(snapshot: Any, max_levels: int) -> str | None:
    """The reason a snapshot is refused, or None (the worker's clock rules aside)."""
    if not isinstance(snapshot, dict):
        return "invalid_snapshot"
    ts = snapshot.get("ts_ms")
    if isinstance(ts, float) and ts == int(ts):
        ts = int(ts)
    if type(ts) is not int or ts < 0 or ts > LAST_TS:
        return "invalid_snapshot"
    provider = snapshot.get("provider")
    if provider is not None and (type(provider) is not str or not 1 <= len(provider) <= 64
                                 or _has_control(provider)):
        return "invalid_snapshot"
    symbol = snapshot.get("symbol")
    if type(symbol) is not str or not 1 <= len(symbol) <= 32 or _has_control(symbol):
        return "invalid_snapshot"
    if normalize_symbol(symbol) is None:
        return "bad_symbol"
    for side in ("bids", "asks"):
        levels = snapshot.get(side)
        if type(levels) is not list:
            return "invalid_snapshot"
        if len(levels) > max_levels:
            return "too_many_levels"
        for level in levels:
            if type(level) is not list or len(level) != 2:
                return "invalid_snapshot"
            price, size = level
            if not _is_number(price) or not 0 < price <= TOP_PRICE:
                return "invalid_snapshot"
            if not _is_number(size) or not 0 <= size <= TOP_SIZE:
                return "invalid_snapshot"
    bid_prices = [p for p, _ in snapshot["bids"]]
    ask_prices = [p for p, _ in snapshot["asks"]]
    for a, b in itertools.pairwise(bid_prices):
        if not b < a:
            return "unordered_book"
    for a, b in itertools.pairwise(ask_prices):
        if not b > a:
            return "unordered_book"
    return None


def measure(bids: list[list[float]], asks: list[list[float]], n: int) -> dict[str, Any]:
    """The metrics of one snapshot, as the contract above says."""
    out: dict[str, Any] = {"mid": None, "spread": None, "crossed": False, "microprice": None,
                           "weighted_mid": None, "imbalance": None}
    if not bids or not asks:
        return out
    bb, bs1 = float(bids[0][0]), float(bids[0][1])
    ba, as1 = float(asks[0][0]), float(asks[0][1])
    out["mid"] = (bb + ba) / 2
    out["spread"] = ba - bb
    out["crossed"] = bb >= ba
    if bs1 + as1 > 0:
        out["microprice"] = (bb * as1 + ba * bs1) / (bs1 + as1)
    sides = []
    for levels in (bids, asks):
        top = levels[:WMID_LEVELS]
        size = math.fsum(float(s) for _, s in top)
        sides.append(math.fsum(float(p) * float(s) for p, s in top) / size if size > 0 else None)
    if sides[0] is not None and sides[1] is not None:
        out["weighted_mid"] = (sides[0] + sides[1]) / 2
    big_b = math.fsum(float(s) for _, s in bids[:n])
    big_a = math.fsum(float(s) for _, s in asks[:n])
    if big_b + big_a > 0:
        out["imbalance"] = (big_b - big_a) / (big_b + big_a)
    return out


def reference_dom(snapshots: list[Any], *, timeframes: tuple[str, ...] = ("1s", "1m"),
                  depth_levels: int = 20, max_levels: int = 100, sample_ms: int = 1000,
                  lateness_ms: int = 300_000, known_symbols: set[str] | None = None,
                  now_ms: int | None = None, future_tolerance_ms: int = 60_000) -> RefDom:
    """Bars, samples and dead letters of ``snapshots`` (arrival order, index = position)."""
    import time

    now = int(time.time() * 1000) if now_ms is None else now_ms
    ref = RefDom()
    newest: dict[str, int] = {}
    accepted: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}  # (ts, arrival, snap)
    for i, snap in enumerate(snapshots):
        reason = check(snap, max_levels)
        if reason is not None:
            ref.dead_letters.append((i, reason))
            continue
        symbol = normalize_symbol(snap["symbol"])
        assert symbol is not None
        ts = int(snap["ts_ms"])
        if known_symbols is not None and symbol not in known_symbols:
            ref.dead_letters.append((i, "unknown_symbol"))
            continue
        if ts > now + future_tolerance_ms:
            ref.dead_letters.append((i, "future"))
            continue
        if symbol in newest and ts < newest[symbol] - lateness_ms:
            ref.dead_letters.append((i, "late"))
            continue
        newest[symbol] = max(newest.get(symbol, ts), ts)
        accepted.setdefault(symbol, []).append((ts, i, snap))

    for symbol, items in accepted.items():
        items.sort(key=lambda t: (t[0], t[1]))
        for tf in timeframes:
            ms = int(tf[:-1]) * UNITS[tf[-1]]
            groups: dict[int, list[tuple[int, int, dict[str, Any]]]] = {}
            for item in items:
                groups.setdefault(item[0] - item[0] % ms, []).append(item)
            for start, group in groups.items():
                ref.bars[(symbol, tf, start)] = _bar(symbol, tf, start, start + ms, group,
                                                     depth_levels)
        periods: dict[int, tuple[int, int, dict[str, Any]]] = {}
        for item in items:
            periods[item[0] - item[0] % sample_ms] = item  # sorted: the last one wins
        for bucket, (ts, _, snap) in periods.items():
            m = measure(snap["bids"], snap["asks"], depth_levels)
            ref.samples[(symbol, bucket)] = {
                "symbol": symbol, "bucket_utc": bucket, "ts_utc": ts,
                "provider": snap.get("provider"),
                "bids": [[float(p), float(s)] for p, s in snap["bids"]],
                "asks": [[float(p), float(s)] for p, s in snap["asks"]],
                "mid_price": m["mid"], "spread": m["spread"], "imbalance": m["imbalance"],
            }
    return ref


def _bar(symbol: str, tf: str, start: int, end: int,
         group: list[tuple[int, int, dict[str, Any]]], n: int) -> dict[str, Any]:
    metrics = [(ts, measure(s["bids"], s["asks"], n)) for ts, _, s in group]
    mids = [m["mid"] for _, m in metrics if m["mid"] is not None]
    spreads = [m["spread"] for _, m in metrics if m["spread"] is not None]
    micro = [m["microprice"] for _, m in metrics if m["microprice"] is not None]
    wmid = [m["weighted_mid"] for _, m in metrics if m["weighted_mid"] is not None]
    weighted = 0.0
    weight = 0
    for k, (ts, m) in enumerate(metrics):
        until = metrics[k + 1][0] if k + 1 < len(metrics) else end
        if m["imbalance"] is not None:
            weighted += m["imbalance"] * (until - ts)
            weight += until - ts
    providers = [s.get("provider") for _, _, s in group if s.get("provider") is not None]
    return {
        "symbol": symbol, "timeframe": tf, "ts_utc": start,
        "open": mids[0] if mids else None, "high": max(mids) if mids else None,
        "low": min(mids) if mids else None, "close": mids[-1] if mids else None,
        "spread_mean": math.fsum(spreads) / len(spreads) if spreads else None,
        "spread_min": min(spreads) if spreads else None,
        "spread_max": max(spreads) if spreads else None,
        "depth_imbalance": weighted / weight if weight else None,
        "depth_levels": n,
        "microprice": micro[-1] if micro else None,
        "weighted_mid": wmid[-1] if wmid else None,
        "updates": len(group), "crossed": sum(1 for _, m in metrics if m["crossed"]),
        "complete": True, "_providers": providers,
    }


BAR_FIELDS = ("open", "high", "low", "close", "spread_mean", "spread_min", "spread_max",
              "depth_imbalance", "depth_levels", "microprice", "weighted_mid", "updates",
              "crossed", "complete")
SAMPLE_FIELDS = ("ts_utc", "provider", "bids", "asks", "mid_price", "spread", "imbalance")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return False
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def compare(expected: dict[Any, dict[str, Any]], actual: dict[Any, dict[str, Any]],
            fields: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two mappings of rows by key."""
    out = []
    for key in sorted(set(expected) | set(actual), key=repr):
        if key not in actual:
            out.append(f"{key}: missing")
            continue
        if key not in expected:
            out.append(f"{key}: unexpected {actual[key]}")
            continue
        for name in fields:
            if not _same(expected[key][name], actual[key][name]):
                out.append(f"{key} {name}: expected {expected[key][name]!r}, "
                           f"got {actual[key][name]!r}")
    return out
