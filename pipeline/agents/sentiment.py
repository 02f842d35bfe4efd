"""The sentiment agent: positioning observations in, sentiment metrics and the accepted
observations out (pipeline.core.sentiment on the runtime).

Both kinds of record go to the sentiment metrics topic, one frame per source
message; each names its kind (``sentiment_metric`` or ``sentiment_data``) and each
sink takes its own (consumers.sentiment_sinks). Nothing closes by the wall clock:
every metric belongs to an observation and is sent when it arrives.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.sentiment import SentimentConfig, all_records, fold, upgrade_state
from pipeline.runtime.declaration import AgentSpec, FoldOutcome, Reject
from pipeline.settings import Settings


def sentiment_config(settings: Settings) -> SentimentConfig:
    return SentimentConfig(
        lateness_ms=(settings.lateness_ms if settings.sentiment_lateness_ms is None
                     else settings.sentiment_lateness_ms),
        future_tolerance_ms=settings.future_tolerance_ms,
        known_symbols=frozenset(settings.symbols),
        sum_tolerance=settings.sentiment_sum_tolerance,
        contrarian_high=settings.sentiment_contrarian_high,
        contrarian_low=settings.sentiment_contrarian_low,
        bullish_above=settings.sentiment_bullish_above,
        bearish_below=settings.sentiment_bearish_below,
    )


def sentiment_agent(settings: Settings) -> AgentSpec:
    config = sentiment_config(settings)

    def fold_message(state: dict[str, Any] | None, symbol: str, observations: list[Any],
                     position: int, now_ms: int, settled: int) -> FoldOutcome:
        r = fold(state, symbol, observations, position, now_ms, config, settled)
        return FoldOutcome(
            state=r.state, outputs=r.records, accepted=r.accepted, skipped=r.skipped,
            rejects=[Reject(x.index, x.reason, x.detail, x.observation) for x in r.rejected])

    def clock(state: dict[str, Any], now_ms: int, last_arrival_ms: int | None
              ) -> list[dict[str, Any]]:
        return []

    def resend(state: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        return all_records(upgrade_state(state, state["symbol"]), config)

    return AgentSpec(name="sentiment", source="sentiment", output="sentiment_metrics",
                     table="sentiment-state", fold=fold_message, clock=clock, resend=resend,
                     known_keys=frozenset(settings.symbols), item_noun="observations")
