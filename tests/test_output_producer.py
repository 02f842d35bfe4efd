"""The worker's librdkafka producers (pipeline.runtime.output_producer) on the real broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from pipeline.runtime.output_producer import Publishers
from pipeline.settings import Settings
from pipeline.topics import create_topics


def test_connect_starts_both_producers_once_for_every_caller(
        make_settings: Callable[..., Settings]) -> None:
    """Every agent's recovery waits for the connection; the first starts it, and the
    producers it starts are the ones every later send and recovery uses."""
    settings = make_settings()
    create_topics(settings)

    async def scenario() -> None:
        publishers = Publishers(settings, lambda: False, [settings.topics.candles])
        try:
            await asyncio.gather(publishers.connect(), publishers.connect())
            outputs, dead_letters = publishers.outputs._producer, publishers.dead_letters._producer
            assert outputs is not None and dead_letters is not None
            await publishers.connect()
            assert publishers.outputs._producer is outputs
            assert publishers.dead_letters._producer is dead_letters
            sent = await publishers.outputs.send(settings.topics.candles, b"EUR/USD", b"{}")
            await asyncio.wait_for(sent, 30)
            assert await publishers.before_commit()
        finally:
            publishers.close()

    asyncio.run(scenario())


def test_connect_to_a_broker_that_does_not_answer_warns_and_returns(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    """A recovery must not fail on it: the producers retry on their own, and the first
    records wait for the broker as they would have without the connection up front."""
    settings = make_settings(kafka_bootstrap="127.0.0.1:1")

    async def scenario() -> None:
        publishers = Publishers(settings, lambda: False, [settings.topics.candles])
        try:
            await publishers.connect(timeout=1.0)
        finally:
            publishers.close()

    with caplog.at_level(logging.WARNING, logger="fxstream.runtime"):
        asyncio.run(scenario())
    assert "no metadata of" in caplog.text
