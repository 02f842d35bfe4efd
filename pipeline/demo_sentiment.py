"""Sentiment in the main job: a synthetic positioning feed beside the ticks, and each
symbol's newest sentiment per provider, read back from PostgreSQL for the live view."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pipeline.settings import Settings

POSITIONING_INTERVAL_S = 5.0  # a fast feed, so the demo shows it move
SHORT_LABEL = {"bullish": "bull", "bearish": "bear", "neutral": "flat"}


def start_positioning(settings: Settings, symbols: list[str], stop: Callable[[], bool]
                      ) -> threading.Thread:
    """The synthetic positioning feed (provider ``synthetic``), stamped with the wall
    clock, on a thread until ``stop`` says so."""
    from producers.synthetic_sentiment import run_synthetic_sentiment

    thread = threading.Thread(target=run_synthetic_sentiment, name="positioning-producer",
                              daemon=True, kwargs={
                                  "settings": settings, "symbols": symbols,
                                  "interval_s": POSITIONING_INTERVAL_S, "duration_s": None,
                                  "paced": True, "live_time": True, "should_stop": stop})
    thread.start()
    return thread


def newest_sentiment(settings: Settings, symbols: list[str]) -> dict[str, str]:
    """Per symbol, one short text: each provider's newest long_pct, its 5-minute mean
    and label, e.g. ``orderflow 62 (ma5 55) bull | synthetic 41 (ma5 43) flat``."""
    import psycopg
    from psycopg.rows import dict_row

    out: dict[str, list[str]] = {s: [] for s in symbols}
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3,
                             row_factory=dict_row) as conn:
            rows: list[dict[str, Any]] = conn.execute(
                "SELECT DISTINCT ON (symbol, provider) symbol, provider, long_pct, ma_5m, "
                "label FROM sentiment_metrics WHERE symbol = ANY(%s) "
                "ORDER BY symbol, provider, ts_utc DESC", (symbols,)).fetchall()
    except psycopg.Error:
        rows = []
    for r in rows:
        out[r["symbol"]].append(f"{r['provider']} {r['long_pct']:.0f} (ma5 {r['ma_5m']:.0f}) "
                                f"{SHORT_LABEL.get(r['label'], r['label'])}")
    return {s: " | ".join(parts) or "-" for s, parts in out.items()}
