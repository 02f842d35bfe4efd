"""Folding positioning observations into sentiment metrics: pure.

A symbol's whole sentiment state is one plain, JSON-able dict: per provider, the
observations a metric can still need (see `_prune`), the provider's newest event
time and, for the messages not yet settled (their outputs not yet known stored
downstream), the earliest time each one sent from; plus the last applied source
offset. The worker keeps it in a Faust
table keyed by symbol and writes it once per message.

Per symbol and provider, the observations make a step function of time: each
long_pct stands from its ts_ms until the next observation's (several at one
millisecond: the later arrival replaces the earlier). At every observation time t:

- ma_5m, ma_15m, ma_1h: the mean of that step function over (t - W, t], starting
  from the observation standing at t - W. With no observation standing at t - W
  (less history than the window), the mean over what exists, from the first
  observation to t, and ``ma_<W>_full`` false; at the very first observation, where
  nothing has stood for any time yet, its own long_pct;
- change_1h: long_pct at t minus the long_pct standing at t - 1 h (None without one);
- from L = long_pct at t: contrarian_signal (-1 above ``contrarian_high``, +1 below
  ``contrarian_low``, else 0), contrarian_strength (-(L - 50) / 50 above the high,
  (50 - L) / 50 below the low, else 0), ratio (L - 50) / 50, confidence |L - 50| / 50,
  label (bullish above ``bullish_above``, bearish below ``bearish_below``, else
  neutral).

An observation more than ``lateness_ms`` behind the newest one of its symbol and
provider is refused as "late"; one inside the lateness is inserted, and every metric
from its time on is computed and sent again (the sink's upsert makes the rows right).
Every accepted observation is also sent as it is (kind ``sentiment_data``), for the
raw table. Observations are checked with `pipeline.core.positioning.parse_observation`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from pipeline.core.positioning import DEFAULT_SUM_TOLERANCE, ObservationError, parse_observation
from pipeline.core.ticks import DEFAULT_FUTURE_TOLERANCE_MS, future_limit

STATE_VERSION = 1
METRIC_RECORD_VERSION = 2  # schemas/sentiment_metric.v2.json
DATA_RECORD_VERSION = 1  # schemas/sentiment_data.v1.json
METRIC_KIND = "sentiment_metric"
DATA_KIND = "sentiment_data"
HOUR_MS = 3_600_000
WINDOWS: tuple[tuple[str, int], ...] = (("5m", 300_000), ("15m", 900_000), ("1h", HOUR_MS))
LONGEST_MS = max(HOUR_MS, *(ms for _, ms in WINDOWS))  # windows and change_1h

# An observation in the state: [ts_ms, long_pct, short_pct, total_traders, confidence]
TS, LONG, SHORT, TRADERS, CONF = range(5)


@dataclass(frozen=True)
class SentimentConfig:
    lateness_ms: int = 300_000
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS
    known_symbols: frozenset[str] | None = None  # None: accept every valid symbol
    sum_tolerance: float = DEFAULT_SUM_TOLERANCE
    contrarian_high: float = 70.0
    contrarian_low: float = 30.0
    bullish_above: float = 60.0
    bearish_below: float = 40.0


@dataclass
class Rejected:
    index: int  # position in the frame (0 for a single observation)
    reason: str
    detail: str
    observation: Any


@dataclass
class SentimentFoldResult:
    state: dict[str, Any]
    records: list[dict[str, Any]]
    rejected: list[Rejected]
    skipped: bool = False
    accepted: int = 0


def new_state(symbol: str) -> dict[str, Any]:
    return {"v": STATE_VERSION, "symbol": symbol, "offset": -1, "providers": {},
            "counts": {"observations": 0, "late": 0, "rejected": 0}}


def upgrade_state(state: dict[str, Any] | None, symbol: str) -> dict[str, Any]:
    if state is None:
        return new_state(symbol)
    if state.get("v") != STATE_VERSION:
        raise ValueError(f"sentiment state of {symbol} has version {state.get('v')!r}, "
                         f"this fxstream reads version {STATE_VERSION}")
    return state


def fold(state: dict[str, Any] | None, symbol: str, observations: list[Any], offset: int,
         now_ms: int, config: SentimentConfig, settled: int | None = None
         ) -> SentimentFoldResult:
    """Apply one message (``observations`` from source ``offset``) to a symbol's state.

    ``symbol`` is the message key, already canonical; ``now_ms`` the wall clock, for the
    future rule only; ``settled`` the newest source position whose outputs are known
    stored downstream (None: every earlier message's). What the messages after it sent
    stays in the state for recovery to re-send. The input state is not modified."""
    state = upgrade_state(state, symbol)
    if offset <= state["offset"]:
        return SentimentFoldResult(state, [], [], skipped=True)
    if settled is None:
        settled = offset - 1
    lateness = config.lateness_ms
    newest_ok = future_limit(now_ms, config.future_tolerance_ms)
    known = config.known_symbols
    providers = {name: {"max_ts": p["max_ts"], "obs": p["obs"],
                        "unsettled": [u for u in _unsettled(p, state["offset"])
                                      if u[0] > settled]}
                 for name, p in state["providers"].items()}
    changed: dict[str, set[int]] = {}
    rejected: list[Rejected] = []
    accepted = 0
    for index, raw in enumerate(observations):
        try:
            obs = parse_observation(raw, config.sum_tolerance)
        except ObservationError as exc:
            rejected.append(Rejected(index, exc.reason, exc.detail, raw))
            continue
        ts = obs.ts_ms
        if obs.symbol != symbol:
            rejected.append(Rejected(index, "symbol_mismatch", f"observation for {obs.symbol} "
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
        p = providers.get(obs.provider)
        if p is None:
            p = providers[obs.provider] = {"max_ts": None, "obs": [], "unsettled": []}
        if p["max_ts"] is not None and ts < p["max_ts"] - lateness:
            rejected.append(Rejected(index, "late", f"{p['max_ts'] - ts} ms behind the newest "
                                     f"observation of {symbol} from {obs.provider} (allowed "
                                     f"{lateness} ms)", raw))
            continue
        touched = changed.get(obs.provider)
        if touched is None:
            touched = changed[obs.provider] = set()
            p["obs"] = [list(o) for o in p["obs"]]  # copy before the first change
        _insert(p["obs"], [ts, obs.long_pct, obs.short_pct, obs.total_traders, obs.confidence])
        touched.add(ts)
        if p["max_ts"] is None or ts > p["max_ts"]:
            p["max_ts"] = ts
        accepted += 1

    records: list[dict[str, Any]] = []
    for name, touched in changed.items():
        p = providers[name]
        obs_list = p["obs"]
        start = min(touched)
        for o in obs_list:
            if o[TS] in touched:
                records.append(data_record(symbol, name, o))
        records.extend(metric_records(symbol, name, obs_list, start, config))
        unsettled = p["unsettled"]
        while unsettled and unsettled[-1][1] >= start:  # the earliest start is what counts
            unsettled.pop()
        unsettled.append([offset, start])
        p["obs"] = _prune(obs_list, min(p["max_ts"] - lateness, unsettled[0][1]) - LONGEST_MS)
    new = {
        **state, "offset": offset, "providers": providers,
        "counts": {
            "observations": state["counts"]["observations"] + accepted,
            "late": state["counts"]["late"] + sum(r.reason == "late" for r in rejected),
            "rejected": state["counts"]["rejected"] + len(rejected),
        },
    }  # fmt: skip
    return SentimentFoldResult(new, records, rejected, accepted=accepted)


def _unsettled(provider: dict[str, Any], offset: int) -> list[list[int]]:
    """[[position, earliest time it sent], ...] of a provider's unsettled messages,
    increasing in both; a state from before these were kept has the one message it
    was written by (``sent_from``)."""
    if "unsettled" in provider:
        return provider["unsettled"]
    sent_from = provider.get("sent_from")
    return [] if sent_from is None else [[offset, sent_from]]


def _insert(obs_list: list[list[Any]], item: list[Any]) -> None:
    """Into the time-sorted list; an observation at a time already there replaces it."""
    ts = item[TS]
    i = bisect_left(obs_list, ts, key=_ts)
    if i < len(obs_list) and obs_list[i][TS] == ts:
        obs_list[i] = item
    else:
        obs_list.insert(i, item)


def _ts(o: list[Any]) -> int:
    return o[TS]


def _prune(obs_list: list[list[Any]], cutoff: int) -> list[list[Any]]:
    """Keep what a metric at or after ``cutoff`` + the longest window can need: the
    observations after ``cutoff`` and the one standing at it.

    A metric is computed again only at a time from which a late observation can
    arrive (at least the newest time minus the lateness) or that an unsettled message
    sent (recovery re-sends those), so nothing before the observation standing an hour
    before the earliest of them is ever read again. When observations were dropped
    the first kept one stands at every window start that is read, so a window that
    starts before the first kept observation is one with less history than it."""
    i = bisect_right(obs_list, cutoff, key=_ts) - 1
    return obs_list[i:] if i > 0 else obs_list


def metric_records(symbol: str, provider: str, obs_list: list[list[Any]], start: int,
                   config: SentimentConfig) -> list[dict[str, Any]]:
    """The metrics at every observation time from ``start`` on."""
    times = [o[TS] for o in obs_list]
    longs = [o[LONG] for o in obs_list]
    first = bisect_left(times, start)
    return [metric_record(symbol, provider, times, longs, i, config)
            for i in range(first, len(times))]


def _window_mean(times: list[int], longs: list[float], i: int, width: int
                 ) -> tuple[float, bool]:
    """Mean of the step function over (t - width, t], t = times[i], and whether an
    observation stands at t - width (the window is full).

    The sum walks the window's own observations, in time order: the result depends on
    them alone, not on what else the state holds, so a frame, single messages and a
    recovery give the same bits (a running total from the state's first observation
    would not). A window holds an hour of one provider's observations at most."""
    t = times[i]
    lo = t - width
    j = bisect_right(times, lo, 0, i) - 1
    full = j >= 0
    begin = lo if full else times[0]
    if t == begin:  # the first observation: nothing has stood for any time yet
        return longs[i], False
    total = 0.0
    for k in range(max(j, 0), i):
        total += longs[k] * (times[k + 1] - max(times[k], begin))
    return total / (t - begin), full


def metric_record(symbol: str, provider: str, times: list[int], longs: list[float], i: int,
                  config: SentimentConfig) -> dict[str, Any]:
    """The metrics at observation i (schemas/sentiment_metric.v2.json)."""
    t = times[i]
    level = longs[i]
    record: dict[str, Any] = {"v": METRIC_RECORD_VERSION, "kind": METRIC_KIND,
                              "symbol": symbol, "provider": provider, "ts_utc": t,
                              "long_pct": level}
    for name, width in WINDOWS:
        mean, full = _window_mean(times, longs, i, width)
        record[f"ma_{name}"] = mean
        record[f"ma_{name}_full"] = full
    j = bisect_right(times, t - HOUR_MS, 0, i) - 1
    record["change_1h"] = level - longs[j] if j >= 0 else None
    record.update(signals(level, config))
    return record


def signals(level: float, config: SentimentConfig) -> dict[str, Any]:
    """What the newest long_pct alone says."""
    if level > config.contrarian_high:
        signal, strength = -1, -(level - 50.0) / 50.0
    elif level < config.contrarian_low:
        signal, strength = 1, (50.0 - level) / 50.0
    else:
        signal, strength = 0, 0.0
    if level > config.bullish_above:
        label = "bullish"
    elif level < config.bearish_below:
        label = "bearish"
    else:
        label = "neutral"
    return {"contrarian_signal": signal, "contrarian_strength": strength,
            "ratio": (level - 50.0) / 50.0, "confidence": abs(level - 50.0) / 50.0,
            "label": label}


def data_record(symbol: str, provider: str, o: list[Any]) -> dict[str, Any]:
    """An accepted observation as a sentiment_data message (schemas/sentiment_data.v1.json)."""
    return {"v": DATA_RECORD_VERSION, "kind": DATA_KIND, "symbol": symbol,
            "provider": provider, "ts_utc": o[TS], "long_pct": o[LONG], "short_pct": o[SHORT],
            "total_traders": o[TRADERS], "confidence": o[CONF]}


def all_records(state: dict[str, Any], config: SentimentConfig) -> list[dict[str, Any]]:
    """What recovery re-sends: per provider, the observations and metrics from the
    earliest of what the unsettled messages sent and the lateness horizon (all exact
    with the observations the state keeps)."""
    out: list[dict[str, Any]] = []
    symbol = state["symbol"]
    for name, p in state["providers"].items():
        if p["max_ts"] is None:
            continue
        start = p["max_ts"] - config.lateness_ms
        unsettled = _unsettled(p, state["offset"])
        if unsettled:
            start = min(start, unsettled[0][1])
        out.extend(data_record(symbol, name, o) for o in p["obs"] if o[TS] >= start)
        out.extend(metric_records(symbol, name, p["obs"], start, config))
    return out
