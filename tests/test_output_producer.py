"""The worker's librdkafka producers (pipeline.runtime.output_producer) on the real broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

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


def test_connect_to_a_broker_that_does_not_answer_warns_returns_and_is_tried_again(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    """A recovery must not fail on it: the producers retry on their own, and the first
    records wait for the broker as they would have without the connection up front. The
    timeout holds for all the topics together, not for each, and the next recovery
    tries again."""
    settings = make_settings(kafka_bootstrap="127.0.0.1:1")
    topics = [settings.topics.candles, settings.topics.dom_metrics, settings.topics.sentiment]
    elapsed: list[float] = []

    async def scenario() -> None:
        publishers = Publishers(settings, lambda: False, topics)
        try:
            for _ in range(2):
                started = time.monotonic()
                await publishers.connect(timeout=1.5)
                elapsed.append(time.monotonic() - started)
        finally:
            publishers.close()

    with caplog.at_level(logging.WARNING, logger="fxstream.runtime"):
        asyncio.run(scenario())
    # One warning per producer and attempt: the outputs stop at their first topic, so a
    # connect takes one timeout, not one per topic (three would take 4.5 s).
    assert caplog.text.count("no metadata of") == 4
    assert max(elapsed) < 3.0, elapsed


def test_connect_warns_of_a_topic_the_broker_does_not_have(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings()
    create_topics(settings)
    missing = f"{settings.topics.candles}-missing"

    async def scenario() -> None:
        publishers = Publishers(settings, lambda: False, [settings.topics.candles, missing])
        try:
            await publishers.connect(timeout=10)
            assert publishers._connecting is None  # the next recovery tries again
        finally:
            publishers.close()

    with caplog.at_level(logging.WARNING, logger="fxstream.runtime"):
        asyncio.run(scenario())
    assert f"topic {missing}" in caplog.text
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    assert missing not in admin.list_topics(timeout=10).topics  # asked about, not created
