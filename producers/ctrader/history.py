"""Historical requests on an authorised connection: tick data and trendbars, paged.

Tick data comes newest first, at most one page per answer, with ``hasMore`` when older
ticks remain in the range; the next request ends (``toTimestamp``) at the oldest
timestamp received. Requests go through the connection's historical-request pacing.
"""

from __future__ import annotations

from producers.ctrader.connection import Connection
from producers.ctrader.mapping import Bar, SymbolInfo, decode_tick_data, decode_trendbar
from producers.ctrader.messages import model, oa


async def tick_data(conn: Connection, account_id: int, info: SymbolInfo, side: str,
                    from_ms: int, to_ms: int, max_pages: int = 10_000
                    ) -> list[tuple[int, float]]:
    """(ts_ms, price) of one side ('bid' or 'ask') in [from_ms, to_ms), oldest first."""
    quote_type = model.BID if side == "bid" else model.ASK
    pages: list[list[tuple[int, float]]] = []
    to = to_ms
    for _ in range(max_pages):
        res = await conn.request(oa.ProtoOAGetTickDataReq(
            ctidTraderAccountId=account_id, symbolId=info.symbol_id, type=quote_type,
            fromTimestamp=from_ms, toTimestamp=to))
        page = decode_tick_data([(t.timestamp, t.tick) for t in res.tickData], info.digits)
        pages.append(page)
        if not res.hasMore or not page:
            break
        to = page[0][0]
    else:
        raise RuntimeError(f"tick data of {info.symbol} still has more after {max_pages} pages")
    return [tick for page in reversed(pages) for tick in page]


async def trendbars(conn: Connection, account_id: int, info: SymbolInfo, period: str,
                    from_ms: int, to_ms: int, count: int | None = None) -> list[Bar]:
    """The bars of ``period`` (``M1`` ... ``MN1``) opening in [from_ms, to_ms), oldest
    first; with ``count``, the newest ``count`` of them."""
    req = oa.ProtoOAGetTrendbarsReq(
        ctidTraderAccountId=account_id, symbolId=info.symbol_id,
        period=model.ProtoOATrendbarPeriod.Value(period), fromTimestamp=from_ms,
        toTimestamp=to_ms)
    if count is not None:
        req.count = count
    res = await conn.request(req)
    return [decode_trendbar(b.low, b.deltaOpen, b.deltaHigh, b.deltaClose,
                            b.utcTimestampInMinutes, b.volume, info.digits)
            for b in res.trendbar]
