"""The sink runtime: one upsert protocol for every table a topic is written into.

A sink is a declaration (`SinkSpec`): its topic, table, columns with their
PostgreSQL types, key, optional version columns, and how a batch of decoded
messages becomes rows (and what makes a row invalid). The runtime owns the rest:

1. batching: wait for the first message, then take what is already fetched;
2. invalid messages go to the dead-letter topic, and Kafka must take them before
   anything of the batch is committed;
3. last version wins within the batch: each key keeps its highest version (ties,
   and rows without a version: the later message);
4. in ONE PostgreSQL transaction: binary COPY of the rows whose key cannot exist
   yet straight into the table, binary COPY of the rest into a temporary table and
   one merge (``INSERT ... ON CONFLICT DO UPDATE``) that never lets an older
   version overwrite a newer one, and every partition's next offset into
   sink_offsets (which never moves backwards);
5. commit, then commit the same offsets to Kafka (asynchronously, one commit in
   flight and at most one each ``KAFKA_COMMIT_INTERVAL_S``: Kafka's offsets serve
   lag monitoring; every assignment starts from the offsets stored in PostgreSQL).

Steps 4 and 5 are pipelined: batch N's transaction runs on a single writer thread
while the main thread consumes and decodes batch N+1; then the main thread waits for
N, commits N's offsets to Kafka and hands N+1 to the writer. Every Kafka consumer call
stays on the main thread. A rebalance callback first waits for the batch in flight, so
nothing of a revoked partition is written after the callback returned; a batch in
flight that finds PostgreSQL down starts the outage below, and the batch decoded
meanwhile is dropped (it is read again from the stored offsets). Stopping waits for
the batch in flight and commits it.

Failures:
- PostgreSQL unreachable (connection errors only): pause every assigned partition,
  including ones assigned later, keep polling (group membership, rebalances), back
  off up to 15 s, and when it answers again seek every partition back to its first
  unwritten offset (the one stored in PostgreSQL) and resume. No polled message is
  dropped: whatever arrives meanwhile is read again from there. Offsets written
  before the outage still go to Kafka (throttled as always).
- PostgreSQL refuses rows (data or integrity errors): the batch is split until the
  refused rows are found; they go to the dead-letter topic with PostgreSQL's error
  text (reason ``refused_by_database``) and the rest is written.
- A rebalance while a batch is gathered: the batch is dropped and every assigned
  partition is sought back to where its assignment started, so nothing of a
  revoked partition is written after its new owner has started.
- Started while PostgreSQL or Kafka is down: wait with backoff, say so in the log
  and in the status file, start when it comes back.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, sub
from typing import Any

import msgspec
import orjson
import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from pipeline.core.deadletters import dead_letter, dead_letter_key
from pipeline.observability.health import Heartbeat
from pipeline.observability.metrics import SinkMetrics, TableMetrics, new_registry
from pipeline.process_status import write_status
from pipeline.settings import Settings

log = logging.getLogger("fxstream.sink")

MAX_BACKOFF_S = 15.0
REFUSED = "refused_by_database"
# Kafka's offsets follow PostgreSQL's for lag monitoring only: at most one commit this
# often, not one a batch (about a hundred a second under load, each a write to
# __consumer_offsets the broker pays for).
KAFKA_COMMIT_INTERVAL_S = 0.5

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid item: the message (its index in the batch), its index in the frame
    (None for a message that is not a frame), why, and what it was."""

    message: int
    index: int | None
    detail: str
    payload: Any


Origin = tuple[int, int | None]  # (message in the batch, index in its frame or None)


class MessageOrigins(Sequence[Origin]):
    """The origins of rows decoded in message order, kept per message rather than per
    row: a row's origin is looked up only when it is asked for (a refused row)."""

    __slots__ = ("_framed", "_messages", "_rows", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []  # the first row of each message that has rows
        self._messages: list[int] = []
        self._framed: list[bool] = []
        self._rows = 0

    def add(self, message: int, rows: int, framed: bool) -> None:
        if rows:
            self._starts.append(self._rows)
            self._messages.append(message)
            self._framed.append(framed)
            self._rows += rows

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, i: int) -> Origin:  # type: ignore[override]
        if i < 0:
            i += self._rows
        if not 0 <= i < self._rows:
            raise IndexError(i)
        k = bisect_right(self._starts, i) - 1
        return self._messages[k], (i - self._starts[k] if self._framed[k] else None)

    def __iter__(self) -> Iterator[Origin]:
        for m, framed, count in zip(self._messages, self._framed,
                                    map(sub, [*self._starts[1:], self._rows], self._starts),
                                    strict=True):
            if framed:
                yield from zip(repeat(m), range(count))
            else:
                yield m, None


class PickedOrigins(Sequence[Origin]):
    """``origins[keep[i]]``, looked up when asked for (the rows a reduction kept)."""

    __slots__ = ("_keep", "_origins")

    def __init__(self, origins: Sequence[Origin], keep: list[int]) -> None:
        self._origins, self._keep = origins, keep

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, i: int) -> Origin:  # type: ignore[override]
        return self._origins[self._keep[i]]


@dataclass(slots=True)
class Decoded:
    """Rows in the declaration's column order; ``origins[i]`` = (message, index) of rows[i]."""

    rows: list[Row] = field(default_factory=list)
    origins: Sequence[Origin] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class SinkSpec:
    """One sink: everything the runtime needs to know about a topic and its table."""

    name: str  # used in logs: "candle" -> "candle sink stopping: ..."
    topic: str  # a field of pipeline.settings.Topics, e.g. "candles"
    table: str
    columns: tuple[str, ...]  # written columns, in row order
    types: tuple[str, ...]  # their PostgreSQL types, for binary COPY
    key: tuple[str, ...]  # the primary key; the last column orders a series (time)
    # decode(values): values[i] is message i's JSON value, or the `NOT_JSON` marker
    decode: Callable[[list[Any]], Decoded]
    invalid_reason: str  # dead-letter reason for what decode rejects
    version: tuple[str, str] | None = None  # (source partition, source offset) columns
    touch: str | None = "updated_at"  # set to now() on insert and update
    # A row whose key's last column lies past the greatest stored one of its series
    # (the other key columns) cannot exist yet: it is copied straight into the table.
    direct_new_keys: bool = True
    # Optional fast path: a msgspec Struct with the columns as fields, at least as strict
    # as ``decode``. A message that decodes into it (one record or a list of them)
    # becomes rows straight from its bytes; any other goes through ``decode``, which
    # stays the authority on what is valid and why not.
    record: type[msgspec.Struct] | None = None

    def index(self, column: str) -> int:
        return self.columns.index(column)


@dataclass(slots=True)
class _Batch:
    """A decoded batch, ready for its transaction: the messages it writes (in order),
    each partition's next offset, and the rows (one per key) with their origins."""

    messages: list[Message]
    next_offsets: dict[int, int]
    rows: list[Row]
    origins: Sequence[Origin]
    rejected: int
    records: int = 0  # items in the messages, valid or not
    oldest_ms: int | None = None  # the oldest message's timestamp (the first of a partition)


class NotJson:
    """The value of a message that is not JSON; decode declarations reject it."""

    def __init__(self, error: str) -> None:
        self.error = error


@dataclass
class SinkStats:
    batches: int = 0
    rows: int = 0
    messages: int = 0
    dead_letters: int = 0
    refused: int = 0
    db_failures: int = 0
    last_error: str = ""
    first_batch: float | None = None  # monotonic time the first batch arrived
    last_commit: float | None = None  # ... and the last one was committed


@dataclass(slots=True)
class _Written:
    """What a batch's statements did to its rows: inserted, updated, or left as they were
    because a newer version is stored."""

    inserted: int = 0
    updated: int = 0
    older: int = 0
    copy_s: float = 0.0  # time in COPY and merge statements

    def add(self, other: _Written) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.older += other.older
        self.copy_s += other.copy_s


class DatabaseDown(Exception):
    """PostgreSQL did not answer (a connection failure, never a refusal)."""


_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
# What PostgreSQL (or the client, formatting a value for it) refuses about a row.
_REFUSALS = (psycopg.DataError, psycopg.IntegrityError, OverflowError)


class SinkRuntime:
    """Runs one declaration: `run()` consumes until stopped (SIGTERM/SIGINT or ``until``)."""

    def __init__(self, spec: SinkSpec, settings: Settings, metrics: TableMetrics | None = None,
                 heartbeat: Heartbeat | None = None) -> None:
        self.spec = spec
        self.settings = settings.require_connections()
        self.topic: str = getattr(settings.topics, spec.topic)
        self.group = settings.sink_group
        self.stats = SinkStats()
        # What it counts, for the process's /metrics (consumers.sinks), and its poll loop's
        # heartbeat, for /healthz; a sink built alone counts into a registry of its own.
        self.metrics = metrics or TableMetrics.of(SinkMetrics.build(new_registry()), spec.table)
        self.heartbeat = heartbeat or Heartbeat()
        self.metrics_url: str | None = None  # where the process serves them, for the status
        self._subscribed = False
        self._assignment_seen = False
        self._probe = _DatabaseProbe(settings.database_url)
        self._lag_series: set[int] = set()
        self._written: dict[int, int] = {}  # next offset to write per partition, as committed
        self._lag_at = 0.0
        self._stop = False
        self._conn: psycopg.Connection[Any] | None = None
        self._sql = _Sql(spec)
        self._fast: tuple[msgspec.json.Decoder[Any], Callable[[Any], Row]] | None = None
        if spec.record is not None:
            self._fast = (msgspec.json.Decoder(list[spec.record] | spec.record),  # type: ignore[name-defined]
                          _row_getter(spec.columns))
        # assignment
        self._assigned: set[int] = set()
        self._start: dict[int, int] = {}  # where each partition's current assignment started
        self._rebalances = 0
        # outage
        self._down = False
        self._paused: set[int] = set()
        self._first_unwritten: dict[int, int] = {}
        self._delay = 0.5
        self._retry_at = 0.0
        # greatest stored value of the key's last column per series (the other key columns)
        self._high: dict[tuple[Any, ...], Any] = {}
        # pipelining: one batch's transaction runs on this thread while the next is
        # consumed and decoded; every Kafka consumer call stays on the main thread
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[tuple[int, float]], _Batch] | None = None
        # Kafka offset commits: written offsets not yet sent, and when the one in flight
        # was sent
        self._to_commit: dict[int, int] = {}
        self._commit_sent: float | None = None
        self._commit_last = 0.0
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(500, int(settings.session_timeout_s * 100)),
            "max.poll.interval.ms": 600_000,
            "fetch.max.bytes": 32 << 20,
            "on_commit": self._on_commit,
        })
        from producers.kafka_io import producer_config

        self.dlq = Producer(producer_config(settings, **{"linger.ms": 5}))

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, until: Callable[[], bool] = lambda: False) -> SinkStats:
        """Consume until stopped: a batch at a time, each written with the protocol above."""
        try:
            if not self._wait_for_services(until):
                return self.stats
            self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_lost)
            self._subscribed = True
            self.metrics.postgres_up.set(1)
            self._status("running")
            log.info("%s sink started: group %s, topic %s, table %s", self.spec.name, self.group,
                     self.topic, self.spec.table)
            timeout = self.settings.sink_batch_timeout_ms / 1000
            size = self.settings.sink_batch_size
            while not self._stop and not until():
                self.heartbeat.beat()
                self._observe_lag({})
                if self._inflight is not None and self._inflight[0].done():
                    self._drain()
                if self._down:
                    self._wait_while_down()
                    continue
                before = self._rebalances
                # Wait for the first message only, then take what is already fetched: low
                # latency when quiet, full batches under load. Meanwhile the previous
                # batch's transaction runs on the writer thread.
                messages = self.consumer.consume(1, timeout)
                if messages and size > 1:
                    messages += self.consumer.consume(size - 1, 0)
                self._commit_to_kafka()  # what waited for the previous commit's answer
                if self._rebalances != before:
                    # the rebalance callbacks waited for the batch in flight
                    self._restart_assignment(messages)
                    continue
                batch = self._prepare(messages) if messages else None
                self._drain()  # the previous batch: written, then its offsets to Kafka
                if batch is None:
                    continue
                if self._down:
                    # The previous batch found PostgreSQL down: this one is read again
                    # from the offsets stored there.
                    self._note_unwritten(batch.messages)
                    continue
                self._submit(batch)
        finally:
            self._finish()
        return self.stats

    def _finish(self) -> None:
        try:
            self._drain()  # the batch in flight is written and committed before leaving
        except Exception as exc:
            log.warning("%s sink: the last batch failed while stopping: %s", self.spec.name,
                        _one_line(exc))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        active = (self.stats.last_commit or 0.0) - (self.stats.first_batch or 0.0)
        log.info("%s sink stopping: %d rows from %d messages in %d batches, %d dead "
                 "letters; %.3f s between the first batch and the last commit",
                 self.spec.name, self.stats.rows, self.stats.messages, self.stats.batches,
                 self.stats.dead_letters, active)
        if self._written and self._assigned:
            # The last asynchronous commit may still be on its way, and what was written
            # after it has not been sent.
            last = [TopicPartition(self.topic, p, o) for p, o in self._written.items()
                    if p in self._assigned]
            with contextlib.suppress(Exception):
                self.consumer.commit(offsets=last, asynchronous=False)
        with contextlib.suppress(Exception):
            self.consumer.close()  # leaves the group; offsets were committed above
        self.dlq.flush(10)
        self._drop_connection()
        self._status("stopped")

    def _status(self, state: str, **extra: Any) -> None:
        """This process's state for `fxstream status` (pipeline.process_status)."""
        if self.metrics_url:
            extra["metrics"] = self.metrics_url
        write_status(self.settings.state_dir, f"{self.spec.name}-sink", state,
                     group=self.group, topic=self.topic, **extra)

    # -- start-up: wait for PostgreSQL and Kafka --------------------------------------------

    def _wait_for_services(self, until: Callable[[], bool]) -> bool:
        from pipeline.db.migrate import DatabaseError, migrate

        delay = 0.5
        while not self._stop and not until():
            try:
                migrate(self.settings)
                self._connection()
                break
            except (DatabaseError, *_CONNECTION_ERRORS) as exc:
                self._drop_connection()
                self._status("waiting", waiting_for="PostgreSQL", error=_one_line(exc))
                log.warning("%s sink waiting for PostgreSQL (%s); next try in %.1f s",
                            self.spec.name, _one_line(exc), delay)
                self._sleep(delay, until)
                delay = min(delay * 2, MAX_BACKOFF_S)
        delay = 0.5
        while not self._stop and not until():
            try:
                meta = self.consumer.list_topics(self.topic, timeout=5)
                err = meta.topics[self.topic].error
                if err is None or err.code() != KafkaError._TRANSPORT:
                    return True
                problem = err.str()
            except Exception as exc:  # KafkaException: the broker does not answer
                problem = _one_line(exc)
            self._status("waiting", waiting_for="Kafka", error=problem)
            log.warning("%s sink waiting for Kafka at %s (%s); next try in %.1f s",
                        self.spec.name, self.settings.kafka_bootstrap, problem, delay)
            self._sleep(delay, until)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return False

    def _sleep(self, seconds: float, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and not until() and time.monotonic() < deadline:
            self.heartbeat.beat()
            time.sleep(min(0.1, seconds))

    # -- readiness (asked from the endpoints' thread) ---------------------------------------

    def readiness(self) -> str | None:
        """None when the sink holds its assignment and PostgreSQL answers, else why not."""
        name = f"{self.spec.name} sink"
        if not self._subscribed:
            return f"{name}: starting (waiting for PostgreSQL and Kafka)"
        if self._down:
            return f"{name}: PostgreSQL unreachable ({self.stats.last_error})"
        if not self._assignment_seen:
            return f"{name}: waiting for its partitions"
        problem = self._probe.problem()
        return f"{name}: PostgreSQL unreachable ({problem})" if problem else None

    # -- assignment -----------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()  # nothing in flight while the assignment changes or offsets are read
        self._rebalances += 1
        self._assignment_seen = True
        self._high.clear()
        numbers = [p.partition for p in partitions]
        stored: dict[int, int] | None = None
        if not self._down:
            try:
                stored = self._stored_offsets(numbers)
            except DatabaseDown as exc:
                self._enter_outage(exc, "while assigning partitions")
        if stored is not None:
            # Kafka's offsets are committed after PostgreSQL's, so never ahead of them; a
            # partition PostgreSQL holds nothing for has never been written: from the start.
            for p in partitions:
                p.offset = stored.get(p.partition, OFFSET_BEGINNING)
                self._start[p.partition] = p.offset
            where: dict[int, Any] = {p.partition: p.offset for p in partitions}
        else:
            where = dict.fromkeys(numbers, "paused until PostgreSQL is back")
        self._assigned = set(numbers)
        log.info("assigned %s: starting at %s", self.topic, where)
        consumer.assign(partitions)
        if stored:
            # A sink killed between PostgreSQL's commit and Kafka's left Kafka behind; when
            # nothing new arrives no batch would ever commit it, and the lag would stay.
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in stored.items()],
                            asynchronous=True)
        if self._down and partitions:
            # Partitions that arrive during an outage start paused; where they start is
            # decided from PostgreSQL once it answers.
            consumer.pause(partitions)
            self._paused |= set(numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight may hold rows of these partitions: it is written (or found
        # unwritable) before they go, so nothing of them is written after the new owner
        # started.
        self._drain()
        self._commit_revoked(consumer, {p.partition for p in partitions})
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost with the membership: no commit of them could succeed."""
        self._drain()
        self._forget(partitions)

    def _commit_revoked(self, consumer: Consumer, gone: set[int]) -> None:
        """The written offsets of revoked partitions not yet in Kafka (the commits wait
        up to ``KAFKA_COMMIT_INTERVAL_S``): committed now, while this member still may,
        so the group's lag does not show them as unwritten until the new owner writes."""
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._to_commit.items()
                   if p in gone]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # the database holds the offsets; Kafka's are a convenience
            log.warning("Kafka offset commit of revoked partitions failed (PostgreSQL has "
                        "them): %s", _one_line(exc))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._high.clear()
        gone = {p.partition for p in partitions}
        self._assigned -= gone
        self._paused -= gone
        self._assignment_seen = False
        for p in gone:
            self._to_commit.pop(p, None)  # its new owner commits it
            self._start.pop(p, None)
            self._first_unwritten.pop(p, None)
            self._written.pop(p, None)
        log.info("revoked %s partitions %s", self.topic, sorted(gone))

    def _restart_assignment(self, messages: list[Message]) -> None:
        """A rebalance was served while this batch was gathered: whatever it holds may
        belong to a partition revoked meanwhile, or predate where a new assignment
        starts. Drop it and read each assigned partition again from its start."""
        if messages:
            log.info("rebalance while a batch was gathered: %d messages dropped, read again "
                     "from the new assignment's offsets", len(messages))
        if self._down:
            # Paused: where each partition continues is decided when PostgreSQL is back,
            # from the offsets stored there or, failing those, from these messages.
            self._note_unwritten(messages)
            return
        for p in sorted(self._assigned):
            start = self._start.get(p)
            if start is not None:
                self._seek(p, start)

    def _note_unwritten(self, messages: list[Message]) -> None:
        for msg in messages:
            p = msg.partition()
            if msg.error() is None and p in self._assigned:
                self._first_unwritten[p] = min(self._first_unwritten.get(p, msg.offset()),
                                               msg.offset())

    def _seek(self, partition: int, offset: int) -> None:
        try:
            self.consumer.seek(TopicPartition(self.topic, partition, offset))
        except Exception as exc:
            log.warning("could not seek %s[%d] to %d: %s", self.topic, partition, offset,
                        _one_line(exc))

    # -- outage ---------------------------------------------------------------------------

    def _enter_outage(self, exc: BaseException, where: str) -> None:
        self._drop_connection()
        self.stats.db_failures += 1
        self.stats.last_error = _one_line(exc)
        if not self._down:
            self._down = True
            self._delay = 0.5
            self.metrics.postgres_outages.inc()
            self.metrics.postgres_up.set(0)
        else:
            self.metrics.postgres_retries.inc()
        self._retry_at = time.monotonic() + self._delay
        log.warning("PostgreSQL unavailable %s (%s); partitions paused, nothing new committed, "
                    "retrying in %.1f s", where, self.stats.last_error, self._delay)
        self._status("waiting", waiting_for="PostgreSQL", error=self.stats.last_error)
        self._pause_all()

    def _pause_all(self) -> None:
        parts = [TopicPartition(self.topic, p) for p in sorted(self._assigned - self._paused)]
        if parts:
            self.consumer.pause(parts)
            self._paused |= {p.partition for p in parts}

    def _wait_while_down(self) -> None:
        """Poll (group membership, rebalances) until it is time to try PostgreSQL again."""
        while not self._stop and time.monotonic() < self._retry_at:
            self.heartbeat.beat()
            self._commit_to_kafka()  # what was written before the outage
            msg = self.consumer.poll(0.2)
            if msg is not None:
                # Fetched before the pause took hold: not dropped, read again from here.
                self._note_unwritten([msg])
            self._pause_all()
        if self._stop:
            return
        assigned = sorted(self._assigned)
        try:
            stored = self._stored_offsets(assigned)
        except DatabaseDown as exc:
            self._delay = min(self._delay * 2, MAX_BACKOFF_S)
            self._enter_outage(exc, "still")
            return
        # Back: every assigned partition continues at its first unwritten offset.
        positions: dict[int, Any] = {}
        for p in assigned:
            start = stored.get(p, self._first_unwritten.get(p, OFFSET_BEGINNING))
            self._start[p] = start
            positions[p] = start
            self._seek(p, start)
        self._first_unwritten.clear()
        if self._paused:
            self.consumer.resume([TopicPartition(self.topic, p) for p in sorted(self._paused)])
        self._paused.clear()
        self._down = False
        self.metrics.postgres_up.set(1)
        self._high.clear()
        self._status("running")
        log.info("PostgreSQL is back; resuming %s at %s", self.topic, positions)

    # -- the commit protocol --------------------------------------------------------------

    def write_batch(self, messages: list[Message]) -> None:
        """Decode, write and commit one batch, waiting for it (and any batch in flight)."""
        batch = self._prepare(messages)
        self._drain()
        if batch is not None and not self._down:
            self._submit(batch)
            self._drain()

    def _prepare(self, messages: list[Message]) -> _Batch | None:
        """Decode a batch (main thread): its invalid messages go to the dead-letter topic,
        acknowledged by Kafka before the batch can be written."""
        if self.stats.first_batch is None:
            self.stats.first_batch = time.monotonic()
        spec = self.spec
        good: list[Message] = []
        next_offsets: dict[int, int] = {}
        firsts: list[Message] = []  # each partition's first (its oldest) message
        assigned = self._assigned
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err.str())
                continue
            p = msg.partition()
            if p not in assigned:
                continue
            if p not in next_offsets:
                firsts.append(msg)
            next_offsets[p] = msg.offset() + 1
            good.append(msg)
        if not next_offsets:
            return None
        decoded = self._decode(good)
        for r in decoded.rejected:
            self._dead_letter(good[r.message], spec.invalid_reason, r.detail, r.index, r.payload)
        rows, origins = self._reduce(decoded)
        if decoded.rejected:
            self._flush_dead_letters()
            self.metrics.dead_letter(spec.invalid_reason, len(decoded.rejected))
        stamps = [ts for kind, ts in (m.timestamp() for m in firsts) if kind and ts > 0]
        return _Batch(good, next_offsets, rows, origins, len(decoded.rejected),
                      records=len(decoded.rows) + len(decoded.rejected),
                      oldest_ms=min(stamps) if stamps else None)

    def _decode(self, messages: list[Message]) -> Decoded:
        """Rows of a batch: through the declaration's record type where it can, the
        rest through its ``decode``; rows stay in message order either way."""
        fast = self._fast
        if fast is None:
            return self.spec.decode([_json(msg.value()) for msg in messages])
        decoder, row_of = fast
        origins = MessageOrigins()
        out = Decoded(origins=origins)
        rows = out.rows
        slow: list[int] = []
        for m, msg in enumerate(messages):
            try:
                got = decoder.decode(msg.value() or b"")
            except ValueError:  # msgspec's errors, and UnicodeDecodeError for text
                slow.append(m)     # that is not UTF-8: ``decode`` says what is wrong
                continue
            if type(got) is list:  # a frame (an empty one holds nothing)
                rows += map(row_of, got)
                origins.add(m, len(got), framed=True)
            else:
                rows.append(row_of(got))
                origins.add(m, 1, framed=False)
        if not slow:
            return out
        checked = self.spec.decode([_json(messages[m].value()) for m in slow])
        for r in checked.rejected:
            out.rejected.append(Rejected(slow[r.message], r.index, r.detail, r.payload))
        if checked.rows:  # merge, keeping message order (last version wins relies on it)
            pairs = sorted([*zip(origins, rows, strict=True),
                            *(((slow[m], i), row) for (m, i), row
                              in zip(checked.origins, checked.rows, strict=True))],
                           key=lambda pair: pair[0][0])
            out.origins = [o for o, _ in pairs]
            out.rows = [r for _, r in pairs]
        return out

    def _submit(self, batch: _Batch) -> None:
        """Start the batch's transaction on the writer thread (one batch at a time)."""
        assert self._inflight is None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"{self.spec.name}-writer")
        future = self._pool.submit(self._write_timed, batch)
        self._inflight = (future, batch)

    def _write_timed(self, batch: _Batch) -> tuple[int, float]:
        """The writer thread: the batch's transaction; (refused rows, when it committed)."""
        refused = self._write(batch.rows, batch.origins, batch.messages, batch.next_offsets)
        return refused, time.monotonic()

    def _drain(self) -> None:
        """Wait for the batch in flight (main thread): written, its offsets go to Kafka;
        PostgreSQL down, the outage starts and its messages are read again."""
        if self._inflight is None:
            return
        future, batch = self._inflight
        self._inflight = None
        try:
            refused, committed_at = future.result()
        except DatabaseDown as exc:
            self._note_unwritten(batch.messages)
            self._enter_outage(exc, "writing a batch")
            return
        self.stats.last_commit = committed_at  # PostgreSQL's commit, as before pipelining
        self.stats.batches += 1
        self.stats.rows += len(batch.rows) - refused
        self.stats.messages += len(batch.messages)
        self.stats.dead_letters += batch.rejected + refused
        self.stats.refused += refused
        if self.stats.last_error:
            log.info("PostgreSQL is back; batch written")
            self.stats.last_error = ""
        self._to_commit.update(batch.next_offsets)
        self._commit_to_kafka()
        self._observe_batch(batch, committed_at)

    def _commit_to_kafka(self) -> None:
        """Commit the written offsets to Kafka, asynchronously and one request at a time.

        PostgreSQL holds the offsets every assignment starts from; Kafka's follow for lag
        monitoring. A synchronous commit cost every batch a round trip to the group
        coordinator (a few ms); unthrottled asynchronous ones queue up in front of the
        heartbeats until the session times out. So at most one is in flight, at most one
        goes out each ``KAFKA_COMMIT_INTERVAL_S``, and what was written meanwhile goes in
        the next; the last ones synchronously at the stop."""
        if self._commit_sent is not None or not self._to_commit:
            return
        if time.monotonic() - self._commit_last < KAFKA_COMMIT_INTERVAL_S:
            return
        self._commit_last = time.monotonic()
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._to_commit.items()]
        self._to_commit = {}
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
            self._commit_sent = time.monotonic()
        except Exception as exc:  # the database holds the offsets; Kafka's are a convenience
            log.warning("Kafka offset commit failed (PostgreSQL has them): %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """An offset commit answered (called from ``consume``, on the main thread)."""
        if self._commit_sent is not None:
            self.metrics.kafka_commit_seconds.observe(time.monotonic() - self._commit_sent)
            self._commit_sent = None
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("Kafka offset commit failed (PostgreSQL has them): %s", err.str())

    def _observe_batch(self, batch: _Batch, committed_at: float) -> None:
        """A written batch into the metrics (once per batch, on the main thread)."""
        m = self.metrics
        m.batches.inc()
        m.messages_in.inc(len(batch.messages))
        m.records_in.inc(batch.records)
        now = time.time()
        m.last_commit.labels(self.group, self.topic).set(now)
        if batch.oldest_ms is not None:
            # committed_at is monotonic: the same moment on the wall clock
            row_at = now - (time.monotonic() - committed_at)
            m.produce_to_row_seconds.observe(max(0.0, row_at - batch.oldest_ms / 1000))
        self._observe_lag(batch.next_offsets)

    def _observe_lag(self, written: dict[int, int]) -> None:
        """Per assigned partition: its end (as last fetched) minus the next offset to write;
        at most once a second, from the watermarks the consumer already holds."""
        for p, nxt in written.items():
            self._written[p] = nxt
        if time.monotonic() - self._lag_at < 1.0:
            return
        self._lag_at = time.monotonic()
        gauge = self.metrics.consumer_lag
        for p in self._assigned:
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), cached=True)
            except Exception:  # nothing fetched from it yet
                continue
            if high < 0:
                continue
            start = self._written.get(p, self._start.get(p, -1))
            base = start if start >= 0 else max(low, 0)  # not started: from the beginning
            gauge.labels(self.group, self.topic, str(p)).set(max(0, high - base))
        for p in self._lag_series - self._assigned:
            with contextlib.suppress(KeyError):
                gauge.remove(self.group, self.topic, str(p))
        self._lag_series = set(self._assigned)

    def _reduce(self, decoded: Decoded) -> tuple[list[Row], Sequence[Origin]]:
        """Each key's highest version; ties and unversioned rows: the later message."""
        rows = decoded.rows
        keyf = self._sql.key_of
        last = {keyf(r): i for i, r in enumerate(rows)}
        if len(last) == len(rows):
            return rows, decoded.origins
        version = self.spec.version
        if version is None:
            keep = sorted(last.values())
        else:
            vp, vo = self.spec.index(version[0]), self.spec.index(version[1])
            best: dict[Any, int] = {}
            for i, r in enumerate(rows):
                k = keyf(r)
                j = best.get(k)
                if j is None:
                    best[k] = i
                    continue
                old = rows[j]
                if (r[vo] is None or old[vo] is None or r[vp] != old[vp] or r[vo] >= old[vo]):
                    best[k] = i
            keep = sorted(best.values())
        return [rows[i] for i in keep], PickedOrigins(decoded.origins, keep)

    def _write(self, rows: list[Row], origins: Sequence[Origin],
               messages: list[Message], next_offsets: dict[int, int]) -> int:
        """Rows and offsets in one transaction; returns how many rows were refused. What
        the committed transaction did goes into the metrics."""
        started = time.monotonic()
        try:
            conn = self._connection()
            try:
                with conn.transaction():
                    written = self._apply(conn, rows, direct=True)
                    self._store_offsets(conn, next_offsets)
                    body_done = time.monotonic()
                self._observe_write(written, started, body_done)
                return 0
            except psycopg.errors.UniqueViolation:
                # A key thought new existed (another sink wrote it): merge everything.
                self._high.clear()
                try:
                    with conn.transaction():
                        written = self._apply(conn, rows, direct=False)
                        self._store_offsets(conn, next_offsets)
                        body_done = time.monotonic()
                    self._observe_write(written, started, body_done)
                    return 0
                except _REFUSALS:
                    pass
            except _REFUSALS:
                pass
            if conn.closed or conn.broken:
                raise DatabaseDown("the connection broke while writing")
            # Refused: find the rows PostgreSQL refuses, dead-letter them, write the rest.
            written = _Written()
            with conn.transaction():
                refused = self._split(conn, list(range(len(rows))), rows, written)
                if refused:
                    for i, error in refused:
                        m, index = origins[i]
                        self._dead_letter(messages[m], REFUSED, error, index,
                                          dict(zip(self.spec.columns, rows[i], strict=True)))
                    self._flush_dead_letters()
                    self.metrics.dead_letter(REFUSED, len(refused))
                self._store_offsets(conn, next_offsets)
                body_done = time.monotonic()
            self._observe_write(written, started, body_done)
            return len(refused)
        except _CONNECTION_ERRORS as exc:
            raise DatabaseDown(_one_line(exc)) from exc

    def _observe_write(self, written: _Written, started: float, body_done: float) -> None:
        """A committed transaction into the metrics (writer thread; once per batch)."""
        m = self.metrics
        done = time.monotonic()
        m.postgres_commit_seconds.observe(done - body_done)
        m.batch_seconds.observe(done - started)
        m.copy_seconds.observe(written.copy_s)
        m.inserted.inc(written.inserted)
        m.updated.inc(written.updated)
        m.older.inc(written.older)

    def _split(self, conn: psycopg.Connection[Any], idx: list[int], rows: list[Row],
               written: _Written) -> list[tuple[int, str]]:
        try:
            with conn.transaction():  # a savepoint
                part = self._apply(conn, [rows[i] for i in idx], direct=False, clear=True)
            written.add(part)
            return []
        except _REFUSALS as exc:
            if conn.closed or conn.broken:
                raise
            if len(idx) == 1:
                return [(idx[0], self._refusal_text(conn, rows[idx[0]], exc))]
        half = len(idx) // 2
        return (self._split(conn, idx[:half], rows, written)
                + self._split(conn, idx[half:], rows, written))

    def _refusal_text(self, conn: psycopg.Connection[Any], row: Row, exc: BaseException) -> str:
        """PostgreSQL's own words for the refused row: a value the binary format cannot
        carry is sent once more as text for the server to refuse."""
        if isinstance(exc, psycopg.Error):
            return _one_line(exc)
        try:
            with conn.transaction(), conn.cursor().copy(self._sql.copy_text_tmp) as copy:
                copy.write_row(row)
        except psycopg.Error as server:
            if not (conn.closed or conn.broken):
                return _one_line(server)
            raise
        return _one_line(exc)

    def _apply(self, conn: psycopg.Connection[Any], rows: list[Row], direct: bool,
               clear: bool = False) -> _Written:
        """COPY and merge ``rows`` (one per key) inside the caller's transaction; ``clear``
        empties the temporary table after the merge (several merges in one transaction).
        Returns what happened to the rows, should the transaction commit."""
        written = _Written()
        if not rows:
            return written
        started = time.monotonic()
        sql = self._sql
        merge = rows
        new: list[Row] = []
        split = direct and self.spec.direct_new_keys
        if split:
            new, merge = self._split_new(conn, rows)  # also moves the cache past the new
        if new:
            with conn.cursor().copy(sql.copy_direct) as copy:
                copy.set_types(sql.types)
                for row in new:
                    copy.write_row(row)
            written.inserted = len(new)
        if merge:
            with conn.cursor() as cur:
                with cur.copy(sql.copy_tmp) as copy:
                    copy.set_types(sql.types)
                    for row in merge:
                        copy.write_row(row)
                cur.execute(sql.merge, prepare=True)
                inserted, changed = cur.fetchone() or (0, 0)
                written.inserted += inserted
                written.updated += changed - inserted
                written.older += len(merge) - changed
                if clear:
                    cur.execute(sql.clear_tmp)
        if not split:
            self._remember_high(rows)
        written.copy_s = time.monotonic() - started
        return written

    def _split_new(self, conn: psycopg.Connection[Any], rows: list[Row]
                   ) -> tuple[list[Row], list[Row]]:
        """Rows whose key cannot exist yet (past the greatest stored one of its series),
        and the rest. The cache moves past each new row as it is found (a later row of
        the series then has to pass it), so no second pass over the rows is needed."""
        sql = self._sql
        series_of, last = sql.series_of, sql.last_key_pos
        high = self._high
        unknown = {series_of(r) for r in rows} - high.keys()
        if unknown:
            cols = [list(c) for c in zip(*unknown, strict=True)]
            for *series, top in conn.execute(sql.high_water, cols, prepare=True):
                high[tuple(series)] = top
        new: list[Row] = []
        old: list[Row] = []
        for r in rows:
            series = series_of(r)
            top = high[series]
            if top is None or r[last] > top:
                new.append(r)
                high[series] = r[last]
            else:
                old.append(r)
        return new, old

    def _remember_high(self, rows: list[Row]) -> None:
        # Called inside the transaction (as is _split_new): on a rollback the cache may
        # run ahead of the table, which only sends a row through the merge. It never
        # falls behind.
        series_of, last = self._sql.series_of, self._sql.last_key_pos
        high = self._high
        for r in rows:
            s = series_of(r)
            top = high.get(s)
            if top is None or r[last] > top:
                high[s] = r[last]

    def _store_offsets(self, conn: psycopg.Connection[Any], next_offsets: dict[int, int]) -> None:
        parts = sorted(next_offsets)
        conn.execute(self._sql.offsets, (self.group, self.topic, parts,
                                         [next_offsets[p] for p in parts]), prepare=True)

    def _stored_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        """Next offsets from sink_offsets; DatabaseDown when PostgreSQL does not answer."""
        try:
            conn = self._connection()
            rows = conn.execute(
                "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s "
                "AND topic = %s AND partition = ANY(%s)", (self.group, self.topic,
                                                          list(partitions)),
            ).fetchall()
            conn.commit()
            return {int(p): int(o) for p, o in rows}
        except _CONNECTION_ERRORS as exc:
            self._drop_connection()
            raise DatabaseDown(_one_line(exc)) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop_connection()
            conn = psycopg.connect(self.settings.database_url, connect_timeout=5)
            conn.execute(self._sql.create_tmp)
            conn.commit()
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- dead letters ---------------------------------------------------------------------

    def _dead_letter(self, msg: Message, reason: str, detail: str, index: int | None,
                     payload: Any) -> None:
        record = dead_letter(
            reason=reason, detail=detail, stage="sink", topic=msg.topic(),
            partition=msg.partition(), offset=msg.offset(), index=index, payload=payload,
            symbol=(msg.key() or b"").decode("utf-8", "replace") or None,
            now_ms=int(time.time() * 1000))
        if reason == REFUSED:
            log.warning("%s refused by PostgreSQL, sent to %s: %s (%s[%d] offset %d index %s)",
                        self.spec.name, self.settings.topics.dead_letter, detail, msg.topic(),
                        msg.partition(), msg.offset(), index,
                        extra={"partition": msg.partition(),
                               "symbol": (msg.key() or b"").decode("utf-8", "replace")})
        while True:
            try:
                self.dlq.produce(self.settings.topics.dead_letter, key=dead_letter_key(record),
                                 value=orjson.dumps(record, default=repr))
                return
            except BufferError:
                self.dlq.poll(0.05)

    def _flush_dead_letters(self) -> None:
        remaining = self.dlq.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} dead letters not acknowledged by Kafka")


class _DatabaseProbe:
    """Whether PostgreSQL answers now, asked for /readyz from the endpoints' thread: a
    connection of its own (the sink's belongs to its writer thread), a ``SELECT 1``,
    and the answer kept for a second, so frequent probes cost the server nothing."""

    def __init__(self, url: str, keep_s: float = 1.0) -> None:
        self.url = url
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._at >= self.keep_s:
                try:
                    with psycopg.connect(self.url, connect_timeout=2) as conn:
                        conn.execute("SELECT 1")
                    self._problem = None
                except psycopg.Error as exc:
                    self._problem = _one_line(exc)
                self._at = time.monotonic()
            return self._problem


class _Sql:
    """The statements of one declaration."""

    def __init__(self, spec: SinkSpec) -> None:
        cols = ", ".join(spec.columns)
        tmp = f"{spec.table}_in"
        self.types = list(spec.types)
        key_pos = [spec.index(c) for c in spec.key]
        self.key_of = _getter(key_pos)
        self.series_of = _getter(key_pos[:-1], always_tuple=True)
        self.last_key_pos = key_pos[-1]
        self.create_tmp = (f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {spec.table} "
                           "INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        self.copy_tmp = f"COPY {tmp} ({cols}) FROM STDIN (FORMAT BINARY)"
        self.copy_text_tmp = f"COPY {tmp} ({cols}) FROM STDIN"
        self.copy_direct = f"COPY {spec.table} ({cols}) FROM STDIN (FORMAT BINARY)"
        self.clear_tmp = f"TRUNCATE {tmp}"
        updates = [f"{c} = EXCLUDED.{c}" for c in spec.columns if c not in spec.key]
        insert_cols, select_cols = cols, cols
        if spec.touch:
            updates.append(f"{spec.touch} = now()")
            insert_cols += f", {spec.touch}"
            select_cols += ", now()"
        guard = ""
        if spec.version is not None:
            vp, vo = spec.version
            t = spec.table
            guard = (f" WHERE {t}.{vo} IS NULL OR EXCLUDED.{vo} IS NULL"
                     f" OR {t}.{vp} IS DISTINCT FROM EXCLUDED.{vp}"
                     f" OR EXCLUDED.{vo} >= {t}.{vo}")
        # Returns (rows inserted, rows inserted or updated): a row the guard keeps is
        # not returned, and xmax is 0 only in a row this statement inserted.
        self.merge = (f"WITH merged AS (INSERT INTO {spec.table} ({insert_cols}) "
                      f"SELECT {select_cols} FROM {tmp} "
                      f"ON CONFLICT ({', '.join(spec.key)}) DO UPDATE SET {', '.join(updates)}"
                      f"{guard} RETURNING (xmax = 0) AS inserted) "
                      "SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged")
        series = spec.key[:-1]
        last = spec.key[-1]
        arrays = ", ".join(f"%s::{spec.types[spec.index(c)]}[]" for c in series)
        match = " AND ".join(f"t.{c} = s.{c}" for c in series)
        self.high_water = (f"SELECT {', '.join(f's.{c}' for c in series)}, "
                           f"(SELECT max(t.{last}) FROM {spec.table} t WHERE {match}) "
                           f"FROM unnest({arrays}) AS s({', '.join(series)})")
        self.offsets = (
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset, updated_at) "
            "SELECT %s, %s, p, o, now() FROM unnest(%s::int[], %s::bigint[]) AS x(p, o) "
            "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
            "next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), "
            "updated_at = now()")


def _getter(positions: list[int], always_tuple: bool = False) -> Callable[[Row], Any]:
    from operator import itemgetter

    if len(positions) == 1:
        get = itemgetter(positions[0])
        return (lambda r: (get(r),)) if always_tuple else get
    return itemgetter(*positions)


def _row_getter(columns: tuple[str, ...]) -> Callable[[Any], Row]:
    get = attrgetter(*columns)
    return get if len(columns) > 1 else lambda record: (get(record),)


def _json(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        return NotJson(f"not JSON: {exc}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
