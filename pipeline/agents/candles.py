"""The candle agent: tick frames in, OHLC bars out (pipeline.core.candles on the runtime).

With FXSTREAM_SENTIMENT_ORDERFLOW on, it also sends each complete minute's order flow
as a positioning observation to the sentiment topic (pipeline.core.orderflow)."""

from __future__ import annotations

from typing import Any

from pipeline.core import orderflow
from pipeline.core.candles import CandleConfig, all_bars, closed_by_clock, fold, upgrade_state
from pipeline.core.ticks import TickRecord
from pipeline.runtime.declaration import AgentSpec, FoldOutcome, Reject
from pipeline.settings import Settings


def candle_config(settings: Settings) -> CandleConfig:
    return CandleConfig.from_names(
        settings.timeframes, lateness_ms=settings.lateness_ms,
        close_grace_ms=settings.close_grace_ms, day_start_ms=settings.day_start_minutes * 60_000,
        known_symbols=frozenset(settings.symbols),
        future_tolerance_ms=settings.future_tolerance_ms,
        orderflow=settings.sentiment_orderflow,
    )


def candle_agent(settings: Settings) -> AgentSpec:
    config = candle_config(settings)

    def fold_message(state: dict[str, Any] | None, symbol: str, ticks: list[Any],
                     position: int, now_ms: int, settled: int) -> FoldOutcome:
        r = fold(state, symbol, ticks, position, now_ms, config, settled)
        return FoldOutcome(
            state=r.state, outputs=r.candles, accepted=r.accepted, skipped=r.skipped,
            rejects=[Reject(x.index, x.reason, x.detail, x.tick) for x in r.rejected])

    def clock(state: dict[str, Any], now_ms: int, last_arrival_ms: int | None
              ) -> list[dict[str, Any]]:
        state = upgrade_state(state, state["symbol"], config)
        return closed_by_clock(state, now_ms, config, last_arrival_ms)

    def resend(state: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        return all_bars(upgrade_state(state, state["symbol"], config), now_ms, config)

    return AgentSpec(name="candle", source="ticks", output="candles", table="candle-state",
                     fold=fold_message, clock=clock, resend=resend,
                     known_keys=frozenset(settings.symbols), item_noun="ticks",
                     also=(orderflow.TOPIC,) if config.orderflow else (), record=TickRecord)
