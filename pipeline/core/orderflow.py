"""Order flow as positioning: the derived sentiment provider ``orderflow``.

The candle fold counts, per symbol and minute of event time, the accepted ticks
whose price (mid, or the side present) is above the previous accepted tick's
(up-ticks) and below it (down-ticks); a tick at the same price counts for
neither. "Previous" is the tick accepted just before it, in arrival order, as the
fold sees them (late ticks inside the lateness included, re-sent quotes and
refused ticks not). When a minute is complete (a tick at or past its end, or the
wall clock, exactly as the 1m bar), it becomes one positioning observation
(schemas/sentiment_observation.v2.json) on the sentiment topic:

    ts_ms = the minute's END (when its flow is known), provider "orderflow",
    long_pct = 100 * up / (up + down), short_pct = 100 * down / (up + down)

and none for a minute with up + down = 0. A late tick that changes a complete
minute's counts sends its observation again (the sentiment agent takes the later
arrival at the same time). A minute leaves the state like a bar: once its last
version went out and no late tick can reach it.

The counting runs inside the candle fold's loop (for every tick, so it is written
inline there); this module holds the minutes' life after it. A minute in the state:
[start, up, down, done].
"""

from __future__ import annotations

from typing import Any

PROVIDER = "orderflow"
MINUTE_MS = 60_000
TARGET = "_topic"  # the runtime publishes a record naming a topic there (pipeline.runtime)
TOPIC = "sentiment"  # a field of pipeline.settings.Topics
START, UP, DOWN, DONE = range(4)


def observation(symbol: str, minute: list[int]) -> dict[str, Any]:
    n = minute[UP] + minute[DOWN]
    return {TARGET: TOPIC, "symbol": symbol, "ts_ms": minute[START] + MINUTE_MS,
            "provider": PROVIDER, "long_pct": 100.0 * minute[UP] / n,
            "short_pct": 100.0 * minute[DOWN] / n}


def merge_and_emit(old: list[list[int]], counts: dict[int, list[int]], max_ts: int | None,
                   lateness_ms: int, symbol: str, out: list[dict[str, Any]], offset: int,
                   done_by: int) -> list[list[int]]:
    """The state's minutes with this message's counts added; observations of the
    minutes complete by event time and not sent since they last changed go to ``out``
    (DONE: the sending message's ``offset`` plus one). A minute leaves once no late
    tick can reach it and its DONE is at or below ``done_by`` (its message settled)."""
    minutes = {m[START]: list(m) for m in old}
    for start, (up, down) in counts.items():
        entry = minutes.get(start)
        if entry is None:
            minutes[start] = [start, up, down, 0]
        else:
            entry[UP] += up
            entry[DOWN] += down
            entry[DONE] = 0
    horizon = None if max_ts is None else max_ts - lateness_ms
    keep: list[list[int]] = []
    for start in sorted(minutes):
        entry = minutes[start]
        end = start + MINUTE_MS
        changed = start in counts
        if not entry[DONE] and max_ts is not None and end <= max_ts:
            out.append(observation(symbol, entry))
            entry[DONE] = offset + 1
            changed = True
        if (entry[DONE] and entry[DONE] <= done_by and not changed and horizon is not None
                and end <= horizon):
            continue  # the message that sent its last version is settled
        keep.append(entry)
    return keep


def closed_by_clock(symbol: str, minutes: list[list[int]], max_ts: int | None,
                    now_ms: int, grace_ms: int) -> list[dict[str, Any]]:
    """Observations of the minutes the wall clock closes (the caller has checked that
    the symbol is quiet): not sent, past their end plus the grace."""
    return [observation(symbol, m) for m in minutes
            if not m[DONE] and m[START] + MINUTE_MS + grace_ms <= now_ms
            and (max_ts is None or m[START] + MINUTE_MS > max_ts)]


def complete(symbol: str, minutes: list[list[int]], max_ts: int | None
             ) -> list[dict[str, Any]]:
    """Observations of every complete minute held: what recovery re-sends."""
    return [observation(symbol, m) for m in minutes
            if m[DONE] or (max_ts is not None and m[START] + MINUTE_MS <= max_ts)]
