"""Folding ticks into OHLC bars: the pure heart of fxstream.

A symbol's whole candle state is one plain, JSON-able dict (`CandleState`): the
bars still inside the lateness horizon for every timeframe, the newest event
time, the previous accepted quote and the last applied source offset. The
worker keeps it in a Faust table keyed by symbol and writes it once per
message; backfill and the benchmarks call the same functions.

Semantics:
- price = (bid + ask) / 2, or the side present when one is absent.
- Bars are labelled by their open time and cover [start, start + duration).
- open = the first tick in event-time order (ties keep arrival order), close =
  the last (ties: the later arrival), high/low = max/min, tick_volume = count,
  volume = sum of tick volumes (0 when absent).
- A tick equal in (ts_ms, bid, ask) to the symbol's previous accepted tick is a
  re-sent quote and counts once.
- A tick is checked against the one definition of a valid tick
  (pipeline.core.ticks); one more than ``future_tolerance_ms`` ahead of the wall
  clock (``now_ms``) is rejected as "future", so a glitch cannot move the
  symbol's newest time and make every real tick after it "late".
- A tick more than ``lateness_ms`` behind the symbol's newest tick is rejected as
  "late"; a later tick inside the lateness revises its bar, which is sent again.
- A bar is complete once a tick at or past its end arrives (event time). The fold
  never closes a bar by the wall clock: a message is arriving, so the symbol is
  not quiet (in a replay the clock is far past every bar while its ticks still
  come). `closed_by_clock` closes the bars of a symbol that has been quiet for
  ``close_grace_ms`` once the clock is past their end plus the same grace.
- Messages at or below the last applied offset are skipped, so a replay after a
  crash does not count anything twice.
- With ``orderflow`` on, the fold also counts up- and down-ticks per minute and
  sends each complete minute as a positioning observation of provider
  ``orderflow`` (pipeline.core.orderflow), to the sentiment topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from pipeline.core import orderflow
from pipeline.core.ticks import (
    DEFAULT_FUTURE_TOLERANCE_MS,
    MAX_PRICE,
    MAX_TS_MS,
    MAX_VOLUME,
    TickError,
    TickRecord,
    future_limit,
    parse_tick,
    valid_provider,
)
from pipeline.core.timeframes import Timeframe, parse_timeframe

try:
    from pipeline.core import candle_kernel
except ImportError:  # not built where fxstream was installed (no C compiler): the plain loop
    candle_kernel = None  # type: ignore[assignment]

# Where a TickRecord keeps its fields, for the compiled loop; fixed for the process.
_RECORD_LAYOUT = None if candle_kernel is None else candle_kernel.RecordLayout(TickRecord)
# Which loop folds a typed frame here, for the worker's log and the benchmark's record.
FOLD_LOOP = "compiled" if candle_kernel is not None else "plain"

STATE_VERSION = 1

# A bar is a list, for speed and a compact changelog:
START, OPEN, HIGH, LOW, CLOSE, COUNT, VOLUME, OPEN_TS, CLOSE_TS, DONE = range(10)
# DONE: 0, or once the bar has been emitted complete and not changed since, the
# position of the message that emitted it plus one (states before positions: 1).


@dataclass(frozen=True)
class CandleConfig:
    timeframes: tuple[Timeframe, ...]
    lateness_ms: int = 300_000
    close_grace_ms: int = 2_000
    day_start_ms: int = 0
    known_symbols: frozenset[str] | None = None  # None: accept every valid symbol
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS  # how far ahead of the clock
    orderflow: bool = False  # count up/down ticks per minute (pipeline.core.orderflow)
    bucket_ms: int = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.timeframes:
            raise ValueError("at least one timeframe is needed")
        # Ticks are pre-aggregated per bucket of the greatest common divisor of all
        # durations (and the day offset), which nests inside every timeframe's bars.
        gcd = reduce(math.gcd, [tf.ms for tf in self.timeframes])
        if self.day_start_ms:
            gcd = math.gcd(gcd, self.day_start_ms)
        object.__setattr__(self, "bucket_ms", gcd)
        names = ",".join(tf.name for tf in self.timeframes)
        object.__setattr__(self, "fingerprint", f"{names}@{self.day_start_ms}")

    @classmethod
    def from_names(cls, names: tuple[str, ...] | list[str], **kw: Any) -> CandleConfig:
        return cls(tuple(parse_timeframe(n) for n in names), **kw)


@dataclass
class Rejected:
    index: int  # position in the frame (0 for a single tick)
    reason: str
    detail: str
    tick: Any


@dataclass
class FoldResult:
    state: dict[str, Any]
    candles: list[dict[str, Any]]
    rejected: list[Rejected]
    skipped: bool = False  # the message was applied before (offset at or below the state's)
    accepted: int = 0
    duplicates: int = 0


def new_state(symbol: str, config: CandleConfig) -> dict[str, Any]:
    return {
        "v": STATE_VERSION, "cfg": config.fingerprint, "symbol": symbol, "offset": -1,
        "max_ts": None, "prev": None, "provider": None,
        "bars": {tf.name: [] for tf in config.timeframes},
        "counts": {"ticks": 0, "duplicates": 0, "late": 0, "rejected": 0},
    }  # fmt: skip


def upgrade_state(state: dict[str, Any] | None, symbol: str,
                  config: CandleConfig) -> dict[str, Any]:
    """Bring a stored state to this version and configuration.

    State written under other timeframes or another day start keeps its offset,
    newest time and previous quote, but not bars it would misread. A provider that
    is not valid (stored before the checks of pipeline.core.ticks) is forgotten.
    """
    if state is None:
        return new_state(symbol, config)
    if state.get("v") != STATE_VERSION:
        raise ValueError(f"candle state of {symbol} has version {state.get('v')!r}, "
                         f"this fxstream reads version {STATE_VERSION}")
    if state["provider"] is not None and not valid_provider(state["provider"]):
        state = {**state, "provider": None}
    if state.get("cfg") != config.fingerprint:
        fresh = new_state(symbol, config)
        for key in ("offset", "max_ts", "prev", "provider", "counts"):
            fresh[key] = state[key]
        return fresh
    return state


def fold(state: dict[str, Any] | None, symbol: str, ticks: list[Any], offset: int,
         now_ms: int, config: CandleConfig, settled: int | None = None,
         compiled: bool = True) -> FoldResult:
    """Apply one message (``ticks`` from source ``offset``) to a symbol's state.

    ``ticks`` are raw decoded JSON values, or ``TickRecord`` instances of a frame that
    decoded whole into them (typed and bounded already); each is checked here, and a
    ``TickRecord`` this fold cannot take on its fast path is refused (the caller
    folds the message again from its plain JSON decode). ``symbol`` is the
    message key, already canonical. ``now_ms`` is the wall clock, for the future
    rule only. ``settled`` is the newest source position whose outputs are known to
    be stored downstream (None: every earlier message's, as when the caller writes
    outputs itself); a bar leaves the state only once the message that sent its
    final version is settled, so recovery can always re-send it. The input state is
    not modified. ``compiled=False`` keeps a frame of records from the compiled loop
    (pipeline.core.candle_kernel), which computes the same.
    """
    state = upgrade_state(state, symbol, config)
    if offset <= state["offset"]:
        return FoldResult(state, [], [], skipped=True)

    lateness = config.lateness_ms
    known = config.known_symbols
    bucket_ms = config.bucket_ms
    max_ts = state["max_ts"]
    prev = tuple(state["prev"]) if state["prev"] else None
    provider = state["provider"]
    # A provider already checked: ticks repeating it skip the character scan.
    ok_provider = provider
    newest_ok = future_limit(now_ms, config.future_tolerance_ms)
    rejected: list[Rejected] = []
    duplicates = 0
    accepted = 0

    # Pending partial bar of the current bucket: [bucket, o, h, l, c, n, vol, ots, cts].
    partials: list[list[Any]] = []
    part: list[Any] | None = None
    part_bucket = None

    flow: dict[int, list[int]] | None = {} if config.orderflow else None
    flow_from = flow_to = 0  # the minute [from, to) whose counts ``up_down`` holds
    up_down: list[int] = []
    prev_price = None
    if prev is not None:
        pbid, pask = prev[1], prev[2]
        prev_price = (pbid + pask) / 2 if pbid is not None and pask is not None else (
            pbid if pbid is not None else pask)

    symbol_known = known is None or symbol in known
    scanned = None
    if (compiled and _RECORD_LAYOUT is not None and symbol_known and type(ticks) is list
            and ticks and type(ticks[0]) is TickRecord):
        # The same loop, compiled, for a frame it takes whole (pipeline.core.candle_kernel)
        scanned = candle_kernel.scan_records(
            _RECORD_LAYOUT, ticks, symbol, newest_ok, ok_provider, prev, max_ts,
            min(lateness, MAX_TS_MS + 1), bucket_ms, flow is not None, prev_price,
            valid_provider)
    if scanned is not None:
        partials, max_ts, prev, last_provider, accepted, duplicates, flow = scanned
        if last_provider is not None:
            provider = last_provider
    else:
        for index, raw in enumerate(ticks):
            # Fast paths for the common, unremarkable tick: a TickRecord (typed and bounded
            # as it was decoded) or a dict with an int time and float sides within the
            # bounds of pipeline.core.ticks; either with the canonical symbol, the time
            # within the future tolerance, and the provider of the tick before or none.
            # Anything else goes through the full check (which refuses a TickRecord: the
            # runtime then folds the message again as plain JSON).
            if (type(raw) is TickRecord and raw.symbol == symbol and symbol_known
                    and (ts := raw.ts_ms) <= newest_ok
                    and ((tick_provider := raw.provider) is None or tick_provider == ok_provider
                         # a new provider, checked once (a valid one is never empty)
                         or (valid_provider(tick_provider) and (ok_provider := tick_provider)))):
                bid, ask, vol = raw.bid, raw.ask, raw.volume
            elif (type(raw) is dict and raw.get("symbol") == symbol and symbol_known
                    and type(ts := raw.get("ts_ms")) is int and 0 <= ts <= newest_ok
                    and type(bid := raw.get("bid")) is float and 0.0 < bid <= MAX_PRICE
                    and type(ask := raw.get("ask")) is float and 0.0 < ask <= MAX_PRICE
                    and ((vol := raw.get("volume")) is None
                         or (type(vol) is float and 0.0 <= vol <= MAX_VOLUME))
                    and ((tick_provider := raw.get("provider")) is None
                         or tick_provider == ok_provider)):
                if vol is None:
                    vol = 0.0
            else:
                try:
                    tick = parse_tick(raw)
                except TickError as exc:
                    rejected.append(Rejected(index, exc.reason, exc.detail, raw))
                    continue
                if tick.symbol != symbol:
                    rejected.append(Rejected(index, "symbol_mismatch",
                                             f"tick for {tick.symbol} in a message keyed {symbol}",
                                             raw))
                    continue
                if not symbol_known:
                    rejected.append(Rejected(index, "unknown_symbol",
                                             f"{symbol} is not among the configured symbols", raw))
                    continue
                ts, bid, ask, vol, tick_provider = (tick.ts_ms, tick.bid, tick.ask, tick.volume,
                                                    tick.provider)
                if ts > newest_ok:
                    rejected.append(Rejected(index, "future", f"ts_ms {ts} is {ts - now_ms} ms "
                                             f"ahead of the wall clock (allowed "
                                             f"{config.future_tolerance_ms} ms)", raw))
                    continue
                if tick_provider is not None:
                    ok_provider = tick_provider
            if prev is not None and prev[0] == ts and prev[1] == bid and prev[2] == ask:
                duplicates += 1
                continue
            if max_ts is not None and ts < max_ts - lateness:
                rejected.append(Rejected(index, "late", f"{max_ts - ts} ms behind the newest tick "
                                         f"of {symbol} (allowed {lateness} ms)", raw))
                continue
            prev = (ts, bid, ask)
            accepted += 1
            if max_ts is None or ts > max_ts:
                max_ts = ts
            if tick_provider is not None:
                provider = tick_provider
            price = (bid + ask) / 2 if bid is not None and ask is not None else (
                bid if bid is not None else ask)
            if flow is not None:  # up- and down-ticks per minute (pipeline.core.orderflow)
                if price != prev_price and prev_price is not None:
                    if not flow_from <= ts < flow_to:  # another minute than the tick before's
                        flow_from = ts - ts % 60_000
                        flow_to = flow_from + 60_000
                        up_down = flow.get(flow_from)
                        if up_down is None:
                            up_down = flow[flow_from] = [0, 0]
                    up_down[price < prev_price] += 1
                prev_price = price
            bucket = ts - ts % bucket_ms
            if bucket != part_bucket or part is None:
                part = [bucket, price, price, price, price, 1, vol + 0.0, ts, ts]  # -0.0 -> 0.0
                partials.append(part)
                part_bucket = bucket
                continue
            if price > part[2]:
                part[2] = price
            elif price < part[3]:
                part[3] = price
            if ts < part[7]:
                part[1] = price
                part[7] = ts
            if ts >= part[8]:
                part[4] = price
                part[8] = ts
            part[5] += 1
            part[6] += vol

    new = {
        **state, "offset": offset, "max_ts": max_ts, "prev": list(prev) if prev else None,
        "provider": provider,
        "counts": {
            "ticks": state["counts"]["ticks"] + accepted,
            "duplicates": state["counts"]["duplicates"] + duplicates,
            "late": state["counts"]["late"] + sum(r.reason == "late" for r in rejected),
            "rejected": state["counts"]["rejected"] + len(rejected),
        },
    }
    candles: list[dict[str, Any]] = []
    new_bars: dict[str, list[list[Any]]] = {}
    done_by = offset if settled is None else settled + 1  # DONE at or below: settled
    for tf in config.timeframes:
        bars = {bar[START]: list(bar) for bar in state["bars"].get(tf.name, ())}
        dirty: set[int] = set()
        for p in partials:
            start = tf.start_of(p[0], config.day_start_ms)
            bar = bars.get(start)
            if bar is None:
                bars[start] = [start, p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], 0]
            else:
                _merge(bar, p)
            dirty.add(start)
        new_bars[tf.name] = _emit_and_evict(bars, dirty, tf, max_ts, config, symbol, provider,
                                            candles, offset, done_by)
    new["bars"] = new_bars
    if flow is not None:
        new["flow"] = orderflow.merge_and_emit(state.get("flow", []), flow, max_ts, lateness,
                                               symbol, candles, offset, done_by)
    return FoldResult(new, candles, rejected, accepted=accepted, duplicates=duplicates)


def _merge(bar: list[Any], p: list[Any]) -> None:
    if p[2] > bar[HIGH]:
        bar[HIGH] = p[2]
    if p[3] < bar[LOW]:
        bar[LOW] = p[3]
    if p[7] < bar[OPEN_TS]:
        bar[OPEN] = p[1]
        bar[OPEN_TS] = p[7]
    if p[8] >= bar[CLOSE_TS]:
        bar[CLOSE] = p[4]
        bar[CLOSE_TS] = p[8]
    bar[COUNT] += p[5]
    bar[VOLUME] += p[6]
    bar[DONE] = 0


def _emit_and_evict(bars: dict[int, list[Any]], dirty: set[int], tf: Timeframe,
                    max_ts: int | None, config: CandleConfig, symbol: str,
                    provider: str | None, out: list[dict[str, Any]], offset: int,
                    done_by: int) -> list[list[Any]]:
    keep: list[list[Any]] = []
    horizon = None if max_ts is None else max_ts - config.lateness_ms
    for start in sorted(bars):
        bar = bars[start]
        end = start + tf.ms
        complete = max_ts is not None and end <= max_ts  # event time only
        changed = start in dirty
        if changed or (complete and not bar[DONE]):
            out.append(candle_record(symbol, tf.name, bar, complete, provider))
            bar[DONE] = offset + 1 if complete else 0
            changed = True
        # Bars no late tick can reach any more leave the state, but only once the
        # message that sent their final version is settled (so recovery can re-send it).
        if (bar[DONE] and bar[DONE] <= done_by and not changed and horizon is not None
                and end <= horizon):
            continue
        keep.append(bar)
    return keep


def candle_record(symbol: str, timeframe: str, bar: list[Any], complete: bool,
                  provider: str | None) -> dict[str, Any]:
    """A bar as a candle message (schemas/candle.v1.json)."""
    return {
        "v": 1, "symbol": symbol, "timeframe": timeframe, "ts_utc": bar[START],
        "open": bar[OPEN], "high": bar[HIGH], "low": bar[LOW], "close": bar[CLOSE],
        "tick_volume": bar[COUNT], "volume": bar[VOLUME], "complete": complete,
        "provider_source": provider,
    }  # fmt: skip


def closed_by_clock(state: dict[str, Any], now_ms: int, config: CandleConfig,
                    last_arrival_ms: int | None) -> list[dict[str, Any]]:
    """Bars the wall clock has closed but no tick has yet: their end plus
    ``close_grace_ms`` is past, AND the symbol has been quiet for the same grace.

    ``last_arrival_ms`` is the wall time the symbol's newest message arrived, which
    the caller keeps in memory (after a recovery: the time of the recovery). None
    means not known, which is not known to be quiet: nothing is closed. The quiet
    rule keeps a replay, whose ticks are all far behind the clock, from closing
    bars whose later ticks are still arriving.

    The caller cannot write the state outside a message, so it remembers what it
    sent; the next message closes these bars by event time as usual.
    """
    out: list[dict[str, Any]] = []
    grace = config.close_grace_ms
    if last_arrival_ms is None or now_ms - last_arrival_ms < grace:
        return out
    max_ts = state.get("max_ts")
    for tf in config.timeframes:
        for bar in state["bars"].get(tf.name, ()):
            end = bar[START] + tf.ms
            if not bar[DONE] and end + grace <= now_ms and (max_ts is None or end > max_ts):
                out.append(candle_record(state["symbol"], tf.name, bar, True, state["provider"]))
    if config.orderflow:
        out.extend(orderflow.closed_by_clock(state["symbol"], state.get("flow", []), max_ts,
                                             now_ms, grace))
    return out


def all_bars(state: dict[str, Any], now_ms: int, config: CandleConfig) -> list[dict[str, Any]]:
    """Every bar still held, as the state knows it: what recovery re-sends.

    Complete by the DONE flag or event time only; whether the symbol is quiet is
    not known at recovery, so bars the clock closed are closed again by
    `closed_by_clock` once it is. ``now_ms`` is kept for the callers; unused.
    """
    out: list[dict[str, Any]] = []
    max_ts = state.get("max_ts")
    for tf in config.timeframes:
        for bar in state["bars"].get(tf.name, ()):
            end = bar[START] + tf.ms
            complete = bool(bar[DONE]) or (max_ts is not None and end <= max_ts)
            out.append(candle_record(state["symbol"], tf.name, bar, complete, state["provider"]))
    if config.orderflow:
        out.extend(orderflow.complete(state["symbol"], state.get("flow", []), max_ts))
    return out
