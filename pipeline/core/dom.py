"""Folding order-book snapshots into DOM metric bars and sampled snapshots: pure.

A symbol's whole DOM state is one plain, JSON-able dict: the metric bars still
inside the lateness horizon for every DOM timeframe, the depth samples (the last
snapshot of each sample period) inside it, the newest event time, the provider
and the last applied source offset. The worker keeps it in a Faust table keyed
by symbol and writes it once per message.

Event time works exactly as for candles (pipeline.core.candles): bars are
labelled by their open time and cover [start, start + duration); a snapshot at
or past a bar's end completes it; one more than ``lateness_ms`` behind the
symbol's newest snapshot is rejected as "late", one inside revises its bar and
its sample, which are sent again; `closed_by_clock` closes the bars of a symbol
quiet for ``close_grace_ms``; messages at or below the applied offset are
skipped. Ties in event time keep arrival order. Each snapshot is checked with
`pipeline.core.book.parse_snapshot` and measured with `book_metrics`; the
README's "DOM metrics" section states every metric.

The time-weighted depth_imbalance of a bar: each snapshot stands from its time
to the next snapshot of the same bar (in event order), the last one to the
bar's end once the bar is complete, else to the symbol's newest event time.
Nothing carries in from the previous bar, so a revision touches only its own
bar. A bar therefore keeps its (time, imbalance) points; of several snapshots
at one millisecond only the last arrival stands for any time, so one point per
millisecond is kept, as two flat lists (offsets from the bar's start, values),
which is what makes most of a busy symbol's state.

A sample keeps its whole book until the message that changed it is settled (its
outputs known stored downstream; recovery re-sends it until then); afterwards only
its period and time, which is all a late snapshot needs to know whether it
replaces the sample. Bars leave the state on the same rule, as candle bars do.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.book import (
    DEFAULT_DEPTH_LEVELS,
    DEFAULT_MAX_LEVELS,
    SnapshotError,
    book_metrics,
    parse_snapshot,
)
from pipeline.core.ticks import DEFAULT_FUTURE_TOLERANCE_MS, future_limit, valid_provider
from pipeline.core.timeframes import Timeframe, parse_timeframe

STATE_VERSION = 1
BAR_RECORD_VERSION = 2  # schemas/dom_metric.v2.json
SAMPLE_RECORD_VERSION = 1  # schemas/depth_sample.v1.json
BAR_KIND = "dom_bar"
SAMPLE_KIND = "depth_sample"

# A bar is a list, for a compact changelog:
(START, OPEN, HIGH, LOW, CLOSE, OPEN_TS, CLOSE_TS, SP_SUM, SP_N, SP_MIN, SP_MAX, MICRO,
 MICRO_TS, WMID, WMID_TS, UPDATES, CROSSED, POINTS, DONE, PRE_SUM, PRE_WEIGHT) = range(21)
# OPEN_TS/CLOSE_TS: event times of the snapshots giving open and close of mid (None
# while no snapshot of the bar has a mid); MICRO_TS, WMID_TS likewise. POINTS:
# [offsets from START, imbalances], sorted by offset. DONE: once emitted complete
# and not changed since, the position of the message that sent it plus one.
# PRE_SUM, PRE_WEIGHT: the imbalance-times-duration and the duration of the points
# that left POINTS (those before the last point ahead of the lateness horizon, which
# no late snapshot can change any more).

# A sample: [bucket start, ts, provider, bids, asks, mid, spread, imbalance, position
# of the message that changed it], or only [bucket start, ts] once that message is
# settled. (States written before positions were kept lack the position.)
S_START, S_TS, S_PROVIDER, S_BIDS, S_ASKS, S_MID, S_SPREAD, S_IMB, S_AT = range(9)


@dataclass(frozen=True)
class DomConfig:
    timeframes: tuple[Timeframe, ...]
    depth_levels: int = DEFAULT_DEPTH_LEVELS
    max_levels: int = DEFAULT_MAX_LEVELS
    sample_ms: int = 1_000
    lateness_ms: int = 300_000
    close_grace_ms: int = 2_000
    day_start_ms: int = 0
    known_symbols: frozenset[str] | None = None  # None: accept every valid symbol
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.timeframes:
            raise ValueError("at least one timeframe is needed")
        names = ",".join(tf.name for tf in self.timeframes)
        object.__setattr__(self, "fingerprint", f"{names}@{self.day_start_ms}"
                           f"/n{self.depth_levels}/s{self.sample_ms}")

    @classmethod
    def from_names(cls, names: tuple[str, ...] | list[str], **kw: Any) -> DomConfig:
        return cls(tuple(parse_timeframe(n) for n in names), **kw)


@dataclass
class Rejected:
    index: int  # position in the frame (0 for a single snapshot)
    reason: str
    detail: str
    snapshot: Any


@dataclass
class DomFoldResult:
    state: dict[str, Any]
    records: list[dict[str, Any]]
    rejected: list[Rejected]
    skipped: bool = False
    accepted: int = 0


def new_state(symbol: str, config: DomConfig) -> dict[str, Any]:
    return {
        "v": STATE_VERSION, "cfg": config.fingerprint, "symbol": symbol, "offset": -1,
        "max_ts": None, "provider": None, "bars": {tf.name: [] for tf in config.timeframes},
        "samples": [], "counts": {"snapshots": 0, "late": 0, "rejected": 0},
    }  # fmt: skip


def upgrade_state(state: dict[str, Any] | None, symbol: str,
                  config: DomConfig) -> dict[str, Any]:
    """Bring a stored state to this configuration: state written under other
    timeframes, another N or sample period keeps its offset, newest time, provider
    and counts, not bars or samples it would misread."""
    if state is None:
        return new_state(symbol, config)
    if state.get("v") != STATE_VERSION:
        raise ValueError(f"DOM state of {symbol} has version {state.get('v')!r}, "
                         f"this fxstream reads version {STATE_VERSION}")
    if state["provider"] is not None and not valid_provider(state["provider"]):
        state = {**state, "provider": None}
    if state.get("cfg") != config.fingerprint:
        fresh = new_state(symbol, config)
        for key in ("offset", "max_ts", "provider", "counts"):
            fresh[key] = state[key]
        return fresh
    return state


def fold(state: dict[str, Any] | None, symbol: str, snapshots: list[Any], offset: int,
         now_ms: int, config: DomConfig, settled: int | None = None) -> DomFoldResult:
    """Apply one message (``snapshots`` from source ``offset``) to a symbol's state.

    ``symbol`` is the message key, already canonical; ``now_ms`` the wall clock, for
    the future rule only; ``settled`` the newest source position whose outputs are
    known stored downstream (None: every earlier message's), as for candles
    (pipeline.core.candles.fold). The input state is not modified."""
    state = upgrade_state(state, symbol, config)
    if offset <= state["offset"]:
        return DomFoldResult(state, [], [], skipped=True)
    lateness = config.lateness_ms
    known = config.known_symbols
    newest_ok = future_limit(now_ms, config.future_tolerance_ms)
    max_ts = state["max_ts"]
    provider = state["provider"]
    bars = {tf.name: {b[START]: _copy_bar(b) for b in state["bars"].get(tf.name, ())}
            for tf in config.timeframes}
    dirty: dict[str, set[int]] = {tf.name: set() for tf in config.timeframes}
    samples = {s[S_START]: s for s in state["samples"]}
    dirty_samples: set[int] = set()
    rejected: list[Rejected] = []
    accepted = 0

    for index, raw in enumerate(snapshots):
        try:
            snap = parse_snapshot(raw, config.max_levels)
        except SnapshotError as exc:
            rejected.append(Rejected(index, exc.reason, exc.detail, raw))
            continue
        ts = snap.ts_ms
        if snap.symbol != symbol:
            rejected.append(Rejected(index, "symbol_mismatch", f"snapshot for {snap.symbol} "
                                     f"in a message keyed {symbol}", raw))
            continue
        if known is not None and symbol not in known:
            rejected.append(Rejected(index, "unknown_symbol",
                                     f"{symbol} is not among the configured symbols", raw))
            continue
        if ts > newest_ok:
            rejected.append(Rejected(index, "future", f"ts_ms {ts} is {ts - now_ms} ms ahead "
                                     f"of the wall clock (allowed "
                                     f"{config.future_tolerance_ms} ms)", raw))
            continue
        if max_ts is not None and ts < max_ts - lateness:
            rejected.append(Rejected(index, "late", f"{max_ts - ts} ms behind the newest "
                                     f"snapshot of {symbol} (allowed {lateness} ms)", raw))
            continue
        accepted += 1
        if max_ts is None or ts > max_ts:
            max_ts = ts
        if snap.provider is not None:
            provider = snap.provider
        m = book_metrics(snap.bids, snap.asks, config.depth_levels)
        for tf in config.timeframes:
            start = tf.start_of(ts, config.day_start_ms)
            tf_bars = bars[tf.name]
            bar = tf_bars.get(start)
            if bar is None:
                bar = tf_bars[start] = [start, None, None, None, None, None, None, 0.0, 0, None,
                                        None, None, None, None, None, 0, 0, [[], []], 0, 0.0, 0]
            _add(bar, ts, m)
            dirty[tf.name].add(start)
        bucket = ts - ts % config.sample_ms
        sample = samples.get(bucket)
        if sample is None or ts >= sample[S_TS]:
            samples[bucket] = [bucket, ts, snap.provider, snap.bids, snap.asks, m.mid,
                               m.spread, m.imbalance, offset]
            dirty_samples.add(bucket)

    new = {
        **state, "offset": offset, "max_ts": max_ts, "provider": provider,
        "counts": {
            "snapshots": state["counts"]["snapshots"] + accepted,
            "late": state["counts"]["late"] + sum(r.reason == "late" for r in rejected),
            "rejected": state["counts"]["rejected"] + len(rejected),
        },
    }  # fmt: skip
    records: list[dict[str, Any]] = []
    horizon = None if max_ts is None else max_ts - lateness
    if settled is None:
        settled = offset - 1
    new_bars: dict[str, list[list[Any]]] = {}
    for tf in config.timeframes:
        kept = _emit_and_evict(bars[tf.name], dirty[tf.name], tf, max_ts, horizon, config,
                               symbol, provider, records, offset, settled + 1)
        if horizon is not None:
            for bar in kept:
                _settle(bar, horizon)
        new_bars[tf.name] = kept
    new["bars"] = new_bars
    kept_samples = []
    for start in sorted(samples):
        sample = samples[start]
        if start in dirty_samples:
            records.append(sample_record(symbol, sample))
            kept_samples.append(sample)
        elif len(sample) > S_TS + 1 and (sample[S_AT] if len(sample) > S_AT
                                         else state["offset"]) > settled:
            # recovery may still have to re-send it; a sample of a state from before
            # S_AT existed takes the state's position as its own, once
            kept_samples.append(sample if len(sample) > S_AT else [*sample, state["offset"]])
        elif horizon is None or start + config.sample_ms > horizon:
            kept_samples.append(sample[:2])  # the message that sent it is settled
    new["samples"] = kept_samples
    return DomFoldResult(new, records, rejected, accepted=accepted)


def _copy_bar(bar: list[Any]) -> list[Any]:
    out = list(bar)
    offsets, values = bar[POINTS]
    out[POINTS] = [list(offsets), list(values)]
    return out


def _add(bar: list[Any], ts: int, m: Any) -> None:
    """One accepted snapshot's metrics into its bar (ties in time: arrival order)."""
    bar[UPDATES] += 1
    if m.crossed:
        bar[CROSSED] += 1
    mid = m.mid
    if mid is not None:
        if bar[OPEN_TS] is None:
            bar[OPEN] = bar[HIGH] = bar[LOW] = bar[CLOSE] = mid
            bar[OPEN_TS] = bar[CLOSE_TS] = ts
        else:
            if mid > bar[HIGH]:
                bar[HIGH] = mid
            if mid < bar[LOW]:
                bar[LOW] = mid
            if ts < bar[OPEN_TS]:
                bar[OPEN], bar[OPEN_TS] = mid, ts
            if ts >= bar[CLOSE_TS]:
                bar[CLOSE], bar[CLOSE_TS] = mid, ts
    spread = m.spread
    if spread is not None:
        bar[SP_SUM] += spread
        bar[SP_N] += 1
        if bar[SP_MIN] is None or spread < bar[SP_MIN]:
            bar[SP_MIN] = spread
        if bar[SP_MAX] is None or spread > bar[SP_MAX]:
            bar[SP_MAX] = spread
    if m.microprice is not None and (bar[MICRO_TS] is None or ts >= bar[MICRO_TS]):
        bar[MICRO], bar[MICRO_TS] = m.microprice, ts
    if m.weighted_mid is not None and (bar[WMID_TS] is None or ts >= bar[WMID_TS]):
        bar[WMID], bar[WMID_TS] = m.weighted_mid, ts
    offsets, values = bar[POINTS]
    at = ts - bar[START]
    i = bisect_left(offsets, at)
    if i < len(offsets) and offsets[i] == at:
        values[i] = m.imbalance  # the later arrival stands from this millisecond on
    else:
        offsets.insert(i, at)
        values.insert(i, m.imbalance)
    bar[DONE] = 0


def _settle(bar: list[Any], horizon: int) -> None:
    """Fold the points no late snapshot can reach into PRE_SUM and PRE_WEIGHT: a late
    one lands at or after ``horizon``, so it can only shorten the time the last point
    before the horizon stands; the points before that one are final."""
    offsets, values = bar[POINTS]
    keep_from = bisect_left(offsets, horizon - bar[START]) - 1
    if keep_from <= 0:
        return
    # Each segment straight into PRE_SUM, in time order, as weighted_imbalance adds the
    # rest: the sum is then the same left fold wherever messages (or crashes) fell.
    total, weight = bar[PRE_SUM], bar[PRE_WEIGHT]
    for i in range(keep_from):
        imbalance = values[i]
        stands = offsets[i + 1] - offsets[i]
        if imbalance is not None and stands > 0:
            total += imbalance * stands
            weight += stands
    bar[PRE_SUM], bar[PRE_WEIGHT] = total, weight
    bar[POINTS] = [offsets[keep_from:], values[keep_from:]]


def weighted_imbalance(bar: list[Any], end: int) -> float | None:
    """Time-weighted mean of a bar's imbalances: each point stands until the next, the
    last until ``end`` (an offset from the bar's start); points with no imbalance (None)
    count for nothing; the settled part comes from PRE_SUM and PRE_WEIGHT. None when
    no imbalance stood for any time."""
    offsets, values = bar[POINTS]
    total = bar[PRE_SUM]
    weight = bar[PRE_WEIGHT]
    last = len(offsets) - 1
    for i, imbalance in enumerate(values):
        if imbalance is None:
            continue
        stands = (offsets[i + 1] if i < last else end) - offsets[i]
        if stands > 0:
            total += imbalance * stands
            weight += stands
    return total / weight if weight else None


def _emit_and_evict(bars: dict[int, list[Any]], dirty: set[int], tf: Timeframe,
                    max_ts: int | None, horizon: int | None, config: DomConfig, symbol: str,
                    provider: str | None, out: list[dict[str, Any]], offset: int,
                    done_by: int) -> list[list[Any]]:
    keep: list[list[Any]] = []
    for start in sorted(bars):
        bar = bars[start]
        end = start + tf.ms
        complete = max_ts is not None and end <= max_ts  # event time only
        changed = start in dirty
        if changed or (complete and not bar[DONE]):
            out.append(bar_record(symbol, tf, bar, complete, provider, max_ts, config))
            bar[DONE] = offset + 1 if complete else 0
            changed = True
        # Bars no late snapshot can reach leave the state, but only once the message
        # that sent their final version is settled (so recovery can re-send it).
        if (bar[DONE] and bar[DONE] <= done_by and not changed and horizon is not None
                and end <= horizon):
            continue
        keep.append(bar)
    return keep


def bar_record(symbol: str, tf: Timeframe, bar: list[Any], complete: bool,
               provider: str | None, max_ts: int | None, config: DomConfig) -> dict[str, Any]:
    """A bar as a DOM metric message (schemas/dom_metric.v2.json)."""
    end = bar[START] + tf.ms
    if not complete and max_ts is not None:
        end = min(end, max_ts)
    return {
        "v": BAR_RECORD_VERSION, "kind": BAR_KIND, "symbol": symbol, "timeframe": tf.name,
        "ts_utc": bar[START], "provider": provider, "open": bar[OPEN], "high": bar[HIGH],
        "low": bar[LOW], "close": bar[CLOSE],
        "spread_mean": bar[SP_SUM] / bar[SP_N] if bar[SP_N] else None,
        "spread_min": bar[SP_MIN], "spread_max": bar[SP_MAX],
        "depth_imbalance": weighted_imbalance(bar, end - bar[START]),
        "depth_levels": config.depth_levels, "microprice": bar[MICRO],
        "weighted_mid": bar[WMID], "updates": bar[UPDATES], "crossed": bar[CROSSED],
        "complete": complete,
    }  # fmt: skip


def sample_record(symbol: str, sample: list[Any]) -> dict[str, Any]:
    """A sampled snapshot as a depth message (schemas/depth_sample.v1.json)."""
    return {
        "v": SAMPLE_RECORD_VERSION, "kind": SAMPLE_KIND, "symbol": symbol,
        "bucket_utc": sample[S_START], "ts_utc": sample[S_TS], "provider": sample[S_PROVIDER],
        "bids": sample[S_BIDS], "asks": sample[S_ASKS], "mid_price": sample[S_MID],
        "spread": sample[S_SPREAD], "imbalance": sample[S_IMB],
    }  # fmt: skip


def closed_by_clock(state: dict[str, Any], now_ms: int, config: DomConfig,
                    last_arrival_ms: int | None) -> list[dict[str, Any]]:
    """Bars the wall clock has closed and no snapshot has yet: their end plus
    ``close_grace_ms`` is past AND the symbol has been quiet for the same grace
    (the rule of pipeline.core.candles.closed_by_clock). Their last snapshot stands
    to the bar's end."""
    out: list[dict[str, Any]] = []
    grace = config.close_grace_ms
    if last_arrival_ms is None or now_ms - last_arrival_ms < grace:
        return out
    max_ts = state.get("max_ts")
    for tf in config.timeframes:
        for bar in state["bars"].get(tf.name, ()):
            end = bar[START] + tf.ms
            if not bar[DONE] and end + grace <= now_ms and (max_ts is None or end > max_ts):
                out.append(bar_record(state["symbol"], tf, bar, True, state["provider"], max_ts,
                                      config))
    return out


def all_records(state: dict[str, Any], config: DomConfig) -> list[dict[str, Any]]:
    """Every bar and sample still held, as the state knows them: what recovery re-sends.

    Bars are complete by the DONE flag or event time only; bars the clock closed are
    closed again by `closed_by_clock` once the symbol is quiet."""
    out: list[dict[str, Any]] = []
    max_ts = state.get("max_ts")
    for tf in config.timeframes:
        for bar in state["bars"].get(tf.name, ()):
            complete = bool(bar[DONE]) or (max_ts is not None and bar[START] + tf.ms <= max_ts)
            out.append(bar_record(state["symbol"], tf, bar, complete, state["provider"], max_ts,
                                  config))
    out.extend(sample_record(state["symbol"], s) for s in state["samples"] if len(s) > S_TS + 1)
    return out
