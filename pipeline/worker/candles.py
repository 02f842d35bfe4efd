"""The candle agent: tick frames in, bars out, state in a Faust table keyed by symbol.

All the logic is in pipeline.core.candles; this module decodes messages, calls the
fold once per message, writes the symbol's state once, and sends what the fold
returned. Agent concurrency stays 1: with more, Faust can commit offsets past
messages still being processed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson

from pipeline.core.candles import CandleConfig, all_bars, closed_by_clock, fold, upgrade_state
from pipeline.core.deadletters import dead_letter, dead_letter_key
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, normalize_symbol

log = logging.getLogger("fxstream.worker.candles")

CHANGELOG_CONFIG = {
    # Kafka compacts only closed segments: roll them often so that recovery reads
    # little more than one record per symbol.
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "cleanup.policy": "compact",
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CandleWorkerStats:
    messages: int = 0
    ticks: int = 0
    skipped: int = 0
    rejected: int = 0
    candles: int = 0
    first_event: float | None = None  # monotonic time of the first message processed
    last_event: float | None = None
    refilled: int = 0
    owned: dict[str, int] = field(default_factory=dict)  # symbol -> source partition
    applied: dict[int, int] = field(default_factory=dict)  # partition -> last applied offset
    committed: dict[int, int] = field(default_factory=dict)  # partition -> committed offset
    clock_sent: set[tuple[str, str, int]] = field(default_factory=set)


def candle_config(settings: Settings) -> CandleConfig:
    return CandleConfig.from_names(
        settings.timeframes, lateness_ms=settings.lateness_ms,
        close_grace_ms=settings.close_grace_ms, day_start_ms=settings.day_start_minutes * 60_000,
        known_symbols=frozenset(settings.symbols),
    )


def install_candle_agent(app: faust.App, settings: Settings) -> CandleWorkerStats:
    """Register the agent, its table, the wall-clock timer and the recovery re-send."""
    config = candle_config(settings)
    topics = settings.topics
    ticks_topic = app.topic(topics.ticks, key_type=bytes, value_type=bytes,
                            partitions=settings.partitions)
    candles_topic = app.topic(topics.candles, key_type=bytes, value_type=bytes,
                              partitions=settings.partitions)
    dlq_topic = app.topic(topics.dead_letter, key_type=bytes, value_type=bytes,
                          partitions=settings.partitions)
    table = app.Table("candle-state", default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=bytes, extra_topic_configs=CHANGELOG_CONFIG)
    stats = CandleWorkerStats()

    async def send_candles(key: bytes, candles: list[dict[str, Any]]) -> None:
        # force=True: publish now. Without it Faust attaches records sent from an agent
        # to the source offset and publishes them only at the next offset commit, so a
        # crash loses up to a commit interval of bars whose state already reached the
        # changelog.
        # One record per source message: a frame of the bars it changed (or one bar).
        if candles:
            value = orjson.dumps(candles if len(candles) > 1 else candles[0])
            await candles_topic.send(key=key, value=value, force=True)
        stats.candles += len(candles)

    async def send_dead(record: dict[str, Any]) -> None:
        stats.rejected += 1
        await dlq_topic.send(key=dead_letter_key(record), value=orjson.dumps(record), force=True)

    async def apply(key: bytes | None, raw: bytes | None, topic: str, partition: int,
                    offset: int) -> None:
        """Fold one source message into its symbol's state; write the state once."""
        stats.messages += 1
        where = {"topic": topic, "partition": partition, "offset": offset}
        try:
            value = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            await send_dead(dead_letter(reason="invalid_json", detail=str(exc), stage="worker",
                                        index=None, payload=raw or b"", symbol=None,
                                        now_ms=now_ms(), **where))
            return
        symbol = _canonical_key(key)
        if symbol is None or symbol.encode() != key:
            detail = ("message has no key" if key is None else
                      f"key {key!r} is not a canonical symbol; producers must key by "
                      "it (e.g. 'EUR/USD') so one partition holds each symbol")
            await send_dead(dead_letter(reason="bad_key", detail=detail, stage="worker",
                                        index=None, payload=raw, symbol=symbol,
                                        now_ms=now_ms(), **where))
            return
        assert key is not None
        ticks = value if isinstance(value, list) else [value]
        result = fold(_load(table.get(key)), symbol, ticks, offset, now_ms(), config)
        if result.skipped:
            stats.skipped += 1
            return
        stats.ticks += result.accepted
        stats.owned[symbol] = partition
        for rej in result.rejected:
            await send_dead(dead_letter(
                reason=rej.reason, detail=rej.detail, stage="worker",
                index=rej.index if isinstance(value, list) else None, payload=rej.tick,
                symbol=symbol, now_ms=now_ms(), **where))
        await send_candles(key, result.candles)
        result.state["partition"] = partition
        table[key] = orjson.dumps(result.state)

    @app.agent(ticks_topic, concurrency=1)
    async def candle_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            stats.last_event = time.monotonic()
            if stats.first_event is None:
                stats.first_event = stats.last_event
            # The partition's cursor (last applied offset) lives in the table beside the
            # symbols, so it is recovered with them. Faust's fetch position and offset
            # bookkeeping can disagree with the recovered state around rebalances; the
            # cursor makes the worker apply every offset exactly once regardless.
            ckey = cursor_key(msg.partition)
            raw_cursor = table.get(ckey)
            cursor = int(raw_cursor) if raw_cursor is not None else None
            if cursor is not None and msg.offset <= cursor:
                stats.skipped += 1
                continue
            if cursor is not None and msg.offset > cursor + 1:
                missing = await asyncio.to_thread(
                    read_range, settings.kafka_bootstrap, msg.topic, msg.partition,
                    cursor + 1, msg.offset)
                log.warning("partition %d: the consumer skipped offsets %d..%d (Faust can, "
                            "around rebalances); re-read and applied them first",
                            msg.partition, cursor + 1, msg.offset - 1)
                stats.refilled += len(missing)
                for m_key, m_value, m_offset in missing:
                    await apply(m_key, m_value, msg.topic, msg.partition, m_offset)
            await apply(msg.key, msg.value, msg.topic, msg.partition, msg.offset)
            table[ckey] = str(msg.offset).encode()
            stats.applied[msg.partition] = msg.offset

    @app.timer(interval=1.0)
    async def commit_applied() -> None:
        """Commit the offsets the cursors say are applied, after flushing what they wrote.

        Faust commits from its own acknowledgement lists, which a rebalance can leave
        with a hole so that they stop advancing; this commit follows the cursors."""
        assigned = {tp.partition: tp for tp in app.consumer.assignment()
                    if tp.topic == topics.ticks}
        offsets = {assigned[p]: off + 1 for p, off in stats.applied.items() if p in assigned
                   and stats.committed.get(p) != off + 1}
        if not offsets or app.rebalancing:
            return
        await app.producer.flush()
        try:
            if await app.consumer._commit(offsets):  # the driver's commit of given offsets
                stats.committed.update({tp.partition: off for tp, off in offsets.items()})
        except Exception as exc:  # a rebalance in between; the next tick tries again
            log.info("offset commit deferred: %s", exc)

    @app.timer(interval=1.0)
    async def close_quiet_bars() -> None:
        """Close bars whose end plus grace the wall clock has passed without a tick."""
        now = now_ms()
        for symbol in list(stats.owned):
            raw = table.get(symbol.encode())
            if raw is None:
                continue
            state = upgrade_state(orjson.loads(raw), symbol, config)
            fresh = []
            for candle in closed_by_clock(state, now, config):
                ident = (symbol, candle["timeframe"], candle["ts_utc"])
                if ident not in stats.clock_sent:
                    stats.clock_sent.add(ident)
                    fresh.append(candle)
            await send_candles(symbol.encode(), fresh)
        if len(stats.clock_sent) > 100_000:
            stats.clock_sent.clear()

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: set[Any], **kw: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == topics.ticks}
        for symbol, partition in list(stats.owned.items()):
            if partition in lost:
                del stats.owned[symbol]
        for partition in lost:
            stats.applied.pop(partition, None)
            stats.committed.pop(partition, None)

    @table.on_recover
    async def resend_after_recovery() -> None:
        """Re-send every bar still held: a changelog record can reach the broker while
        the same message's bars did not, and the sink's upsert makes repeats harmless."""
        now = now_ms()
        count = 0
        for key, raw in list(table.items()):
            if raw is None or key.startswith(CURSOR_PREFIX):
                continue
            state = upgrade_state(orjson.loads(raw), key.decode(), config)
            if isinstance(state.get("partition"), int):
                stats.owned[state["symbol"]] = state["partition"]
            candles = all_bars(state, now, config)
            await send_candles(key, candles)
            count += len(candles)
        log.info("recovered candle state of %d symbols; re-sent %d bars", len(table), count)

    @app.on_before_shutdown.connect
    async def report(app: faust.App, **kw: Any) -> None:
        active = (stats.last_event or 0.0) - (stats.first_event or 0.0)
        log.info("candle worker stopping: %d messages, %d ticks, %d skipped as already "
                 "applied, %d re-read, %d rejected, %d candles sent; %.3f s between the first "
                 "and the last message (monotonic %.3f to %.3f)", stats.messages, stats.ticks,
                 stats.skipped, stats.refilled, stats.rejected, stats.candles, active,
                 stats.first_event or 0.0, stats.last_event or 0.0)

    return stats


CURSOR_PREFIX = b"\x00cursor/"


def cursor_key(partition: int) -> bytes:
    return CURSOR_PREFIX + str(partition).encode()


def read_range(bootstrap: str, topic: str, partition: int, start: int, stop: int
               ) -> list[tuple[bytes | None, bytes | None, int]]:
    """Messages [start, stop) of one partition, read directly (outside the group)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fxstream-refill",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    out: list[tuple[bytes | None, bytes | None, int]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + 120
        while (not out or out[-1][2] < stop - 1) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 1.0):
                if m.error() is None and start <= m.offset() < stop:
                    out.append((m.key(), m.value(), m.offset()))
        if not out or out[-1][2] < stop - 1:
            raise RuntimeError(f"could not re-read {topic}[{partition}] {start}..{stop - 1}")
    finally:
        consumer.close()
    return out


def _canonical_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return normalize_symbol(key.decode("utf-8", errors="strict"))
    except (UnicodeDecodeError, SymbolError):
        return None


def _load(raw: bytes | None) -> dict[str, Any] | None:
    return None if raw is None else orjson.loads(raw)
