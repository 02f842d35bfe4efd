"""The candle sink: fx.candles into market_data_candles, offsets committed after the rows.

The commit protocol, in one place (`CandleSink.write_batch`):
1. take a batch of messages, keep the last version of each (symbol, timeframe, ts_utc);
2. send poison messages to the dead-letter topic and wait for Kafka to take them;
3. in ONE PostgreSQL transaction: COPY the rows into a temporary table, merge
   them with INSERT ... ON CONFLICT DO UPDATE, and store every partition's next
   offset in sink_offsets;
4. commit the transaction, then commit the same offsets to Kafka.
On assignment each partition starts from the offset stored in PostgreSQL, so a
crash between 3 and 4 neither loses nor repeats a row. When PostgreSQL is down
the sink pauses its partitions, keeps its group membership, and retries.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

import schemas
from pipeline.core.deadletters import dead_letter, dead_letter_key
from pipeline.settings import Settings

log = logging.getLogger("fxstream.sink")

COLUMNS = ("symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "tick_volume",
           "volume", "provider_source", "complete")
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[3:])
MERGE_SQL = (
    f"INSERT INTO market_data_candles ({', '.join(COLUMNS)}, updated_at) "
    f"SELECT {', '.join(COLUMNS)}, now() FROM candles_in "
    f"ON CONFLICT (symbol, timeframe, ts_utc) DO UPDATE SET {_UPDATES}, updated_at = now()"
)
OFFSETS_SQL = (
    "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset, updated_at) "
    "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (consumer_group, topic, partition) "
    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)


@dataclass
class SinkStats:
    batches: int = 0
    rows: int = 0
    messages: int = 0
    dead_letters: int = 0
    db_failures: int = 0
    last_error: str = ""
    first_batch: float | None = None  # monotonic time the first batch arrived
    last_commit: float | None = None  # ... and the last one was committed


class CandleSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.require_connections()
        self.topic = settings.topics.candles
        self.group = settings.sink_group
        self.stats = SinkStats()
        self._stop = False
        self._conn: psycopg.Connection[Any] | None = None
        self._generation = 0
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(500, int(settings.session_timeout_s * 100)),
            "max.poll.interval.ms": 600_000,
            "fetch.max.bytes": 32 << 20,
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
        from pipeline.db.migrate import migrate

        migrate(self.settings)
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        timeout = self.settings.sink_batch_timeout_ms / 1000
        log.info("candle sink started: group %s, topic %s", self.group, self.topic)
        try:
            while not self._stop and not until():
                # Wait for the first message only, then take what is already fetched: low
                # latency when quiet, full batches under load.
                messages = self.consumer.consume(1, timeout)
                if messages and self.settings.sink_batch_size > 1:
                    messages += self.consumer.consume(self.settings.sink_batch_size - 1, 0)
                if messages:
                    self.write_batch(messages)
        finally:
            active = (self.stats.last_commit or 0.0) - (self.stats.first_batch or 0.0)
            log.info("candle sink stopping: %d rows from %d messages in %d batches, %d dead "
                     "letters; %.3f s between the first batch and the last commit",
                     self.stats.rows, self.stats.messages, self.stats.batches,
                     self.stats.dead_letters, active)
            self.consumer.close()  # leaves the group; offsets were committed per batch
            self.dlq.flush(10)
            if self._conn is not None:
                self._conn.close()
        return self.stats

    # -- assignment -----------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        stored = self._stored_offsets([p.partition for p in partitions])
        for p in partitions:
            if p.partition in stored:
                p.offset = stored[p.partition]
        where = {p.partition: stored.get(p.partition, "kafka-committed") for p in partitions}
        log.info("assigned %s: starting at %s", self.topic, where)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        log.info("revoked %s partitions %s", self.topic, [p.partition for p in partitions])

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Next offsets from sink_offsets; on a dead database, fall back to Kafka's.

        Kafka's committed offset is never ahead of the stored one (it is committed
        after the database), so the fallback can only repeat rows, which the
        upsert makes harmless.
        """
        try:
            conn = self._connection()
            rows = conn.execute(
                "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s "
                "AND topic = %s AND partition = ANY(%s)", (self.group, self.topic, partitions),
            ).fetchall()
            conn.commit()
            return {int(p): int(o) for p, o in rows}
        except psycopg.OperationalError as exc:
            self._drop_connection()
            log.warning("PostgreSQL unavailable while assigning partitions (%s); starting from "
                        "Kafka's committed offsets", _one_line(exc))
            return {}

    # -- the commit protocol --------------------------------------------------------------

    def write_batch(self, messages: list[Message]) -> None:
        if self.stats.first_batch is None:
            self.stats.first_batch = time.monotonic()
        rows: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        next_offsets: dict[int, int] = {}
        dead = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err.str())
                continue
            next_offsets[msg.partition()] = msg.offset() + 1
            try:
                value = orjson.loads(msg.value())
            except orjson.JSONDecodeError as exc:
                self._dead_letter(msg, f"not JSON: {exc}", None, msg.value())
                dead += 1
                continue
            # A message is one candle or a frame of them (what one source message produced).
            for index, candle in enumerate(value if isinstance(value, list) else (value,)):
                try:
                    validate_candle(candle)
                except schemas.SchemaError as exc:
                    self._dead_letter(msg, str(exc), index if isinstance(value, list) else None,
                                      candle)
                    dead += 1
                    continue
                key = (candle["symbol"], candle["timeframe"], candle["ts_utc"])
                rows[key] = tuple(candle.get(c) for c in COLUMNS)
        if not next_offsets:
            return
        if dead:
            remaining = self.dlq.flush(30)
            if remaining:
                raise RuntimeError(f"{remaining} dead letters not acknowledged by Kafka")
        generation = self._generation
        if not self._write_with_retry(list(rows.values()), next_offsets, generation):
            return
        self.stats.last_commit = time.monotonic()
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.messages += len(messages)
        self.stats.dead_letters += dead
        offsets = [TopicPartition(self.topic, p, o) for p, o in next_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # the database holds the offsets; Kafka's are a convenience
            log.warning("Kafka offset commit failed (PostgreSQL has them): %s", exc)

    def _write_with_retry(self, rows: list[tuple[Any, ...]], next_offsets: dict[int, int],
                          generation: int) -> bool:
        delay = 0.5
        paused = False
        try:
            while True:
                try:
                    self._write(rows, next_offsets)
                    if self.stats.db_failures and self.stats.last_error:
                        log.info("PostgreSQL is back; batch written, resuming")
                        self.stats.last_error = ""
                    return True
                except psycopg.OperationalError as exc:
                    self._drop_connection()
                    self.stats.db_failures += 1
                    self.stats.last_error = _one_line(exc)
                    log.warning("PostgreSQL unavailable (%s); no offsets committed, retrying in "
                                "%.1f s", self.stats.last_error, delay)
                if not paused:
                    self.consumer.pause(self.consumer.assignment())
                    paused = True
                # Polling while paused keeps the group membership and serves rebalances.
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    self.consumer.poll(min(0.2, delay))
                    if self._stop:
                        return False
                if self._generation != generation:
                    log.info("partitions moved while PostgreSQL was down; the batch will be "
                             "read again by whoever owns them now")
                    return False
                delay = min(delay * 2, 15.0)
        finally:
            if paused:
                self.consumer.resume(self.consumer.assignment())

    def _write(self, rows: list[tuple[Any, ...]], next_offsets: dict[int, int]) -> None:
        conn = self._connection()
        with conn.transaction():
            if rows:
                with conn.cursor().copy(
                    f"COPY candles_in ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute(MERGE_SQL)
            with conn.cursor() as cur:
                cur.executemany(OFFSETS_SQL, [(self.group, self.topic, p, o)
                                              for p, o in next_offsets.items()])

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.settings.database_url, connect_timeout=5)
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS candles_in "
                "(LIKE market_data_candles INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            conn.commit()
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _dead_letter(self, msg: Message, reason_detail: str, index: int | None,
                     payload: Any) -> None:
        record = dead_letter(
            reason="invalid_candle", detail=reason_detail, stage="sink", topic=msg.topic(),
            partition=msg.partition(), offset=msg.offset(), index=index, payload=payload,
            symbol=(msg.key() or b"").decode("utf-8", "replace") or None,
            now_ms=int(time.time() * 1000))
        while True:
            try:
                self.dlq.produce(self.settings.topics.dead_letter, key=dead_letter_key(record),
                                 value=orjson.dumps(record))
                return
            except BufferError:
                self.dlq.poll(0.05)


_CANDLE_KEYS = ("symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "tick_volume",
                "volume", "complete")


def validate_candle(candle: Any) -> None:
    """schemas/candle.v1.json, with a fast path for what the worker writes.

    The full validator runs only when the cheap structural check finds something
    unusual, so a bad candle is always reported with the schema's own message."""
    if (type(candle) is dict and candle.get("v") == 1 and all(k in candle for k in _CANDLE_KEYS)
            and type(candle["ts_utc"]) is int and type(candle["tick_volume"]) is int
            and candle["tick_volume"] >= 1 and type(candle["complete"]) is bool
            and type(candle["symbol"]) is str and type(candle["timeframe"]) is str
            and all(type(candle[k]) is float and candle[k] > 0
                    for k in ("open", "high", "low", "close"))
            and type(candle["volume"]) in (float, int) and candle["volume"] >= 0
            and candle["timeframe"] in _KNOWN_TIMEFRAMES
            and 0 < len(candle["symbol"]) <= 32 and candle["ts_utc"] >= 0):
        return
    schemas.validate("candle", candle)


_KNOWN_TIMEFRAMES = frozenset(f"{n}{u}" for u in "mhd" for n in range(1, 1000))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def run_sink(settings: Settings) -> SinkStats:
    sink = CandleSink(settings)
    sink.install_signal_handlers()
    return sink.run()
