"""Builds the Faust application from the settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from mode.services import WaitResults

from pipeline.runtime.commit_floor import CommitFloor
from pipeline.settings import Settings

_EVENT_WAIT = asyncio.Event.wait.__code__  # the flow's suspend_flow.wait() coroutine


def _consumer_with_fetch_wait(wait_ms: int) -> type[AIOKafkaConsumer]:
    """Faust's aiokafka consumer with the broker's fetch wait set to ``wait_ms``, offset
    commits that never go back (pipeline.runtime.commit_floor), and hooks that run
    before it waits for every message taken to be acknowledged.

    Faust hard-codes ``fetch_max_wait_ms=1500``. While a fetched batch waits to be
    processed, aiokafka fetches only the partitions with nothing pending; when one of
    them is quiet the broker holds that fetch for the whole wait, and the busy
    partitions are not fetched again until it returns. After any hiccup the worker
    then settles at about 1.5 s of latency; a short wait bounds that stall.
    """

    class FetchWaitThread(AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = wait_ms  # read by the fetcher when it starts
            return consumer

        async def on_partitions_assigned(self, assigned: set[Any], generation: int) -> None:
            # In the consumer's own thread, before its fetcher has positions for them:
            # partitions read elsewhere (pipeline.runtime.fetcher) are never fetched here.
            external = self.consumer.external_topics  # type: ignore[attr-defined]
            paused = [tp for tp in assigned if tp.topic in external]
            if paused:
                self._ensure_consumer().pause(*(
                    aiokafka.TopicPartition(tp.topic, tp.partition) for tp in paused))
            await super().on_partitions_assigned(assigned, generation)

    class FetchWaitConsumer(AIOKafkaConsumer):
        # Topics whose partitions this consumer holds for the group (membership,
        # assignment, commits) but never fetches or delivers: the worker runtime reads
        # them through librdkafka (pipeline.runtime.fetcher). Set before it is made.
        external_topics: frozenset[str] = frozenset()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.commit_floor = CommitFloor()
            self.before_wait_empty: list[Callable[[], Awaitable[None]]] = []
            # Each must answer True before an offset commit: the worker's outputs go
            # through a producer of their own, which Faust does not flush
            self.before_commit: list[Callable[[], Awaitable[bool]]] = []
            self._interrupt: asyncio.Future[None] | None = None
            super().__init__(*args, **kwargs)

        def _set_active_tps(self, tps: set[Any]) -> set[Any]:
            return super()._set_active_tps(self._own(tps))

        def resume_partitions(self, tps: Any) -> None:
            super().resume_partitions(self._own(tps))

        def on_buffer_drop(self, tp: Any) -> None:
            if tp.topic not in self.external_topics:
                super().on_buffer_drop(tp)

        def verify_event_path(self, now: float, tp: Any) -> None:
            if tp.topic not in self.external_topics:  # it is never fetched here
                super().verify_event_path(now, tp)

        def _own(self, tps: Any) -> set[Any]:
            return {tp for tp in tps if tp.topic not in self.external_topics}

        async def wait_empty(self) -> None:
            # At a revocation and at shutdown Faust waits here until every message taken
            # is acknowledged; the worker runtime acknowledges a run of messages once
            # their states are written, so it writes them first.
            if not self.should_stop:
                for hook in self.before_wait_empty:
                    await hook()
            await super().wait_empty()

        async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
            # Faust's drain loop races each message's delivery to its stream against the
            # flow's suspension, and mode's wait_first adds the consumer's stop and crash:
            # four tasks a message, three of them cancelled again. While the flow runs,
            # the delivery runs as one task against one task shared by all three, which
            # lives until one of them happens; the outcome is the same.
            if (timeout is not None or len(coros) != 2 or not asyncio.iscoroutine(coros[0])
                    or getattr(coros[1], "cr_code", None) is not _EVENT_WAIT
                    or coros[1].cr_frame.f_locals.get("self") is not self.suspend_flow
                    or self.suspend_flow.is_set() or self.should_stop):
                return await super().wait_first(*coros, timeout=timeout)
            interrupt = self._interrupt
            if interrupt is None or interrupt.done():
                interrupt = self._interrupt = asyncio.ensure_future(self._interrupted())
            delivery_coro, suspended = coros
            suspended.close()
            delivery = asyncio.ensure_future(delivery_coro)
            try:
                await asyncio.wait((delivery, interrupt), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not delivery.done():
                    delivery.cancel()  # it unwinds on a later turn of the loop, as in mode
            if delivery.done():
                result = delivery.result()  # its exception, or its cancellation, goes up
                if self.should_stop:
                    return WaitResults([], [], True)
                return WaitResults([delivery_coro], [result], False)
            if self.should_stop:
                return WaitResults([], [], True)
            return WaitResults([suspended], [True], False)

        async def _interrupted(self) -> None:
            """Until the flow is suspended or the consumer stops or crashes."""
            waits = [asyncio.ensure_future(event.wait())
                     for event in (self.suspend_flow, self._stopped, self._crashed)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

        def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
            return FetchWaitThread(self, loop=self.loop, beacon=self.beacon)

        async def _commit(self, offsets: Mapping[Any, int]) -> bool:
            # Both committers (the runtime's and Faust's own) come through here.
            floor = self.commit_floor
            ahead = floor.ahead(offsets)
            if not ahead:
                return True
            for barrier in self.before_commit:
                if not await barrier():
                    return False
            done = await super()._commit(ahead)
            if done:
                floor.committed(ahead, self.assignment())
            return done

        async def on_partitions_revoked(self, revoked: set[Any]) -> None:
            # after Faust's own commit at revocation, which the floor still guards
            await super().on_partitions_revoked(revoked)
            self.commit_floor.forget(revoked)

    return FetchWaitConsumer


def build_app(settings: Settings) -> faust.App:
    settings.require_connections()
    # RocksDB state persists here between runs (one rocksdb worker per state directory);
    # the memory store keeps nothing on disk, so every worker gets its own directory.
    datadir = settings.state_dir / "worker" / (
        "rocksdb" if settings.store == "rocksdb" else f"memory-{os.getpid()}")
    datadir.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")]
    app = faust.App(
        settings.worker_group,
        broker=brokers,
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move after this long; the default (60 s) keeps a
        # symbol unprocessed for a minute after a crash.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 10),
        broker_commit_interval=1.0,
        # Standby copies of other workers' state would be read by the wall-clock timer;
        # recovery from the (compacted) changelog is fast enough here.
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger=settings.worker_linger_ms / 1000,
        producer_max_batch_size=1 << 20,
        producer_compression_type=(None if settings.worker_compression == "none"
                                   else settings.worker_compression),
        stream_buffer_maxsize=4096,
        broker_max_poll_records=2000,
        consumer_max_fetch_size=8 << 20,
        # Finish and commit what is in flight before a rebalance revokes partitions.
        stream_wait_empty=True,
    )
    app.transport.Consumer = _consumer_with_fetch_wait(settings.worker_fetch_wait_ms)
    return app
