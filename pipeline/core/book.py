"""What a valid order-book snapshot is, and the metrics of one snapshot.

The one definition every stage uses (the DOM replay, the DOM fold, and
schemas/dom_snapshot.v2.json, which the tests hold to it). A snapshot is a JSON
object:

- symbol, ts_ms, provider: the rules of a tick (pipeline.core.ticks): ts_ms an
  integer from 0 to the year 3000 (and, in the worker, at most the future
  tolerance ahead of its clock), provider absent or 1 to 64 characters, no
  control characters in symbol or provider;
- bids, asks: arrays of [price, size] levels, best first, each side at most
  ``max_levels`` long (reason ``too_many_levels``); a price is a number with
  0 < price <= 1e9 and a size a number with 0 <= size <= 1e12 (sizes in units,
  not cents), so nothing infinite or NaN gets in (reason ``invalid_snapshot``);
- bid prices strictly descending and ask prices strictly ascending (reason
  ``unordered_book``). A crossed or locked book (best bid >= best ask) is valid:
  it is kept and counted, never dropped. A side may be empty.

Integers become floats, so an accepted snapshot holds plain floats only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.core.ticks import (
    MAX_PRICE,
    MAX_PROVIDER_LENGTH,
    MAX_TS_MS,
    MAX_VOLUME,
    MIN_TS_MS,
    valid_price,
    valid_provider,
    valid_text,
    valid_ts,
    valid_volume,
)
from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol

DEFAULT_MAX_LEVELS = 100
DEFAULT_DEPTH_LEVELS = 20
WEIGHTED_MID_LEVELS = 5  # levels per side in weighted_mid

Level = list[float]  # [price, size]


class SnapshotError(ValueError):
    """A snapshot that cannot be used. ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Snapshot(NamedTuple):
    symbol: str  # canonical
    ts_ms: int
    provider: str | None
    bids: list[Level]  # best (highest) first
    asks: list[Level]  # best (lowest) first


def parse_snapshot(obj: Any, max_levels: int = DEFAULT_MAX_LEVELS) -> Snapshot:
    """The snapshot with its canonical symbol and float levels, or raise SnapshotError.

    The future rule needs the wall clock and is the fold's."""
    if type(obj) is not dict:
        raise SnapshotError("invalid_snapshot",
                            f"a snapshot must be a JSON object, got {type(obj).__name__}")
    ts = obj.get("ts_ms")
    if not valid_ts(ts):
        raise SnapshotError("invalid_snapshot", f"ts_ms must be an integer of epoch "
                            f"milliseconds from {MIN_TS_MS} to {MAX_TS_MS}, got {ts!r:.100}")
    provider = obj.get("provider")
    if provider is not None and not valid_provider(provider):
        raise SnapshotError("invalid_snapshot", f"provider must be 1 to {MAX_PROVIDER_LENGTH} "
                            f"characters without control characters, got {provider!r:.100}")
    raw_symbol = obj.get("symbol")
    if not valid_text(raw_symbol, MAX_SYMBOL_LENGTH):
        raise SnapshotError("invalid_snapshot", f"symbol must be 1 to {MAX_SYMBOL_LENGTH} "
                            f"characters without control characters, got {raw_symbol!r:.100}")
    try:
        symbol = normalize_symbol(raw_symbol)
    except SymbolError as exc:
        raise SnapshotError("bad_symbol", str(exc)) from None
    bids = _side(obj.get("bids"), "bids", max_levels)
    asks = _side(obj.get("asks"), "asks", max_levels)
    for i in range(1, len(bids)):
        if not bids[i][0] < bids[i - 1][0]:
            raise SnapshotError("unordered_book", f"bid prices must be strictly descending: "
                                f"level {i} has {bids[i][0]!r} after {bids[i - 1][0]!r}")
    for i in range(1, len(asks)):
        if not asks[i][0] > asks[i - 1][0]:
            raise SnapshotError("unordered_book", f"ask prices must be strictly ascending: "
                                f"level {i} has {asks[i][0]!r} after {asks[i - 1][0]!r}")
    return Snapshot(symbol, int(ts), provider, bids, asks)


def _side(levels: Any, name: str, max_levels: int) -> list[Level]:
    if type(levels) is not list:
        raise SnapshotError("invalid_snapshot", f"{name} must be an array of [price, size] "
                            f"levels, got {type(levels).__name__}")
    if len(levels) > max_levels:
        raise SnapshotError("too_many_levels", f"{name} has {len(levels)} levels, more than "
                            f"the {max_levels} allowed (FXSTREAM_DOM_MAX_LEVELS)")
    out: list[Level] = []
    for i, level in enumerate(levels):
        if type(level) is not list or len(level) != 2:
            raise SnapshotError("invalid_snapshot", f"{name}[{i}] must be a [price, size] "
                                f"pair, got {level!r:.100}")
        price, size = level
        if not valid_price(price):
            raise SnapshotError("invalid_snapshot", f"{name}[{i}] price must be a number > 0 "
                                f"and <= {MAX_PRICE:g}, got {price!r:.100}")
        if not valid_volume(size):
            raise SnapshotError("invalid_snapshot", f"{name}[{i}] size must be a number >= 0 "
                                f"and <= {MAX_VOLUME:g}, got {size!r:.100}")
        out.append([float(price), float(size) or 0.0])  # -0.0 becomes 0.0
    return out


class BookMetrics(NamedTuple):
    """The metrics of one snapshot; None where a side they need is empty or a
    denominator is zero (never 0 in their place)."""

    best_bid: float | None
    best_ask: float | None
    mid: float | None  # (best_bid + best_ask) / 2
    spread: float | None  # best_ask - best_bid, negative when crossed
    crossed: bool  # both sides present and best_bid >= best_ask (crossed or locked)
    microprice: float | None
    weighted_mid: float | None
    bid_depth: float  # sizes of the top N bid levels present
    ask_depth: float
    imbalance: float | None  # (bid_depth - ask_depth) / (bid_depth + ask_depth)
    depth_ratio: float | None  # all bid sizes / all ask sizes
    bid_levels: int
    ask_levels: int


def book_metrics(bids: list[Level], asks: list[Level],
                 depth_levels: int = DEFAULT_DEPTH_LEVELS) -> BookMetrics:
    """The metrics of a valid snapshot's two sides (see the README's DOM metrics)."""
    bid_depth = _size(bids, depth_levels)
    ask_depth = _size(asks, depth_levels)
    if not bids or not asks:
        return BookMetrics(bids[0][0] if bids else None, asks[0][0] if asks else None,
                           None, None, False, None, None, bid_depth, ask_depth, None, None,
                           len(bids), len(asks))
    best_bid, bid1 = bids[0]
    best_ask, ask1 = asks[0]
    top = bid1 + ask1
    microprice = (best_bid * ask1 + best_ask * bid1) / top if top > 0 else None
    vwap_bid = _vwap(bids, WEIGHTED_MID_LEVELS)
    vwap_ask = _vwap(asks, WEIGHTED_MID_LEVELS)
    weighted_mid = (None if vwap_bid is None or vwap_ask is None
                    else (vwap_bid + vwap_ask) / 2)
    depth = bid_depth + ask_depth
    imbalance = (bid_depth - ask_depth) / depth if depth > 0 else None
    all_asks = _size(asks, len(asks))
    depth_ratio = _size(bids, len(bids)) / all_asks if all_asks > 0 else None
    return BookMetrics(best_bid, best_ask, (best_bid + best_ask) / 2, best_ask - best_bid,
                       best_bid >= best_ask, microprice, weighted_mid, bid_depth, ask_depth,
                       imbalance, depth_ratio, len(bids), len(asks))


def _size(levels: list[Level], n: int) -> float:
    total = 0.0
    for _, size in levels[:n]:
        total += size
    return total


def _vwap(levels: list[Level], n: int) -> float | None:
    """Size-weighted mean price of the top ``n`` levels; None when their sizes sum to 0."""
    size = value = 0.0
    for price, s in levels[:n]:
        size += s
        value += price * s
    return value / size if size > 0 else None
