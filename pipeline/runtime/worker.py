"""The worker runtime: every agent declared in pipeline.agents, on one Faust app.

Per source message, in order, for each agent (concurrency 1):
1. skip it when its logical offset is at or below what the partition applied; when
   it lies past that + 1, read the skipped range directly from Kafka and apply that
   first (Faust's consumer can skip offsets around rebalances);
2. check its key and decode it: invalid JSON, a key that is not a canonical symbol,
   a symbol the configuration does not know (no state is made for it) or a symbol
   on the wrong partition go to the dead-letter topic with their reason. A frame
   that decodes whole into the declaration's record type reaches the fold typed;
   when the fold refuses anything of it, the message is folded again from its
   plain JSON decode (the authority, and what dead letters carry);
3. fold it into the key's state with the agent's pure function, told the newest
   position of the partition whose outputs Kafka has acknowledged ("settled"): the
   state keeps re-sendable whatever the messages after it sent, since Kafka stores
   a changelog record and the outputs published before it independently;
4. publish its dead letters and wait until Kafka has them, publish the outputs at
   once (each stamped with its version, the source partition and offset), and keep
   the key's new state in the run.

A run is what the agent applied since it last wrote states: at most
FXSTREAM_WORKER_RUN_MS old and FXSTREAM_WORKER_RUN_MESSAGES long. Writing it puts
ONE changelog record per key it touched (the state with its position), the record
at each partition's end last, or the partition's cursor record when its last
message stored no state (pipeline.runtime.positions says how the cursor survives a
crash between them); then its messages are acknowledged to Faust.

One timer commits, once a second, the offsets the written cursors say are applied,
after a producer flush and Kafka's acknowledgement of every output and record sent
before it, which settles the positions applied before it (a refused record, or none
acknowledged within FXSTREAM_OUTPUT_ACK_TIMEOUT_S, stops the worker; no commit, this
one's or Faust's own, moves a held partition's offset back:
pipeline.runtime.commit_floor); another closes, by the wall clock, what quiet keys
hold. Before a rebalance or a shutdown lets Faust wait for its messages, each agent
writes its run. After every rebalance the runtime rebuilds its view of the
partitions it holds from the recovered table, forgets everything else (Faust's
memory store keeps keys of revoked partitions), and re-sends what the held states
stand for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NoReturn

import faust
import msgspec
import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from pipeline.core.deadletters import dead_letter, dead_letter_key
from pipeline.observability.metrics import AgentMetrics, WorkerMetrics
from pipeline.runtime.declaration import TARGET, AgentSpec, Reject
from pipeline.runtime.fetcher import SourceFetcher
from pipeline.runtime.output_producer import Publishers
from pipeline.runtime.positions import (
    Cursor,
    cursor_key,
    cursor_partition,
    decode_cursor,
    decode_envelope,
    decode_envelope_cursor,
    encode_cursor,
    envelope,
    is_cursor_key,
)
from pipeline.runtime.source import describe_topic, read_range, watermarks
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, normalize_symbol

log = logging.getLogger("fxstream.runtime")

CHANGELOG_CONFIG = {
    # Kafka compacts only closed segments: roll them often so that recovery reads
    # little more than one record per key.
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "cleanup.policy": "compact",
}


EXIT_FAILED_MESSAGE = 70  # EX_SOFTWARE
# A held partition whose consumer delivered nothing for this long, while its end lies
# past what was applied, is sought back (AgentRuntime.resume_stalled).
STALL_S = 5.0
SHUTDOWN_COMMIT_S = 15.0
SLICE_S = 0.01  # longest the fetcher's loop applies messages before it lets others run


def now_ms() -> int:
    return int(time.time() * 1000)


@lru_cache(maxsize=65536)
def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Java clients, Faust and librdkafka's murmur2 partitioners choose."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class AgentStats:
    messages: int = 0
    items: int = 0  # accepted
    items_in: int = 0  # in the messages applied, accepted or not
    skipped: int = 0
    rejected: int = 0
    outputs: int = 0
    frames_out: int = 0
    reread: int = 0
    resumed: int = 0  # stalled partitions sought back
    runs: int = 0  # runs of messages whose states were written together
    first_event: float | None = None  # monotonic time of the first message processed
    last_event: float | None = None


@dataclass
class PartitionView:
    """What the runtime holds of one source partition."""

    cursor: Cursor = field(default_factory=Cursor)
    keys: set[bytes] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)  # its last message delivered
    # The newest position whose outputs Kafka has acknowledged (a producer flush
    # returned after it was applied); -1 until the first flush after recovery.
    settled: int = -1
    # The newest position applied in memory: ``cursor.last`` (what the changelog
    # holds, and what is committed) catches up when the run's states are written.
    applied: int = -1
    # The greatest position among the recovered keys: past the cursor when a crash cut
    # a run's records short
    top: int = -1


@dataclass
class Run:
    """Messages applied since their states were last written (``AgentRuntime.write_run``)."""

    # key -> (partition, position of its last message, state JSON, state)
    states: dict[bytes, tuple[int, int, bytes, Any]] = field(default_factory=dict)
    ends: dict[int, tuple[PartitionView, int]] = field(default_factory=dict)  # p -> last
    events: list[Any] = field(default_factory=list)  # Faust events, acked once written
    messages: int = 0
    started: float = 0.0  # monotonic time of its first message


class AgentRuntime:
    """One declared agent on the app: its topics, table, and the exactly-once loop."""

    def __init__(self, app: faust.App, settings: Settings, spec: AgentSpec,
                 dead_letters: faust.TopicT, metrics: AgentMetrics,
                 publishers: Publishers) -> None:
        self.app = app
        self.publishers = publishers
        self.settings = settings
        self.spec = spec
        self.metrics = metrics
        self.source_topic = getattr(settings.topics, spec.source)
        self.source = app.topic(self.source_topic, key_type=bytes, value_type=bytes,
                                partitions=settings.partitions)
        self.output = app.topic(getattr(settings.topics, spec.output), key_type=bytes,
                                value_type=bytes, partitions=settings.partitions)
        self.dead_letters = dead_letters
        self.also = {name: app.topic(getattr(settings.topics, name), key_type=bytes,
                                     value_type=bytes, partitions=settings.partitions)
                     for name in spec.also}
        self.table = app.Table(spec.table, default=None, partitions=settings.partitions,
                               key_type=bytes, value_type=bytes,
                               extra_topic_configs=CHANGELOG_CONFIG)
        self._changelog = self.table.changelog_topic.get_topic_name()
        self._persists_offsets = settings.store == "rocksdb"
        self.stats = AgentStats()
        self._published: dict[str, int] = {}  # stats already added to the counters
        self.views: dict[int, PartitionView] = {}
        self.ready = False  # False from a revocation until recovery has been taken in
        # Recoveries taking in the table and re-sending (Faust can start one while another
        # re-sends): while any is under way nothing settles; a superseded one stops.
        self.resending = 0
        self._recoveries = 0
        # Outputs and changelog records published since the commit timer last took them;
        # it waits for each before it counts a position settled (a failed send must not
        # count) or commits.
        self.unacknowledged: list[asyncio.Future[Any]] = []
        self.not_ready_since = time.monotonic()
        metrics.recovering.set(1)
        self.arrivals: dict[bytes, int] = {}  # key -> wall ms its newest message arrived
        self.clock_sent: set[tuple[bytes, str]] = set()
        self.committed: dict[int, int] = {}
        self.source_partitions: int | None = None
        self.known = spec.known_keys
        # The declaration's record type, as a decoder of whole frames (the fast path).
        self._typed_decode: Any = (msgspec.json.Decoder(list[spec.record]).decode  # type: ignore[name-defined]
                                   if spec.record is not None else None)
        self.run = Run()
        self._writing = asyncio.Lock()
        self._stream: Any = None  # the agent's, once it runs
        # FXSTREAM_WORKER_FETCH=librdkafka: the source partitions come through this
        # fetcher instead of Faust's stream (pipeline.runtime.fetcher); a rebalance or a
        # shutdown takes ``_applying`` to wait until no message is half applied.
        self.fetcher = (SourceFetcher(settings, self.source_topic, spec.name)
                        if settings.worker_fetch == "librdkafka" else None)
        self._applying = asyncio.Lock()
        self.stopping = False
        app.agent(self.source, name=f"{spec.name}-agent", concurrency=1)(self._agent)
        self.table.on_recover(self._after_recovery)

    # -- the loop ---------------------------------------------------------------------------

    async def _agent(self, stream: faust.StreamT) -> None:
        # A message is acknowledged to Faust (whose committer commits acknowledged
        # offsets) once its run's records are queued, not when the next one is taken.
        stream.enable_acks = False
        self._stream = stream
        hooks = getattr(self.app.consumer, "before_wait_empty", None)
        quiesce = self.write_run if self.fetcher is None else self.quiesce
        if hooks is not None and quiesce not in hooks:
            hooks.append(quiesce)
        barriers = getattr(self.app.consumer, "before_commit", None)
        if barriers is not None and self.publishers.before_commit not in barriers:
            barriers.append(self.publishers.before_commit)
        if self.fetcher is not None:
            await self._fetched()  # Faust delivers nothing of the source here
            return
        run_limit = self.settings.worker_run_messages
        run_s = self.settings.worker_run_ms / 1000
        flow = self.app.flow_control
        async for event in stream.events():
            msg = event.message
            try:
                if await self._take(msg.key, msg.value, msg.topic, msg.partition, msg.offset,
                                    self.views.setdefault(msg.partition, PartitionView())):
                    self.run.events.append(event)
                else:
                    await stream.ack(event)
                run = self.run
                # A suspended flow: a rebalance or a shutdown waits for this message
                if run.messages and (run.messages >= run_limit or not flow.is_active()
                                     or time.monotonic() - run.started >= run_s):
                    await self.write_run()
            except Exception:
                fail_stop(f"{self.spec.name}: applying {msg.topic}[{msg.partition}] offset "
                          f"{msg.offset} failed")

    async def _take(self, key: bytes | None, value: bytes | None, topic: str, partition: int,
                    offset: int, view: PartitionView) -> bool:
        """Apply one delivered message, after any offsets skipped before it; False when
        it was applied already."""
        self.stats.last_event = time.monotonic()
        if self.stats.first_event is None:
            self.stats.first_event = self.stats.last_event
        view.last_seen = self.stats.last_event
        cursor = view.cursor
        position = cursor.logical(offset)
        if position <= view.applied:
            self.stats.skipped += 1
            return False
        if position > view.applied + 1:
            await self._reread(topic, partition, cursor.kafka_offset(view.applied + 1), offset)
        await self._apply(key, value, topic, partition, offset)
        return True

    async def _fetched(self) -> None:
        """The loop over what the librdkafka fetcher delivers: each message applied while
        this worker holds its partition (ready, the flow not suspended for a rebalance,
        the batch of the fetcher's current assignment)."""
        fetcher = self.fetcher
        assert fetcher is not None
        fetcher.start(asyncio.get_running_loop())
        run_limit = self.settings.worker_run_messages
        run_s = self.settings.worker_run_ms / 1000
        flow = self.app.flow_control
        topic = self.source_topic
        batch, i = None, 0
        while True:
            if batch is None or i >= len(batch.messages):
                try:
                    batch, i = await fetcher.batches(), 0
                except RuntimeError as exc:  # its thread failed: nothing more would come
                    fail_stop(f"{self.spec.name}: {exc}")
            if batch.epoch != fetcher.epoch:
                batch = None  # its assignment is over; the next one fetches again
                continue
            if (not self.ready or self.stopping or not flow.is_active()
                    or self.app.rebalancing):
                await asyncio.sleep(0.02)  # a rebalance or a recovery under way
                continue
            async with self._applying:
                messages = batch.messages
                started = time.monotonic()
                while (i < len(messages) and batch.epoch == fetcher.epoch and self.ready
                       and not self.stopping and flow.is_active()
                       and not self.app.rebalancing
                       and time.monotonic() - started < SLICE_S):
                    msg = messages[i]
                    i += 1
                    partition = msg.partition()
                    view = self.views.get(partition)
                    if view is None:
                        continue  # not held (a view of every held partition is made ready)
                    try:
                        await self._take(msg.key(), msg.value(), topic, partition,
                                         msg.offset(), view)
                        run = self.run
                        if run.messages and (run.messages >= run_limit
                                             or time.monotonic() - run.started >= run_s):
                            await self.write_run()
                    except Exception:
                        fail_stop(f"{self.spec.name}: applying {topic}[{partition}] offset "
                                  f"{msg.offset()} failed")
            # A message rarely waits for anything, so without this the loop would be
            # this agent's until every fetched batch is applied: the timers, the other
            # agents and the handling of a rebalance get it between slices.
            await asyncio.sleep(0)

    async def quiesce(self) -> None:
        """Before a rebalance or a shutdown goes on: no message half applied, and the
        run's states written (the fetcher's loop stops at the next message, the flow
        being suspended)."""
        async with self._applying:
            await self.write_run()

    async def _reread(self, topic: str, partition: int, start: int, stop: int) -> None:
        delay = 1.0
        while True:
            try:
                got = await asyncio.to_thread(read_range, self.settings.kafka_bootstrap, topic,
                                              partition, start, stop)
                break
            except Exception as exc:  # broker trouble: nothing else can progress either
                log.error("%s[%d]: re-reading offsets %d..%d failed (%s); retrying in %.0f s",
                          topic, partition, start, stop - 1, exc, delay,
                          extra={"partition": partition})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if got.missing:
            lo, hi = got.missing
            log.error("%s[%d]: offsets %d..%d were skipped by the consumer and no longer exist "
                      "in Kafka (retention or a deleted topic); %d messages could not be "
                      "applied", topic, partition, lo, hi - 1, hi - lo,
                      extra={"partition": partition})
        log.warning("%s[%d]: the consumer skipped offsets %d..%d (Faust can, around "
                    "rebalances); re-read %d messages and applied them first", topic,
                    partition, start, stop - 1, len(got.messages),
                    extra={"partition": partition})
        self.stats.reread += len(got.messages)
        for key, value, offset in got.messages:
            await self._apply(key, value, topic, partition, offset)
            if self.run.messages >= self.settings.worker_run_messages:
                await self.write_run()

    async def _apply(self, key: bytes | None, raw: bytes | None, topic: str, partition: int,
                     offset: int) -> None:
        """Apply one source message to the run: its outputs and dead letters go out now,
        its state with the run's (``write_run``)."""
        stats = self.stats
        stats.messages += 1
        view = self.views.setdefault(partition, PartitionView())
        cursor = view.cursor
        position = cursor.logical(offset)
        now = now_ms()
        where = (topic, partition, offset)
        if cursor.dirty:  # a new base or topic id goes out before anything built on it
            await self.write_run()
            cursor.dirty = False
            await self._write(cursor_key(partition), encode_cursor(cursor), partition)

        symbol = _canonical_key(key)
        key_fault = self._key_fault(key, symbol, topic, partition)
        items: list[Any] | None = None
        rejects: list[Reject] = []
        framed = typed = False
        typed_decode = self._typed_decode
        if typed_decode is not None and key_fault is None and raw:
            try:
                items = typed_decode(raw)
                framed = typed = True
            except ValueError:  # msgspec's errors and UnicodeDecodeError: not for this path
                pass
        if items is None:
            try:
                value = orjson.loads(raw or b"")
                framed = isinstance(value, list)
                items = value if framed else [value]
            except orjson.JSONDecodeError as exc:
                rejects.append(Reject(-1, "invalid_json", str(exc), raw or b""))
        if items is not None:
            stats.items_in += len(items)
        if items is not None and key_fault is not None:
            reason, detail, per_item = key_fault
            if per_item:
                rejects.extend(Reject(i, reason, detail, item) for i, item in enumerate(items))
            else:
                rejects.append(Reject(-1, reason, detail, raw))
            items = None

        state_json: bytes | None = None
        outcome = None
        if items is not None:
            assert key is not None and symbol is not None and raw is not None
            held = self.run.states.get(key)
            if held is not None:
                state = held[3]
            else:
                raw_state = self.table.get(key)
                state = None if raw_state is None else decode_envelope(raw_state)[2]
            outcome = self.spec.fold(state, symbol, items, position, now, view.settled)
            if typed and outcome.rejects:
                # The typed decode is a fast path only: what the fold refuses from it is
                # folded again from the plain decode, so dead letters carry the items as
                # they were sent (the fold is pure; the state is as it was).
                items, typed = orjson.loads(raw), False
                outcome = self.spec.fold(state, symbol, items, position, now, view.settled)
            rejects.extend(outcome.rejects)
            if outcome.state is not None and not outcome.skipped:
                state_json = orjson.dumps(outcome.state)
                size = len(envelope(partition, position, state_json, position))
                if size > self.settings.max_state_bytes:
                    # Kafka would refuse the changelog record, and the producer's failure
                    # would stop the worker: the message is refused instead, its items
                    # dead-lettered, and the symbol's state stays as it was.
                    refused = {r.index for r in outcome.rejects}
                    detail = (f"{symbol}'s {self.spec.name} state would grow to "
                              f"{size:,} bytes, more than a changelog record may "
                              f"hold (FXSTREAM_MAX_STATE_BYTES, "
                              f"{self.settings.max_state_bytes:,}); a shorter lateness keeps "
                              "less of it")
                    if typed:
                        items = orjson.loads(raw)
                    rejects.extend(Reject(i, "state_too_large", detail, item)
                                   for i, item in enumerate(items) if i not in refused)
                    outcome, state_json = None, None

        if rejects:
            await self._send_dead_letters(rejects, where, symbol, framed)
        if outcome is not None and not outcome.skipped:
            stats.items += outcome.accepted
            await self._send_outputs(key, outcome.outputs, partition, position)
        run = self.run
        if state_json is not None:
            assert key is not None and outcome is not None
            run.states.pop(key, None)  # re-inserted: the run keeps its keys in order of last use
            run.states[key] = (partition, position, state_json, outcome.state)
            view.keys.add(key)
            self.arrivals[key] = now
        run.ends[partition] = (view, position)
        if not run.messages:
            run.started = time.monotonic()
        run.messages += 1
        view.applied = position

    def _key_fault(self, key: bytes | None, symbol: str | None, topic: str, partition: int
                   ) -> tuple[str, str, bool] | None:
        """Why a message's key keeps it from the fold: (reason, detail, whether each item
        is dead-lettered or the message as one), or None for a key this agent takes."""
        if symbol is None or symbol.encode() != key:
            return "bad_key", ("message has no key" if key is None else
                               f"key {key!r} is not a canonical symbol; producers must key by "
                               "it (e.g. 'EUR/USD') so one partition holds each symbol"), False
        if self.known is not None and symbol not in self.known:
            return "unknown_symbol", f"{symbol} is not among the configured symbols", True
        if self.source_partitions and (
                expected := murmur2_partition(key, self.source_partitions)) != partition:
            return "wrong_partition", (
                f"{symbol} belongs on partition {expected} of {topic} (murmur2 of the key), "
                f"not {partition}: produce with partitioner=murmur2_random (librdkafka) or "
                "the Java client's default partitioner, so that one partition holds each "
                "symbol"), True
        return None

    async def write_run(self) -> None:
        """Write the states of the run: each key it touched once, then acknowledge its
        messages to Faust.

        Per partition the record at the run's end goes last and carries the run's end as
        the partition's cursor; the records before it carry the cursor of the run
        before (pipeline.runtime.positions). A crash between them keeps the older
        cursor, and the re-applied messages skip, by each key's own position, the keys
        whose record landed. A run that ends with a message storing no state ends with
        the partition's cursor record. The cursor moves once the records are queued:
        the commit timer may run while a send waits for room, and must neither commit
        these messages nor miss their records."""
        async with self._writing:
            run, self.run = self.run, Run()
            if not run.messages:
                return
            self.stats.runs += 1
            records: list[tuple[bytes, bytes, int]] = []
            last: dict[int, tuple[bytes, bytes, int]] = {}  # p -> the run's final record
            for key, (p, position, state_json, _) in run.states.items():
                view, end = run.ends[p]
                if position == end:
                    last[p] = key, envelope(p, position, state_json, end), p
                else:
                    records.append((key, envelope(p, position, state_json, view.cursor.last), p))
            for p, (view, end) in run.ends.items():
                records.append(last.get(p) or (
                    cursor_key(p), encode_cursor(replace(view.cursor, last=end)), p))
            # Into the store at once, before any send can wait: the agent goes on with the
            # next run meanwhile, and reads from the store what this run left.
            try:
                for key, value, p in records:
                    self._store(key, value, p)
                for key, value, p in records:
                    await self._send_changelog(key, value, p)
            except Exception as exc:
                self._stop_with_store_ahead(
                    f"{self.spec.name}: writing the states of {run.messages} messages failed",
                    exc)
            for view, end in run.ends.values():
                view.cursor.last = max(view.cursor.last, end)
            for event in run.events:
                await self._stream.ack(event)

    async def _write(self, key: bytes, value: bytes, partition: int) -> None:
        """A table write of its own: into the store, and its record to the changelog."""
        self._store(key, value, partition)
        await self._send_changelog(key, value, partition)

    def _store(self, key: bytes, value: bytes, partition: int) -> None:
        store = self.table.data
        if self._persists_offsets:
            # RocksDB keeps a database per partition and files a plain write under the
            # current event's partition, while a run's records can be other partitions'
            store._key_index[key] = partition
            store._db_for_partition(partition).put(key, value)
        else:
            store[key] = value

    async def _send_changelog(self, key: bytes, value: bytes, partition: int) -> None:
        """A record to the producer now, into the changelog partition of the source
        partition.

        What Faust's ``table[key] = value`` does, without its send buffer: that queues the
        record for a task of its own, one wake-up of that task per message, and took a
        tenth of the worker's CPU at a live 5,000 ticks/s. A record Kafka refuses stops the
        worker at once (through Faust it was only logged, and both committers then went
        past a message whose state no changelog holds); the commit timer also waits for
        each record, as for the outputs."""
        future = await self.app.producer.send(self._changelog, key, value, partition=partition,
                                              timestamp=None, headers=None)
        future.add_done_callback(self._changelog_sent)
        self.unacknowledged.append(future)

    def _changelog_sent(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return  # the producer stopping; nothing commits past an unsent record
        exc = future.exception()
        if exc is not None:
            self._stop_with_store_ahead(f"{self.spec.name}: Kafka refused a changelog record "
                                        f"of {self._changelog} ({exc!r})", exc)
        if self._persists_offsets:
            # as Faust's own changelog callback does: RocksDB keeps, per partition, the
            # newest changelog offset it holds, so that recovery reads only what follows
            metadata = future.result()
            self.table.data.set_persisted_offset(
                TP(metadata.topic, metadata.partition), metadata.offset)

    def _stop_with_store_ahead(self, what: str, exc: BaseException) -> NoReturn:
        """``fail_stop`` when the store holds a state the changelog may not: RocksDB
        would keep it and skip its message after a restart, so the restart rebuilds
        this table from the changelog instead (the memory store keeps nothing)."""
        if self._persists_offsets:
            with contextlib.suppress(Exception):
                self.table.data.reset_state()
        fail_stop(what, exc)

    async def _send_outputs(self, key: bytes | None, outputs: list[dict[str, Any]],
                            partition: int, position: int) -> None:
        # Published now (not through Faust's topic.send, which attaches records sent
        # from an agent to the source offset and publishes them only at the next offset
        # commit unless forced). One record per source message: a frame of what it
        # changed (or one record).
        if not outputs:
            return
        elsewhere: dict[str, list[dict[str, Any]]] = {}
        if self.also:  # records naming another topic go there, as they are
            mine = []
            for record in outputs:
                target = record.pop(TARGET, None)
                if target is None:
                    mine.append(record)
                else:
                    elsewhere.setdefault(target, []).append(record)
            outputs = mine
        for record in outputs:
            record["src_partition"] = partition
            record["src_offset"] = position
        limit = self.settings.max_state_bytes
        if outputs:
            frames = output_frames(outputs, limit)
            for value in frames:
                self.unacknowledged.append(await self._publish(self.output, key, value))
            self.stats.outputs += len(outputs)
            self.stats.frames_out += len(frames)
        for target, records in elsewhere.items():
            for value in output_frames(records, limit):
                self.unacknowledged.append(
                    await self._publish(self.also[target], key, value))

    async def _publish(self, topic: faust.TopicT, key: bytes | None,
                       value: bytes) -> asyncio.Future[Any]:
        """Hand one output to the output producer (pipeline.runtime.output_producer),
        partitioned by murmur2 of its key as Faust's ``topic.send`` would; the future
        resolves once Kafka acknowledges it."""
        return await self.publishers.outputs.send(topic.get_topic_name(), key, value)

    async def _send_dead_letters(self, rejects: list[Reject], where: tuple[str, int, int],
                                 symbol: str | None, framed: bool) -> None:
        """Publish and wait for Kafka's acknowledgement: the changelog record written
        next says this message is done, so its dead letters must already be safe."""
        topic, partition, offset = where
        now = now_ms()
        pending = []
        for rej in rejects:
            record = dead_letter(reason=rej.reason, detail=rej.detail, stage="worker",
                                 topic=topic, partition=partition, offset=offset,
                                 index=rej.index if framed and rej.index >= 0 else None,
                                 payload=rej.payload, symbol=symbol, now_ms=now)
            pending.append(await self.publishers.dead_letters.send(
                self.dead_letters.get_topic_name(), dead_letter_key(record),
                orjson.dumps(record)))
        self.stats.rejected += len(rejects)
        for rej in rejects:
            self.metrics.dead_letter(rej.reason)
        # Their producer does not linger: the agent waits here for every message with a
        # reject. A dead letter Kafka refuses, or does not take in time, stops the worker.
        timeout = self.settings.output_ack_timeout_s
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except TimeoutError:
            fail_stop(f"Kafka did not acknowledge the worker's dead letters within "
                      f"{timeout:g} s (FXSTREAM_OUTPUT_ACK_TIMEOUT_S)")
        except KafkaException as exc:
            fail_stop(f"Kafka refused a dead letter of {topic}[{partition}] offset {offset} "
                      f"({exc!r})", exc)

    # -- rebalances ---------------------------------------------------------------------------

    def held_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment()
                if tp.topic == self.source_topic}

    def on_revoked(self) -> None:
        # A recovery still under way took in partitions this revocation may take away:
        # it stops (before its views, or its next re-send), and the next one decides.
        self._recoveries += 1
        if self.fetcher is not None:
            self.fetcher.unassign()
        if self.ready:
            self.not_ready_since = time.monotonic()
            self.metrics.recovering.set(1)
        self.ready = False

    async def _after_recovery(self) -> None:
        """Take in the recovered table: views of held partitions only, stale keys gone,
        the source topic's identity checked, and every held state re-sent."""
        self._recoveries += 1
        self.resending += 1
        try:
            await self._take_in_recovered(self._recoveries)
        finally:
            self.resending -= 1

    async def _take_in_recovered(self, recovery: int) -> None:
        held = self.held_partitions()
        views: dict[int, PartitionView] = {p: PartitionView() for p in held}
        stale: list[bytes] = []
        states: list[tuple[bytes, int, int, dict[str, Any]]] = []
        for key, raw in list(self.table.items()):
            if raw is None:
                continue
            if is_cursor_key(key):
                p = cursor_partition(key)
                if p in held:
                    stored = decode_cursor(raw)
                    last = max(views[p].cursor.last, stored.last)
                    views[p].cursor = stored
                    stored.last = last
                else:
                    stale.append(key)
                continue
            p, o, c, state = decode_envelope_cursor(raw)
            if p in held:
                assert p is not None
                views[p].keys.add(key)
                views[p].cursor.last = max(views[p].cursor.last, c)
                views[p].top = max(views[p].top, o)
                states.append((key, p, o, state))
            else:
                stale.append(key)
        for view in views.values():
            view.applied = view.cursor.last
        self._forget(stale)
        await self._check_source_identity(views, recovery)
        await self.publishers.connect()  # the first records then do not wait for it
        if self.fetcher is not None:
            await self.fetcher.connect()
        if recovery != self._recoveries:
            return  # a later recovery started meanwhile and takes in the table itself
        self.views = views
        self.arrivals = {key: now_ms() for key, *_ in states}
        self.clock_sent.clear()
        # Every held cursor is committed once more after a rebalance: what the group
        # holds may be another member's, or a commit of ours that the rebalance cut.
        self.committed = {}
        self.observe_state()  # before ready: a scrape that sees ready sees the state taken in
        self.metrics.recovery_seconds.observe(time.monotonic() - self.not_ready_since)
        self.metrics.recovering.set(0)
        self.ready = True
        now = now_ms()
        sent = 0
        for key, p, o, state in states:
            if recovery != self._recoveries:
                log.info("%s: a later recovery re-sends the rest", self.spec.name)
                return
            outputs = self.spec.resend(state, now)
            await self._send_outputs(key, outputs, p, o)
            sent += len(outputs)
        if self.fetcher is not None and recovery == self._recoveries:
            # Each held partition from its first unapplied offset, once the re-sent
            # versions are queued ahead of any newer one (as Faust's delivery resumes
            # only after the recovery callbacks).
            self.fetcher.assign({p: view.cursor.kafka_offset(view.applied + 1)
                                 for p, view in views.items()})
        log.info("recovered %s state of %d symbols in partitions %s; re-sent %d records",
                 self.spec.name, len(states), sorted(held), sent)

    def _forget(self, keys: list[bytes]) -> None:
        """Drop keys of partitions this worker does not hold from a memory store (which
        keeps them after a revocation); never through the table, which would write
        tombstones into the new owner's changelog."""
        store = self.table.data
        if isinstance(store, MemoryStore):
            for key in keys:
                store.data.pop(key, None)
                store._key_partition.pop(key, None)

    async def _check_source_identity(self, views: dict[int, PartitionView],
                                     recovery: int) -> None:
        try:
            ident = await asyncio.to_thread(describe_topic, self.settings.kafka_bootstrap,
                                            self.source_topic)
        except Exception as exc:
            log.warning("could not describe %s (%s); partition and re-creation checks wait "
                        "for the next rebalance", self.source_topic, exc)
            return
        self.source_partitions = ident.partitions
        restart: dict[int, int] = {}
        for p, view in views.items():
            cursor = view.cursor
            if cursor.topic_id is None:
                cursor.topic_id, cursor.dirty = ident.topic_id, True
            elif cursor.topic_id != ident.topic_id:
                # past every position stored: those of a run a crash cut short, whose
                # messages are gone with the old topic, included
                cursor.last = view.applied = max(cursor.last, view.top)
                log.error("%s[%d] was deleted and re-created (topic id %s, was %s): its offsets "
                          "start again below the %d already applied. Applying the new topic "
                          "from its start; positions continue from %d so versions downstream "
                          "keep increasing", self.source_topic, p, ident.topic_id,
                          cursor.topic_id, cursor.last, cursor.last + 1, extra={"partition": p})
                cursor.base = cursor.last + 1
                cursor.topic_id, cursor.dirty = ident.topic_id, True
                restart[p] = 0
        if restart:
            # The group's committed offsets may still be the old topic's, and Faust drops
            # every message at or below the offset it was told it had read: start the
            # new topic's partitions from their beginning.
            assigned = {tp.partition: tp for tp in self.app.consumer.assignment()
                        if tp.topic == self.source_topic}
            offsets = {assigned[p]: off for p, off in restart.items() if p in assigned}
            floor = getattr(self.app.consumer, "commit_floor", None)
            if floor is not None:
                floor.forget(offsets)  # going back to 0 is the point here
            if recovery != self._recoveries:
                return  # superseded: the later recovery decides
            await self.app.consumer._commit(offsets)
            await seek_in_consumer_thread(self.app, offsets)

    # -- timers ---------------------------------------------------------------------------------

    def settling(self) -> tuple[list[tuple[PartitionView, int]], list[asyncio.Future[Any]]]:
        """Each held view with its applied position, and the records published so far,
        taken before a producer flush: once every one of those is acknowledged, so is
        everything those positions sent and stored."""
        sent, self.unacknowledged = self.unacknowledged, []
        if not self.ready or self.resending:
            return [], sent
        return [(view, view.cursor.last) for view in self.views.values()], sent

    def settle(self, marks: list[tuple[PartitionView, int]]) -> None:
        held = set(map(id, self.views.values()))
        for view, last in marks:
            if id(view) in held:  # not a view a rebalance replaced meanwhile
                view.settled = max(view.settled, last)

    def committable(self) -> dict[int, int]:
        """Kafka offsets to commit (next to read) per held partition, where they moved."""
        out = {}
        for p, view in self.views.items():
            if view.cursor.last < 0:
                continue
            nxt = view.cursor.kafka_offset(view.cursor.last) + 1
            if nxt > 0 and self.committed.get(p) != nxt:
                out[p] = nxt
        return out

    async def resume_stalled(self, idle_s: float) -> None:
        """Seek back any held partition whose consumer stopped delivering short of its end.

        After a rebalance Faust's consumer can hold a partition at a read offset past
        messages it never delivered (prefetched records counted as read before the seek
        to the committed offsets): it drops the missing ones as already read and waits
        for newer ones. The runtime re-reads such a gap when the next message comes, but
        when none comes (a replay that ended, a quiet symbol) the applied state stands
        still while the partition holds unapplied messages. A partition idle for
        ``idle_s`` whose end lies past its cursor, and which its consumer has read to the
        end, is sought to the first unapplied offset, which also resets Faust's read
        offset; the cursor skips anything delivered twice."""
        if not self.ready or self.app.rebalancing:
            return
        if self.fetcher is not None:
            await self._refetch_stalled(idle_s)
            return
        now = time.monotonic()
        idle = {p: view for p, view in self.views.items() if now - view.last_seen >= idle_s}
        if not idle:
            return
        try:
            ends = await asyncio.to_thread(watermarks, self.settings.kafka_bootstrap,
                                           self.source_topic, sorted(idle))
        except Exception as exc:  # broker trouble: the next check asks again
            log.info("%s: checking for stalled partitions failed: %s", self.source_topic, exc)
            return
        if not self.ready or self.app.rebalancing:
            return  # a rebalance began meanwhile
        assigned = {tp.partition: tp for tp in self.app.consumer.assignment()
                    if tp.topic == self.source_topic}
        for p, view in idle.items():
            tp = assigned.get(p)
            if tp is None or p not in ends or self.views.get(p) is not view:
                continue
            low, high = ends[p]
            nxt = max(view.cursor.kafka_offset(view.applied + 1), low)
            if nxt >= high or time.monotonic() - view.last_seen < idle_s:
                continue
            if not await self._read_to_end(tp, high):
                continue  # behind, not stalled: its consumer still holds or fetches them
            # The wait for the position let the agent run: a message it delivered
            # meanwhile, or a rebalance begun, makes this no stall to seek back.
            if (not self.ready or self.app.rebalancing or self.views.get(p) is not view
                    or time.monotonic() - view.last_seen < idle_s
                    or view.cursor.kafka_offset(view.applied + 1) >= high):
                continue
            log.warning("%s[%d]: the consumer delivered nothing for %.0f s while offsets "
                        "%d..%d wait unapplied; seeking back to %d", self.source_topic, p,
                        time.monotonic() - view.last_seen, nxt, high - 1, nxt)
            view.last_seen = time.monotonic()
            try:
                await seek_in_consumer_thread(self.app, {tp: nxt})
            except Exception as exc:  # revoked meanwhile: its new owner reads it
                log.info("%s[%d]: seek back not done: %s", self.source_topic, p, exc)
                return
            self.stats.resumed += 1

    async def _refetch_stalled(self, idle_s: float) -> None:
        """The librdkafka fetcher's partitions: one idle for ``idle_s`` while its end
        lies past what was applied, with nothing fetched waiting for the agent, is
        fetched again from the views (librdkafka retries a failing fetch on its own;
        this is the net under it)."""
        fetcher = self.fetcher
        assert fetcher is not None
        now = time.monotonic()
        idle = sorted(p for p, view in self.views.items() if now - view.last_seen >= idle_s)
        if not idle or fetcher.waiting_bytes():
            return
        epoch = fetcher.epoch
        try:
            ends = await asyncio.to_thread(watermarks, self.settings.kafka_bootstrap,
                                           self.source_topic, idle)
        except Exception as exc:  # broker trouble: the next check asks again
            log.info("%s: checking for stalled partitions failed: %s", self.source_topic, exc)
            return
        if (not self.ready or self.app.rebalancing or fetcher.epoch != epoch
                or fetcher.waiting_bytes()):
            return  # a rebalance, or messages came meanwhile
        now = time.monotonic()
        stalled = [(p, view, ends[p][1]) for p in idle if p in ends
                   and (view := self.views.get(p)) is not None
                   and now - view.last_seen >= idle_s
                   and view.cursor.kafka_offset(view.applied) + 1 < ends[p][1]]
        if not stalled:
            return
        for p, view, high in stalled:
            log.warning("%s[%d]: nothing fetched for %.0f s while offsets %d..%d wait "
                        "unapplied; fetching the partitions again", self.source_topic, p,
                        now - view.last_seen, view.cursor.kafka_offset(view.applied) + 1,
                        high - 1, extra={"partition": p})
            view.last_seen = now
        self.stats.resumed += len(stalled)
        fetcher.assign({p: view.cursor.kafka_offset(view.applied + 1)
                        for p, view in self.views.items()})

    async def _read_to_end(self, tp: Any, high: int) -> bool:
        """Whether the consumer has handed out everything up to ``high`` for ``tp``.

        A worker behind on a backlog leaves partitions undelivered for seconds while it
        applies others; their records wait in the consumer, fetched or about to be. Its
        read position (the offset it hands out next) is then short of the end, and a
        seek would only throw the fetched records away. A stalled partition is one
        whose consumer has read to the end while messages stay unapplied."""
        try:
            position = await asyncio.wait_for(self.app.consumer.position(tp), STALL_S)
        except Exception as exc:  # revoked meanwhile, or the consumer stopping
            log.info("%s[%d]: read position unknown: %s", self.source_topic, tp.partition, exc)
            return False
        return position is None or position >= high

    async def close_by_clock(self) -> None:
        if not self.ready:
            return
        now = now_ms()
        assigned = {tp.partition: tp for tp in self.app.consumer.assignment()
                    if tp.topic == self.source_topic}
        for p, view in list(self.views.items()):
            highwater = self.highwater(p, assigned.get(p))
            if highwater is not None and view.cursor.kafka_offset(view.applied) + 1 < highwater:
                continue  # a backlog: its keys are not quiet, their messages are queued
            for key in list(view.keys):
                held = self.run.states.get(key)
                if held is not None:
                    _, o, _, state = held
                else:
                    raw = self.table.get(key)
                    if raw is None:
                        continue
                    _, o, state = decode_envelope(raw)
                fresh = []
                for record in self.spec.clock(state, now, self.arrivals.get(key)):
                    ident = (key, _record_identity(record))
                    if ident not in self.clock_sent:
                        self.clock_sent.add(ident)
                        fresh.append(record)
                await self._send_outputs(key, fresh, p, o)
        if len(self.clock_sent) > 100_000:
            self.clock_sent.clear()

    def highwater(self, partition: int, tp: Any) -> int | None:
        """A held partition's end as its consumer last fetched it."""
        if self.fetcher is not None:
            return self.fetcher.highwater(partition)
        return self.app.consumer.highwater(tp) if tp is not None else None

    def publish_counts(self) -> None:
        """What the stats counted since the last call, into the Prometheus counters. Called
        once a second, so that the per-message path only adds to plain ints."""
        stats, published, metrics = self.stats, self._published, self.metrics
        for counter, field_name in ((metrics.messages_in, "messages"),
                                    (metrics.records_in, "items_in"),
                                    (metrics.messages_skipped, "skipped"),
                                    (metrics.messages_reread, "reread"),
                                    (metrics.records_out, "outputs"),
                                    (metrics.messages_out, "frames_out")):
            value = getattr(stats, field_name)
            if value != published.get(field_name, 0):
                counter.inc(value - published.get(field_name, 0))
                published[field_name] = value

    def observe_state(self) -> None:
        """The keys and state bytes of the partitions held, into the state gauges."""
        keys = size = 0
        for view in self.views.values():
            for key in view.keys:
                raw = self.table.get(key)
                if raw is not None:
                    keys += 1
                    size += len(raw)
        self.metrics.state_keys.set(keys)
        self.metrics.state_bytes.set(size)

    def observe_lag(self, lag: Any, group: str) -> None:
        """Per held partition: its end (as last fetched) minus the offset next to apply."""
        for tp in self.app.consumer.assignment():
            if tp.topic != self.source_topic:
                continue
            highwater = self.highwater(tp.partition, tp)
            if highwater is None:
                continue
            view = self.views.get(tp.partition)
            applied = (view.cursor.kafka_offset(view.cursor.last) + 1
                       if view is not None and view.cursor.last >= 0 else 0)
            lag.labels(group, tp.topic, str(tp.partition)).set(max(0, highwater - applied))

    def report(self) -> None:
        s = self.stats
        active = (s.last_event or 0.0) - (s.first_event or 0.0)
        log.info("%s worker stopping: %d messages, %d %s, %d skipped as already applied, %d "
                 "re-read, %d stalled partitions sought back, %d rejected, %d records sent, "
                 "states written in %d runs; %.3f s "
                 "between the first and the last message (monotonic %.3f to %.3f)",
                 self.spec.name, s.messages, s.items, self.spec.item_noun, s.skipped,
                 s.reread, s.resumed, s.rejected, s.outputs, s.runs, active,
                 s.first_event or 0.0, s.last_event or 0.0)


async def seek_in_consumer_thread(app: faust.App, offsets: dict[Any, int]) -> None:
    """Seek partitions of Faust's consumer, and reset its read offsets, in the thread
    its aiokafka consumer runs in. Faust's ``seek`` calls aiokafka from the event loop's
    thread while the consumer thread drains fetched records, and the two change the
    same dict: a fetch then failed with a KeyError, which stopped the worker."""
    await app.consumer.seek_wait(offsets)


def fail_stop(what: str, exc: BaseException | None = None) -> NoReturn:
    """Leave at once, as a kill -9 would, after an unexpected failure inside a message.

    Faust would restart the agent and go on with the next message, while what this
    process holds (cursor, state, outputs already sent) may be half of the failed one;
    its own committer could also commit past it on the way out. The runtime is built to
    survive a kill at any line: a restarted worker recovers the changelog and re-reads
    from the committed offsets, so leaving now loses and doubles nothing."""
    log.critical("%s; the worker stops now (exit %d) and a restart resumes from the "
                 "changelog and the committed offsets", what, EXIT_FAILED_MESSAGE,
                 exc_info=exc if exc is not None else True)
    logging.shutdown()
    os._exit(EXIT_FAILED_MESSAGE)


def _record_identity(record: dict[str, Any]) -> str:
    return orjson.dumps({k: v for k, v in record.items() if k not in ("src_partition",
                                                                         "src_offset")}).decode()


def _canonical_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return normalize_symbol(key.decode("utf-8", errors="strict"))
    except (UnicodeDecodeError, SymbolError):
        return None


def output_frames(records: list[dict[str, Any]], limit: int) -> list[bytes]:
    """The records of one message as one frame, or, when that frame would pass
    ``limit`` bytes (Kafka refuses a record past its size limit, and the producer's
    failure would stop the worker), as several frames in the same order; every
    downstream consumer takes a frame or a part of one alike."""
    value = orjson.dumps(records if len(records) > 1 else records[0])
    if len(value) <= limit or len(records) == 1:
        return [value]
    half = len(records) // 2
    return output_frames(records[:half], limit) + output_frames(records[half:], limit)


class WorkerRuntime:
    """Every agent of the worker, with the one commit timer and the one clock timer."""

    def __init__(self, app: faust.App, settings: Settings, specs: list[AgentSpec],
                 metrics: WorkerMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        dead_letters = app.topic(settings.topics.dead_letter, key_type=bytes,
                                 value_type=bytes, partitions=settings.partitions)
        outputs = {getattr(settings.topics, name) for spec in specs
                   for name in (spec.output, *spec.also)}
        self.publishers = Publishers(settings, lambda: bool(app.rebalancing), sorted(outputs))
        self.agents = [AgentRuntime(app, settings, spec, dead_letters,
                                    AgentMetrics.of(metrics, spec.name), self.publishers)
                       for spec in specs]
        # Their partitions stay Faust's for the group, and are fetched by the agents
        external = frozenset(agent.source_topic for agent in self.agents
                             if agent.fetcher is not None)
        consumer_class = app.transport.Consumer
        if external and not hasattr(consumer_class, "external_topics"):
            # Faust would deliver them to streams nobody reads, and wait for those
            # messages at every revocation
            raise RuntimeError("FXSTREAM_WORKER_FETCH=librdkafka needs the worker's "
                               "consumer of pipeline.runtime.app.build_app")
        if hasattr(consumer_class, "external_topics"):
            consumer_class.external_topics = external
        self._lag_series: set[tuple[str, str, str]] = set()
        self._rebalances = 0  # revocations so far: a commit that met one is not recorded
        app.timer(interval=1.0, name="fxstream-commit")(self.commit_applied)
        app.timer(interval=1.0, name="fxstream-clock")(self.close_by_clock)
        app.timer(interval=STALL_S, name="fxstream-stalls")(self.resume_stalled)
        app.timer(interval=1.0, name="fxstream-metrics")(self.observe)
        app.timer(interval=max(0.01, settings.worker_run_ms / 1000),
                  name="fxstream-runs")(self.write_runs)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)

    def changelog_topics(self) -> list[str]:
        """The changelog topic of every agent's table, as Faust names it."""
        return [agent.table.changelog_topic.get_topic_name() for agent in self.agents]

    async def commit_applied(self, stopping: bool = False) -> None:
        """Commit the offsets the cursors say are applied, after flushing what they wrote.

        Faust's own committer also runs (every commit interval, at revocation and at
        shutdown) from its acknowledgement lists; a message is acknowledged only after
        the agent applied it, so it never commits past a cursor, but a rebalance can
        leave those lists with a hole after which they stop advancing. This commit
        follows the cursors instead."""
        if self.app.rebalancing:
            return
        assigned = {(tp.topic, tp.partition): tp for tp in self.app.consumer.assignment()}
        offsets: dict[Any, int] = {}
        owners: dict[Any, tuple[AgentRuntime, int]] = {}
        for agent in self.agents:
            if not agent.ready:
                continue
            for p, nxt in agent.committable().items():
                tp = assigned.get((agent.source_topic, p))
                if tp is not None:
                    offsets[tp] = nxt
                    owners[tp] = (agent, p)
        if not offsets and not any(agent.unacknowledged for agent in self.agents):
            return
        started = time.monotonic()
        generation = self._rebalances
        marks = [(agent, *agent.settling()) for agent in self.agents]
        sent = [future for _, _, futures in marks for future in futures]
        acknowledged = await self._acknowledged(
            sent, SHUTDOWN_COMMIT_S if stopping else self.settings.output_ack_timeout_s,
            stopping)
        if acknowledged:
            for agent, views, _ in marks:
                agent.settle(views)
        elif stopping:
            return
        if not offsets:
            return
        try:
            # The driver's commit of given offsets. It drops the partitions its consumer
            # thread no longer holds and still answers True, so a commit that met a
            # rebalance is not recorded: the next tick after recovery sends it again.
            done = await self.app.consumer._commit(offsets)
            if done and generation == self._rebalances and not self.app.rebalancing:
                for tp, nxt in offsets.items():
                    agent, p = owners[tp]
                    agent.committed[p] = nxt
                self.metrics.commit_seconds.observe(time.monotonic() - started)
                committed_at = time.time()
                for topic in {tp.topic for tp in offsets}:
                    self.metrics.common.last_commit.labels(self.settings.worker_group,
                                                           topic).set(committed_at)
        except Exception as exc:  # a rebalance in between; the next tick tries again
            log.info("offset commit deferred: %s", exc)

    async def _acknowledged(self, sent: list[asyncio.Future[Any]], timeout: float,
                            stopping: bool = False) -> bool:
        """Flush the producer and wait for each of ``sent``: True when Kafka has every
        one. A send Kafka refused, or none acknowledged within ``timeout``, stops the
        worker: its message's state may already be in the changelog, and a restart
        re-sends what that state stands for. False only while the worker stops (a send
        cancelled, the producer closed): nothing settles then. The sends are waited for,
        never cancelled: they are the producer's own futures, shared with its sender."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        timed_out = False
        try:
            await asyncio.wait_for(self.app.producer.flush(), timeout)
            if sent:
                _, pending = await asyncio.wait(sent, timeout=max(0.0, deadline - loop.time()))
                timed_out = bool(pending)
        except TimeoutError:
            timed_out = True
        except Exception as exc:
            if self.app.should_stop:
                return False
            fail_stop(f"flushing the worker's outputs failed ({exc!r})")
        if timed_out and stopping:
            log.warning("Kafka did not acknowledge the worker's outputs within %g s of the "
                        "stop; their offsets are not committed", timeout)
            return False
        if timed_out:
            fail_stop(f"Kafka did not acknowledge the worker's outputs within {timeout:g} s "
                      "(FXSTREAM_OUTPUT_ACK_TIMEOUT_S); states keep what unacknowledged "
                      "messages sent and would grow without bound")
        cancelled = sum(f.cancelled() for f in sent)
        failed = [e for f in sent if not f.cancelled() and (e := f.exception()) is not None]
        if failed:
            fail_stop(f"Kafka refused {len(failed)} of {len(sent)} records the worker sent "
                      f"(outputs and changelog) ({failed[0]!r})")
        if cancelled:
            if self.app.should_stop:
                return False
            fail_stop(f"{cancelled} of {len(sent)} records the worker sent (outputs and "
                      "changelog) were cancelled unsent")
        return True

    async def write_runs(self) -> None:
        """Write the runs that waited ``FXSTREAM_WORKER_RUN_MS`` (the agent writes its own
        when the next message comes; this writes them when none comes)."""
        deadline = time.monotonic() - self.settings.worker_run_ms / 1000
        for agent in self.agents:
            if agent.run.messages and agent.run.started <= deadline:
                await agent.write_run()

    async def close_by_clock(self) -> None:
        for agent in self.agents:
            await agent.close_by_clock()

    async def resume_stalled(self) -> None:
        for agent in self.agents:
            await agent.resume_stalled(STALL_S)

    async def observe(self) -> None:
        """Consumer lag per held partition and state sizes, into their gauges."""
        lag = self.metrics.common.consumer_lag
        group = self.settings.worker_group
        for agent in self.agents:
            agent.publish_counts()
            if agent.ready:
                agent.observe_state()
                agent.observe_lag(lag, group)
        sources = {agent.source_topic for agent in self.agents}
        held = {(group, tp.topic, str(tp.partition)) for tp in self.app.consumer.assignment()
                if tp.topic in sources}
        for labels in self._lag_series - held:  # partitions no longer held
            with contextlib.suppress(KeyError):
                lag.remove(*labels)
        self._lag_series = held

    def readiness(self) -> str | None:
        """None when every agent holds its recovered partitions, else why not."""
        if getattr(self.app, "in_recovery", False):
            return "recovering table state from the changelogs"
        waiting = [a.spec.name for a in self.agents if not a.ready]
        if waiting:
            return f"waiting for partitions and recovered state: {', '.join(waiting)} agents"
        if self.app.rebalancing:
            return "rebalancing"
        return None

    async def _on_revoked(self, app: faust.App, revoked: set[Any], **kw: Any) -> None:
        self._rebalances += 1
        for agent in self.agents:
            agent.on_revoked()

    async def _on_shutdown(self, app: faust.App, **kw: Any) -> None:
        for agent in self.agents:
            agent.stopping = True
            # while the producer runs; what it acknowledges commits
            await agent.quiesce()
            if agent.fetcher is not None:
                await asyncio.to_thread(agent.fetcher.close)
            agent.report()
        # Faust's committer commits at shutdown only what it handed out itself, which
        # is nothing of a source the runtime fetches: the written runs commit here.
        # Not committing is safe (a restart skips what it applied again), so a Kafka
        # that does not answer does not hold the stop for long.
        try:
            await asyncio.wait_for(self.commit_applied(stopping=True), SHUTDOWN_COMMIT_S + 5)
        except TimeoutError:
            log.warning("the offsets applied last were not committed within %.0f s at "
                        "shutdown; a restart skips their messages as applied",
                        SHUTDOWN_COMMIT_S)
