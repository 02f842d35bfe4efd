"""`fxstream backfill`: missing bars from cTrader history, folded by the live candle core.

What is fetched: the whole [from, to) of each symbol, or with ``gaps_only`` the gaps that
`fxstream gaps` finds for every configured timeframe, less every stretch the
``backfill_progress`` table lists as already fetched. It is fetched in steps on a grid of
``backfill_chunk_minutes``, symbol after symbol, over one authorised connection whose
historical requests are paced below the Open API's limit (the connection's own pacing).

How it becomes bars: tick data (ProtoOAGetTickDataReq, bid and ask, paged) is joined into
quotes and folded DIRECTLY with ``pipeline.core.candles.fold``, the function the live
worker runs, rather than published to the tick topic: the worker refuses ticks more
than its lateness behind a symbol's newest tick (``late``), so history published
beside a live stream would be dead-lettered, and history folded into the live state
would disturb it. Folded directly, backfilled bars have the live price basis (mid,
or the side present), labels (open time, the same alignment and day start) and
re-sent-quote rule. The fold's state is carried from step to step and stored with each
step, so a bar spanning steps (a daily bar from hourly steps) is complete and a resumed
run continues where the last one stopped. A bar is written once fetched history covers
it whole; bars at the edge of the range that history covers only in part are not
written.

A step where the server has no tick data but has one-minute trendbars
(ProtoOAGetTrendbarsReq, M1) is filled from those: the bars of every timeframe that fit
in the step, built from the minutes. A step whose tick data begins a minute or more after
its start is asked for the minutes before the first tick: when there are any, the tick
data began there (the server's horizon), and the part up to and with the first tick's
minute is filled from the minutes. cTrader builds trendbars from bid prices, so these
bars are on the bid, not the mid, and say so in ``provider_source``
(``ctrader-trendbars``); the fold starts afresh after such a step. Bars from tick data
say ``ctrader-history``.

Versions and live bars: backfilled rows carry no version (src_partition and src_offset
NULL). Their upsert updates only rows without a version, so a live bar (every row the
sink writes from the worker carries its source position) is never overwritten, even
when it is partial because the live stream began or ended inside it; the sink in turn
lets any versioned live bar replace an unversioned one, so live wins whichever is
written first. Rows of a step and the step's progress row are written in one
transaction: killed at any point, a run leaves whole steps, and the next run fetches
only what no step lists.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from pipeline.core.backfill import (
    Interval,
    bars_from_minutes,
    chunk_interval,
    merge_intervals,
    settled_bars,
    subtract_intervals,
)
from pipeline.core.candles import CandleConfig, all_bars, fold, new_state
from pipeline.core.timeframes import Timeframe, parse_timeframe
from pipeline.gaps import find_gaps
from pipeline.settings import Settings
from producers.ctrader.connection import Connection, OpenApiError, client_ssl_context
from producers.ctrader.credentials import Credentials, ScrubSecrets
from producers.ctrader.history import tick_data, trendbars
from producers.ctrader.messages import Received
from producers.ctrader.run import HOSTS, backoff_s
from producers.ctrader.session import CtraderFatal, Session

log = logging.getLogger("fxstream.backfill")

TICK_PROVIDER = "ctrader-history"
TRENDBAR_PROVIDER = "ctrader-trendbars"
MINUTE_MS = 60_000
TRENDBAR_PAGE = 5_000
RETRIES = 6

UPSERT_SQL = """
INSERT INTO market_data_candles AS c (symbol, timeframe, ts_utc, open, high, low, close,
                                      tick_volume, volume, provider_source, complete)
SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[], %s::float8[], %s::float8[],
                     %s::float8[], %s::float8[], %s::int8[], %s::float8[], %s::text[],
                     %s::bool[])
ON CONFLICT (symbol, timeframe, ts_utc) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    tick_volume = EXCLUDED.tick_volume, volume = EXCLUDED.volume,
    provider_source = EXCLUDED.provider_source, complete = EXCLUDED.complete,
    updated_at = now()
WHERE c.src_partition IS NULL AND c.src_offset IS NULL
"""
ROW_KEYS = ("symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "tick_volume",
            "volume", "provider_source", "complete")


@dataclass
class SymbolReport:
    steps: int = 0
    ticks: int = 0
    bars: int = 0
    kept_live: int = 0
    trendbar_steps: int = 0
    skipped_ms: int = 0  # already fetched by an earlier run


@dataclass
class BackfillReport:
    symbols: dict[str, SymbolReport] = field(default_factory=dict)
    seconds: float = 0.0
    missing_symbols: list[str] = field(default_factory=list)


class Progress:
    """Where a run reports: the CLI draws a rich progress bar per symbol from these."""

    def planned(self, symbol: str, total_ms: int) -> None: ...
    def advanced(self, symbol: str, done_ms: int, report: SymbolReport) -> None: ...


def merge_sides(bids: Sequence[tuple[int, float]], asks: Sequence[tuple[int, float]]
                ) -> list[tuple[int, float | None, float | None]]:
    """Bid and ask tick data (each oldest first) as quotes (ts, bid, ask), oldest first.

    Within one millisecond the k-th bid goes with the k-th ask; a side without a tick
    keeps its last value (None before the first), as a spot event's absent side does."""
    out: list[tuple[int, float | None, float | None]] = []
    bid: float | None = None
    ask: float | None = None
    i = j = 0
    while i < len(bids) or j < len(asks):
        ts = min(bids[i][0] if i < len(bids) else asks[j][0],
                 asks[j][0] if j < len(asks) else bids[i][0])
        i_end, j_end = i, j
        while i_end < len(bids) and bids[i_end][0] == ts:
            i_end += 1
        while j_end < len(asks) and asks[j_end][0] == ts:
            j_end += 1
        for k in range(max(i_end - i, j_end - j)):
            if i + k < i_end:
                bid = bids[i + k][1]
            if j + k < j_end:
                ask = asks[j + k][1]
            out.append((ts, bid, ask))
        i, j = i_end, j_end
    return out


def quotes_to_ticks(symbol: str, quotes: Sequence[tuple[int, float | None, float | None]]
                    ) -> list[dict[str, Any]]:
    ticks = []
    for ts, bid, ask in quotes:
        tick: dict[str, Any] = {"symbol": symbol, "ts_ms": ts, "provider": TICK_PROVIDER}
        if bid is not None:
            tick["bid"] = bid
        if ask is not None:
            tick["ask"] = ask
        ticks.append(tick)
    return ticks


def backfill_config(settings: Settings, timeframes: Sequence[str]) -> CandleConfig:
    """The live worker's candle configuration for these timeframes (no order flow: history
    does not feed the sentiment topic)."""
    return CandleConfig.from_names(
        tuple(timeframes), lateness_ms=settings.lateness_ms,
        close_grace_ms=settings.close_grace_ms, day_start_ms=settings.day_start_minutes * 60_000,
        future_tolerance_ms=settings.future_tolerance_ms)


# --- the database side ----------------------------------------------------------------------


def wanted_intervals(conn: psycopg.Connection[Any], settings: Settings, symbols: Sequence[str],
                     timeframes: Sequence[str], from_ms: int, to_ms: int, gaps_only: bool
                     ) -> dict[str, list[Interval]]:
    if not gaps_only:
        return {s: [(from_ms, to_ms)] for s in symbols}
    wanted: dict[str, list[Interval]] = {s: [] for s in symbols}
    for tf in timeframes:
        for gap in find_gaps(conn, symbols, tf, from_ms, to_ms,
                             day_start_ms=settings.day_start_minutes * 60_000,
                             holidays=settings.market_holidays):
            wanted[gap.symbol].append((gap.from_ms, gap.to_ms))
    return {s: merge_intervals(v) for s, v in wanted.items()}


def done_steps(conn: psycopg.Connection[Any], symbol: str, from_ms: int, to_ms: int
               ) -> dict[int, tuple[int, dict[str, Any], int]]:
    """Fetched stretches of ``symbol`` touching [from_ms, to_ms]: from_ms -> (to_ms, fold
    state after it, coverage_from)."""
    rows = conn.execute(
        "SELECT from_ms, to_ms, state, coverage_from FROM backfill_progress "
        "WHERE symbol = %s AND to_ms >= %s AND from_ms <= %s", (symbol, from_ms, to_ms)
    ).fetchall()
    return {int(a): (int(b), state, int(cov)) for a, b, state, cov in rows}


def write_step(conn: psycopg.Connection[Any], symbol: str, interval: Interval, source: str,
               ticks: int, bars: list[dict[str, Any]], state: dict[str, Any],
               coverage_from: int) -> int:
    """The step's bars and its progress row in one transaction; returns how many bars a
    stored live bar kept out."""
    with conn.transaction():
        written = 0
        if bars:
            columns = [[bar[k] for bar in bars] for k in ROW_KEYS]
            written = conn.execute(UPSERT_SQL, columns).rowcount
        kept_live = len(bars) - written
        conn.execute(
            "INSERT INTO backfill_progress (symbol, from_ms, to_ms, source, ticks, bars, "
            "kept_live, state, coverage_from) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (symbol, interval[0], interval[1], source, ticks, written, kept_live,
             orjson.dumps(state).decode(), coverage_from))
    return kept_live


# --- the run --------------------------------------------------------------------------------


class Backfill:
    def __init__(self, settings: Settings, credentials: Credentials, symbols: Sequence[str],
                 from_ms: int, to_ms: int, gaps_only: bool,
                 timeframes: Sequence[str] | None = None,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.symbols = list(symbols)
        self.timeframes = tuple(timeframes or settings.timeframes)
        self.tfs: tuple[Timeframe, ...] = tuple(parse_timeframe(t) for t in self.timeframes)
        now = int(time.time() * 1000)
        self.from_ms = from_ms
        self.to_ms = min(to_ms, now - now % MINUTE_MS)  # only what has happened
        self.gaps_only = gaps_only
        self.progress = progress or Progress()
        self.config = backfill_config(settings, self.timeframes)
        self.chunk_ms = settings.backfill_chunk_minutes * MINUTE_MS
        self.session = Session(credentials, settings.ctrader_environment,
                               settings.ctrader_account_id, self.symbols, depth=False)
        self.report = BackfillReport()
        self._conn: Connection | None = None
        self._rng = random.Random()

    # connection

    def _on_event(self, received: Received) -> None:
        if received.name in ("ProtoOAErrorRes", "ProtoErrorRes"):
            log.error("server error: %s", OpenApiError.from_message(received))
        elif received.name == "ProtoOAAccountsTokenInvalidatedEvent":
            log.warning("the server invalidated the access token; the next request "
                        "reconnects and refreshes it")

    async def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed.is_set():
            return self._conn
        s = self.settings
        host = s.ctrader_host or HOSTS[s.ctrader_environment]
        conn = await Connection.open(
            host, s.ctrader_port, client_ssl_context(s.ctrader_ca_file), self._on_event,
            requests_per_s=s.ctrader_requests_per_s,
            history_requests_per_s=s.ctrader_history_requests_per_s,
            heartbeat_s=s.ctrader_heartbeat_s, timeout_s=s.ctrader_timeout_s)
        try:
            await self.session.authorise(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _retrying(self, what: str, call: Callable[[Connection], Any]) -> Any:
        """``call`` on an authorised connection; a lost connection or a refused request is
        tried again on a new one (which refreshes an expired token), with backoff."""
        for attempt in range(RETRIES):
            try:
                return await call(await self._connection())
            except CtraderFatal:
                raise
            except (OSError, ConnectionError, TimeoutError, OpenApiError) as exc:
                if attempt == RETRIES - 1:
                    raise
                pause = backoff_s(attempt, self.settings.ctrader_reconnect_max_s, self._rng)
                log.warning("%s failed (%s); again in %.1f s", what,
                            self.credentials.scrub(f"{type(exc).__name__}: {exc}"), pause)
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _fetch_ticks(self, info: Any, interval: Interval) -> list[dict[str, Any]]:
        account = self.session.account
        assert account is not None

        async def both(conn: Connection) -> tuple[list[Any], list[Any]]:
            bids = await tick_data(conn, account.account_id, info, "bid", *interval)
            asks = await tick_data(conn, account.account_id, info, "ask", *interval)
            return bids, asks

        bids, asks = await self._retrying(f"tick data of {info.symbol}", both)
        return quotes_to_ticks(info.symbol, merge_sides(bids, asks))

    async def _fetch_minutes(self, info: Any, interval: Interval) -> list[dict[str, Any]]:
        account = self.session.account
        assert account is not None
        out: list[Any] = []
        to = interval[1]
        while to > interval[0]:
            page = await self._retrying(
                f"trendbars of {info.symbol}",
                lambda conn, t=to: trendbars(conn, account.account_id, info, "M1",
                                             interval[0], t, count=TRENDBAR_PAGE))
            out = page + out
            if len(page) < TRENDBAR_PAGE:
                break
            to = page[0].ts_ms
        return [{"ts_ms": b.ts_ms, "open": b.open, "high": b.high, "low": b.low,
                 "close": b.close, "volume": b.volume} for b in out]

    # the plan and the steps

    async def run(self) -> BackfillReport:
        started = time.monotonic()
        scrub = ScrubSecrets(self.credentials)
        log.addFilter(scrub)
        try:
            with psycopg.connect(self.settings.database_url, autocommit=True) as db:
                await self._retrying("authorising", lambda conn: asyncio.sleep(0))
                by_symbol = {info.symbol: info for info in self.session.symbols.values()}
                self.report.missing_symbols = [s for s in self.symbols if s not in by_symbol]
                wanted = wanted_intervals(db, self.settings, list(by_symbol), self.timeframes,
                                          self.from_ms, self.to_ms, self.gaps_only)
                plans: dict[str, list[Interval]] = {}
                for symbol in by_symbol:
                    report = self.report.symbols[symbol] = SymbolReport()
                    done = done_steps(db, symbol, self.from_ms, self.to_ms)
                    todo = subtract_intervals(wanted[symbol], [(a, b) for a, (b, _, _)
                                                               in done.items()])
                    report.skipped_ms = (sum(b - a for a, b in wanted[symbol])
                                         - sum(b - a for a, b in todo))
                    plans[symbol] = todo
                    self.progress.planned(symbol, sum(b - a for a, b in todo))
                for symbol, todo in plans.items():
                    await self._symbol(db, by_symbol[symbol], todo)
        finally:
            if self._conn is not None:
                await self._conn.close()
            log.removeFilter(scrub)
            self.report.seconds = time.monotonic() - started
        return self.report

    async def _symbol(self, db: psycopg.Connection[Any], info: Any,
                      todo: list[Interval]) -> None:
        symbol = info.symbol
        report = self.report.symbols[symbol]
        done_ms = 0
        for piece in todo:
            # Continue the fold of a stretch fetched before that ends where this begins.
            before = {b: (state, cov) for _, (b, state, cov)
                      in done_steps(db, symbol, piece[0], piece[0]).items()}
            state, coverage_from = before.get(piece[0], (None, piece[0]))
            if state is None or state.get("cfg") != self.config.fingerprint:
                state, coverage_from = new_state(symbol, self.config), piece[0]
            for step in chunk_interval(piece, self.chunk_ms):
                state, coverage_from = await self._step(db, info, step, state, coverage_from,
                                                        report)
                done_ms += step[1] - step[0]
                self.progress.advanced(symbol, done_ms, report)

    async def _step(self, db: psycopg.Connection[Any], info: Any, step: Interval,
                    state: dict[str, Any], coverage_from: int, report: SymbolReport
                    ) -> tuple[dict[str, Any], int]:
        symbol = info.symbol
        ticks = await self._fetch_ticks(info, step)
        if ticks:
            source = "ticks"
            head: list[dict[str, Any]] = []
            first_minute = ticks[0]["ts_ms"] - ticks[0]["ts_ms"] % MINUTE_MS
            if first_minute > step[0]:
                # Quiet before the first tick: a closed market, or the start of the
                # server's tick data. Minute bars before it tell which.
                boundary = first_minute + MINUTE_MS
                minutes = await self._fetch_minutes(info, (step[0], boundary))
                if any(m["ts_ms"] < first_minute for m in minutes):
                    # Tick data starts inside this step: the minutes up to and with the
                    # first tick's, then the ticks' bars from the next minute on.
                    head = bars_from_minutes(minutes, symbol, self.tfs,
                                             self.config.day_start_ms, step[0], boundary,
                                             TRENDBAR_PROVIDER)
                    state, coverage_from = new_state(symbol, self.config), boundary
                    source = "trendbars+ticks"
                    report.trendbar_steps += 1
            result = fold(state, symbol, ticks, step[0], int(time.time() * 1000), self.config)
            for rejected in result.rejected:
                log.warning("%s: history tick refused (%s: %s): %r", symbol, rejected.reason,
                            rejected.detail, rejected.tick)
            state = result.state
            bars = head + settled_bars([*result.candles, *all_bars(state, 0, self.config)],
                                       self.tfs, coverage_from, step[0], step[1])
        else:
            minutes = await self._fetch_minutes(info, step)
            if minutes:
                # No tick data where the market traded: bars from the minutes, and the
                # fold starts afresh after this step (its bars would miss these ticks).
                bars = bars_from_minutes(minutes, symbol, self.tfs, self.config.day_start_ms,
                                         step[0], step[1], TRENDBAR_PROVIDER)
                state, coverage_from = new_state(symbol, self.config), step[1]
                source = "trendbars"
                report.trendbar_steps += 1
            else:
                bars = settled_bars(all_bars(state, 0, self.config), self.tfs, coverage_from,
                                    step[0], step[1])
                source = "empty"
        kept = write_step(db, symbol, step, source, len(ticks), bars, state, coverage_from)
        report.steps += 1
        report.ticks += len(ticks)
        report.bars += len(bars) - kept
        report.kept_live += kept
        log.info("%s [%d, %d): %s, %d ticks, %d bars written, %d live bars kept", symbol,
                 step[0], step[1], source, len(ticks), len(bars) - kept, kept)
        return state, coverage_from


def run_backfill(settings: Settings, credentials: Credentials, symbols: Sequence[str],
                 from_ms: int, to_ms: int, gaps_only: bool,
                 timeframes: Sequence[str] | None = None,
                 progress: Progress | None = None) -> BackfillReport:
    backfill = Backfill(settings, credentials, symbols, from_ms, to_ms, gaps_only, timeframes,
                        progress)
    return asyncio.run(backfill.run())
