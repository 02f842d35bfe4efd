"""The worker's librdkafka fetcher of its source partitions, on the real broker.

The runtime relies on two things of it: each assignment delivers every assigned
partition from exactly the offset given, in order and without a hole, and nothing
fetched under an earlier assignment reaches the agent after a new one (a revoked
partition's messages would otherwise be applied by a worker that no longer holds
it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.runtime.fetcher import SourceFetcher
from pipeline.settings import Settings


def _topic_with(settings: Settings, counts: dict[int, int]) -> str:
    topic = settings.topics.ticks
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=len(counts),
                                  replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for p, n in counts.items():
        for o in range(n):
            producer.produce(topic, f"{p}:{o}".encode(), b"k", partition=p)
    assert producer.flush(30) == 0
    return topic


async def _collect(fetcher: SourceFetcher, want: int, timeout_s: float = 30.0
                   ) -> dict[int, list[int]]:
    """Offsets delivered per partition until ``want`` messages came."""
    got: dict[int, list[int]] = {}
    seen = 0
    async with asyncio.timeout(timeout_s):
        while seen < want:
            batch = await fetcher.batches()
            assert batch.epoch == fetcher.epoch
            for m in batch.messages:
                assert m.value() == f"{m.partition()}:{m.offset()}".encode()
                got.setdefault(m.partition(), []).append(m.offset())
                seen += 1
    return got


def test_each_partition_comes_from_the_offset_assigned_and_an_old_assignment_is_dropped(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    topic = _topic_with(settings, {0: 100, 1: 100})

    async def scenario() -> None:
        fetcher = SourceFetcher(settings, topic, "test")
        fetcher.start(asyncio.get_running_loop())
        try:
            await fetcher.connect()
            fetcher.assign({0: 10, 1: 50})
            got = await _collect(fetcher, 90 + 50)
            assert got == {0: list(range(10, 100)), 1: list(range(50, 100))}
            assert fetcher.highwater(0) == 100 and fetcher.highwater(1) == 100
            # Everything is fetched and delivered again from the new offsets, and
            # nothing of partition 1 (no longer assigned) comes after the assignment.
            fetcher.assign({0: 95})
            assert await _collect(fetcher, 5) == {0: [95, 96, 97, 98, 99]}
            fetcher.unassign()
            fetcher.assign({1: 0})
            assert await _collect(fetcher, 100) == {1: list(range(100))}
        finally:
            await asyncio.to_thread(fetcher.close)

    asyncio.run(scenario())


def test_a_batch_delivered_before_a_new_assignment_is_never_handed_out(
        make_settings: Callable[..., Settings]) -> None:
    """The batches already waiting for the agent when the runtime reassigns (a
    revocation, then a recovery) belong to the old assignment: they are dropped, and
    the new one starts where it was told to."""
    settings = make_settings()
    topic = _topic_with(settings, {0: 3000})

    async def scenario() -> None:
        fetcher = SourceFetcher(settings, topic, "test")
        fetcher.start(asyncio.get_running_loop())
        try:
            await fetcher.connect()
            fetcher.assign({0: 0})
            first = await fetcher.batches()
            assert first.messages[0].offset() == 0
            # let the thread queue more batches of this assignment for the agent
            async with asyncio.timeout(30):
                while not fetcher.waiting():
                    await asyncio.sleep(0.01)
            fetcher.assign({0: 2000})
            got = await _collect(fetcher, 1000)
            assert got == {0: list(range(2000, 3000))}
        finally:
            await asyncio.to_thread(fetcher.close)

    asyncio.run(scenario())
