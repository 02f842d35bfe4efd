"""DOM metrics in the main job: synthetic order books beside the synthetic ticks (their
mids follow the ticks' path), and each symbol's newest 1m DOM bar, read back from
PostgreSQL for the live view."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pipeline.settings import Settings

BOOK_SHARE = 0.1  # books per tick: a book every tenth tick keeps the demo light


def start_books(settings: Settings, symbols: list[str], rate: float, seed: int,
                stop: Callable[[], bool]) -> threading.Thread:
    """Synthetic books at ``BOOK_SHARE`` of the tick rate, stamped with the wall clock,
    on a thread until ``stop`` says so."""
    from producers.synthetic_book import run_synthetic_books

    thread = threading.Thread(target=run_synthetic_books, name="book-producer", daemon=True,
                              kwargs={"settings": settings, "symbols": symbols,
                                      "rate": max(1.0, rate * BOOK_SHARE), "seed": seed,
                                      "duration_s": None, "paced": True, "live_time": True,
                                      "should_stop": stop})
    thread.start()
    return thread


def newest_dom(settings: Settings, symbols: list[str]) -> dict[str, tuple[str, str, str]]:
    """Per symbol, from its newest 1m DOM bar: mean spread, time-weighted depth
    imbalance and closing microprice, as text ("-" for a null: a side was empty)."""
    import psycopg
    from psycopg.rows import dict_row

    out: dict[str, tuple[str, str, str]] = {}
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3,
                             row_factory=dict_row) as conn:
            rows: list[dict[str, Any]] = conn.execute(
                "SELECT DISTINCT ON (symbol) symbol, spread_mean, depth_imbalance, microprice "
                "FROM dom_metrics WHERE symbol = ANY(%s) AND timeframe = '1m' "
                "ORDER BY symbol, ts_utc DESC", (symbols,)).fetchall()
    except psycopg.Error:
        rows = []
    for r in rows:
        out[r["symbol"]] = (_text(r["spread_mean"], ".2g"), _text(r["depth_imbalance"], "+.2f"),
                            _text(r["microprice"], ".6g"))
    return out


def _text(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
