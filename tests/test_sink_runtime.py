"""The sink runtime on the real broker and database: refused rows, versions, a rebalance
inside a batch. Candle messages are produced directly (no worker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from pipeline.settings import Settings
from pipeline.topics import create_topics
from tests.conftest import wait_for
from tests.pipeline_helpers import (
    Proc,
    candle_record,
    db_candles,
    end_offsets,
    produce_candles,
    read_topic,
    stored_sink_offsets,
)

pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def sink_settings(make_settings: Callable[..., Settings], **kw: Any) -> Settings:
    values: dict[str, Any] = {"partitions": 2, "session_timeout_s": 6.0, "log_level": "INFO",
                              "sink_batch_size": 50}
    values.update(kw)
    settings = make_settings(**values)
    create_topics(settings)
    return settings


def closes(settings: Settings) -> dict[tuple[str, str, int], float]:
    return {k: r["close"] for k, r in db_candles(settings).items()}


def test_refused_rows_go_to_dead_letters_and_the_rest_is_written(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """One candle with a NUL in provider_source and one with a tick volume past BIGINT
    pass the sink's checks; PostgreSQL refuses them. They must not stop the sink."""
    settings = sink_settings(make_settings)
    messages: list[tuple[str, Any]] = []
    want: dict[tuple[str, str, int], float] = {}
    for i in range(60):
        symbol = ("EUR/USD", "GBP/USD", "USD/JPY")[i % 3]
        frame = []
        for tf in ("1m", "5m"):
            c = candle_record(symbol, T0 + i * 300_000, 1.0 + i / 1000, timeframe=tf)
            frame.append(c)
            want[(symbol, tf, c["ts_utc"])] = c["close"]
        if i == 20:
            frame.append(candle_record(symbol, T0 + 1, 1.5, provider_source="bad\x00source"))
        if i == 41:
            frame.append(candle_record(symbol, T0 + 2, 1.5, tick_volume=2**63))
        messages.append((symbol, frame))
    produce_candles(settings, messages)
    ends = {p: e for p, e in end_offsets(settings, settings.topics.candles).items() if e}

    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        def written() -> bool:
            assert sink.alive(), f"the sink died:\n{sink.tail()}"
            return stored_sink_offsets(settings) == ends and closes(settings) == want

        wait_for(written, 60, "every valid row written and the offsets at the end")
        refused = [v for _, v in read_topic(settings, settings.topics.dead_letter)
                   if v["reason"] == "refused_by_database"]
        assert len(refused) == 2, refused
        details = sorted(r["detail"] for r in refused)
        assert any("0x00" in d for d in details), details
        assert any("out of range for type bigint" in d for d in details), details
        assert all(r["stage"] == "sink" and r["source"]["index"] == 2 for r in refused)
        assert sink.stop() == 0, sink.tail()
        assert "2 dead letters" in sink.log.read_text(), sink.tail()
    finally:
        if sink.alive():
            sink.stop()


def test_versions_a_stale_resend_never_overwrites_a_newer_bar(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = sink_settings(make_settings, partitions=1)
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")

    def upto(n: int) -> Callable[[], bool]:
        def check() -> bool:
            assert sink.alive(), f"the sink died:\n{sink.tail()}"
            return stored_sink_offsets(settings).get(0, 0) >= n
        return check

    try:
        produce_candles(settings, [("EUR/USD", [
            candle_record("EUR/USD", T0, 1.10, version=(0, 10)),
            candle_record("EUR/USD", T0 + 60_000, 1.20, version=(0, 10)),
            candle_record("EUR/USD", T0 + 120_000, 1.30, version=(0, 100)),
        ])])
        wait_for(upto(1), 60, "the first message written")
        produce_candles(settings, [
            # a stale re-send, in a batch of its own: the stored bar stays
            ("EUR/USD", [candle_record("EUR/USD", T0, 0.90, version=(0, 5))]),
        ])
        wait_for(upto(2), 60, "the stale re-send read")
        produce_candles(settings, [
            # the same version again, now complete (a wall-clock close): applies
            ("EUR/USD", [candle_record("EUR/USD", T0 + 60_000, 1.25, version=(0, 10),
                                       complete=True)]),
            # within one batch the highest version wins, whatever the order
            ("EUR/USD", [candle_record("EUR/USD", T0 + 180_000, 1.40, version=(0, 30)),
                         candle_record("EUR/USD", T0 + 180_000, 1.39, version=(0, 25))]),
            ("EUR/USD", [candle_record("EUR/USD", T0 + 180_000, 1.38, version=(0, 29))]),
            # another source partition (the topic was re-partitioned): applies
            ("EUR/USD", [candle_record("EUR/USD", T0 + 120_000, 1.35, version=(1, 3))]),
            # no version (an older worker): applies, as it always did
            ("EUR/USD", [candle_record("EUR/USD", T0 + 240_000, 1.50)]),
            ("EUR/USD", [candle_record("EUR/USD", T0 + 240_000, 1.55)]),
        ], partition=0)
        wait_for(upto(8), 60, "every message written")
        rows = db_candles(settings)
        got = {k[2] - T0: (r["close"], r["complete"], r.get("src_partition"), r.get("src_offset"))
               for k, r in rows.items()}
        assert got == {
            0: (1.10, False, 0, 10),
            60_000: (1.25, True, 0, 10),
            120_000: (1.35, False, 1, 3),
            180_000: (1.40, False, 0, 30),
            240_000: (1.55, False, None, None),
        }, got
    finally:
        sink.stop()


class _RebalanceInsideABatch:
    """The sink's own consumer, unchanged, except that the first time the sink fills a
    batch (consume with timeout 0) a second sink joins the group, and the call returns
    only after the rebalance was served and the new owner has written its partition to
    the end: a rebalance inside a batch, made to happen every time."""

    def __init__(self, real: Consumer, settings: Settings, tmp: Path, ends: dict[int, int],
                 after_revoke: Callable[[], None]) -> None:
        self.real, self.settings, self.tmp, self.ends = real, settings, tmp, ends
        self.after_revoke = after_revoke
        self.armed = True
        self.revoked = threading.Event()
        self.other: Proc | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        on_revoke = callbacks["on_revoke"]

        def revoke(consumer: Consumer, partitions: Any) -> None:
            self.revoked.set()
            on_revoke(consumer, partitions)

        self.real.subscribe(topics, **{**callbacks, "on_revoke": revoke})

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if not self.armed or timeout != 0:
            return self.real.consume(num_messages, timeout)
        self.armed = False
        messages = self.real.consume(num_messages, 0)
        # Hold messages of both partitions, so that whichever moves has rows here.
        wait_for(lambda: (messages.extend(self.real.consume(num_messages, 0.2)),
                          {m.partition() for m in messages if not m.error()} == {0, 1})[1],
                 30, "a batch with messages of both partitions")
        self.other = Proc(self.settings, ["sink"], self.tmp / "sink-b.log")
        wait_for(lambda: (messages.extend(self.real.consume(num_messages, 0.2)),
                          self.revoked.is_set())[1], 60, "the rebalance to revoke partitions")
        # Revisions this batch does not hold; the new owner of a partition writes them.
        self.after_revoke()

        def moved_and_written() -> bool:
            messages.extend(self.real.consume(num_messages, 0.2))
            mine = {tp.partition for tp in self.real.assignment()}
            stored = stored_sink_offsets(self.settings)
            return self.revoked.is_set() and any(
                p not in mine and stored.get(p) == end for p, end in self.ends.items())

        wait_for(moved_and_written, 90, "the second sink to take a partition and write it all")
        return messages


def test_rebalance_inside_a_batch_writes_nothing_of_revoked_partitions(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from consumers.candle_sink import CandleSink

    settings = sink_settings(make_settings, sink_batch_size=40)
    n = 300
    # One bar per partition, revised by every message, with no version (as an older
    # worker sends): only the order of writes decides which revision stays. The first
    # half is there before the sink starts, the second comes during the rebalance.
    symbols = {0: "EUR/USD", 1: "GBP/USD"}

    def publish(first: int, last: int) -> None:
        for p, symbol in symbols.items():
            produce_candles(settings, [(symbol, candle_record(symbol, T0, 1.0 + i / 1000,
                                                              tick_volume=i + 1))
                                       for i in range(first, last)], partition=p)

    publish(0, n // 2)
    ends = {0: n, 1: n}
    want = {(symbol, "1m", T0): 1.0 + (n - 1) / 1000 for symbol in symbols.values()}

    sink = CandleSink(settings)
    trap = _RebalanceInsideABatch(sink.consumer, settings, tmp_path, ends,
                                  after_revoke=lambda: publish(n // 2, n))
    sink.consumer = trap  # type: ignore[assignment]
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            sink.run(until=done.is_set)
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        def settled() -> bool:
            assert not failure, failure
            assert trap.other is None or trap.other.alive(), trap.other.tail()
            return (trap.other is not None and not trap.armed
                    and stored_sink_offsets(settings) == ends and closes(settings) == want)

        try:
            wait_for(settled, 90, "both bars at their last revision and the offsets at the end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: rows {closes(settings)}, sink_offsets "
                                 f"{stored_sink_offsets(settings)}, want {want} / {ends}"
                                 ) from None
    finally:
        done.set()
        thread.join(60)
        if trap.other is not None:
            trap.other.stop()


def test_kafka_offsets_follow_the_written_ones_one_commit_at_a_time(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Batches of one message: hundreds of Kafka commits a second if each batch sent its
    own. At most one is in flight, what is written meanwhile goes in the next, and
    Kafka's offsets reach the written ones while the sink runs, without a rebalance."""
    from pipeline.monitor import group_lag

    settings = sink_settings(make_settings, sink_batch_size=1)
    messages = [(symbol, [candle_record(symbol, T0 + i * 60_000, 1.0 + i / 1000)])
                for i in range(400) for symbol in ("EUR/USD", "GBP/USD")]
    produce_candles(settings, messages)
    ends = {p: e for p, e in end_offsets(settings, settings.topics.candles).items() if e}

    def kafka_committed() -> dict[int, int]:
        return {p.partition: p.committed for p in group_lag(
            settings, settings.sink_group, settings.topics.candles) if p.committed}

    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        def caught_up() -> bool:
            assert sink.alive(), f"the sink died:\n{sink.tail()}"
            return stored_sink_offsets(settings) == ends and kafka_committed() == ends

        wait_for(caught_up, 90, "PostgreSQL's and Kafka's offsets at the end")
        log = sink.log.read_text()
        assert "revoked" not in log and "commit failed" not in log, sink.tail()
        assert sink.stop() == 0, sink.tail()
        assert f"from {len(messages)} messages in {len(messages)} batches" in \
            sink.log.read_text(), sink.tail()
        assert kafka_committed() == ends
    finally:
        if sink.alive():
            sink.stop()


def test_revoked_partitions_written_offsets_reach_kafka_before_they_go(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's commits wait for the throttle; offsets written but not yet committed when
    a partition is revoked are committed in the revocation, not left to the new owner."""
    import consumers.runtime
    from consumers.candle_sink import CandleSink
    from pipeline.monitor import group_lag

    settings = sink_settings(make_settings)
    for p, symbol in enumerate(("EUR/USD", "GBP/USD")):
        produce_candles(settings, [(symbol, candle_record(symbol, T0 + i * 60_000, 1.0))
                                   for i in range(200)], partition=p)
    ends = {0: 200, 1: 200}

    def kafka_committed() -> dict[int, int]:
        return {p.partition: p.committed for p in group_lag(
            settings, settings.sink_group, settings.topics.candles) if p.committed}

    # At most one commit before the revocation (or the stop): the throttle's first, which
    # it holds too on a host up for less than an hour.
    monkeypatch.setattr(consumers.runtime, "KAFKA_COMMIT_INTERVAL_S", 3600.0)
    sink = CandleSink(settings)
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            sink.run(until=done.is_set)
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    joiner = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                       "group.id": settings.sink_group, "enable.auto.commit": False,
                       "session.timeout.ms": int(settings.session_timeout_s * 1000)})
    try:
        wait_for(lambda: not failure and stored_sink_offsets(settings) == ends, 90,
                 "every candle written")
        assert kafka_committed() != ends, "the throttle let every commit through"
        joiner.subscribe([settings.topics.candles])

        def revoked() -> bool:
            joiner.poll(0.2)
            assert not failure, failure
            return bool(joiner.assignment())

        wait_for(revoked, 60, "the second member's assignment")
        assert kafka_committed() == ends
    finally:
        joiner.close()
        done.set()
        thread.join(60)
    assert not failure, failure
