"""The source partitions' messages through librdkafka, outside Faust's delivery.

Faust's consumer stays the group's member: its assignor places each source
partition and its changelog partition on one worker, and it recovers the tables
and commits the offsets. Its delivery of the source messages (aiokafka's fetcher
decoding the protocol in Python on a thread of its own, then Faust's conductor and
stream) costs the worker a fixed share of the interpreter per message; at a live
5,000 ticks/s that share held the latency tail well past what the rest of the path
needs (`fxstream bench --only latency,ceiling`). With ``FXSTREAM_WORKER_FETCH=
librdkafka`` Faust keeps its source partitions paused, and a :class:`SourceFetcher`
per agent reads them instead: a librdkafka consumer with no group, assigned by the
runtime at each recovery the partitions it holds, each from the first offset it has
not applied, and unassigned at each revocation.

Every assignment opens an epoch; a batch fetched in an earlier epoch is dropped
where it reaches the loop. That is safe because each assignment starts every
partition from the runtime's own applied position: what an old epoch had fetched
is fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from pipeline.settings import Settings

log = logging.getLogger("fxstream.runtime.fetcher")

# How many bytes of fetched messages may wait for the agent before the thread stops
# taking more from librdkafka (which then stops fetching at its own queue's limit).
MAX_WAITING_BYTES = 32 << 20
FETCH_QUEUE_BACKOFF_MS = 10  # how soon a full queue is looked at again (see __init__)
MESSAGE_OVERHEAD = 200  # bytes counted per message beside its value (objects, key)
ERROR_LOG_EVERY_S = 60.0  # a fetch error that repeats is logged again after this long
_POLL_S = 0.05  # longest a changed assignment waits for the thread


@dataclass(slots=True)
class Batch:
    epoch: int
    messages: list[Message]
    size: int  # bytes counted against MAX_WAITING_BYTES


class SourceFetcher:
    """One source topic's partitions, as the runtime assigns them; see the module."""

    def __init__(self, settings: Settings, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            # never joined (no subscribe) and never committed to: the group is Faust's
            "group.id": f"{settings.worker_group}-fetch",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.worker_fetch_wait_ms,
            "queued.max.messages.kbytes": 32768,
            # When its queue above is full, librdkafka postpones the partition's next fetch
            # by fetch.queue.backoff.ms, 1 s by default: an agent that had fallen behind
            # for a moment then waited a second for data with its queue empty (a worker
            # draining a backlog of a million ticks took 1.0 to 2.0 s instead of 0.35, and
            # a burst would hold up live ticks as long).
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "client.id": f"fxstream-{name}-fetch",
            "logger": logging.getLogger("fxstream.runtime.fetcher.librdkafka"),
        })
        self.epoch = 0  # the newest assignment asked for, in the loop's thread
        self._commands: queue.SimpleQueue[tuple[int, dict[int, int] | None]] = (
            queue.SimpleQueue())
        self._batches: deque[Batch] = deque()
        # Bytes posted by the thread and not yet taken or dropped by the loop (counted
        # by the thread before it posts, so the bound holds while the loop is busy)
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._room = threading.Event()
        self._room.set()
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None
        # Each assigned partition's end as last fetched, kept by the thread: a librdkafka
        # consumer's methods must not be called from a second thread while it polls (a
        # cached watermark lookup from the loop then never returned).
        self._highwaters: dict[int, int] = {}
        self._connected = threading.Event()
        self._errors_logged: dict[int, float] = {}  # error code -> monotonic time logged

    # -- the loop's side ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self._loop = loop
        self._arrived = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"fxstream-{self.name}-fetch",
                                        daemon=True)
        self._thread.start()

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Until the consumer has the topic's metadata from the broker (or ``timeout_s``
        passed): the first fetch after an assignment then does not wait for a cold
        client's connection (half a second here)."""
        await asyncio.to_thread(self._connected.wait, timeout_s)

    def assign(self, offsets: Mapping[int, int]) -> None:
        """Fetch exactly these partitions, each from its Kafka offset; what was fetched
        before is dropped."""
        self.epoch += 1
        self._drop()
        self._commands.put((self.epoch, dict(offsets)))

    def unassign(self) -> None:
        self.epoch += 1
        self._drop()
        self._commands.put((self.epoch, None))

    async def batches(self) -> Batch:
        """The next batch of the current epoch."""
        assert self._arrived is not None, "start() first"
        while True:
            if self.failure is not None:
                raise RuntimeError(self.failure)
            while self._batches:
                batch = self._batches.popleft()
                self._release(batch.size)
                if batch.epoch == self.epoch:
                    return batch
            self._arrived.clear()
            await self._arrived.wait()

    def waiting(self) -> int:
        """Batches fetched and not yet handed out."""
        return len(self._batches)

    def waiting_bytes(self) -> int:
        """Bytes fetched from librdkafka that the agent has not taken yet."""
        return self._waiting

    def highwater(self, partition: int) -> int | None:
        """The partition's end as last fetched (None before its first fetch)."""
        return self._highwaters.get(partition)

    def close(self) -> None:
        """Stop the thread, which closes the consumer (never from a second thread)."""
        self._stopping.set()
        self._room.set()
        if self._thread is None:
            with contextlib.suppress(RuntimeError):
                self._consumer.close()
        else:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("%s: the fetch thread did not stop within 10 s", self.name)

    def _drop(self) -> None:
        size = sum(batch.size for batch in self._batches)
        self._batches.clear()
        self._release(size)

    def _release(self, size: int) -> None:
        with self._waiting_lock:
            self._waiting -= size
            if self._waiting < MAX_WAITING_BYTES:
                self._room.set()

    def _deliver(self, batch: Batch) -> None:
        if batch.epoch != self.epoch:
            self._release(batch.size)
            return
        self._batches.append(batch)
        assert self._arrived is not None
        self._arrived.set()

    def _post(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        with self._waiting_lock:
            self._waiting += batch.size
            if self._waiting >= MAX_WAITING_BYTES:
                self._room.clear()
        loop.call_soon_threadsafe(self._deliver, batch)

    # -- the thread's side ----------------------------------------------------------------

    def _run(self) -> None:
        consumer, epoch, assigned = self._consumer, 0, False
        partitions: list[int] = []
        loop = self._loop
        assert loop is not None
        try:
            self._warm_up()
            while not self._stopping.is_set():
                # Each command is a whole assignment: the newest one queued wins.
                latest = None
                try:
                    latest = self._commands.get(block=not assigned, timeout=_POLL_S)
                    while True:
                        latest = self._commands.get_nowait()
                except queue.Empty:
                    pass
                if latest is not None:
                    epoch, offsets = latest
                    if offsets:
                        consumer.assign([TopicPartition(self.topic, p, o)
                                         for p, o in sorted(offsets.items())])
                    else:
                        consumer.unassign()
                    partitions = sorted(offsets or ())
                    self._highwaters = {}
                    assigned = bool(offsets)
                if not assigned or not self._room.wait(_POLL_S):
                    continue
                head = consumer.poll(_POLL_S)
                self._note_highwaters(partitions)
                if head is None:
                    continue
                messages = [head, *consumer.consume(999, 0)]
                good = [m for m in messages if m.error() is None]
                for m in messages:
                    if m.error() is not None:
                        self._log_error(m.error())
                if good:
                    self._post(loop, Batch(epoch, good,
                                           sum(map(len, good)) + MESSAGE_OVERHEAD * len(good)))
        except Exception as exc:  # reported to the agent, which stops
            self.failure = f"fetching {self.topic} failed: {exc!r}"
            log.exception("%s: fetching %s failed", self.name, self.topic)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _warm_up(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while not self._stopping.is_set():
                try:
                    self._consumer.list_topics(self.topic, timeout=1)
                    return
                except Exception as exc:  # the first fetch connects instead
                    if time.monotonic() > deadline:
                        log.warning("%s: no metadata of %s yet (%s)", self.name, self.topic,
                                    exc)
                        return
        finally:
            self._connected.set()

    def _note_highwaters(self, partitions: list[int]) -> None:
        highs = {}
        for p in partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                           cached=True)
            if high >= 0:
                highs[p] = high
        self._highwaters = highs

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    def _log_error(self, err: KafkaError) -> None:
        """librdkafka retries on its own; a deleted topic or a broker away repeats the
        same error at every poll, logged once a minute."""
        if err.code() == KafkaError._PARTITION_EOF:
            return
        now = time.monotonic()
        if now - self._errors_logged.get(err.code(), -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            self._errors_logged[err.code()] = now
            log.warning("%s: fetching %s: %s", self.name, self.topic, err)
