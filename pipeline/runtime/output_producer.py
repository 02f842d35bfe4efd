"""The worker's outputs and dead letters, through librdkafka.

Every message the worker applies publishes at least one record (its outputs). Through
aiokafka each record costs the event loop its batch building, compression and produce
request: about a quarter of the worker's main thread at a live 5,000 ticks/s, most of it
for batches of one record (one symbol's frame per partition per linger). librdkafka does
that work in its own threads, outside the GIL; the loop only hands it the record.

Each send returns an asyncio future that Kafka's acknowledgement resolves, as aiokafka's
does. A poll thread serves librdkafka's delivery reports and wakes the loop through a
pipe of its own (never through the loop's handle, which the loop frees when it closes
while the thread may still run); the loop resolves the reports, a batch per wake-up.
``acknowledged`` is the barrier every offset commit passes first
(pipeline.runtime.app): Faust's own committer flushes only its own producer.

The changelog stays on Faust's producer: Faust reads it back in recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.settings import Settings

log = logging.getLogger("fxstream.runtime")


def output_producer_config(settings: Settings, linger_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.require_connections().kafka_bootstrap,
        "enable.idempotence": True,  # order kept per key across retries
        "acks": "all",
        # The partition Faust, aiokafka and the Java client pick for a key.
        "partitioner": "murmur2_random",
        # A missing output topic is an error the worker stops on, never one the broker
        # creates with its default partition count (the sink's partitions would move).
        "allow.auto.create.topics": False,
        "linger.ms": linger_ms,
        "batch.size": 1 << 20,
        "compression.type": settings.worker_compression,
        # A record not delivered by then fails, and the worker stops on it.
        "message.timeout.ms": int(settings.output_ack_timeout_s * 1000),
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1 << 18,
        # Records are split below FXSTREAM_MAX_STATE_BYTES; the broker's own limit
        # decides past that, and its refusal stops the worker.
        "message.max.bytes": 8 << 20,
    }


class OutputProducer:
    """A librdkafka producer whose sends are asyncio futures of the running loop."""

    def __init__(self, settings: Settings, name: str, linger_ms: int) -> None:
        self.settings = settings
        self.name = name
        self.linger_ms = linger_ms
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[None]] = set()
        # The first record Kafka refused: once one is, no offset may be committed.
        self.failed: BaseException | None = None
        # Delivery reports from the poll thread; resolved on the loop
        self._reports: deque[tuple[asyncio.Future[None], KafkaError | None]] = deque()
        self._wake_r, self._wake_w = -1, -1
        self._stopped = threading.Event()
        self._poller: threading.Thread | None = None

    def _start(self) -> Producer:
        self._loop = asyncio.get_running_loop()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._loop.add_reader(self._wake_r, self._woken)
        self._producer = Producer(output_producer_config(self.settings, self.linger_ms),
                                  error_cb=self._error, logger=log)
        self._poller = threading.Thread(target=self._poll, name=f"{self.name}-producer-poll",
                                        daemon=True)
        self._poller.start()
        return self._producer

    async def connect(self, topics: Collection[str], timeout: float) -> bool:
        """Start the producer and fetch the metadata of ``topics`` now. A producer's first
        record otherwise waits for the connection, the idempotent producer's id and the
        topic's leader: about half a second here, which every record of the first
        moments after a start or a rebalance would wait too. A broker that does not
        answer within ``timeout`` (for all the topics) is left to the producer's own
        retries. True when every topic's metadata came back without an error."""
        producer = self._producer or self._start()
        deadline = time.monotonic() + timeout
        for topic in topics:
            try:
                metadata = await asyncio.to_thread(
                    producer.list_topics, topic, max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # KafkaException, or a producer already closed
                log.warning("%s producer: no metadata of %s within %g s (%r); the first "
                            "records wait for it", self.name, topic, timeout, exc)
                return False
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                log.warning("%s producer: topic %s: %s", self.name, topic,
                            found.error if found is not None else "not in the metadata")
                return False
        return True

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        """Queue one record; the future resolves once Kafka acknowledges it, or fails
        with Kafka's error (then every later commit barrier fails too)."""
        producer = self._producer or self._start()
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        while True:
            try:
                producer.produce(topic, value=value, key=key,
                                 on_delivery=partial(self._delivered, future))
                break
            except BufferError:  # librdkafka's queue is full: give deliveries a turn
                await asyncio.sleep(0.005)
            except KafkaException as exc:  # refused before it was queued
                self._fail(future, exc)
                return future
        self._pending.add(future)
        return future

    def _fail(self, future: asyncio.Future[None], exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("Kafka refused a record of the worker's %s: %r; no offset is "
                      "committed from now on", self.name, exc)
        future.set_exception(exc)

    def _error(self, err: KafkaError) -> None:
        log.warning("%s producer: %s", self.name, err)

    def _delivered(self, future: asyncio.Future[None], err: KafkaError | None,
                   msg: Message) -> None:
        self._reports.append((future, err))

    def _poll(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopped.is_set():
            producer.poll(0.05)
            if self._reports:
                with contextlib.suppress(BlockingIOError, OSError):  # a wake-up waits
                    os.write(self._wake_w, b"x")

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)
        self._resolve()

    def _resolve(self) -> None:
        pending = self._pending
        with contextlib.suppress(IndexError):
            while True:
                future, err = self._reports.popleft()
                pending.discard(future)
                if future.done():
                    continue
                if err is None:
                    future.set_result(None)
                else:
                    self._fail(future, KafkaException(err))

    async def acknowledged(self, timeout: float) -> bool:
        """Wait for every record sent so far: True when Kafka acknowledged each of them
        (and refused none since the start), False otherwise or once ``timeout`` passed."""
        waiting = list(self._pending)
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            if pending:
                log.warning("%d records of the worker's %s not acknowledged within %g s: "
                            "no offset committed", len(pending), self.name, timeout)
                return False
        return self.failed is None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the poll thread and send what is queued (within ``timeout``): records
        not acknowledged by then belong to messages whose offsets were not committed."""
        if self._producer is None:
            return
        self._stopped.set()
        if self._poller is not None:
            self._poller.join(5.0)
        left = self._producer.flush(timeout)
        if left:
            log.warning("%d records of the worker's %s unsent at shutdown; their messages "
                        "are applied again after a restart", left, self.name)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _did_not_connect(connecting: asyncio.Future[Any]) -> bool:
    """Ended without every topic reached: cancelled, failed, or a producer gave up."""
    return connecting.done() and (connecting.cancelled() or connecting.exception() is not None
                                  or not all(connecting.result()))


class Publishers:
    """The worker's two librdkafka producers: outputs, batched for the linger, and dead
    letters, sent at once (the agent waits for each message's dead letters, and would
    otherwise wait the linger on every message with a reject)."""

    def __init__(self, settings: Settings, rebalancing: Callable[[], bool],
                 output_topics: Collection[str] = ()) -> None:
        self.settings = settings
        self.outputs = OutputProducer(settings, "outputs", settings.worker_linger_ms)
        self.dead_letters = OutputProducer(settings, "dead letters", 0)
        self._rebalancing = rebalancing
        self._output_topics = tuple(output_topics)
        self._connecting: asyncio.Future[Any] | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        """Both producers connected, with the metadata of every topic they write; the
        first caller starts it, every caller waits for it (see ``OutputProducer.connect``).
        A connect that did not reach every topic is tried again by the next caller (the
        next recovery)."""
        if self._connecting is not None and _did_not_connect(self._connecting):
            self._connecting = None  # its callers were cancelled before it ended
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(asyncio.gather(
                self.outputs.connect(self._output_topics, timeout),
                self.dead_letters.connect([self.settings.topics.dead_letter], timeout)))
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if _did_not_connect(connecting) and self._connecting is connecting:
                self._connecting = None

    async def before_commit(self) -> bool:
        """The barrier of every offset commit: Kafka has every record sent so far. At a
        rebalance it waits at most 5 s (Faust commits at a revocation, and a longer
        wait would outlast the group's rebalance timeout); not committing then is safe,
        the new owner applies the messages again and skips what it has."""
        timeout = self.settings.output_ack_timeout_s
        if self._rebalancing():
            timeout = min(timeout, 5.0)
        outputs = await self.outputs.acknowledged(timeout)
        dead_letters = await self.dead_letters.acknowledged(timeout)
        return outputs and dead_letters

    def close(self) -> None:
        self.outputs.close()
        self.dead_letters.close()
