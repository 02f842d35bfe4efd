"""The DOM agent: book snapshots in, DOM metric bars and depth samples out
(pipeline.core.dom on the runtime).

Both kinds of record go to the DOM metrics topic, one frame per source message;
each record names its kind (``dom_bar`` or ``depth_sample``) and each sink takes
its own (consumers.dom_sinks).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.dom import DomConfig, all_records, closed_by_clock, fold, upgrade_state
from pipeline.runtime.declaration import AgentSpec, FoldOutcome, Reject
from pipeline.settings import Settings


def dom_config(settings: Settings) -> DomConfig:
    return DomConfig.from_names(
        settings.dom_timeframes, depth_levels=settings.dom_depth_levels,
        max_levels=settings.dom_max_levels, sample_ms=settings.dom_sample_ms,
        lateness_ms=(settings.lateness_ms if settings.dom_lateness_ms is None
                     else settings.dom_lateness_ms),
        close_grace_ms=settings.close_grace_ms,
        day_start_ms=settings.day_start_minutes * 60_000,
        known_symbols=frozenset(settings.symbols),
        future_tolerance_ms=settings.future_tolerance_ms,
    )


def dom_agent(settings: Settings) -> AgentSpec:
    config = dom_config(settings)

    def fold_message(state: dict[str, Any] | None, symbol: str, snapshots: list[Any],
                     position: int, now_ms: int, settled: int) -> FoldOutcome:
        r = fold(state, symbol, snapshots, position, now_ms, config, settled)
        return FoldOutcome(
            state=r.state, outputs=r.records, accepted=r.accepted, skipped=r.skipped,
            rejects=[Reject(x.index, x.reason, x.detail, x.snapshot) for x in r.rejected])

    def clock(state: dict[str, Any], now_ms: int, last_arrival_ms: int | None
              ) -> list[dict[str, Any]]:
        return closed_by_clock(upgrade_state(state, state["symbol"], config), now_ms, config,
                               last_arrival_ms)

    def resend(state: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        return all_records(upgrade_state(state, state["symbol"], config), config)

    return AgentSpec(name="dom", source="dom", output="dom_metrics", table="dom-state",
                     fold=fold_message, clock=clock, resend=resend,
                     known_keys=frozenset(settings.symbols), item_noun="snapshots")
