"""The sink through PostgreSQL and Kafka outages, on the real broker and database.

These tests stop and start the test session's own PostgreSQL (a process on the embedded
stack, a container on testcontainers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.settings import Settings
from pipeline.stack.process import free_port
from pipeline.topics import create_topics
from tests.conftest import wait_for
from tests.pipeline_helpers import (
    Proc,
    candle_record,
    db_candles,
    end_offsets,
    produce_candles,
    run_cli,
    stored_sink_offsets,
)
from tests.stack_fixtures import RealStack

pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000
SYMBOLS = ("EUR/USD", "GBP/USD", "USD/JPY", "AUD/USD", "USD/CHF", "USD/CAD", "NZD/USD",
           "EUR/GBP")


class CandleStream:
    """Publishes, until stopped, revisions of every symbol's 1m and 5m bars (one frame per
    message, versions increasing per symbol) and remembers the last of each bar."""

    def __init__(self, settings: Settings, rate_per_s: float = 400) -> None:
        from confluent_kafka import Producer

        from producers.kafka_io import producer_config

        self.settings = settings
        self.producer = Producer(producer_config(settings, **{"linger.ms": 5}))
        self.want: dict[tuple[str, str, int], float] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._interval = 1 / rate_per_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            symbol = SYMBOLS[i % len(SYMBOLS)]
            n = i // len(SYMBOLS)  # this symbol's n-th message
            close = round(1.0 + (i % 997) / 10_000, 5)
            frame = [candle_record(symbol, T0 + (n // 20) * 60_000, close, version=(0, n),
                                   tick_volume=n % 20 + 1),
                     candle_record(symbol, T0 + (n // 100) * 300_000, close, timeframe="5m",
                                   version=(0, n), tick_volume=n % 100 + 1)]
            while True:
                try:
                    self.producer.produce(self.settings.topics.candles, key=symbol.encode(),
                                          value=orjson.dumps(frame))
                    break
                except BufferError:
                    self.producer.poll(0.05)
            for c in frame:
                self.want[(symbol, c["timeframe"], c["ts_utc"])] = close
            self.producer.poll(0)
            i += 1
            self.sent = i
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.producer.flush(60) == 0


def count(proc: Proc, text: str) -> int:
    return proc.log.read_text(errors="replace").count(text)


def test_postgres_outage_while_sinks_come_and_go(
        stack: RealStack, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """PostgreSQL stopped with -m immediate mid-stream; meanwhile one of two sinks is
    killed and a third joins; PostgreSQL comes back: every row exact, offsets at the end."""
    stack.require_server_control()
    settings = make_settings(partitions=4, session_timeout_s=6.0, log_level="INFO",
                             sink_batch_size=50)
    create_topics(settings)
    a = Proc(settings, ["sink"], tmp_path / "sink-a.log")
    b = Proc(settings, ["sink"], tmp_path / "sink-b.log")
    c: Proc | None = None
    stream = CandleStream(settings)
    try:
        wait_for(lambda: sum(stored_sink_offsets(settings).values()) >= 2_000, 90,
                 "the sinks to write a while")
        stack.stop_postgres_immediately()
        try:
            wait_for(lambda: count(b, "PostgreSQL unavailable") >= 1, 60,
                     "sink b to notice PostgreSQL is down")
            assigned_b = count(b, "assigned ")
            a.kill9()
            c = Proc(settings, ["sink"], tmp_path / "sink-c.log")
            # b takes partitions during the outage (a's, then the split with c) ...
            wait_for(lambda: count(b, "assigned ") > assigned_b, 60,
                     "sink b to be assigned partitions during the outage")
            # ... and polls through at least one more retry with them.
            seen = count(b, "PostgreSQL unavailable")
            wait_for(lambda: count(b, "PostgreSQL unavailable") > seen, 60,
                     "sink b to retry after the reassignment")
            assert b.alive(), b.tail()
        finally:
            stack.start_postgres()
        wait_for(lambda: count(b, "PostgreSQL is back") >= 1, 90, "sink b to resume")
        stream.stop()
        ends = {p: e for p, e in end_offsets(settings, settings.topics.candles).items() if e}
        last: list[Any] = []

        def exact() -> bool:
            rows = {k: r["close"] for k, r in db_candles(settings).items()}
            missing = [k for k in stream.want if k not in rows]
            wrong = [k for k in stream.want if k in rows and rows[k] != stream.want[k]]
            last[:] = [len(stream.want), missing[:3], len(missing), wrong[:3], len(wrong),
                       stored_sink_offsets(settings), ends]
            return not missing and not wrong and stored_sink_offsets(settings) == ends

        try:
            wait_for(exact, 90, "every bar exact and the offsets at the end")
        except AssertionError:
            logs = "\n".join(f"--- {p.log.name}\n{p.tail(15)}" for p in (b, c) if p)
            raise AssertionError(f"bars {last[0]}: {last[2]} missing (e.g. {last[1]}), "
                                 f"{last[4]} wrong (e.g. {last[3]}); sink_offsets {last[5]}, "
                                 f"ends {last[6]}\n{logs}") from None
        assert c.alive(), f"the sink started during the outage died:\n{c.tail()}"
        assert b.alive(), b.tail()
    finally:
        if not stream._stop.is_set():
            stream.stop()
        for p in (a, b, c):
            if p is not None and p.alive():
                p.stop()


def test_sink_started_while_postgres_is_down_waits_for_it(
        stack: RealStack, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    stack.require_server_control()
    settings = make_settings(partitions=2, session_timeout_s=6.0, log_level="INFO")
    create_topics(settings)
    stack.stop_postgres_immediately()
    sink: Proc | None = None
    try:
        sink = Proc(settings, ["sink"], tmp_path / "sink.log")
        wait_for(lambda: count(sink, "waiting for PostgreSQL") >= 2 or not sink.alive(), 60,
                 "the sink to wait for PostgreSQL, twice")
        assert sink.alive(), f"the sink gave up:\n{sink.tail()}"
        status = [orjson.loads(f.read_bytes())
                  for f in (settings.state_dir / "status").glob("candle-sink-*.json")]
        assert [s["state"] for s in status] == ["waiting"], status
        assert status[0]["waiting_for"] == "PostgreSQL", status
    finally:
        stack.start_postgres()
    try:
        produce_candles(settings, [("EUR/USD", candle_record("EUR/USD", T0, 1.1))])
        wait_for(lambda: (sink.alive() or pytest.fail(sink.tail()))
                 and ("EUR/USD", "1m", T0) in db_candles(settings), 90,
                 "the sink to start once PostgreSQL is back and write the candle")
    finally:
        assert sink.stop() == 0, sink.tail()


def test_sink_started_while_kafka_is_down_waits_for_it(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Nothing listens at the configured broker address: the sink waits, says so, and
    stops cleanly on SIGTERM."""
    settings = make_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", log_level="INFO")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_for(lambda: count(sink, "waiting for Kafka") >= 2 or not sink.alive(), 60,
                 "the sink to wait for Kafka, twice")
        assert sink.alive(), f"the sink gave up:\n{sink.tail()}"
        status = [orjson.loads(f.read_bytes())
                  for f in (settings.state_dir / "status").glob("candle-sink-*.json")]
        assert [(s["state"], s["waiting_for"]) for s in status] == [("waiting", "Kafka")]
        shown = run_cli(settings, ["status"], tmp_path)
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if "candle-sink" in x)
        assert "waiting" in line and "Kafka" in line, shown.stdout
        assert "did not answer" in shown.stderr
    finally:
        assert sink.stop(30) == 0, sink.tail()


def test_offsets_written_before_an_outage_reach_kafka_during_it(
        stack: RealStack, make_settings: Callable[..., Settings],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's commits wait for the throttle, so the offsets of the last batches written
    before PostgreSQL went down are still to be committed when it goes. While the sink
    waits for PostgreSQL they go to Kafka once the throttle allows (lag monitoring then
    shows what is written, not the offset of the last commit before it); nothing unwritten
    goes with them."""
    import consumers.runtime
    from consumers.candle_sink import CandleSink
    from pipeline.monitor import group_lag

    stack.require_server_control()
    settings = make_settings(partitions=1, session_timeout_s=6.0, log_level="INFO",
                             sink_batch_size=20)
    create_topics(settings)
    produce_candles(settings, [("EUR/USD", candle_record("EUR/USD", T0 + i * 60_000, 1.0))
                               for i in range(200)])

    def kafka_committed() -> int:
        return sum(p.committed for p in group_lag(
            settings, settings.sink_group, settings.topics.candles) if p.committed)

    # The throttle holds every commit after the first until the outage (and the first
    # too on a host up for less than an hour: the interval counts from the clock's zero).
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
    try:
        wait_for(lambda: not failure and stored_sink_offsets(settings) == {0: 200}, 90,
                 "every candle written")
        assert kafka_committed() < 200, "the throttle let every commit through"
        stack.stop_postgres_immediately()
        try:
            produce_candles(settings, [("EUR/USD", candle_record("EUR/USD", T0, 2.0))])
            wait_for(lambda: not failure and sink.stats.db_failures >= 1, 60,
                     "the sink to find PostgreSQL down")
            # The throttle's interval passes while PostgreSQL is still down.
            monkeypatch.setattr(consumers.runtime, "KAFKA_COMMIT_INTERVAL_S", 0.0)
            wait_for(lambda: not failure and kafka_committed() == 200, 30,
                     "the offsets written before the outage in Kafka")
            assert sink.stats.db_failures >= 1 and thread.is_alive()
        finally:
            stack.start_postgres()
        wait_for(lambda: not failure and stored_sink_offsets(settings) == {0: 201}
                 and kafka_committed() == 201, 90, "the message of the outage written")
        assert db_candles(settings)[("EUR/USD", "1m", T0)]["close"] == 2.0
    finally:
        done.set()
        thread.join(60)
    assert not failure, failure
