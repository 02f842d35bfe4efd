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

import itertools
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
# Event time of the synthetic ticks: about 1,000 ticks/s over all symbols, a busy real
# market, so 1,000,000 ticks span some 17 minutes and bars roll over as they would live.
# Production itself is not paced.
EVENT_RATE = 1_000.0


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
        # One file per process: several workers of one group run side by side.
        config = env.workdir / f"{env.settings.worker_group}-{command}-{uuid.uuid4().hex[:6]}.yaml"
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
    report = run_synthetic(env.settings, symbols, rate=EVENT_RATE, duration_s=None, count=ticks,
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
        produced = run_synthetic(s, symbols, rate=EVENT_RATE, duration_s=None, count=ticks,
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
            workdir: Path, log: Any = print, latency_rate: float = 5_000,
            latency_s: float = 30.0, scale_ticks: int = 500_000,
            skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """All measurements in one run; ``skip`` names steps to leave out (peers, scale ...)."""
    symbols = list(_bench_symbols(base, symbol_count))
    base = base.model_copy(update={"symbols": tuple(symbols)})
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "ticks": ticks, "symbols": len(symbols), "frame_size": frame_size,
        "event_rate": EVENT_RATE,
    }
    envs: list[BenchEnv] = []

    def fresh(**kw: Any) -> BenchEnv:
        env = BenchEnv.fresh(base, workdir, **kw)
        envs.append(env)
        return env

    try:
        framed = fresh(frame_size=frame_size)
        log(f"1. producing {ticks:,} ticks over {len(symbols)} symbols, frames of {frame_size}")
        result["produce_framed"] = measure_produce(framed, ticks, symbols, frame_size, seed)
        unframed = fresh(frame_size=1)
        log("   ... and one tick per message")
        result["produce_unframed"] = measure_produce(unframed, ticks, symbols, 1, seed)
        log("2. bare confluent-kafka consumer + orjson on the framed topic")
        result["bare_consumer"] = measure_bare_consumer(framed, ticks)
        log("3. the candle agent (Faust worker) on the same topic")
        result["agent"] = measure_agent(framed, ticks)
        log("4. the sink alone, beside COPY into the same keyed table and into a bare one")
        result["sink"] = measure_sink(fresh(), 200_000, symbols)
        log("5. end to end: produce -> worker -> sink -> PostgreSQL")
        result["end_to_end"] = measure_end_to_end(fresh(frame_size=frame_size), ticks, symbols,
                                                  seed, expected_in_bars=result["agent"]["ticks"])
        log(f"   latency at a steady {latency_rate:,.0f} ticks/s for {latency_s:.0f} s")
        result["latency"] = measure_latency(fresh(), latency_rate, latency_s, symbols, seed)
        if "quix" not in skip:
            log("6. Quix Streams, 1m tumbling windows, on the unframed and the framed topic")
            result["quix"] = measure_quix(framed, framed, unframed, ticks)
        if "oldstyle" not in skip:
            log("7. the old approach: ticks in PostgreSQL, pandas resample per cycle")
            result["oldstyle"] = measure_oldstyle(fresh(), ticks, symbols, seed)
        if "scale" not in skip:
            result["scale"] = []
            for workers in (1, 2, 4):
                log(f"8. scale: {workers} worker(s), 12 partitions, {scale_ticks:,} ticks")
                result["scale"].append(measure_agent_scale(
                    fresh(partitions=12), workers, scale_ticks, symbols, seed))
            for count in (8, 28, 200):
                names = _bench_symbols(base, count)
                log(f"   scale: 1 worker, {count} symbols")
                env = BenchEnv.fresh(base.model_copy(update={"symbols": tuple(names)}), workdir)
                envs.append(env)
                result["scale"].append(measure_agent_scale(env, 1, scale_ticks, names, seed))
    finally:
        for env in envs:
            drop_database(env.settings.database_url)
    result["ratios"] = ratios(result)
    with open(RESULTS, "ab") as handle:
        handle.write(orjson.dumps(result) + b"\n")
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    out = {
        "agent_to_bare_consumer": result["agent"]["ticks_per_s"]
        / result["bare_consumer"]["ticks_per_s"],
        "sink_to_copy_keyed": result["sink"]["rows_per_s"]
        / result["sink"]["copy_keyed_rows_per_s"],
        "end_to_end_to_agent": result["end_to_end"]["ticks_per_s"]
        / result["agent"]["ticks_per_s"],
        "produce_framed_to_unframed": result["produce_framed"]["ticks_per_s"]
        / result["produce_unframed"]["ticks_per_s"],
    }
    if "quix" in result:
        for label in ("unframed", "framed"):
            out[f"agent_to_quix_{label}"] = result["agent"]["ticks_per_s"] / result["quix"][
                label]["ticks_per_s"]
    if "oldstyle" in result:
        out["agent_to_oldstyle"] = result["agent"]["ticks_per_s"] / result["oldstyle"][
            "ticks_per_s"]
    return out


def _bench_symbols(base: Settings, count: int) -> list[str]:
    from producers.synthetic import FX_PAIRS

    pool = list(dict.fromkeys([*FX_PAIRS, *base.symbols]))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    i = 0
    while len(pool) < count:  # made-up pairs beyond the real ones, for scale runs
        pool.append(f"Q{letters[i // 26 % 26]}{letters[i % 26]}/USD")
        i += 1
    return pool[:count]


# --- the sink -------------------------------------------------------------------------------------

_SINK_STOPPING = re.compile(r"candle sink stopping: (\d+) rows from (\d+) messages in (\d+) "
                            r"batches.*?; ([\d.]+) s between")
BENCH_TFS = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")


def candle_rows(count: int, symbols: list[str]) -> list[tuple[Any, ...]]:
    """Distinct (symbol, timeframe, ts_utc) rows in the sink's column order."""
    out = []
    base = 1_704_672_000_000
    n_sym = len(symbols)
    for i in range(count):
        sym = symbols[i % n_sym]
        tf = BENCH_TFS[(i // n_sym) % len(BENCH_TFS)]
        ts = base + (i // (n_sym * len(BENCH_TFS))) * 60_000
        price = 1.0 + (i % 997) * 1e-5
        out.append((sym, tf, ts, price, price + 1e-4, price - 1e-4, price, 1 + i % 50,
                    float(i % 7), "bench", True))
    return out


def measure_sink(env: BenchEnv, rows: int, symbols: list[str]) -> dict[str, float]:
    """The sink alone on a pre-filled candle topic, beside plain COPY of the same rows."""
    from confluent_kafka import Producer

    from consumers.candle_sink import COLUMNS
    from pipeline.db.migrate import migrate
    from producers.kafka_io import producer_config

    s = env.settings
    migrate(s)
    data = candle_rows(rows, symbols)
    producer = Producer(producer_config(s))
    # Frames of a symbol's bars, as the worker sends them (one per source message).
    frames: dict[str, list[dict[str, Any]]] = {}
    for row in data:
        frame = frames.setdefault(row[0], [])
        frame.append({"v": 1, **dict(zip(COLUMNS, row, strict=True))})
        if len(frame) == len(BENCH_TFS):
            while True:
                try:
                    producer.produce(s.topics.candles, key=row[0].encode(),
                                     value=orjson.dumps(frame))
                    break
                except BufferError:
                    producer.poll(0.05)
            frames[row[0]] = []
    producer.flush(120)

    sink = Service(env, "sink")
    try:
        wait_until(lambda: (sink.check(), total_lag(s, s.sink_group, s.topics.candles) == 0
                            and _sink_committed_any(s))[1], 900, "the sink to reach lag 0",
                   interval_s=0.5)
        peak = sink.peak_rss_mb()
    finally:
        log = sink.stop()
    match = _SINK_STOPPING.search(log)
    if not match:
        raise RuntimeError(f"no throughput line in the sink log:\n{log[-2000:]}")
    sink_rows, seconds = int(match[1]), float(match[4])

    copy_keyed = _copy_seconds(s.database_url, data, keyed=True)
    copy_plain = _copy_seconds(s.database_url, data, keyed=False)
    return {
        "rows": sink_rows, "seconds": seconds, "rows_per_s": sink_rows / seconds,
        "copy_keyed_rows_per_s": rows / copy_keyed, "copy_unindexed_rows_per_s": rows / copy_plain,
        "peak_rss_mb": peak,
    }


def _sink_committed_any(settings: Settings) -> bool:
    from pipeline.monitor import group_lag

    return any(p.committed for p in group_lag(settings, settings.sink_group,
                                              settings.topics.candles))


def _copy_seconds(url: str, data: list[tuple[Any, ...]], keyed: bool) -> float:
    from consumers.candle_sink import COLUMNS

    table = "bench_copy_keyed" if keyed else "bench_copy_plain"
    like = "INCLUDING ALL" if keyed else "INCLUDING DEFAULTS"
    with psycopg.connect(url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (LIKE market_data_candles {like})")
        conn.commit()
        started = time.monotonic()
        with conn.transaction(), conn.cursor().copy(
                f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        seconds = time.monotonic() - started
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return seconds


# --- latency at a steady rate ---------------------------------------------------------------------


def measure_latency(env: BenchEnv, rate: float, duration_s: float, symbols: list[str],
                    seed: int) -> dict[str, float]:
    """From a tick's produce to the moment its 1m bar's row in PostgreSQL counts it.

    The producer paces ticks at ``rate`` and notes the send time of each accepted tick
    (re-sent quotes count once, as in the worker) with its position in its bar. A
    poller reads the bars' tick counts every 10 ms; a tick has arrived once its bar's
    count reaches its position. The poll interval bounds the error (+0-10 ms).
    """
    import threading

    from pipeline.db.migrate import migrate
    s = env.settings
    migrate(s)
    worker, sink = Service(env, "worker"), Service(env, "sink")
    pending: dict[tuple[str, int], list[tuple[int, float]]] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def poll() -> None:
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            while not done.is_set():
                now = time.monotonic()
                try:
                    rows = conn.execute("SELECT symbol, ts_utc, tick_volume FROM "
                                        "market_data_candles WHERE timeframe = '1m'").fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                with lock:
                    for symbol, start, count in rows:
                        queue = pending.get((symbol, start))
                        while queue and queue[0][0] <= count:
                            latencies.append(now - queue.pop(0)[1])
                time.sleep(0.01)

    try:
        wait_until(lambda: (worker.check(), sink.check(), "assigned" in sink.log.read_text()
                            and "recovered candle state" in worker.log.read_text())[2],
                   120, "worker and sink to join their groups", interval_s=0.2)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        prev: dict[str, tuple[Any, ...]] = {}
        position: dict[tuple[str, int], int] = {}

        def note(tick: dict[str, Any]) -> None:
            quote = (tick["ts_ms"], tick.get("bid"), tick.get("ask"))
            if prev.get(tick["symbol"]) == quote:
                return  # a re-sent quote counts once, as in the worker
            prev[tick["symbol"]] = quote
            bar = (tick["symbol"], tick["ts_ms"] - tick["ts_ms"] % 60_000)
            position[bar] = position.get(bar, 0) + 1
            with lock:
                pending.setdefault(bar, []).append((position[bar], time.monotonic()))

        sent = run_synthetic(s, symbols, rate=rate, duration_s=duration_s, seed=seed,
                             paced=True, live_time=True, on_publish=note).ticks
        wait_until(lambda: not any(pending.values()), 120, "every tick to reach PostgreSQL")
        peaks = {"worker_peak_rss_mb": worker.peak_rss_mb(),
                 "sink_peak_rss_mb": sink.peak_rss_mb()}
    finally:
        done.set()
        worker.stop()
        sink.stop()
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    edges = [0, 10, 20, 30, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1e9]
    histogram = [sum(1 for x in ordered if lo <= x * 1000 < hi)
                 for lo, hi in itertools.pairwise(edges)]
    return {"rate": rate, "duration_s": duration_s, "ticks": sent, "samples": len(ordered),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": ordered[-1] * 1000, "histogram_edges_ms": edges[:-1],
            "histogram": histogram, **peaks}


# --- peers --------------------------------------------------------------------------------


def measure_quix(env: BenchEnv, framed_env: BenchEnv, unframed_env: BenchEnv,
                 expected_ticks: int) -> dict[str, Any]:
    """Quix Streams 1m tumbling-window OHLC on the same topics, in its own virtualenv."""
    from bench.peers.venvs import peer_python

    python = peer_python(env.workdir, "quix")
    script = Path(__file__).parent / "peers" / "quix_candles.py"
    out: dict[str, Any] = {}
    runs = (("unframed", unframed_env, []), ("framed", framed_env, ["--framed"]))
    for label, source, flag in runs:
        state = env.workdir / f"quix-state-{uuid.uuid4().hex[:6]}"
        proc = subprocess.run(
            [str(python), str(script), source.settings.kafka_bootstrap,
             source.settings.topics.ticks, str(expected_ticks), str(state), *flag],
            capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"quix peer ({label}) failed:\n{proc.stderr[-3000:]}")
        out[label] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return out


def measure_oldstyle(env: BenchEnv, ticks: int, symbols: list[str], seed: int) -> dict[str, Any]:
    """The polling + pandas approach on the same ticks, loaded into a tick table first."""
    from bench.peers.venvs import peer_python
    from producers.synthetic import SyntheticTicks

    python = peer_python(env.workdir, "oldstyle")
    with psycopg.connect(env.settings.database_url) as conn:
        conn.execute("CREATE TABLE market_data_ticks (symbol text, ts_utc bigint, price float8, "
                     "bid float8, ask float8, volume float8)")
        conn.execute("CREATE INDEX ON market_data_ticks (symbol, ts_utc)")
        with conn.cursor().copy("COPY market_data_ticks FROM STDIN") as copy:
            for t in SyntheticTicks(symbols, rate=EVENT_RATE, seed=seed).ticks(count=ticks):
                bid, ask = t.get("bid"), t.get("ask")
                price = (bid + ask) / 2 if bid and ask else (bid or ask)
                copy.write_row((t["symbol"], t["ts_ms"], price, bid, ask, t.get("volume")))
        conn.commit()
    script = Path(__file__).parent / "peers" / "oldstyle_candles.py"
    proc = subprocess.run([str(python), str(script), env.settings.database_url, "120000"],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"old-style peer failed:\n{proc.stderr[-3000:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


# --- scale --------------------------------------------------------------------------------

_SPAN = re.compile(r"candle worker stopping: \d+ messages, (\d+) ticks.*?\(monotonic ([\d.]+) to "
                   r"([\d.]+)\)")


def measure_agent_scale(env: BenchEnv, workers: int, ticks: int, symbols: list[str],
                        seed: int) -> dict[str, float]:
    """N workers in one group, joined before the ticks arrive; ticks/s over all of them
    from the first message any of them took to the last."""
    s = env.settings
    procs = [Service(env, "worker") for _ in range(workers)]
    try:
        wait_until(lambda: all((p.check(), "Worker ready" in p.log.read_text())[1]
                               for p in procs), 180, f"{workers} workers to be ready",
                   interval_s=0.3)
        wait_until(lambda: _group_members(s) == workers and _group_stable(s), 180,
                   "the worker group to settle", interval_s=0.3)
        time.sleep(1.0)  # let the last assignment's recovery finish before the ticks come
        run_synthetic(s, symbols, rate=EVENT_RATE, duration_s=None, count=ticks, seed=seed,
                      paced=False, live_time=False)
        wait_until(lambda: (all(p.check() is None for p in procs),
                            total_lag(s, s.worker_group, s.topics.ticks) == 0)[1], 900,
                   "the workers to reach lag 0", interval_s=0.5)
    finally:
        logs = [p.stop() for p in procs]
    spans = [m for m in (_SPAN.search(log) for log in logs) if m and float(m[2]) > 0]
    total = sum(int(m[1]) for m in spans)
    seconds = max(float(m[3]) for m in spans) - min(float(m[2]) for m in spans)
    return {"workers": workers, "partitions": s.partitions, "symbols": len(symbols),
            "ticks": total, "seconds": seconds, "ticks_per_s": total / seconds,
            "workers_that_worked": len(spans)}


def _group_members(settings: Settings) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.describe_consumer_groups([settings.worker_group], request_timeout=10)
    desc = futures[settings.worker_group].result(timeout=15)
    return len(desc.members)


def _group_stable(settings: Settings) -> bool:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.describe_consumer_groups([settings.worker_group], request_timeout=10)
    return futures[settings.worker_group].result(timeout=15).state == ConsumerGroupState.STABLE
