"""Every sink declaration by its table, and running one or several in one process.

Each table has its own consumer group: the candle sink keeps FXSTREAM_SINK_GROUP,
the DOM sinks append their table (``<group>-dom-metrics``, ``<group>-market-depth``)
because both read the DOM metrics topic and each must see all of it; so do the
sentiment sinks (``<group>-sentiment-metrics``, ``<group>-sentiment-data``) on the
sentiment metrics topic.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from consumers.candle_sink import CANDLES
from consumers.dom_sinks import DOM_METRICS, MARKET_DEPTH
from consumers.runtime import SinkRuntime, SinkSpec, SinkStats
from consumers.sentiment_sinks import SENTIMENT_DATA, SENTIMENT_METRICS
from pipeline.gc_pauses import freeze_startup_objects
from pipeline.observability.health import Health, serve
from pipeline.observability.metrics import (
    SINK_METRICS_PORT,
    SinkMetrics,
    TableMetrics,
    new_registry,
)
from pipeline.settings import Settings

log = logging.getLogger("fxstream.sink")

SINKS: dict[str, tuple[SinkSpec, str]] = {
    # table: (declaration, consumer group suffix)
    "market_data_candles": (CANDLES, ""),
    "dom_metrics": (DOM_METRICS, "-dom-metrics"),
    "market_depth": (MARKET_DEPTH, "-market-depth"),
    "sentiment_metrics": (SENTIMENT_METRICS, "-sentiment-metrics"),
    "sentiment_data": (SENTIMENT_DATA, "-sentiment-data"),
}
DEFAULT_TABLES = ("market_data_candles",)


def parse_tables(text: str) -> tuple[str, ...]:
    """'all', or comma-separated table names; raises ValueError naming a bad one."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return tuple(SINKS)
    unknown = [n for n in names if n not in SINKS]
    if unknown or not names:
        bad = ", ".join(unknown) or repr(text)
        raise ValueError(f"unknown table {bad}; the tables are "
                         f"{', '.join(SINKS)} (or all)")
    return tuple(dict.fromkeys(names))


def sink_settings(table: str, settings: Settings) -> Settings:
    """The settings a table's sink runs with: its own consumer group."""
    suffix = SINKS[table][1]
    if not suffix:
        return settings
    return settings.model_copy(update={"sink_group": settings.sink_group + suffix})


def run_sinks(settings: Settings, tables: tuple[str, ...] = DEFAULT_TABLES
              ) -> dict[str, SinkStats]:
    """Run the sinks of ``tables`` until SIGTERM or SIGINT: one alone on this thread,
    several each on a thread of its own (the runtime keeps every consumer call of a
    sink on that sink's thread). One metrics and health endpoint serves them all."""
    registry = new_registry()
    metrics = SinkMetrics.build(registry)
    health = Health(settings.health_stale_s)
    health.bind(metrics.common)
    sinks = {t: SinkRuntime(SINKS[t][0], sink_settings(t, settings), TableMetrics.of(metrics, t),
                            health.heartbeat(f"{t} sink poll loop")) for t in tables}
    health.checks.extend(s.readiness for s in sinks.values())
    port = SINK_METRICS_PORT if settings.metrics_port is None else settings.metrics_port
    endpoints = serve(registry, health, settings.metrics_host, port, "sink")
    try:
        for s in sinks.values():
            s.metrics_url = endpoints.url if endpoints is not None else None
        freeze_startup_objects()
        return _run(sinks, tables)
    finally:
        if endpoints is not None:
            endpoints.close()


def _run(sinks: dict[str, SinkRuntime], tables: tuple[str, ...]) -> dict[str, SinkStats]:
    if len(sinks) == 1:
        (only,) = sinks.values()
        only.install_signal_handlers()
        return {tables[0]: only.run()}

    def stop(*_: Any) -> None:
        for s in sinks.values():
            s.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    results: dict[str, SinkStats] = {}
    errors: list[BaseException] = []

    def run(table: str, sink: SinkRuntime) -> None:
        try:
            results[table] = sink.run()
        except BaseException as exc:
            log.exception("%s sink failed", table)
            errors.append(exc)
            stop()

    threads = [threading.Thread(target=run, args=(t, s), name=f"sink-{t}")
               for t, s in sinks.items()]
    for th in threads:
        th.start()
    for th in threads:
        while th.is_alive():
            th.join(0.5)  # a timeout keeps this thread free to take the signals
    if errors:
        raise errors[0]
    return results
