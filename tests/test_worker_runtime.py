"""The worker runtime on the real broker and database: rebalances under load, re-reads,
re-created topics, unknown keys, wrong partitions, dead letters through kill -9,
completeness by event time, and latency after a stall."""

from __future__ import annotations

import os
import re
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.monitor import group_lag
from pipeline.runtime.source import read_range
from pipeline.runtime.worker import murmur2_partition
from pipeline.settings import Settings
from pipeline.topics import create_topics
from producers.kafka_io import producer_config
from producers.synthetic import SyntheticTicks
from tests.conftest import wait_for
from tests.pipeline_helpers import (
    Proc,
    committed_total,
    db_candles,
    end_offsets,
    read_topic,
    run_cli,
)
from tests.reference_candles import reference_from_csv
from tests.test_candles_crash import group_settled
from tests.test_candles_pipeline import wait_for_reference

pytestmark = pytest.mark.integration

TFS = ("1m", "5m")
SYMBOLS = ("EUR/USD", "GBP/USD", "USD/JPY", "USD/CHF", "AUD/USD", "USD/CAD", "NZD/USD",
           "EUR/GBP")
T0 = 1_709_323_200_000


def settings_for(make_settings: Callable[..., Settings], **kw: Any) -> Settings:
    values: dict[str, Any] = {"symbols": SYMBOLS, "timeframes": TFS, "partitions": 6,
                              "session_timeout_s": 6.0}
    values.update(kw)
    return make_settings(**values)


def synthetic_csv(path: Path, count: int, rate: float, seed: int = 3) -> Path:
    """In-order synthetic ticks of SYMBOLS with 2024 event times, as a replay CSV."""
    lines = ["symbol,ts_ms,bid,ask,volume"]
    for t in SyntheticTicks(list(SYMBOLS), rate=rate, seed=seed).ticks(count=count):
        lines.append(f"{t['symbol']},{t['ts_ms']},{t.get('bid', '')},{t.get('ask', '')},"
                     f"{t.get('volume', '')}")
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_exact(settings: Settings, csv: Path, procs: list[Proc], timeout_s: float = 240) -> None:
    ref = reference_from_csv(str(csv), timeframes=TFS, lateness_ms=settings.lateness_ms,
                             known_symbols=set(settings.symbols))
    wait_for_reference(settings, ref, procs, timeout_s=timeout_s)


def candle_records(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for _, value in read_topic(settings, settings.topics.candles, timeout_s=60):
        out.extend(value if isinstance(value, list) else [value])
    return out


def dead_letters(settings: Settings) -> dict[bytes, dict[str, Any]]:
    return dict(read_topic(settings, settings.topics.dead_letter))


def stop_all(*procs: Proc | None) -> None:
    for p in procs:
        if p is not None and p.alive():
            p.stop()


# --- hole 1: stale state after a rebalance ----------------------------------------------------


def test_workers_joining_one_after_another_under_load(make_settings: Callable[..., Settings],
                                                      tmp_path: Path) -> None:
    """A running worker loses partitions to a second and then a third worker while ticks
    flow; it must never publish bars of partitions it no longer holds."""
    settings = settings_for(make_settings, partitions=6)
    # 4 minutes of event time replayed in about 60 s: bars close between the rebalances.
    csv = synthetic_csv(tmp_path / "ticks.csv", count=96_000, rate=400)
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    first = Proc(settings, ["worker"], tmp_path / "worker-1.log")
    second = third = None
    try:
        wait_for(lambda: group_settled(settings, members=1), 120, "the first worker")
        replay = Proc(settings, ["produce", "replay", str(csv), "--speed", "4x",
                                 "--frame-size", "50", "--no-progress"], tmp_path / "replay.log")
        wait_for(lambda: len(db_candles(settings)) >= 8, 60, "bars from the first worker")
        second = Proc(settings, ["worker"], tmp_path / "worker-2.log")
        wait_for(lambda: group_settled(settings, members=2), 120, "two workers")
        wait_for(lambda: "recovered candle state" in second.log.read_text(), 60,
                 "the second worker's recovery")
        third = Proc(settings, ["worker"], tmp_path / "worker-3.log")
        wait_for(lambda: group_settled(settings, members=3), 120, "three workers")
        assert replay.popen.wait(180) == 0, replay.tail()
        wait_exact(settings, csv, [first, second, third, sink])

        # The black-box property behind it: per bar, the versions on the candle topic
        # never go backwards (a stale copy re-sent by a former owner would).
        newest: dict[tuple[str, str, int], int] = {}
        backwards = []
        for rec in candle_records(settings):
            bar = (rec["symbol"], rec["timeframe"], rec["ts_utc"])
            version = rec["src_offset"]
            if version < newest.get(bar, -1):
                backwards.append((bar, version, newest[bar]))
            newest[bar] = max(version, newest.get(bar, -1))
        assert not backwards, f"{len(backwards)} records went backwards: {backwards[:5]}"
    finally:
        stop_all(first, second, third, sink)


# --- hole 2: re-reads with holes, and a re-created topic -----------------------------------------


def test_reread_passes_transaction_markers_and_reports_deleted_ranges(
        make_settings: Callable[..., Settings]) -> None:
    settings = settings_for(make_settings, partitions=1)
    topic = settings.topics.ticks
    create_topics(settings)
    producer = Producer({**producer_config(settings), "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    for batch in range(3):  # 3 messages, then a commit marker, three times
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, key=b"EUR/USD", value=f"{batch}-{i}".encode(), partition=0)
        producer.commit_transaction(30)
    # Offsets: 0 1 2 [3: marker] 4 5 6 [7: marker] 8 9 10 [11: marker]
    started = time.monotonic()
    got = read_range(settings.kafka_bootstrap, topic, 0, 4, 8, timeout_s=30)
    assert [o for _, _, o in got.messages] == [4, 5, 6]
    assert got.missing is None
    assert time.monotonic() - started < 20, "the read waited for a message at the marker"

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        fut.result(30)
    got = read_range(settings.kafka_bootstrap, topic, 0, 2, 10, timeout_s=30)
    assert got.missing == (2, 5)
    assert [o for _, _, o in got.messages] == [5, 6, 8, 9]


def test_recreated_tick_topic_is_detected_and_applied(make_settings: Callable[..., Settings],
                                                      tmp_path: Path) -> None:
    settings = settings_for(make_settings, partitions=2)
    csv = synthetic_csv(tmp_path / "before.csv", count=4_000, rate=50)
    assert run_cli(settings, ["produce", "replay", str(csv), "--no-progress"],
                   tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker-1.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_exact(settings, csv, [worker, sink])
        assert worker.stop() == 0, worker.tail()
        before = db_candles(settings)

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        topic = settings.topics.ticks
        old_committed = {p.partition: p.committed
                         for p in group_lag(settings, settings.worker_group, topic)}
        assert all(old_committed.values()), old_committed
        for fut in admin.delete_topics([topic], operation_timeout=30).values():
            fut.result(60)
        wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, 60,
                 "the tick topic to be gone")

        def recreate() -> bool:
            try:
                admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
                return True
            except Exception:
                return False

        wait_for(recreate, 60, "the tick topic to be created again")
        # A little later in event time, fewer messages than before: every offset of the new
        # topic lies below the cursor the worker stored for the old one.
        later = tmp_path / "after.csv"
        lines = ["symbol,ts_ms,bid,ask,volume"]
        t1 = max(ts for _, _, ts in before) + 600_000
        for i in range(40):
            for sym in SYMBOLS[:4]:
                lines.append(f"{sym},{t1 + i * 1000},1.2{i:02d},1.2{i + 1:02d},")
        later.write_text("\n".join(lines) + "\n")
        assert run_cli(settings, ["produce", "replay", str(later), "--no-progress"],
                       tmp_path).returncode == 0
        # Kafka drops a deleted topic's committed offsets; the worker starts after that.
        wait_for(lambda: all(p.committed is None
                             for p in group_lag(settings, settings.worker_group, topic)), 60,
                 "the old topic's committed offsets to be dropped")
        worker = Proc(settings, ["worker"], tmp_path / "worker-2.log")
        wait_for(lambda: "was deleted and re-created" in worker.log.read_text(), 90,
                 f"the worker to report the re-created topic:\n{worker.tail()}")

        def new_bars() -> bool:
            bars = db_candles(settings)
            return sum(r["tick_volume"] for (s, tf, ts), r in bars.items()
                       if tf == "1m" and ts >= t1 - t1 % 60_000) == 160

        wait_for(new_bars, 120, "the new topic's 160 ticks in PostgreSQL")
    finally:
        stop_all(worker, sink)


# --- hole 5: unknown keys make no state --------------------------------------------------------


def test_unknown_symbols_make_no_state(make_settings: Callable[..., Settings],
                                       tmp_path: Path) -> None:
    settings = settings_for(make_settings, partitions=3)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    unknown = [f"Q{a}{b}/USD" for a in letters[:10] for b in letters[:30]]  # 260 symbols
    for i, sym in enumerate(unknown):
        producer.produce(settings.topics.ticks, key=sym.encode(), value=orjson.dumps(
            {"symbol": sym, "ts_ms": T0 + i, "bid": 1.0, "ask": 1.1}))
    producer.produce(settings.topics.ticks, key=b"EUR/USD", value=orjson.dumps(
        {"symbol": "EUR/USD", "ts_ms": T0, "bid": 1.1, "ask": 1.1002}))
    assert producer.flush(30) == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: Counter(r["reason"] for r in dead_letters(settings).values())
                 ["unknown_symbol"] == len(unknown), 120, "every unknown symbol dead-lettered")
        changelog = f"{settings.worker_group}-candle-state-changelog"
        wait_for(lambda: any(k == b"EUR/USD" for k, _ in _raw_keys(settings, changelog)), 60,
                 "EUR/USD's state in the changelog")
        keys = {k for k, _ in _raw_keys(settings, changelog)}
        symbols = {k for k in keys if not k.startswith(b"\x00")}
        assert symbols == {b"EUR/USD"}, f"state made for {sorted(symbols)[:5]} ..."
        assert len(keys) <= 1 + settings.partitions
    finally:
        stop_all(worker)


def test_dead_letters_are_not_held_for_the_producers_linger(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A message's dead letters are acknowledged before its changelog record is written,
    with the agent waiting: were they left to linger with the outputs, every message with
    a reject would hold the worker for the linger (here 1 s: 200 messages, 200 s)."""
    settings = settings_for(make_settings, partitions=3, worker_linger_ms=1000)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    unknown = [f"Q{a}{b}/USD" for a in "ABCDEFGHIJ" for b in "ABCDEFGHIJKLMNOPQRST"]
    for i, sym in enumerate(unknown):
        producer.produce(settings.topics.ticks, key=sym.encode(), value=orjson.dumps(
            {"symbol": sym, "ts_ms": T0 + i, "bid": 1.0, "ask": 1.1}))
    assert producer.flush(30) == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: "recovered candle state" in worker.log.read_text(), 60,
                 "the worker to join")
        wait_for(lambda: Counter(r["reason"] for r in dead_letters(settings).values())
                 ["unknown_symbol"] == len(unknown), 60, "every unknown symbol dead-lettered")
    finally:
        stop_all(worker)


def _raw_keys(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"raw-{os.getpid()}",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return []
        out = []
        for p in meta.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            c.assign([TopicPartition(topic, p, low)])
            seen = low
            deadline = time.monotonic() + 20
            while seen < high and time.monotonic() < deadline:
                for m in c.consume(500, 0.5):
                    if m.error() is None:
                        out.append((m.key(), m.value()))
                        seen = m.offset() + 1
        return out
    finally:
        c.close()


# --- hole 6: a symbol on two partitions ----------------------------------------------------------


def test_symbol_on_the_wrong_partition_is_dead_lettered(make_settings: Callable[..., Settings],
                                                        tmp_path: Path) -> None:
    settings = settings_for(make_settings, partitions=4, timeframes=("1m",))
    create_topics(settings)
    producer = Producer(producer_config(settings))
    right = murmur2_partition(b"EUR/USD", 4)
    wrong = (right + 1) % 4

    def tick(ts: int, bid: float) -> bytes:
        return orjson.dumps({"symbol": "EUR/USD", "ts_ms": ts, "bid": bid, "ask": bid + 0.0002})

    # The same symbol from a producer with the right partitioner and from one without.
    for i in range(20):
        producer.produce(settings.topics.ticks, key=b"EUR/USD", value=tick(T0 + i * 1000, 1.1),
                         partition=right)
        producer.produce(settings.topics.ticks, key=b"EUR/USD",
                         value=tick(T0 + i * 1000 + 500, 1.5), partition=wrong)
    producer.produce(settings.topics.ticks, key=b"EUR/USD", value=tick(T0 + 61_000, 1.1),
                     partition=right)
    assert producer.flush(30) == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_for(lambda: Counter(r["reason"] for r in dead_letters(settings).values())
                 ["wrong_partition"] == 20, 120, "20 wrong_partition dead letters")
        wait_for(lambda: ("EUR/USD", "1m", T0) in db_candles(settings), 60, "the first bar")
        bar = db_candles(settings)[("EUR/USD", "1m", T0)]
        assert (bar["tick_volume"], bar["high"]) == (20, 1.1001)
        detail = next(r["detail"] for r in dead_letters(settings).values()
                      if r["reason"] == "wrong_partition")
        assert "murmur2" in detail
    finally:
        stop_all(worker, sink)


# --- hole 7: complete by event time in a replay -------------------------------------------------


def test_replayed_bars_are_complete_only_when_they_are(make_settings: Callable[..., Settings],
                                                       tmp_path: Path) -> None:
    """In a historical replay the wall clock is past every bar; a bar may be published as
    complete only in its final version."""
    settings = settings_for(make_settings, partitions=2)
    csv = synthetic_csv(tmp_path / "ticks.csv", count=20_000, rate=100)
    assert run_cli(settings, ["produce", "replay", str(csv), "--frame-size", "20",
                              "--no-progress"], tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_exact(settings, csv, [worker, sink])
        final = {k: r["tick_volume"] for k, r in db_candles(settings).items()}
        early = [(r["symbol"], r["timeframe"], r["ts_utc"], r["tick_volume"])
                 for r in candle_records(settings) if r["complete"]
                 and r["tick_volume"] != final[(r["symbol"], r["timeframe"], r["ts_utc"])]]
        assert not early, f"{len(early)} bars published complete too early: {early[:5]}"
    finally:
        stop_all(worker, sink)


# --- hole 8: dead letters through kill -9 -----------------------------------------------------


def test_dead_letters_survive_kill9(make_settings: Callable[..., Settings],
                                    tmp_path: Path) -> None:
    settings = settings_for(make_settings, partitions=2, timeframes=("1m",))
    create_topics(settings)
    producer = Producer(producer_config(settings))
    expected = set()
    for i in range(3000):
        sym = SYMBOLS[i % 4]
        frame = [{"symbol": sym, "ts_ms": T0 + i * 10, "bid": 1.1, "ask": 1.1002},
                 {"symbol": sym, "ts_ms": T0 + i * 10 + 1, "bid": -1.0}]
        producer.produce(settings.topics.ticks, key=sym.encode(), value=orjson.dumps(frame))
    assert producer.flush(30) == 0
    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    for p in meta.topics[settings.topics.ticks].partitions:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "x"})
        _, high = c.get_watermark_offsets(TopicPartition(settings.topics.ticks, p), timeout=10)
        c.close()
        expected |= {f"{settings.topics.ticks}:{p}:{o}:1".encode() for o in range(high)}
    worker = None
    try:
        for round_no in range(4):
            worker = Proc(settings, ["worker"], tmp_path / f"worker-{round_no}.log")
            wait_for(lambda w=worker: "recovered candle state" in w.log.read_text(), 60,
                     "the worker to start")
            target = (round_no + 1) * 500
            wait_for(lambda t=target: len(dead_letters(settings)) >= t, 120,
                     f"{target} dead letters")
            worker.kill9()
        worker = Proc(settings, ["worker"], tmp_path / "worker-final.log")
        wait_for(lambda: len(dead_letters(settings)) >= len(expected), 120,
                 "every dead letter")
        keys = set(dead_letters(settings))
        assert keys == expected, f"missing {len(expected - keys)}, extra {len(keys - expected)}"
    finally:
        stop_all(worker)


# --- latency after a stall -------------------------------------------------------------------


def test_worker_returns_to_low_latency_after_a_pause(make_settings: Callable[..., Settings],
                                                     tmp_path: Path) -> None:
    """A worker stopped for a second (SIGSTOP) under a steady stream of one-tick messages
    must come back to low latency. With Faust's fetch wait of 1.5 s, quiet partitions
    held every fetch round for 1.5 s once a backlog had formed, and it stayed there.
    The stream (about 400 messages/s) stays well inside what a worker applies on a
    slow shared machine, so what the test sees is the fetch wait, not the capacity
    (FXSTREAM_TEST_FETCH_WAIT_MS=1500 gives the worker Faust's wait back: the median
    after the pause was then 1.2 s)."""
    fetch_wait = int(os.environ.get("FXSTREAM_TEST_FETCH_WAIT_MS", "20"))
    settings = settings_for(make_settings, partitions=6, timeframes=("1m",),
                            symbols=("EUR/USD", "GBP/USD"), worker_fetch_wait_ms=fetch_wait)
    create_topics(settings)
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sent: dict[tuple[str, int], float] = {}
    seen: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def watch() -> None:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                      "group.id": f"lat-{os.getpid()}", "auto.offset.reset": "earliest",
                      "fetch.wait.max.ms": 10})
        c.subscribe([settings.topics.candles])
        while not stop.is_set():
            for m in c.consume(1000, 0.05):
                if m.error() is None:
                    now = time.monotonic()
                    value = orjson.loads(m.value())
                    for rec in value if isinstance(value, list) else [value]:
                        seen.setdefault((rec["symbol"], rec["tick_volume"]), now)
        c.close()

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_for(lambda: "recovered candle state" in worker.log.read_text(), 60, "the worker")
        watcher.start()
        producer = Producer({**producer_config(settings), "linger.ms": 1})
        counts: dict[str, int] = defaultdict(int)
        base = int(time.time() * 1000) // 60_000 * 60_000  # this minute, so never ahead

        def stream(seconds: float, per_10ms: int = 2) -> None:
            """One tick per message, about 400 messages/s, for ``seconds``."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for _ in range(per_10ms):
                    for sym in ("EUR/USD", "GBP/USD"):
                        counts[sym] += 1
                        c = counts[sym]
                        producer.produce(settings.topics.ticks, key=sym.encode(),
                                         value=orjson.dumps({"symbol": sym, "ts_ms": base + c,
                                                             "bid": 1.0 + c * 1e-7,
                                                             "ask": 1.0002 + c * 1e-7}))
                        sent[(sym, c)] = time.monotonic()
                producer.poll(0)
                time.sleep(0.01)  # the steady pace under test, not a wait for a result

        stream(3)
        os.kill(worker.popen.pid, signal.SIGSTOP)
        stream(1)  # a second of ticks while the worker is stopped
        os.kill(worker.popen.pid, signal.SIGCONT)
        stream(6)
        assert producer.flush(30) == 0
        last = [(sym, counts[sym] - i) for sym in counts for i in range(0, 400, 4)]
        wait_for(lambda: all(k in seen for k in last), 60, "the last ticks' bars")
        latencies = [seen[k] - sent[k] for k in last]
        median = statistics.median(latencies)
        assert median < 0.5, f"median latency after the pause {median * 1000:.0f} ms"
    finally:
        stop.set()
        stop_all(worker)


def test_a_worker_behind_on_a_backlog_does_not_seek_back_what_it_still_reads(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A worker draining a backlog leaves partitions undelivered for seconds while it
    applies the others: their records wait in the consumer, fetched and unread. The
    stall check took each such partition for a stalled one (nothing delivered for 5 s,
    its end past the cursor) and sought it back, which threw away what had been fetched
    and warned of a stall that was none: 7 or 8 seeks in every 30,000-message backlog on
    a slow machine. Only a partition its consumer has read to the end, with messages
    still unapplied, is stalled."""
    settings = settings_for(make_settings, partitions=6, timeframes=("1m",))
    assert run_cli(settings, ["produce", "synthetic", "--count", "30000", "--max-speed",
                              "--rate", "5000", "--frame-size", "1", "--seed", "5"],
                   tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: (lags := group_lag(settings, settings.worker_group,
                                            settings.topics.ticks))
                 and all(p.lag == 0 for p in lags),
                 300, "the worker to apply and commit the backlog", interval_s=0.5,
                 watch=[worker])
    finally:
        stop_all(worker)
    log = worker.log.read_text(errors="replace")
    seeks = [line for line in log.splitlines() if "seeking back" in line]
    assert not seeks, f"{len(seeks)} seeks of partitions still being read:\n" + "\n".join(
        seeks[:5])
    assert re.search(r"candle worker stopping: 30000 messages.*, 0 stalled partitions", log)


def test_murmur2_partition_is_where_the_producers_put_a_symbol(
        make_settings: Callable[..., Settings]) -> None:
    settings = settings_for(make_settings, partitions=6)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    landed: dict[bytes, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        landed[msg.key()] = msg.partition()

    for sym in SYMBOLS:
        producer.produce(settings.topics.ticks, key=sym.encode(), value=b"{}",
                         on_delivery=delivered)
    assert producer.flush(30) == 0
    assert landed == {s.encode(): murmur2_partition(s.encode(), 6) for s in SYMBOLS}


def test_worker_started_while_kafka_is_down_waits_and_says_so(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from pipeline.stack.process import free_port

    settings = settings_for(make_settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: worker.log.read_text().count("waiting for Kafka") >= 2
                 or not worker.alive(), 90, "the worker to wait for Kafka, twice")
        assert worker.alive(), worker.tail()
        shown = run_cli(settings, ["status"], tmp_path)
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if "worker" in x and "waiting" in x)
        assert "Kafka" in line, shown.stdout
    finally:
        stop_all(worker)


# --- changelog topics ----------------------------------------------------------------------------


def test_a_changelog_with_another_partition_count_stops_the_worker_with_a_clear_error(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A changelog that does not match its source (the worker group reused after the
    partition count changed) used to leave the agent crashing on every message and
    restarting, silently, for as long as the worker ran; nothing reached the tables."""
    settings = settings_for(make_settings)
    create_topics(settings)
    changelog = f"{settings.worker_group}-sentiment-state-changelog"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(changelog, num_partitions=1, replication_factor=1,
                                  config={"cleanup.policy": "compact"})])[changelog].result(30)
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: not worker.alive(), 120, "the worker to stop")
        assert worker.popen.returncode != 0
        log = worker.log.read_text()
        assert f"changelog topic {changelog!r} has 1 partitions" in log, worker.tail()
        assert "FXSTREAM_WORKER_GROUP" in log
    finally:
        stop_all(worker)


def test_topics_take_writes_when_create_topics_returns(
        make_settings: Callable[..., Settings]) -> None:
    """The cluster's metadata names a new partition's leader before that leader has made
    the partition; an idempotent producer's first records to it were lost in that window
    (a loaded broker takes a second or more over it). create_topics returns only once
    every partition's leader answers for it."""
    from confluent_kafka import Consumer

    settings = settings_for(make_settings, partitions=12)
    report = create_topics(settings)
    assert set(report.created) == set(settings.topics.all())
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        for topic in report.created:
            for p in range(settings.partitions):
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=2)
                assert (low, high) == (0, 0)
    finally:
        probe.close()


def test_every_changelog_exists_with_all_its_partitions_led_before_the_worker_joins(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Faust creates the changelogs while it starts; a consumer that joined before a new
    one reached its metadata saw it with no partitions, and that table refused every write
    (PartitionsMismatch) until a metadata refresh minutes later: its agent stalled."""
    settings = settings_for(make_settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        def members() -> int:
            try:
                (desc,) = admin.describe_consumer_groups([settings.worker_group]).values()
                return len(desc.result(10).members)
            except Exception:
                return 0

        seen: dict[str, int] = {}

        def joined() -> bool:
            assert worker.alive(), worker.tail()
            topics = admin.list_topics(timeout=10).topics
            if members() == 0:
                return False
            seen.update({name: len([p for p in t.partitions.values() if p.leader >= 0])
                         for name, t in topics.items() if name.endswith("-changelog")
                         and name.startswith(settings.worker_group)})
            return True

        wait_for(joined, 120, "the worker to join its group")
        assert seen == {f"{settings.worker_group}-{table}-state-changelog": settings.partitions
                        for table in ("candle", "dom", "sentiment")}, seen
        wait_for(lambda: "recovered sentiment state" in worker.log.read_text(), 60,
                 "the sentiment agent to recover")
        assert "PartitionsMismatch" not in worker.log.read_text()
    finally:
        stop_all(worker)


# --- a state too large for a changelog record ---------------------------------------------------


def test_a_message_that_would_outgrow_the_changelog_record_is_dead_lettered(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Kafka refuses a record past its size limit, and the producer's failure used to
    stop the worker. A message whose state would pass FXSTREAM_MAX_STATE_BYTES is
    dead-lettered as ``state_too_large`` instead; the symbol keeps its state and the
    worker goes on."""
    from pipeline.agents.candles import candle_agent
    from pipeline.runtime.positions import encode_envelope

    def tick(ts: int, sym: str = "EUR/USD") -> dict[str, Any]:
        return {"symbol": sym, "ts_ms": ts, "bid": 1.1, "ask": 1.1002}

    wide = [tick(T0 + 1_000 * (i + 1)) for i in range(280)]  # bars over 4 2/3 minutes
    probe = settings_for(make_settings)
    fold = candle_agent(probe).fold
    now = int(time.time() * 1000)
    small = fold(fold(None, "EUR/USD", [tick(T0)], 0, now, -1).state, "EUR/USD",
                 [tick(T0 + 500)], 2, now, 1).state
    large = fold(fold(None, "EUR/USD", [tick(T0)], 0, now, -1).state, "EUR/USD", wide, 1, now,
                 0).state
    limit = (len(encode_envelope(0, 2, small)) + len(encode_envelope(0, 1, large))) // 2
    assert len(encode_envelope(0, 2, small)) < limit < len(encode_envelope(0, 1, large))

    settings = settings_for(make_settings, partitions=3, max_state_bytes=limit)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    for value in ([tick(T0)], wide, [tick(T0, "GBP/USD")], [tick(T0 + 500)]):
        producer.produce(settings.topics.ticks, key=value[0]["symbol"].encode(),
                         value=orjson.dumps(value))
        assert producer.flush(30) == 0  # in this order within EUR/USD's partition
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        def newest_bars() -> dict[tuple[str, str], dict[str, Any]]:
            bars: dict[tuple[str, str], dict[str, Any]] = {}
            for _, value in read_topic(settings, settings.topics.candles):
                for c in value if isinstance(value, list) else [value]:
                    if c["ts_utc"] == T0 - T0 % 60_000:
                        bars[(c["symbol"], c["timeframe"])] = c
            return bars

        wait_for(lambda: newest_bars().get(("EUR/USD", "1m"), {}).get("tick_volume") == 2
                 and ("GBP/USD", "1m") in newest_bars(), 120,
                 "EUR/USD's bar of its two small messages, and GBP/USD's bar")
        reasons = Counter(r["reason"] for r in dead_letters(settings).values())
        assert reasons == {"state_too_large": len(wide)}, reasons
        # The frame decoded typed; its dead letters carry the ticks as they were sent.
        sent = sorted((r["source"]["index"], orjson.loads(r["payload"]))
                      for r in dead_letters(settings).values())
        assert sent == list(enumerate(wide))
        detail = next(iter(dead_letters(settings).values()))["detail"]
        assert "FXSTREAM_MAX_STATE_BYTES" in detail and "EUR/USD" in detail
        assert worker.alive()
    finally:
        stop_all(worker)


def test_output_frames_stay_under_the_record_limit_in_order() -> None:
    from pipeline.runtime.worker import output_frames

    records = [{"i": i, "pad": "x" * (i % 7 * 10)} for i in range(50)]
    frames = output_frames(records, 400)
    assert len(frames) > 1 and all(len(f) <= 400 for f in frames)
    back = [r for f in frames for r in (lambda v: v if isinstance(v, list) else [v])(
        orjson.loads(f))]
    assert back == records
    assert output_frames(records, 10**6) == [orjson.dumps(records)]


def test_a_message_whose_outputs_pass_the_record_limit_is_sent_in_parts(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """One message of ticks over half an hour closes some 30 bars: more bytes of output
    than of state (which keeps only the bars within the lateness). Its outputs go out
    as several records under the limit, and every bar arrives."""
    from pipeline.agents.candles import candle_agent
    from pipeline.runtime.declaration import TARGET
    from pipeline.runtime.positions import encode_envelope

    ticks = [{"symbol": "EUR/USD", "ts_ms": T0 + 60_000 * i + 7, "bid": 1.1 + i * 1e-4,
              "ask": 1.1002 + i * 1e-4} for i in range(30)]
    probe = settings_for(make_settings)
    outcome = candle_agent(probe).fold(None, "EUR/USD", ticks, 0, int(time.time() * 1000), -1)
    bars = [r for r in outcome.outputs if TARGET not in r]  # not the order-flow records
    for record in bars:
        record.update(src_partition=0, src_offset=0)
    state_size = len(encode_envelope(0, 0, outcome.state))
    output_size = len(orjson.dumps(bars))
    limit = max(state_size + 500, output_size // 3)
    assert limit < output_size  # one frame would pass it
    settings = settings_for(make_settings, partitions=3, max_state_bytes=limit)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    producer.produce(settings.topics.ticks, key=b"EUR/USD", value=orjson.dumps(ticks))
    assert producer.flush(30) == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        def sent() -> list[Any]:
            return [v for _, v in read_topic(settings, settings.topics.candles)]

        wait_for(lambda: sum(len(v) if isinstance(v, list) else 1 for v in sent())
                 >= len(bars), 120, "every bar of the message on the candle topic")
        values = sent()
        assert len(values) > 1
        assert all(len(orjson.dumps(v)) <= limit for v in values)
        got = [c for v in values for c in (v if isinstance(v, list) else [v])]
        # the message's bars first, in order; the clock may close the last ones later
        assert [(c["timeframe"], c["ts_utc"], c["tick_volume"]) for c in got[:len(bars)]] == [
            (c["timeframe"], c["ts_utc"], c["tick_volume"]) for c in bars]
        assert not dead_letters(settings)
    finally:
        stop_all(worker)


# --- commits: Kafka's committed offsets follow the cursors and never go back ----------------------


def test_committed_offsets_never_go_back_when_two_workers_drain_a_backlog(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Faust's own committer commits from its acknowledgement lists, which stop at
    messages the runtime re-read (Faust skipped them around the rebalance and never
    acknowledges them) and then advance by one offset a commit. Left alone it commits
    those older offsets over the runtime's newer ones, and the group's committed offsets
    go back and crawl up for minutes after every message was applied."""
    settings = settings_for(make_settings, partitions=12)
    assert run_cli(settings, ["produce", "synthetic", "--count", "1500000", "--max-speed",
                              "--rate", "5000", "--frame-size", "500", "--seed", "7"],
                   tmp_path).returncode == 0
    workers = [Proc(settings, ["worker"], tmp_path / f"worker-{i}.log") for i in (1, 2)]
    seen: dict[int, int] = {}
    went_back: list[tuple[int, int, int]] = []

    def drained() -> bool:
        lags = group_lag(settings, settings.worker_group, settings.topics.ticks)
        for p in lags:
            if p.committed is None:
                continue
            if p.committed < seen.get(p.partition, -1):
                went_back.append((p.partition, seen[p.partition], p.committed))
            seen[p.partition] = max(p.committed, seen.get(p.partition, -1))
        return bool(lags) and all(p.lag == 0 for p in lags)

    try:
        wait_for(drained, 180, "the two workers to commit the whole backlog", interval_s=0.1,
                 watch=workers)
        # and it stays there: nothing commits older offsets afterwards (an observation
        # window, sampled as above; Faust's committer runs once a second)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            drained()
            time.sleep(0.1)
        assert not went_back, ("committed offsets went back (partition, from, to): "
                               f"{went_back[:10]}")
    finally:
        stop_all(*workers)


# --- outputs: a position settles only when Kafka has acknowledged what it sent ---------------


def _limit_record_size(settings: Settings, topic: str, max_bytes: int) -> None:
    """Make ``topic`` refuse every record batch over ``max_bytes``."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, topic,
        incremental_configs=[ConfigEntry("max.message.bytes", str(max_bytes),
                                         incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _worker_log_after_a_refusal(settings: Settings, tmp_path: Path, what: str) -> str:
    """Produce one EUR/USD message of 5 ticks, start a worker, wait until it stops with
    exit 70 (a record Kafka refused) and return its log."""
    producer = Producer(producer_config(settings))
    producer.produce(settings.topics.ticks, key=b"EUR/USD",
                     value=orjson.dumps([{"symbol": "EUR/USD", "ts_ms": T0 + i * 1_000,
                                          "bid": 1.1, "ask": 1.1002} for i in range(5)]))
    assert producer.flush(30) == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: not worker.alive(), 120, f"the worker to stop on the refused {what}")
        assert worker.popen.returncode == 70, worker.tail()
        return worker.log.read_text()
    finally:
        stop_all(worker)


def test_an_output_kafka_refuses_stops_the_worker_instead_of_counting_as_sent(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Faust only logs a send Kafka refused. Counted as acknowledged, its message's
    position would settle and the states would drop what only that output carried: a
    bar nobody ever receives. The worker stops with Kafka's error instead (a restart
    re-sends from the states). Here the candle topic takes no record over 64 bytes."""
    settings = settings_for(make_settings, partitions=3)
    create_topics(settings)
    _limit_record_size(settings, settings.topics.candles, 64)
    log = _worker_log_after_a_refusal(settings, tmp_path, "output")
    assert "Kafka refused" in log and "records the worker sent" in log, log[-3000:]


def test_no_offset_is_committed_while_kafka_has_not_acknowledged_the_outputs(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Outputs go through a producer of their own, which Faust's committer does not
    flush; it commits the messages whose runs are written, and a crash after such a
    commit would lose outputs still queued. Here the candle topic is deleted under a
    running worker: the message is applied and its run written, but its output waits,
    and no offset may be committed until the worker gives up on it (exit 70). A
    restart re-creates the topic and sends the bars."""
    settings = settings_for(make_settings, partitions=3, output_ack_timeout_s=8)
    create_topics(settings)
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: "recovered candle state" in worker.log.read_text(), 120,
                 "the worker to join", watch=[worker])
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        admin.delete_topics([settings.topics.candles])[settings.topics.candles].result(30)
        wait_for(lambda: settings.topics.candles not in admin.list_topics(timeout=10).topics,
                 60, "the candle topic to go")
        producer = Producer(producer_config(settings))
        producer.produce(settings.topics.ticks, key=b"EUR/USD",
                         value=orjson.dumps([{"symbol": "EUR/USD", "ts_ms": T0 + i * 1_000,
                                              "bid": 1.1, "ask": 1.1002} for i in range(5)]))
        assert producer.flush(30) == 0
        wait_for(lambda: not worker.alive(), 120, "the worker to stop on the waiting output")
        assert worker.popen.returncode == 70, worker.tail()
    finally:
        stop_all(worker)
    log = worker.log.read_text()
    assert "the worker's outputs" in log or "Kafka refused" in log, log[-3000:]
    changelog = f"{settings.worker_group}-candle-state-changelog"
    assert any(key == b"EUR/USD" for key, _ in read_topic(settings, changelog)), \
        "the message's run was not written: nothing here would have been committed"
    assert committed_total(settings, settings.worker_group, settings.topics.ticks) == 0

    def bars_sent() -> bool:
        try:
            return any(r.get("symbol") == "EUR/USD" for r in candle_records(settings))
        except KafkaException:  # the topic just re-created, its leader not yet known
            return False

    again = Proc(settings, ["worker"], tmp_path / "worker-again.log")
    try:
        wait_for(bars_sent, 120, "the restarted worker to send the bars", watch=[again])
        wait_for(lambda: committed_total(settings, settings.worker_group,
                                         settings.topics.ticks) == 1,
                 60, "the message's offset to be committed", watch=[again])
    finally:
        stop_all(again)


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_a_changelog_record_kafka_refuses_stops_the_worker_before_any_commit(
        make_settings: Callable[..., Settings], tmp_path: Path, store: str) -> None:
    """A state Kafka does not store must not count as stored: committed past, its
    message would be gone after the next restart. Here the changelog takes no record
    over 64 bytes, so the first message's record is refused: the worker stops (exit 70)
    and no offset of the source partition is committed. Once the changelog takes the
    record again, a restart applies the message and stores its state there (a RocksDB
    store must not keep the refused state as applied)."""
    from confluent_kafka import Consumer

    from pipeline.runtime.worker import CHANGELOG_CONFIG
    from pipeline.topics import create_changelog_topics

    settings = settings_for(make_settings, partitions=3, store=store)
    create_topics(settings)
    changelog = f"{settings.worker_group}-candle-state-changelog"
    create_changelog_topics(settings, [changelog],
                            {**CHANGELOG_CONFIG, "max.message.bytes": "64"})
    log = _worker_log_after_a_refusal(settings, tmp_path, "changelog record")
    assert "Kafka refused" in log and changelog in log, log[-3000:]

    partition = murmur2_partition(b"EUR/USD", settings.partitions)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": settings.worker_group, "enable.auto.commit": False})
    try:
        [committed] = consumer.committed(
            [TopicPartition(settings.topics.ticks, partition)], timeout=30)
    finally:
        consumer.close()
    assert committed.offset < 1, f"offset {committed.offset} committed past the refused state"

    _limit_record_size(settings, changelog, 1 << 20)

    def stored() -> bool:
        return any(key == b"EUR/USD" and value["o"] == 0
                   for key, value in read_topic(settings, changelog))

    worker = Proc(settings, ["worker"], tmp_path / "worker-again.log")
    try:
        wait_for(stored, 120, "the restarted worker to store the message's state",
                 watch=[worker])
    finally:
        stop_all(worker)


# --- runs: a message's state is written with those of the messages around it ---------------


def two_symbols_on_one_partition(partitions: int) -> tuple[int, str, str]:
    """A partition and two of SYMBOLS that the producers put on it."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for symbol in SYMBOLS:
        by_partition[murmur2_partition(symbol.encode(), partitions)].append(symbol)
    partition, (a, b, *_) = next((p, s) for p, s in by_partition.items() if len(s) >= 2)
    return partition, a, b


def tick_frame(symbol: str, start: int, n: int, bid: float) -> list[dict[str, Any]]:
    """``n`` ticks of ``symbol`` a second apart from ``start``, rising from ``bid``."""
    return [{"symbol": symbol, "ts_ms": start + i * 1_000, "bid": bid + i * 1e-4,
             "ask": bid + i * 1e-4 + 2e-4} for i in range(n)]


def produce_run_of_two_symbols(settings: Settings, producer: Any, partition: int,
                               a: str, b: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """The run [A, B, A] on ``partition``: 7 ticks of A and 2 of B in the bar at T0."""
    run = [(a, tick_frame(a, T0, 3, 1.1)), (b, tick_frame(b, T0, 2, 1.3)),
           (a, tick_frame(a, T0 + 10_000, 4, 1.2))]
    for symbol, ticks in run:
        producer.produce(settings.topics.ticks, key=symbol.encode(), value=orjson.dumps(ticks),
                         partition=partition)
    return run


def first_bar_tick_counts(settings: Settings, *symbols: str) -> tuple[int | None, ...]:
    """Each symbol's tick count in its 1m bar at T0 in PostgreSQL (None: no bar)."""
    bars = db_candles(settings)
    return tuple(bars[(s, "1m", T0)]["tick_volume"] if (s, "1m", T0) in bars else None
                 for s in symbols)


def test_a_run_cut_between_its_records_is_applied_again_exactly(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The worker writes a run of messages' states as one record per key, the run's end
    last (pipeline.runtime.positions). A crash can keep a record from before the end
    without the end; that record's position must not count as the partition's cursor,
    or the messages below it of the run's other keys would count as applied. The
    changelog here holds what such a crash leaves of the run [A, B, A]: B's record
    (position 1, the cursor before the run: none) and not A's. A worker started on it
    applies both of A's messages and B's once."""
    from confluent_kafka import Producer as KafkaProducer

    from pipeline.agents.candles import candle_agent
    from pipeline.runtime.positions import envelope
    from pipeline.runtime.worker import CHANGELOG_CONFIG
    from pipeline.topics import create_changelog_topics

    settings = settings_for(make_settings, partitions=3, timeframes=("1m",))
    create_topics(settings)
    partition, a, b = two_symbols_on_one_partition(3)
    producer = KafkaProducer(producer_config(settings))
    run = produce_run_of_two_symbols(settings, producer, partition, a, b)
    changelog = f"{settings.worker_group}-candle-state-changelog"
    create_changelog_topics(settings, [changelog], CHANGELOG_CONFIG)
    b_state = candle_agent(settings).fold(None, b, run[1][1], 1, int(time.time() * 1000), -1).state
    producer.produce(changelog, key=b.encode(), partition=partition,
                     value=envelope(partition, 1, orjson.dumps(b_state), -1))
    assert producer.flush(30) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")

    try:
        wait_for(lambda: first_bar_tick_counts(settings, a, b) == (7, 2), 120,
                 f"{a} with 7 ticks and {b} with 2",
                 watch=[worker, sink])
        wait_for(lambda: any(lag.partition == partition and lag.committed == 3
                             for lag in group_lag(settings, settings.worker_group,
                                                  settings.topics.ticks)),
                 60, "the worker to commit the run", watch=[worker])
        assert first_bar_tick_counts(settings, a, b) == (7, 2)
    finally:
        stop_all(worker, sink)


def test_a_run_cut_short_on_a_topic_since_re_created_does_not_hide_the_new_messages(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A crash cut a run of the old topic short: B's record landed with position 40, the
    run's end did not, so the partition's cursor says 2. The topic was then deleted and
    created again. Positions on the new topic must continue past 40, not past the
    cursor: from 3 on, B's new messages would be at or below its stored position and
    skipped as already applied. The changelog here holds what that leaves (the old
    topic's cursor record, B's record); the tick topic is the new one."""
    from confluent_kafka import Producer as KafkaProducer

    from pipeline.agents.candles import candle_agent
    from pipeline.runtime.positions import Cursor, cursor_key, encode_cursor, envelope
    from pipeline.runtime.worker import CHANGELOG_CONFIG
    from pipeline.topics import create_changelog_topics

    settings = settings_for(make_settings, partitions=3, timeframes=("1m",))
    create_topics(settings)
    partition, a, b = two_symbols_on_one_partition(3)
    producer = KafkaProducer(producer_config(settings))
    produce_run_of_two_symbols(settings, producer, partition, a, b)
    changelog = f"{settings.worker_group}-candle-state-changelog"
    create_changelog_topics(settings, [changelog], CHANGELOG_CONFIG)
    old_cursor = Cursor(base=0, last=2, topic_id="the-deleted-topic")
    producer.produce(changelog, key=cursor_key(partition), partition=partition,
                     value=encode_cursor(old_cursor))
    b_state = candle_agent(settings).fold(None, b, tick_frame(b, T0 - 3_600_000, 2, 1.3), 40,
                                          int(time.time() * 1000), -1).state
    producer.produce(changelog, key=b.encode(), partition=partition,
                     value=envelope(partition, 40, orjson.dumps(b_state), 2))
    assert producer.flush(30) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")

    try:
        wait_for(lambda: "was deleted and re-created" in worker.log.read_text(), 90,
                 "the worker to report the re-created topic", watch=[worker])
        wait_for(lambda: first_bar_tick_counts(settings, a, b) == (7, 2), 120,
                 f"{a} with 7 ticks and {b} with 2",
                 watch=[worker, sink])
        wait_for(lambda: any(lag.partition == partition and lag.committed == 3
                             for lag in group_lag(settings, settings.worker_group,
                                                  settings.topics.ticks)),
                 60, "the worker to commit the new topic's messages", watch=[worker])
        assert first_bar_tick_counts(settings, a, b) == (7, 2)
    finally:
        stop_all(worker, sink)


def test_a_worker_stopped_inside_a_message_writes_its_run_and_stops(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """SIGTERM reaches the worker while a message waits inside the agent (here for Kafka
    to acknowledge its dead letter: every message carries one). Faust then waits until
    every message it handed out is acknowledged, and the worker acknowledges a message
    once its run is written: a message that finishes while the flow is suspended is
    written at once, not when its run's time is up (a long one here; the timers have
    stopped by then). The worker stops cleanly, and a restart counts every tick once."""
    settings = settings_for(make_settings, partitions=3, timeframes=("1m",),
                            worker_run_ms=10_000)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    count = 3_000
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        good = {"symbol": symbol, "ts_ms": T0 + i * 100, "bid": 1.1 + (i % 50) * 1e-4,
                "ask": 1.1003 + (i % 50) * 1e-4}
        producer.produce(settings.topics.ticks, key=symbol.encode(),
                         value=orjson.dumps([good, {**good, "bid": -1.0}]))
    assert producer.flush(60) == 0

    def counted() -> int:
        return sum(bar["tick_volume"] for (_, tf, _), bar in db_candles(settings).items()
                   if tf == "1m")

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        wait_for(lambda: len(read_topic(settings, settings.topics.dead_letter, 5)) >= 200, 120,
                 "the worker to be busy with the messages", watch=[worker])
        assert worker.stop(timeout_s=60) == 0, worker.tail()
        assert "wait_empty: Waiting for tasks" not in worker.log.read_text()
        worker = Proc(settings, ["worker"], tmp_path / "worker-again.log")
        sink = Proc(settings, ["sink"], tmp_path / "sink.log")
        try:
            wait_for(lambda: counted() == count, 180, f"{count} ticks counted",
                     watch=[worker, sink])
            wait_for(lambda: all(lag.lag == 0 for lag in group_lag(
                settings, settings.worker_group, settings.topics.ticks)), 60,
                "the worker to commit every message", watch=[worker])
            assert counted() == count
        finally:
            stop_all(sink)
    finally:
        stop_all(worker)


def test_a_worker_stopped_between_messages_writes_its_run_and_commits_it(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """SIGTERM reaches the worker after it applied every message there is, the last run
    not yet written (a run lasts at least 10 s here; the partitions' first messages,
    which write the run before them, came within a second). No message finishes after
    the flow is suspended, and the timers stop with the worker: the run must be written
    when Faust starts waiting for every message to be acknowledged, or that wait never
    ends. The stop commits every message."""
    settings = settings_for(make_settings, partitions=3, timeframes=("1m",),
                            worker_run_ms=10_000, worker_run_messages=100_000)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    count = 30
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        good = {"symbol": symbol, "ts_ms": T0 + i * 100, "bid": 1.1 + i * 1e-4,
                "ask": 1.1003 + i * 1e-4}
        producer.produce(settings.topics.ticks, key=symbol.encode(),
                         value=orjson.dumps([good, {**good, "bid": -1.0}]))
    assert producer.flush(60) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    try:
        # Each message's dead letter is acknowledged before the next message: all of them
        # there, every message is applied and the worker waits for more.
        def dead_letters() -> int:
            return sum(end_offsets(settings, settings.topics.dead_letter).values())

        wait_for(lambda: dead_letters() >= 1, 120, "the first message to be applied",
                 interval_s=0.05, watch=[worker])
        first_applied = time.monotonic()
        wait_for(lambda: dead_letters() >= count, 60, "every message to be applied",
                 interval_s=0.05, watch=[worker])
        # The run timer (10 s, for runs 10 s old) has not written the run yet.
        assert time.monotonic() - first_applied < 8, "too slow to stop before the run timer"
        assert worker.stop(timeout_s=60) == 0, worker.tail()
        assert committed_total(settings, settings.worker_group, settings.topics.ticks) == count
    finally:
        stop_all(worker)

