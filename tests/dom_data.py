"""Adversarial order-book snapshots for the DOM tests, deterministic for a seed.

Per symbol: books of 1 to 8 levels a side (the tests set N = 3, so fewer and more
than N), crossed and locked books, one-sided and empty books, zero sizes on a side
and at the top, uneven gaps (several snapshots in one millisecond, pauses of
seconds), late snapshots inside the lateness (some into earlier bars and seconds)
and beyond it. `bad_snapshots` gives one refused snapshot of every kind.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

T0 = 1_709_323_200_000  # 2024-03-01 20:00:00 UTC
KNOWN = ("EUR/USD", "USD/JPY", "XAU/USD")
SPELLING = {"EUR/USD": "eurusd", "USD/JPY": "USD_JPY", "XAU/USD": "XAU/USD"}
LEVEL = {"EUR/USD": (1.08, 0.00001), "USD/JPY": (150.0, 0.001), "XAU/USD": (2030.0, 0.01)}
LATENESS_MS = 60_000


def _book(rng: random.Random, symbol: str, mid_pts: int, kind: str) -> tuple[list, list]:
    base, point = LEVEL[symbol]

    def price(pts: int) -> float:
        return round(base + pts * point, 6)

    def side(best: int, step: int, n: int, zero: bool = False) -> list[list[float]]:
        out, pts = [], best
        for _ in range(n):
            size = 0.0 if zero else float(rng.choice([0, 1, 2, 5, 10, 25, 100]) * 10_000)
            out.append([price(pts), size])
            pts += step * rng.randint(1, 3)
        return out

    nb, na = rng.randint(1, 8), rng.randint(1, 8)
    half = rng.randint(1, 6)
    if kind == "crossed":
        return side(mid_pts + 2, -1, nb), side(mid_pts - 2, 1, na)
    if kind == "locked":
        return side(mid_pts, -1, nb), side(mid_pts, 1, na)
    if kind == "no_bids":
        return [], side(mid_pts + half, 1, na)
    if kind == "no_asks":
        return side(mid_pts - half, -1, nb), []
    if kind == "empty":
        return [], []
    if kind == "zero_bids":
        return side(mid_pts - half, -1, nb, zero=True), side(mid_pts + half, 1, na)
    if kind == "zero_both":
        return side(mid_pts - half, -1, nb, zero=True), side(mid_pts + half, 1, na, zero=True)
    bids, asks = side(mid_pts - half, -1, nb), side(mid_pts + half, 1, na)
    if kind == "zero_top":
        bids[0][1] = 0.0
        asks[0][1] = 0.0
    return bids, asks


KINDS = ("normal",) * 12 + ("crossed", "locked", "no_bids", "no_asks", "empty", "zero_bids",
                            "zero_both", "zero_top")


def adversarial_snapshots(seed: int = 1, per_symbol: int = 300) -> list[dict[str, Any]]:
    """Snapshots of the KNOWN symbols in arrival order, late ones among them."""
    rng = random.Random(seed)
    streams: dict[str, list[dict[str, Any]]] = {}
    for symbol in KNOWN:
        ts = T0 + rng.randint(0, 900)
        mid = 0
        out: list[dict[str, Any]] = []
        for k in range(per_symbol):
            mid += rng.randint(-3, 3)
            if k > 10 and rng.random() < 0.1:
                # late: inside the lateness (often into an earlier second or minute) or
                # beyond it, behind the newest snapshot so far (ts)
                back = (rng.randint(1, LATENESS_MS) if rng.random() < 0.7
                        else LATENESS_MS + rng.randint(1, 5_000))
                snap_ts = ts - back
            else:
                ts += rng.choice([0, 0, 1, 7, 40, 150, 400, 999, 1000, 1500, 3000, 61_000])
                snap_ts = ts
            bids, asks = _book(rng, symbol, mid, rng.choice(KINDS))
            spelled = SPELLING[symbol] if rng.random() < 0.2 else symbol
            out.append({"symbol": spelled, "ts_ms": snap_ts, "provider": "rec", "bids": bids,
                        "asks": asks})
        streams[symbol] = out
    # interleave the symbols, keeping each one's order
    arrival: list[dict[str, Any]] = []
    cursors = dict.fromkeys(KNOWN, 0)
    while cursors:
        symbol = rng.choice(sorted(cursors))
        i = cursors[symbol]
        arrival.append(streams[symbol][i])
        if i + 1 == len(streams[symbol]):
            del cursors[symbol]
        else:
            cursors[symbol] = i + 1
    return arrival


def bad_snapshots(now_ms: int) -> list[tuple[dict[str, Any] | Any, str]]:
    """One refused snapshot of every kind, with its reason (max_levels 10 in the tests)."""
    good_bids = [[1.1, 1.0]]
    good_asks = [[1.2, 1.0]]

    def snap(**kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"symbol": "EUR/USD", "ts_ms": T0 + 5, "provider": "rec",
                                "bids": good_bids, "asks": good_asks}
        base.update(kw)
        return base

    return [
        (snap(bids=[[0, 1.0]]), "invalid_snapshot"),  # zero price
        (snap(asks=[[-1.2, 1.0]]), "invalid_snapshot"),  # negative price
        (snap(asks=[[1e10, 1.0]]), "invalid_snapshot"),  # past the price bound
        (snap(bids=[[1.1, -1.0]]), "invalid_snapshot"),  # negative size
        (snap(bids=[[1.1, 1e13]]), "invalid_snapshot"),  # past the size bound
        (snap(bids=[[1.1]]), "invalid_snapshot"),  # not a pair
        (snap(bids=[["1.1", 1.0]]), "invalid_snapshot"),  # a string price
        (snap(asks=[[True, 1.0]]), "invalid_snapshot"),  # a bool price
        (snap(asks={"1.2": 1}), "invalid_snapshot"),  # not an array
        (snap(ts_ms="soon"), "invalid_snapshot"),
        (snap(ts_ms=-1), "invalid_snapshot"),
        (snap(provider="re\x00c"), "invalid_snapshot"),
        (snap(symbol="EUR$USD"), "bad_symbol"),
        (snap(bids=[[1.1, 1.0], [1.1, 2.0]]), "unordered_book"),  # equal bid prices
        (snap(bids=[[1.0, 1.0], [1.1, 2.0]]), "unordered_book"),  # rising bids
        (snap(asks=[[1.3, 1.0], [1.2, 2.0]]), "unordered_book"),  # falling asks
        (snap(asks=[[1.2 + i / 100, 1.0] for i in range(11)]), "too_many_levels"),
        (snap(ts_ms=now_ms + 86_400_000), "future"),
        (snap(symbol="AUD/CAD"), "unknown_symbol"),
    ]


def write_jsonl(path: Path, snapshots: list[Any], extra_lines: list[bytes] = ()) -> Path:
    """One snapshot per line, then ``extra_lines`` as they are (e.g. not JSON)."""
    with path.open("wb") as fh:
        for snap in snapshots:
            fh.write(orjson.dumps(snap) + b"\n")
        for line in extra_lines:
            fh.write(line + b"\n")
    return path
