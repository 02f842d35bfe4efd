"""The depth book of one symbol, kept from ProtoOADepthEvent, and snapshot throttling.

A depth event adds or replaces quotes (``newQuotes``: id, size, and a bid or an ask
price) and removes quotes by id (``deletedQuotes``). Levels in a snapshot are prices
with the sizes of every quote at that price summed, best first, as
``[[price, size], ...]``: the form of ``schemas/dom_snapshot.v1.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from producers.ctrader.mapping import PROVIDER, to_price, to_size

Quote = tuple[int, int, int | None, int | None]  # id, size (cents), bid raw, ask raw


class DepthBook:
    """Quotes by id for one symbol."""

    __slots__ = ("_asks", "_bids", "digits")

    def __init__(self, digits: int) -> None:
        self.digits = digits
        self._bids: dict[int, tuple[int, int]] = {}  # id -> (raw price, size cents)
        self._asks: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def clear(self) -> None:
        """Forget every quote (after a reconnect the server sends the book afresh)."""
        self._bids.clear()
        self._asks.clear()

    def apply(self, new_quotes: Iterable[Quote], deleted_ids: Iterable[int]) -> None:
        """Deletions first, then additions, so an id both deleted and re-added stays."""
        for quote_id in deleted_ids:
            self._bids.pop(quote_id, None)
            self._asks.pop(quote_id, None)
        for quote_id, size, bid, ask in new_quotes:
            self._bids.pop(quote_id, None)
            self._asks.pop(quote_id, None)
            if bid is not None and bid > 0:
                self._bids[quote_id] = (bid, size)
            elif ask is not None and ask > 0:
                self._asks[quote_id] = (ask, size)

    def levels(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        """The top ``depth`` price levels of each side, best first."""
        return (self._side(self._bids, depth, best_high=True),
                self._side(self._asks, depth, best_high=False))

    def _side(self, quotes: dict[int, tuple[int, int]], depth: int,
              best_high: bool) -> list[list[float]]:
        sizes: dict[int, int] = {}
        for raw, size in quotes.values():
            sizes[raw] = sizes.get(raw, 0) + size
        prices = sorted(sizes, reverse=best_high)[:depth]
        return [[to_price(raw, self.digits), to_size(sizes[raw])] for raw in prices]

    def snapshot(self, symbol: str, ts_ms: int, depth: int,
                 provider: str = PROVIDER) -> dict[str, Any]:
        bids, asks = self.levels(depth)
        return {"symbol": symbol, "ts_ms": int(ts_ms), "provider": provider, "bids": bids,
                "asks": asks}


def depth_event_quotes(event: Any) -> tuple[list[Quote], list[int]]:
    """A ProtoOADepthEvent's new quotes and deleted ids as plain tuples."""
    quotes = [(q.id, q.size, q.bid if q.HasField("bid") else None,
               q.ask if q.HasField("ask") else None) for q in event.newQuotes]
    return quotes, list(event.deletedQuotes)


class SnapshotThrottle:
    """At most one snapshot per symbol per ``interval_ms``; a change inside the interval is
    not dropped but sent when the interval ends, so the last state always goes out."""

    __slots__ = ("_dirty", "_interval", "_last")

    def __init__(self, interval_ms: float) -> None:
        self._interval = interval_ms
        self._last: dict[str, float] = {}
        self._dirty: set[str] = set()

    def changed(self, symbol: str, now_ms: float) -> bool:
        """Record a change of ``symbol``'s book; True when a snapshot may go out now."""
        last = self._last.get(symbol)
        if last is None or now_ms - last >= self._interval:
            self._last[symbol] = now_ms
            self._dirty.discard(symbol)
            return True
        self._dirty.add(symbol)
        return False

    def due(self, now_ms: float) -> list[str]:
        """Symbols whose held-back change may go out now (marked as sent)."""
        out = [s for s in self._dirty if now_ms - self._last[s] >= self._interval]
        for s in out:
            self._dirty.discard(s)
            self._last[s] = now_ms
        return sorted(out)

    def forget(self, symbol: str) -> None:
        self._last.pop(symbol, None)
        self._dirty.discard(symbol)
