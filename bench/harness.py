"""`fxstream bench`: throughput of fxstream beside its ceilings, measured in one run.

Every figure of one run comes from the same machine at the same time, so the
ratios are what to read; absolute numbers move with the machine's load.

Measurements (each on fresh topics and a fresh database):
1. produce: synthetic ticks into the raw tick topic, framed and one tick per message;
2. bare consumer: confluent-kafka + orjson decoding every tick of the framed topic (ceiling);
3. candle agent: ticks/s through the Faust worker between its first and last message;
4. end to end: first produce to the last tick counted in PostgreSQL's 1m bars.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.monitor import total_lag
from pipeline.settings import Settings, Topics
from pipeline.topics import create_topics
from producers.synthetic_run import run_synthetic

RESULTS = Path(__file__).parent / "results.jsonl"


@dataclass
class BenchEnv:
    """Fresh topics, groups and database on the configured stack, for one measurement."""

    settings: Settings
    workdir: Path

    @classmethod
    def fresh(cls, base: Settings, workdir: Path, **overrides: Any) -> BenchEnv:
        tag = f"b{datetime.now(UTC):%m%d%H%M%S}{uuid.uuid4().hex[:4]}"
        url = _new_database(base.database_url, tag)
        topics = Topics(**{name: f"{tag}.{name}" for name in Topics.model_fields})
        values = {**base.model_dump(), "topics": topics, "database_url": url,
                  "worker_group": f"{tag}-worker", "sink_group": f"{tag}-sink",
                  "state_dir": workdir / tag, **overrides}
        settings = Settings(**values)
        workdir.mkdir(parents=True, exist_ok=True)
        create_topics(settings)
        return cls(settings, workdir)


def _new_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Service:
    """A worker or sink process for a measurement, with its log and peak memory."""

    def __init__(self, env: BenchEnv, command: str) -> None:
        config = env.workdir / f"{env.settings.worker_group}-{command}.yaml"
        config.write_text(yaml.safe_dump(env.settings.model_dump(mode="json",
                                                                 exclude={"external_stack"})))
        self.log = config.with_suffix(".log")
        exe = Path(sys.executable).with_name("fxstream")
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")
                   and not k.startswith("FXSTREAM_")}
        with open(self.log, "wb") as handle:
            self.proc = subprocess.Popen([str(exe), "--config", str(config), command],
                                         stdout=handle, stderr=subprocess.STDOUT, env=environ,
                                         start_new_session=True)

    def peak_rss_mb(self) -> float:
        """VmHWM: the process's peak resident memory so far."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return float("nan")

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text().splitlines()[-20:])
            raise RuntimeError(f"{self.log.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.log.read_text()


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval_s)
    raise TimeoutError(f"benchmark: timed out after {timeout_s:.0f} s waiting for {what}")


# --- the measurements ---------------------------------------------------------------------------


def measure_produce(env: BenchEnv, ticks: int, symbols: list[str], frame_size: int, seed: int
                    ) -> dict[str, float]:
    report = run_synthetic(env.settings, symbols, rate=100_000, duration_s=None, count=ticks,
                           seed=seed, paced=False, frame_size=frame_size, live_time=False)
    return {"ticks": report.ticks, "messages": report.messages, "seconds": report.seconds,
            "ticks_per_s": report.ticks / report.seconds}


def measure_bare_consumer(env: BenchEnv, expected_ticks: int) -> dict[str, float]:
    """The ceiling: read the tick topic with confluent-kafka, decode with orjson, fold."""
    topic = env.settings.topics.ticks
    consumer = Consumer({"bootstrap.servers": env.settings.kafka_bootstrap,
                         "group.id": f"bare-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    counted = 0
    last: dict[bytes, float] = {}
    loads = orjson.loads
    started = time.monotonic()
    while counted < expected_ticks:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error():
                continue
            value = loads(msg.value())
            frame = value if isinstance(value, list) else (value,)
            for tick in frame:  # a minimal fold: last mid per symbol
                bid, ask = tick.get("bid"), tick.get("ask")
                last[msg.key()] = (bid + ask) / 2 if bid and ask else (bid or ask)
            counted += len(frame)
        if time.monotonic() - started > 600:
            raise TimeoutError("bare consumer did not read every tick in 10 minutes")
    seconds = time.monotonic() - started
    consumer.close()
    return {"ticks": counted, "seconds": seconds, "ticks_per_s": counted / seconds}


_STOPPING = re.compile(r"candle worker stopping: (\d+) messages, (\d+) ticks.*?; ([\d.]+) s "
                       r"between the first and the last message")


def measure_agent(env: BenchEnv, expected_ticks: int) -> dict[str, float]:
    """The Faust worker alone on the pre-filled topic, from its first to its last message."""
    worker = Service(env, "worker")
    s = env.settings
    try:
        wait_until(lambda: (worker.check(), total_lag(s, s.worker_group, s.topics.ticks) == 0
                            and _committed_any(s))[1], 900, "the worker to reach lag 0",
                   interval_s=0.5)
        peak = worker.peak_rss_mb()
    finally:
        log = worker.stop()
    match = _STOPPING.search(log)
    if not match:
        raise RuntimeError(f"no throughput line in the worker log:\n{log[-2000:]}")
    messages, ticks, seconds = int(match[1]), int(match[2]), float(match[3])
    return {"messages": messages, "ticks": ticks, "seconds": seconds,
            "ticks_per_s": ticks / seconds if seconds else float("nan"),
            "ticks_produced": expected_ticks, "peak_rss_mb": peak}


def _committed_any(settings: Settings) -> bool:
    from pipeline.monitor import group_lag

    return any(p.committed for p in group_lag(settings, settings.worker_group,
                                              settings.topics.ticks))


def _counted_ticks(settings: Settings) -> int:
    try:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute("SELECT coalesce(sum(tick_volume), 0) FROM market_data_candles "
                               "WHERE timeframe = '1m'").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def measure_end_to_end(env: BenchEnv, ticks: int, symbols: list[str], seed: int,
                       expected_in_bars: int) -> dict[str, float]:
    """Worker and sink running and idle; then produce; stop the clock when PostgreSQL's
    1m bars count every accepted tick (the generator re-sends some quotes unchanged,
    which count once: ``expected_in_bars`` is what the agent run counted)."""
    from pipeline.db.migrate import migrate

    s = env.settings
    migrate(s)
    worker, sink = Service(env, "worker"), Service(env, "sink")
    try:
        wait_until(lambda: (worker.check(), sink.check(), "assigned" in sink.log.read_text()
                            and "recovered candle state" in worker.log.read_text())[2],
                   120, "worker and sink to join their groups", interval_s=0.2)
        started = time.monotonic()
        produced = run_synthetic(s, symbols, rate=100_000, duration_s=None, count=ticks,
                                 seed=seed, paced=False, live_time=False)
        produce_done = time.monotonic()
        finished = wait_until(lambda: (worker.check(), sink.check(),
                                       _counted_ticks(s) >= expected_in_bars)[2],
                              900, f"{expected_in_bars} ticks to be counted in PostgreSQL",
                              interval_s=0.1)
        counted = _counted_ticks(s)
        peaks = {"worker_peak_rss_mb": worker.peak_rss_mb(), "sink_peak_rss_mb":
                 sink.peak_rss_mb()}
    finally:
        worker.stop()
        sink.stop()
    seconds = finished - started
    return {"ticks": produced.ticks, "ticks_in_bars": counted, "seconds": seconds,
            "produce_seconds": produce_done - started, "ticks_per_s": produced.ticks / seconds,
            **peaks}


def run_all(base: Settings, ticks: int, symbol_count: int, frame_size: int, seed: int,
            workdir: Path, log: Any = print) -> dict[str, Any]:
    symbols = list(_bench_symbols(base, symbol_count))
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "ticks": ticks, "symbols": len(symbols), "frame_size": frame_size,
    }
    envs: list[BenchEnv] = []
    try:
        base = base.model_copy(update={"symbols": tuple(symbols)})
        framed = BenchEnv.fresh(base, workdir, frame_size=frame_size)
        envs.append(framed)
        log(f"1. producing {ticks:,} ticks over {len(symbols)} symbols, frames of {frame_size}")
        result["produce_framed"] = measure_produce(framed, ticks, symbols, frame_size, seed)
        unframed = BenchEnv.fresh(base, workdir, frame_size=1)
        envs.append(unframed)
        log("   ... and one tick per message")
        result["produce_unframed"] = measure_produce(unframed, ticks, symbols, 1, seed)
        log("2. bare confluent-kafka consumer + orjson on the framed topic")
        result["bare_consumer"] = measure_bare_consumer(framed, ticks)
        log("3. the candle agent (Faust worker) on the same topic")
        result["agent"] = measure_agent(framed, ticks)
        e2e = BenchEnv.fresh(base, workdir, frame_size=frame_size)
        envs.append(e2e)
        log("4. end to end: produce -> worker -> sink -> PostgreSQL")
        result["end_to_end"] = measure_end_to_end(e2e, ticks, symbols, seed,
                                                  expected_in_bars=result["agent"]["ticks"])
    finally:
        for env in envs:
            drop_database(env.settings.database_url)
    result["ratios"] = {
        "agent_to_bare_consumer": result["agent"]["ticks_per_s"]
        / result["bare_consumer"]["ticks_per_s"],
        "end_to_end_to_agent": result["end_to_end"]["ticks_per_s"]
        / result["agent"]["ticks_per_s"],
        "produce_framed_to_unframed": result["produce_framed"]["ticks_per_s"]
        / result["produce_unframed"]["ticks_per_s"],
    }
    with open(RESULTS, "ab") as handle:
        handle.write(orjson.dumps(result) + b"\n")
    return result


def _bench_symbols(base: Settings, count: int) -> list[str]:
    from producers.synthetic import FX_PAIRS

    pool = list(dict.fromkeys([*FX_PAIRS, *base.symbols]))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    i = 0
    while len(pool) < count:  # made-up pairs beyond the real ones, for scale runs
        pool.append(f"Q{letters[i // 26 % 26]}{letters[i % 26]}/USD")
        i += 1
    return pool[:count]
