"""`fxstream worker`: every declared agent (candles, DOM metrics, sentiment) on one Faust worker,
until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import time

import faust

from pipeline.agents.candles import candle_agent
from pipeline.agents.dom import dom_agent
from pipeline.agents.orderbook import with_orderbook
from pipeline.agents.sentiment import sentiment_agent
from pipeline.process_status import write_status
from pipeline.runtime.app import build_app
from pipeline.runtime.worker import WorkerRuntime
from pipeline.settings import Settings
from pipeline.topics import create_topics

log = logging.getLogger("fxstream.worker")


def wait_for_kafka(settings: Settings, max_delay_s: float = 15.0) -> None:
    """Create the topics, waiting with backoff while Kafka does not answer."""
    delay = 1.0
    while True:
        try:
            create_topics(settings)
            return
        except ConnectionError as exc:
            log.warning("waiting for Kafka: %s; trying again in %.0f s", exc, delay)
            write_status(settings.state_dir, "worker", "waiting", waiting_for="Kafka",
                         error=str(exc), group=settings.worker_group)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def run_worker(settings: Settings) -> None:
    wait_for_kafka(settings)
    app = build_app(settings)
    dom = dom_agent(settings)
    if settings.sentiment_orderbook:
        dom = with_orderbook(dom, settings)  # the derived "orderbook" sentiment provider
    WorkerRuntime(app, settings, [candle_agent(settings), dom, sentiment_agent(settings)])
    write_status(settings.state_dir, "worker", "running", group=settings.worker_group,
                 topic=settings.topics.ticks)
    # faust.Worker installs SIGTERM/SIGINT handlers that stop the agents, flush the
    # producer, commit the offsets of processed messages and leave the group.
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=True)
    try:
        worker.execute_from_commandline()
    finally:
        write_status(settings.state_dir, "worker", "stopped", group=settings.worker_group)
