"""Order-book depth as positioning: the derived sentiment provider ``orderbook``.

Beside the DOM fold (pipeline.core.dom, which it does not change), per symbol and
minute of event time: each accepted snapshot's B and A, the sizes summed over the
top N levels of its bid and ask side (N = FXSTREAM_DOM_DEPTH_LEVELS), stand from
its time to the next snapshot's time in the same minute (of several in one
millisecond, the later arrival stands), the last one to the minute's end; nothing
carries in from the minute before. When the minute is complete (exactly when the
DOM fold's 1m bar would be: a snapshot at or past its end, or the wall clock), it
becomes one positioning observation (schemas/sentiment_observation.v2.json) on the
sentiment topic:

    ts_ms = the minute's END, provider "orderbook",
    long_pct = 100 * B / (B + A), short_pct = 100 * A / (B + A)

with B and A the time-weighted means of the minute's depths (the weights cancel:
B / (B + A) = sum(B_i * t_i) / sum((B_i + A_i) * t_i)); none when B + A = 0. A late
snapshot inside the lateness revises its minute, which is sent again.

A minute in the state: [start, offsets, bids, asks, pre_b, pre_a, done]: the points
(offsets from the start, sorted, one per millisecond) that a late snapshot can still
shorten, and the sums of depth times duration of the points before them (settled:
a late snapshot lands at or after the lateness horizon, so only the last point
before it can still stand for less time).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

PROVIDER = "orderbook"
MINUTE_MS = 60_000
TARGET = "_topic"  # the runtime publishes a record naming a topic there (pipeline.runtime)
TOPIC = "sentiment"  # a field of pipeline.settings.Topics
START, OFFSETS, BIDS, ASKS, PRE_B, PRE_A, DONE = range(7)


def depth(levels: list[Any], n: int) -> float:
    """The sizes of the top ``n`` levels of a checked side."""
    total = 0.0
    for level in levels[:n]:
        total += level[1]
    return total


def add(minutes: dict[int, list[Any]], ts: int, bid_depth: float, ask_depth: float) -> int:
    """One accepted snapshot's depths into its minute; returns the minute's start."""
    start = ts - ts % MINUTE_MS
    entry = minutes.get(start)
    if entry is None:
        entry = minutes[start] = [start, [], [], [], 0.0, 0.0, 0]
    offsets = entry[OFFSETS]
    at = ts - start
    i = bisect_left(offsets, at)
    if i < len(offsets) and offsets[i] == at:
        entry[BIDS][i], entry[ASKS][i] = bid_depth, ask_depth  # the later arrival stands
    else:
        offsets.insert(i, at)
        entry[BIDS].insert(i, bid_depth)
        entry[ASKS].insert(i, ask_depth)
    entry[DONE] = 0
    return start


def observation(symbol: str, entry: list[Any]) -> dict[str, Any] | None:
    """The complete minute as an observation; None when its depth was nothing."""
    offsets, bids, asks = entry[OFFSETS], entry[BIDS], entry[ASKS]
    b, a = entry[PRE_B], entry[PRE_A]
    last = len(offsets) - 1
    for i in range(len(offsets)):
        stands = (offsets[i + 1] if i < last else MINUTE_MS) - offsets[i]
        b += bids[i] * stands
        a += asks[i] * stands
    if not b + a > 0:
        return None
    return {TARGET: TOPIC, "symbol": symbol, "ts_ms": entry[START] + MINUTE_MS,
            "provider": PROVIDER, "long_pct": 100.0 * b / (b + a),
            "short_pct": 100.0 * a / (b + a)}


def _settle(entry: list[Any], horizon: int) -> None:
    offsets = entry[OFFSETS]
    keep_from = bisect_left(offsets, horizon - entry[START]) - 1
    if keep_from <= 0:
        return
    bids, asks = entry[BIDS], entry[ASKS]
    for i in range(keep_from):
        stands = offsets[i + 1] - offsets[i]
        entry[PRE_B] += bids[i] * stands
        entry[PRE_A] += asks[i] * stands
    entry[OFFSETS], entry[BIDS], entry[ASKS] = (offsets[keep_from:], bids[keep_from:],
                                                asks[keep_from:])


def copy_minutes(old: list[list[Any]]) -> dict[int, list[Any]]:
    return {m[START]: [m[START], list(m[OFFSETS]), list(m[BIDS]), list(m[ASKS]), m[PRE_B],
                       m[PRE_A], m[DONE]] for m in old}


def emit_and_evict(minutes: dict[int, list[Any]], changed: set[int], max_ts: int | None,
                   lateness_ms: int, symbol: str, out: list[dict[str, Any]], offset: int,
                   settled: int) -> list[list[Any]]:
    """Observations of the minutes complete by event time and not sent since they last
    changed go to ``out`` (DONE: the sending message's ``offset`` plus one); returns
    the minutes a late snapshot can still reach or whose sending message is not yet
    ``settled`` (its outputs known stored), settled."""
    horizon = None if max_ts is None else max_ts - lateness_ms
    keep: list[list[Any]] = []
    for start in sorted(minutes):
        entry = minutes[start]
        end = start + MINUTE_MS
        sent = False
        if not entry[DONE] and max_ts is not None and end <= max_ts:
            obs = observation(symbol, entry)
            if obs is not None:
                out.append(obs)
            entry[DONE] = offset + 1
            sent = True
        if (entry[DONE] and entry[DONE] <= settled + 1 and not sent and start not in changed
                and horizon is not None and end <= horizon):
            continue  # the message that sent its last version is settled
        if horizon is not None:
            _settle(entry, horizon)
        keep.append(entry)
    return keep


def closed_by_clock(symbol: str, minutes: list[list[Any]], max_ts: int | None,
                    now_ms: int, grace_ms: int) -> list[dict[str, Any]]:
    """Observations of the minutes the wall clock closes (the caller has checked that
    the symbol is quiet): not sent, past their end plus the grace."""
    out = []
    for m in minutes:
        end = m[START] + MINUTE_MS
        if not m[DONE] and end + grace_ms <= now_ms and (max_ts is None or end > max_ts):
            obs = observation(symbol, m)
            if obs is not None:
                out.append(obs)
    return out


def complete(symbol: str, minutes: list[list[Any]], max_ts: int | None
             ) -> list[dict[str, Any]]:
    """Observations of every complete minute held: what recovery re-sends."""
    out = []
    for m in minutes:
        if m[DONE] or (max_ts is not None and m[START] + MINUTE_MS <= max_ts):
            obs = observation(symbol, m)
            if obs is not None:
                out.append(obs)
    return out
