"""Running the real fxstream processes against the real stack, and reading what they wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.settings import Settings

FXSTREAM = str(Path(sys.executable).with_name("fxstream"))


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude={"external_stack"})
    path.write_text(yaml.safe_dump(data))
    return path


class Proc:
    """A running fxstream subcommand with its log file."""

    def __init__(self, settings: Settings, args: list[str], log: Path) -> None:
        config = write_config(settings, log.with_suffix(".yaml"))
        self.log = log
        self._log_handle = open(log, "ab")  # noqa: SIM115 - kept open for the process' life
        env = {k: v for k, v in os.environ.items()
               if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL") and not k.startswith("FXSTREAM_")}
        self.popen = subprocess.Popen([FXSTREAM, "--config", str(config), *args],
                                      stdout=self._log_handle, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout_s: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(30)
                raise AssertionError(f"did not stop on SIGTERM within {timeout_s} s; "
                                     f"log:\n{self.tail()}") from None
        self._log_handle.close()
        return self.popen.returncode

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_cli(settings: Settings, args: list[str], tmp: Path, timeout_s: float = 600
            ) -> subprocess.CompletedProcess[str]:
    config = write_config(settings, tmp / f"cli-{abs(hash(tuple(args)))}.yaml")
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL") and not k.startswith("FXSTREAM_")}
    return subprocess.run([FXSTREAM, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env)


def db_candles(settings: Settings) -> dict[tuple[str, str, int], dict[str, Any]]:
    from psycopg.rows import dict_row

    try:
        with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
            rows = conn.execute("SELECT * FROM market_data_candles").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {(r["symbol"], r["timeframe"], r["ts_utc"]): r for r in rows}


def read_topic(settings: Settings, topic: str, timeout_s: float = 20) -> list[tuple[bytes, Any]]:
    """Every message of ``topic`` from the beginning to its current end."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"reader-{os.getpid()}-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[tuple[bytes, Any]] = []
        done: set[int] = set()
        import time

        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error():
                    continue
                out.append((msg.key(), orjson.loads(msg.value())))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        assert len(done) == len(ends), f"could not read {topic} to its end"
        return out
    finally:
        consumer.close()


def committed_total(settings: Settings, group: str, topic: str) -> int:
    from pipeline.monitor import group_lag

    return sum(p.committed or 0 for p in group_lag(settings, group, topic))


# --- the sink on its own: candle messages produced directly, what the sink stored ----------------


def candle_record(symbol: str, ts_utc: int, close: float, *, timeframe: str = "1m",
                  version: tuple[int, int] | None = None, complete: bool = False,
                  tick_volume: int = 1, provider_source: str | None = "test") -> dict[str, Any]:
    """A well-formed candle message (schemas/candle.v1.json); ``version`` is
    (src_partition, src_offset), left out when None (as older workers send)."""
    record: dict[str, Any] = {
        "v": 1, "symbol": symbol, "timeframe": timeframe, "ts_utc": ts_utc, "open": close,
        "high": close, "low": close, "close": close, "tick_volume": tick_volume,
        "volume": float(tick_volume), "provider_source": provider_source, "complete": complete,
    }
    if version is not None:
        record["src_partition"], record["src_offset"] = version
    return record


def produce_candles(settings: Settings, messages: list[tuple[str, Any]],
                    partition: int | None = None) -> None:
    """Publish (key, value) pairs on the candle topic and wait until Kafka has them all."""
    from confluent_kafka import Producer

    from producers.kafka_io import producer_config

    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    for key, value in messages:
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(settings.topics.candles, key=key.encode(),
                                 value=orjson.dumps(value), **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0, "Kafka did not take every candle message"


def stored_sink_offsets(settings: Settings) -> dict[int, int]:
    """sink_offsets of the settings' sink group on the candle topic: partition -> next offset."""
    try:
        with psycopg.connect(settings.database_url) as conn:
            rows = conn.execute(
                "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s "
                "AND topic = %s", (settings.sink_group, settings.topics.candles)).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return {}
    return {int(p): int(o) for p, o in rows}


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end (high watermark) of ``topic``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"ends-{os.getpid()}"})
    try:
        meta = consumer.list_topics(topic, timeout=20).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1]
                for p in meta.partitions}
    finally:
        consumer.close()
