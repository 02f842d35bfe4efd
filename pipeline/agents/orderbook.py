"""The derived ``orderbook`` sentiment provider on the DOM agent: its declaration wrapped.

The DOM agent's fold runs as declared; on the snapshots it accepted (those it did not
refuse), pipeline.core.orderbook counts each minute's time-weighted top-N depth, in
the same state record (under ``orderbook``: the DOM fold carries keys it does not
know), and the complete minutes go to the sentiment topic as observations. The DOM
agent's own records, refusals and state are left as they were.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.agents.dom import dom_config
from pipeline.core import orderbook
from pipeline.runtime.declaration import AgentSpec, FoldOutcome
from pipeline.settings import Settings

KEY = "orderbook"


def with_orderbook(spec: AgentSpec, settings: Settings) -> AgentSpec:
    """``spec`` (the DOM agent's) that also sends the ``orderbook`` observations."""
    config = dom_config(settings)
    levels = config.depth_levels
    lateness = config.lateness_ms
    grace = config.close_grace_ms
    dom_fold, dom_clock, dom_resend = spec.fold, spec.clock, spec.resend

    def fold_message(state: dict[str, Any] | None, symbol: str, snapshots: list[Any],
                     position: int, now_ms: int, settled: int) -> FoldOutcome:
        out = dom_fold(state, symbol, snapshots, position, now_ms, settled)
        if out.skipped or out.state is None:
            return out
        refused = {r.index for r in out.rejects}
        minutes = orderbook.copy_minutes(out.state.get(KEY, []))
        changed = set()
        for i, raw in enumerate(snapshots):
            if i not in refused:  # checked by the DOM fold: a valid snapshot
                changed.add(orderbook.add(minutes, int(raw["ts_ms"]),
                                          orderbook.depth(raw["bids"], levels),
                                          orderbook.depth(raw["asks"], levels)))
        records: list[dict[str, Any]] = []
        kept = orderbook.emit_and_evict(minutes, changed, out.state["max_ts"], lateness,
                                        symbol, records, position, settled)
        return FoldOutcome(state={**out.state, KEY: kept}, outputs=out.outputs + records,
                           rejects=out.rejects, accepted=out.accepted)

    def clock(state: dict[str, Any], now_ms: int, last_arrival_ms: int | None
              ) -> list[dict[str, Any]]:
        out = dom_clock(state, now_ms, last_arrival_ms)
        if last_arrival_ms is not None and now_ms - last_arrival_ms >= grace:
            out += orderbook.closed_by_clock(state["symbol"], state.get(KEY, []),
                                             state.get("max_ts"), now_ms, grace)
        return out

    def resend(state: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        return dom_resend(state, now_ms) + orderbook.complete(
            state["symbol"], state.get(KEY, []), state.get("max_ts"))

    return replace(spec, fold=fold_message, clock=clock, resend=resend,
                   also=(*spec.also, orderbook.TOPIC))
