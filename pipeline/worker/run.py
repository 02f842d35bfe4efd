"""`fxstream worker`: run the Faust worker until SIGTERM or SIGINT."""

from __future__ import annotations

import faust

from pipeline.settings import Settings
from pipeline.topics import create_topics
from pipeline.worker.app import build_app
from pipeline.worker.candles import install_candle_agent


def run_worker(settings: Settings) -> None:
    create_topics(settings)
    app = build_app(settings)
    install_candle_agent(app, settings)
    # faust.Worker installs SIGTERM/SIGINT handlers that stop the agents, flush the
    # producer, commit the offsets of processed messages and leave the group.
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=True)
    worker.execute_from_commandline()
