"""`fxstream worker`: every declared agent (candles, DOM metrics, sentiment) on one Faust worker,
until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import mode.loop

from pipeline.agents.candles import candle_agent
from pipeline.agents.dom import dom_agent
from pipeline.agents.orderbook import with_orderbook
from pipeline.agents.sentiment import sentiment_agent
from pipeline.core.candles import FOLD_LOOP
from pipeline.gc_pauses import freeze_startup_objects
from pipeline.observability.health import Health, Heartbeat, keep_beating, serve
from pipeline.observability.metrics import WORKER_METRICS_PORT, WorkerMetrics, new_registry
from pipeline.process_status import write_status
from pipeline.runtime.app import build_app
from pipeline.runtime.worker import CHANGELOG_CONFIG, WorkerRuntime
from pipeline.settings import Settings
from pipeline.topics import create_changelog_topics, create_topics

log = logging.getLogger("fxstream.worker")


def wait_for_kafka(settings: Settings, max_delay_s: float = 15.0,
                   heartbeat: Heartbeat | None = None, **status: Any) -> None:
    """Create the topics, waiting with backoff while Kafka does not answer (beating
    ``heartbeat`` meanwhile: waiting is alive)."""
    delay = 1.0
    while True:
        try:
            create_topics(settings)
            return
        except ConnectionError as exc:
            log.warning("waiting for Kafka: %s; trying again in %.0f s", exc, delay)
            write_status(settings.state_dir, "worker", "waiting", waiting_for="Kafka",
                         error=str(exc), group=settings.worker_group, **status)
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                if heartbeat is not None:
                    heartbeat.beat()
                time.sleep(min(left, 1.0))
            delay = min(delay * 2, max_delay_s)


def run_worker(settings: Settings) -> None:
    # The endpoints come first: until the agents hold recovered partitions, /readyz says
    # why not (waiting for Kafka, rebalancing, recovering).
    registry = new_registry()
    metrics = WorkerMetrics.build(registry)
    health = Health(settings.health_stale_s)
    loop_beat = health.heartbeat("worker event loop")
    health.checks.append(lambda: "starting: waiting for Kafka")
    health.bind(metrics.common)
    port = WORKER_METRICS_PORT if settings.metrics_port is None else settings.metrics_port
    endpoints = serve(registry, health, settings.metrics_host, port, "worker")
    status = {"metrics": endpoints.url} if endpoints is not None else {}

    wait_for_kafka(settings, heartbeat=loop_beat, **status)
    if settings.event_loop == "uvloop":
        mode.loop.use("uvloop")  # before the app or the worker makes a loop
    app = build_app(settings)
    dom = dom_agent(settings)
    if settings.sentiment_orderbook:
        dom = with_orderbook(dom, settings)  # the derived "orderbook" sentiment provider
    runtime = WorkerRuntime(app, settings, [candle_agent(settings), dom,
                                            sentiment_agent(settings)], metrics)
    health.checks[:] = [runtime.readiness]
    create_changelog_topics(settings, runtime.changelog_topics(), CHANGELOG_CONFIG)
    write_status(settings.state_dir, "worker", "running", group=settings.worker_group,
                 topic=settings.topics.ticks, **status)
    # faust.Worker installs SIGTERM/SIGINT handlers that stop the agents, flush the
    # producer, commit the offsets of processed messages and leave the group.
    # override_logging=False: mode would otherwise clear the root handlers and install its
    # own colored one on stdout, dropping the format and the redaction of pipeline.logs.
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=False)
    keep_beating(worker.loop, loop_beat)
    log.info("event loop: %s", type(worker.loop).__module__.split(".")[0])
    if FOLD_LOOP == "compiled":
        log.info("candle fold: the compiled loop (pipeline.core.candle_kernel)")
    else:
        log.warning("candle fold: the plain Python loop, about a fifth as fast: "
                    "pipeline.core.candle_kernel was not built where fxstream was installed "
                    "(it needs a C compiler; reinstall with one)")
    freeze_startup_objects()
    try:
        worker.execute_from_commandline()
    finally:
        runtime.publishers.close()
        write_status(settings.state_dir, "worker", "stopped", group=settings.worker_group)
        if endpoints is not None:
            endpoints.close()
