"""`fxstream bench`: throughput of fxstream beside its ceilings, measured in one run.

Every figure of one run comes from the same machine at the same time, so the
ratios are what to read; absolute numbers move with the machine's load.

Measurements (each on fresh topics and a fresh database):
1. produce: synthetic ticks into the raw tick topic, framed and one tick per message;
2. bare consumer: confluent-kafka + orjson decoding every tick of the framed topic (ceiling);
3. candle agent: ticks/s through the Faust worker between its first and last message;
4. end to end: first produce to the last tick counted in PostgreSQL's 1m bars;
then latency at a steady rate (several runs, each one's p50 and p99), the peers (Quix
Streams, the old pandas approach), scale (workers and symbols, ticks produced while the
workers run, and a backlog drained by 1, 2 and 4 workers started at once) and failover
(kill -9 of one of two workers: seconds until its symbols' bars move again in PostgreSQL).
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.core.candles import FOLD_LOOP
from pipeline.monitor import group_lag, total_lag
from pipeline.settings import Settings, Topics
from pipeline.topics import create_topics
from producers.synthetic import SyntheticTicks
from producers.synthetic_run import publish_ticks, run_synthetic

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
    tag: str = ""  # in the name of every topic, group and database of this measurement

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
        return cls(settings, workdir, tag)

    def remove(self) -> None:
        """Drop its database and delete its topics (its own, the workers' changelogs and
        the peers' internal ones all carry the tag). Topics left behind burden the
        broker: the embedded one had gathered 12,000 partitions of earlier runs."""
        drop_database(self.settings.database_url)
        if self.tag:
            delete_topics_tagged(self.settings, self.tag)


def delete_topics_tagged(settings: Settings, tag: str, timeout_s: float = 60.0) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if tag in t]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=timeout_s).values():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # already gone, or the broker is busy: say so, go on
            print(f"bench: deleting a topic of {tag} failed: {exc}", file=sys.stderr)


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

    def __init__(self, env: BenchEnv, command: str, *args: str, module: str | None = None
                 ) -> None:
        """``fxstream <command> <args>``, or with ``module`` ``python -m <module>
        <config>`` (the latency ceiling's worker)."""
        # One file per process: several workers of one group run side by side.
        config = env.workdir / f"{env.settings.worker_group}-{command}-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump(env.settings.model_dump(mode="json",
                                                                 exclude={"external_stack"})))
        self.log = config.with_suffix(".log")
        if module and args:
            raise ValueError("a module's process takes its config file only")
        exe = Path(sys.executable).with_name("fxstream")
        argv = ([sys.executable, "-m", module, str(config)] if module else
                [str(exe), "--config", str(config), command, *args])
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL")
                   and not k.startswith("FXSTREAM_")}
        with open(self.log, "wb") as handle:
            self.proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=environ,
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


def generated_ticks(symbols: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    """The synthetic ticks of a measurement, made before its clock starts: the generator
    stands in for a market feed, and its cost is not the pipeline's."""
    return list(SyntheticTicks(symbols, rate=EVENT_RATE, seed=seed).ticks(count=count))


def measure_produce(env: BenchEnv, ticks: int, symbols: list[str], frame_size: int, seed: int
                    ) -> dict[str, float]:
    report = publish_ticks(env.settings, generated_ticks(symbols, ticks, seed), frame_size)
    return {"ticks": report.ticks, "messages": report.messages, "seconds": report.seconds,
            "ticks_per_s": report.ticks / report.seconds}


def bare_read(settings: Settings, topic: str, expected: int,
              fold_frame: Callable[[bytes, list[Any]], None], what: str
              ) -> tuple[int, float, float]:
    """A ceiling: read ``topic`` with confluent-kafka from the start, decode each message
    with orjson and hand its frame to ``fold_frame(key, items)`` until ``expected``
    items; returns (items, seconds from the first message to the last, seconds until
    the first message), timed as the agents are."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"bare-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    counted = 0
    loads = orjson.loads
    started = time.monotonic()
    first: float | None = None
    while counted < expected:
        # Take each message as soon as it is there: consume(n, timeout) alone would
        # wait out its timeout whenever fewer than n messages are left.
        head = consumer.poll(1.0)
        batch = [] if head is None else [head, *consumer.consume(9_999, 0)]
        for msg in batch:
            if msg.error():
                continue
            if first is None:
                first = time.monotonic()
            value = loads(msg.value())
            frame = value if isinstance(value, list) else [value]
            fold_frame(msg.key(), frame)
            counted += len(frame)
        if time.monotonic() - started > 600:
            raise TimeoutError(f"bare consumer did not read every {what} in 10 minutes")
    finished = time.monotonic()
    consumer.close()
    first = finished if first is None else first
    return counted, finished - first, first - started


def measure_bare_consumer(env: BenchEnv, expected_ticks: int) -> dict[str, float]:
    """The ceiling: read the tick topic with confluent-kafka, decode with orjson, fold."""
    last: dict[bytes, float] = {}

    def last_mid(key: bytes, frame: list[Any]) -> None:  # a minimal fold
        for tick in frame:
            bid, ask = tick.get("bid"), tick.get("ask")
            last[key] = (bid + ask) / 2 if bid and ask else (bid or ask)

    counted, seconds, first_s = bare_read(env.settings, env.settings.topics.ticks,
                                          expected_ticks, last_mid, "tick")
    return {"ticks": counted, "seconds": seconds, "ticks_per_s": counted / seconds,
            "first_message_s": first_s}


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
        data = generated_ticks(symbols, ticks, seed)
        started = time.monotonic()
        produced = publish_ticks(s, data)
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


# Steps that ``skip`` can leave out; "core" is produce, bare consumer, agent, sink and end
# to end (the topics of its produce step feed quix too).
STEPS = ("core", "dom", "latency", "ceiling", "quix", "oldstyle", "scale", "failover", "sentiment")


def run_all(base: Settings, ticks: int, symbol_count: int, frame_size: int, seed: int,
            workdir: Path, log: Any = print, latency_rate: float = 5_000,
            latency_s: float = 30.0, latency_runs: int = 5, scale_ticks: int = 500_000,
            backlog_ticks: int = 2_000_000, dom_snapshots: int = 200_000,
            failover_rate: float = 5_000, failover_timeouts: tuple[float, ...] = (10.0, 6.0),
            failover_settle_s: float = 8.0,
            skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """All measurements in one run; ``skip`` names steps (``STEPS``) to leave out."""
    unknown = set(skip) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; the steps are {', '.join(STEPS)}")
    if "failover" not in skip:  # before the long steps, not after them
        floor = broker_min_session_timeout_s(base)
        too_low = [t for t in failover_timeouts if t < floor]
        if too_low:
            raise ValueError(f"session timeouts {too_low} are below the broker's "
                             f"group.min.session.timeout.ms ({floor:g} s)")
    symbols = list(_bench_symbols(base, symbol_count))
    base = base.model_copy(update={"symbols": tuple(symbols)})
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "python_loop_s": python_loop_seconds(),
                    "candle_fold": FOLD_LOOP},
        "ticks": ticks, "symbols": len(symbols), "frame_size": frame_size,
        "event_rate": EVENT_RATE, "skipped": sorted(skip),
        # the lingers set the latency step's floor and its message count
        "frame_linger_ms": base.frame_linger_ms, "worker_linger_ms": base.worker_linger_ms,
    }
    envs: list[BenchEnv] = []
    timings: dict[str, float] = {}

    def fresh(**kw: Any) -> BenchEnv:
        env = BenchEnv.fresh(base, workdir, **kw)
        envs.append(env)
        return env

    @contextmanager
    def step(name: str) -> Iterator[None]:
        """Times a step (seconds in result["step_seconds"])."""
        started = time.monotonic()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.monotonic() - started

    try:
        if "core" not in skip or "quix" not in skip:
            with step("core"):
                framed = fresh(frame_size=frame_size)
                log(f"1. producing {ticks:,} ticks over {len(symbols)} symbols, "
                    f"frames of {frame_size}")
                result["produce_framed"] = measure_produce(framed, ticks, symbols, frame_size,
                                                           seed)
                unframed = fresh(frame_size=1)
                log("   ... and one tick per message")
                result["produce_unframed"] = measure_produce(unframed, ticks, symbols, 1, seed)
        if "core" not in skip:
            with step("core"):
                log("2. bare confluent-kafka consumer + orjson on the framed topic")
                result["bare_consumer"] = measure_bare_consumer(framed, ticks)
                log("3. the candle agent (Faust worker) on the same topic")
                result["agent"] = measure_agent(framed, ticks)
                log("4. the sink alone, beside COPY into the same keyed table and into a bare "
                    "one")
                result["sink"] = measure_sink(fresh, 200_000, symbols)
                log("5. end to end: produce -> worker -> sink -> PostgreSQL")
                result["end_to_end"] = measure_end_to_end(
                    fresh(frame_size=frame_size), ticks, symbols, seed,
                    expected_in_bars=result["agent"]["ticks"])
        if "dom" not in skip:
            with step("dom"):
                log("5b. DOM: produce book snapshots, a bare consumer, the DOM agent, and "
                    "the DOM path end to end")
                result["dom"] = measure_dom(fresh, dom_snapshots, symbols, seed)
        for name, key, ceiling, what in (
                ("latency", "latency", False, "6. latency"),
                ("ceiling", "latency_ceiling", True, "6b. latency ceiling: the fold on a plain "
                 "librdkafka loop (no Faust, no changelog)")):
            if name not in skip:
                with step(name):
                    runs = []
                    for i in range(latency_runs):
                        log(f"{what} at a steady {latency_rate:,.0f} ticks/s for "
                            f"{latency_s:.0f} s, run {i + 1} of {latency_runs}")
                        runs.append(measure_latency(fresh(), latency_rate, latency_s, symbols,
                                                    seed, ceiling=ceiling))
                    result[key] = summarize_latency(runs)
        if "quix" not in skip:
            with step("quix"):
                log("7. Quix Streams, 1m tumbling windows, on the unframed and the framed topic")
                result["quix"] = measure_quix(framed, framed, unframed, ticks)
        if "oldstyle" not in skip:
            with step("oldstyle"):
                log("8. the old approach: ticks in PostgreSQL, pandas resample per cycle")
                result["oldstyle"] = measure_oldstyle(fresh(), ticks, symbols, seed)
        if "scale" not in skip:
            with step("scale"):
                result["scale"] = []
                for workers in (1, 2, 4):
                    log(f"9. scale: {workers} worker(s), 12 partitions, {scale_ticks:,} ticks "
                        "produced while they run")
                    result["scale"].append(measure_agent_scale(
                        fresh(partitions=12), workers, scale_ticks, symbols, seed))
                for count in (8, 28, 200):
                    names = _bench_symbols(base, count)
                    log(f"   scale: 1 worker, {count} symbols")
                    env = BenchEnv.fresh(base.model_copy(update={"symbols": tuple(names)}),
                                         workdir)
                    envs.append(env)
                    result["scale"].append(measure_agent_scale(env, 1, scale_ticks, names, seed))
                result["scale_backlog"] = []
                for workers in (1, 2, 4):
                    log(f"   scale: a backlog of {backlog_ticks:,} ticks in 12 partitions, "
                        f"then {workers} worker(s) started at once")
                    result["scale_backlog"].append(measure_backlog_drain(
                        fresh(partitions=12), workers, backlog_ticks, symbols, seed))
        if "failover" not in skip:
            with step("failover"):
                result["failover"] = []
                for timeout in failover_timeouts:
                    log(f"10. failover: 2 workers at {failover_rate:,.0f} ticks/s, kill -9 of "
                        f"one, session timeout {timeout:g} s")
                    result["failover"].append(measure_failover(
                        fresh(session_timeout_s=timeout), failover_rate, symbols, seed,
                        settle_s=failover_settle_s))
        if "sentiment" not in skip:
            with step("sentiment"):
                log(f"11. the sentiment agent (Faust worker) on {SENTIMENT_OBSERVATIONS:,} "
                    "positioning observations, one every 30 s per symbol")
                result["sentiment_agent"] = measure_sentiment_agent(
                    fresh(), SENTIMENT_OBSERVATIONS, symbols, seed, frame_size)
    finally:
        for env in envs:
            env.remove()
    result["step_seconds"] = timings
    result["ratios"] = ratios(result)
    with open(RESULTS, "ab") as handle:
        handle.write(orjson.dumps(result) + b"\n")
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "agent" in result:
        out.update({
            "agent_to_bare_consumer": result["agent"]["ticks_per_s"]
            / result["bare_consumer"]["ticks_per_s"],
            "sink_to_copy_keyed": result["sink"]["rows_per_s"]
            / result["sink"]["copy_keyed_rows_per_s"],
            "end_to_end_to_agent": result["end_to_end"]["ticks_per_s"]
            / result["agent"]["ticks_per_s"],
        })
    if "dom" in result:
        dom = result["dom"]
        out["dom_agent_to_bare_consumer"] = (dom["agent"]["snapshots_per_s"]
                                             / dom["bare_consumer"]["snapshots_per_s"])
        out["dom_end_to_end_to_agent"] = (dom["end_to_end"]["snapshots_per_s"]
                                          / dom["agent"]["snapshots_per_s"])
    if "produce_framed" in result:
        out["produce_framed_to_unframed"] = result["produce_framed"]["ticks_per_s"] / result[
            "produce_unframed"]["ticks_per_s"]
    if "quix" in result and "agent" in result:
        for label in ("unframed", "framed"):
            out[f"agent_to_quix_{label}"] = result["agent"]["ticks_per_s"] / result["quix"][
                label]["ticks_per_s"]
    if "oldstyle" in result and "agent" in result:
        out["agent_to_oldstyle"] = result["agent"]["ticks_per_s"] / result["oldstyle"][
            "ticks_per_s"]
    if "latency" in result and "runs" in result["latency"]:
        lat = result["latency"]
        out["latency_p99_max_to_min"] = lat["p99_max_ms"] / lat["p99_min_ms"]
        if "latency_ceiling" in result:
            out["latency_p99_max_to_ceiling"] = (lat["p99_max_ms"]
                                                 / result["latency_ceiling"]["p99_max_ms"])
    backlog = {r["workers"]: r for r in result.get("scale_backlog", [])}
    if 1 in backlog:
        for n, r in backlog.items():
            if n != 1:  # speed-up of the drain over one worker: 1 s / N s
                out[f"backlog_drain_{n}_workers_speedup"] = backlog[1]["drain_s"] / r["drain_s"]
    for run in result.get("failover", []):
        t = run["session_timeout_s"]
        out[f"failover_max_to_session_timeout_{t:g}s"] = run["recovery_max_s"] / t
    return out


def python_loop_seconds(runs: int = 3) -> float:
    """Seconds for a fixed pure-Python loop (the median of ``runs``): how fast this
    machine's core ran the interpreter that day. The shared machine's speed moves from
    day to day, and every figure of a run moves with it."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        total = 0
        for i in range(5_000_000):
            total += i * i
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


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
    """Distinct (symbol, timeframe, ts_utc) rows in the sink's column order (with the
    version columns)."""
    out = []
    base = 1_704_672_000_000
    n_sym = len(symbols)
    for i in range(count):
        sym = symbols[i % n_sym]
        tf = BENCH_TFS[(i // n_sym) % len(BENCH_TFS)]
        ts = base + (i // (n_sym * len(BENCH_TFS))) * 60_000
        price = 1.0 + (i % 997) * 1e-5
        # versioned as the worker sends them: the source partition and offset
        out.append((sym, tf, ts, price, price + 1e-4, price - 1e-4, price, 1 + i % 50,
                    float(i % 7), "bench", True, i % n_sym % 12, i))
    return out


def measure_sink(fresh: Callable[..., BenchEnv], rows: int, symbols: list[str],
                 runs: int = 3) -> dict[str, Any]:
    """The sink alone on a pre-filled candle topic, beside plain COPY of the same rows.

    Both sides are medians of three: the sink's own time swings by a fifth from run to
    run and COPY's by a third (checkpoints, the page cache), so one run of either made
    the ratio move by 0.1. Each sink run gets a fresh topic and database."""
    data = candle_rows(rows, symbols)
    envs = [fresh() for _ in range(runs)]
    measured = [_sink_once(env, data) for env in envs]
    by_rate = sorted(measured, key=lambda m: m["rows_per_s"])
    median = by_rate[len(by_rate) // 2]
    url = envs[-1].settings.database_url  # COPY makes tables like its candle table
    keyed = sorted(rows / _copy_seconds(url, data, keyed=True) for _ in range(3))
    plain = sorted(rows / _copy_seconds(url, data, keyed=False) for _ in range(3))
    return {
        **median, "runs_rows_per_s": [m["rows_per_s"] for m in measured],
        "copy_keyed_rows_per_s": keyed[1], "copy_keyed_runs_rows_per_s": keyed,
        "copy_unindexed_rows_per_s": plain[1],
        "peak_rss_mb": max(m["peak_rss_mb"] for m in measured),
    }


def _sink_once(env: BenchEnv, data: list[tuple[Any, ...]]) -> dict[str, float]:
    """One sink run: ``data`` produced as the worker frames it, then consumed to lag 0."""
    from confluent_kafka import Producer

    from consumers.candle_sink import WRITE_COLUMNS
    from pipeline.db.migrate import migrate
    from producers.kafka_io import producer_config

    s = env.settings
    migrate(s)
    producer = Producer(producer_config(s))
    # Frames of a symbol's bars, as the worker sends them (one per source message).
    frames: dict[str, list[dict[str, Any]]] = {}
    for row in data:
        frame = frames.setdefault(row[0], [])
        frame.append({"v": 1, **dict(zip(WRITE_COLUMNS, row, strict=True))})
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
    return {"rows": sink_rows, "seconds": seconds, "rows_per_s": sink_rows / seconds,
            "peak_rss_mb": peak}


def _sink_committed_any(settings: Settings) -> bool:
    from pipeline.monitor import group_lag

    return any(p.committed for p in group_lag(settings, settings.sink_group,
                                              settings.topics.candles))


def _copy_seconds(url: str, data: list[tuple[Any, ...]], keyed: bool) -> float:
    from consumers.candle_sink import WRITE_COLUMNS

    table = "bench_copy_keyed" if keyed else "bench_copy_plain"
    like = "INCLUDING ALL" if keyed else "INCLUDING DEFAULTS"
    with psycopg.connect(url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (LIKE market_data_candles {like})")
        conn.commit()
        started = time.monotonic()
        with conn.transaction(), conn.cursor().copy(
                f"COPY {table} ({', '.join(WRITE_COLUMNS)}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        seconds = time.monotonic() - started
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return seconds


# --- DOM metrics --------------------------------------------------------------------------------

_DOM_STOPPING = re.compile(r"dom worker stopping: (\d+) messages, (\d+) snapshots.*?; ([\d.]+) s "
                           r"between the first and the last message")
DOM_TABLES = "dom_metrics,market_depth"


def generated_books(symbols: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic book snapshots (one per synthetic tick, up to 10 levels a side), made
    before the clock starts."""
    from producers.synthetic_book import SyntheticBooks

    return list(SyntheticBooks(symbols, rate=EVENT_RATE, seed=seed).books(count=count))


def publish_books(settings: Settings, books: list[dict[str, Any]]) -> dict[str, float]:
    """Framed as the producers frame them, as fast as the producer goes."""
    from producers.book_publisher import BookPublisher

    publisher = BookPublisher(settings)
    started = time.monotonic()
    for n, book in enumerate(books, 1):
        publisher.publish(book["symbol"], book)
        if n % 2048 == 0:
            publisher.tick()
    publisher.flush()
    seconds = time.monotonic() - started
    return {"snapshots": len(books), "messages": publisher.sent_messages, "seconds": seconds,
            "snapshots_per_s": len(books) / seconds}


def measure_dom(fresh: Callable[..., BenchEnv], count: int, symbols: list[str], seed: int
                ) -> dict[str, Any]:
    """The DOM path beside its ceiling: a bare consumer (orjson and the best levels'
    mid per symbol) on the framed DOM topic, the DOM agent alone on the same topic,
    then produce -> worker -> DOM sinks -> PostgreSQL."""
    from pipeline.db.migrate import migrate

    books = generated_books(symbols, count, seed)
    env = fresh()
    s = env.settings
    produced = publish_books(s, books)
    bare = _bare_dom_consumer(s, count)
    worker = Service(env, "worker")
    try:
        wait_until(lambda: (worker.check(), total_lag(s, s.worker_group, s.topics.dom) == 0
                            and any(p.committed for p in group_lag(s, s.worker_group,
                                                                   s.topics.dom)))[1],
                   900, "the DOM agent to reach lag 0", interval_s=0.5)
        peak = worker.peak_rss_mb()
    finally:
        log = worker.stop()
    match = _DOM_STOPPING.search(log)
    if not match:
        raise RuntimeError(f"no DOM throughput line in the worker log:\n{log[-2000:]}")
    accepted, seconds = int(match[2]), float(match[3])
    agent = {"messages": int(match[1]), "snapshots": accepted, "seconds": seconds,
             "snapshots_per_s": accepted / seconds if seconds else float("nan"),
             "peak_rss_mb": peak}

    env = fresh()
    s = env.settings
    migrate(s)
    worker, sink = Service(env, "worker"), Service(env, "sink", "--table", DOM_TABLES)
    try:
        _wait_joined(worker, sink)
        started = time.monotonic()
        publish_books(s, books)
        finished = wait_until(lambda: (worker.check(), sink.check(),
                                       _counted_updates(s) >= accepted)[2],
                              900, f"{accepted} snapshots to be counted in dom_metrics",
                              interval_s=0.1)
        counted = _counted_updates(s)
        peaks = {"worker_peak_rss_mb": worker.peak_rss_mb(),
                 "sink_peak_rss_mb": sink.peak_rss_mb()}
    finally:
        worker.stop()
        sink.stop()
    e2e_seconds = finished - started
    return {"produce": produced, "bare_consumer": bare, "agent": agent,
            "end_to_end": {"snapshots": count, "snapshots_in_bars": counted,
                           "seconds": e2e_seconds, "snapshots_per_s": count / e2e_seconds,
                           **peaks}}


def _bare_dom_consumer(settings: Settings, expected: int) -> dict[str, float]:
    mid: dict[bytes, float] = {}

    def best_mid(key: bytes, frame: list[Any]) -> None:  # a minimal fold
        for book in frame:
            bids, asks = book["bids"], book["asks"]
            if bids and asks:
                mid[key] = (bids[0][0] + asks[0][0]) / 2

    counted, seconds, first_s = bare_read(settings, settings.topics.dom, expected, best_mid,
                                          "snapshot")
    return {"snapshots": counted, "seconds": seconds, "snapshots_per_s": counted / seconds,
            "first_message_s": first_s}


def _counted_updates(settings: Settings) -> int:
    """Snapshots counted in the 1m DOM bars (each bar's ``updates``)."""
    try:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute("SELECT coalesce(sum(updates), 0) FROM dom_metrics "
                               "WHERE timeframe = '1m'").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


# --- latency at a steady rate ---------------------------------------------------------------------


class _Arrivals:
    """When each accepted tick's 1m bar in PostgreSQL counts it.

    The producer calls ``note`` with each tick it publishes; it keeps the send time of
    each accepted tick (re-sent quotes count once, as in the worker) with its position in
    its bar. A poller reads the bars' tick counts every 10 ms; a tick has arrived once its
    bar's count reaches its position. The poll interval bounds the error (+0-10 ms).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.arrived: list[tuple[str, float, float]] = []  # symbol, sent, arrived (monotonic)
        self._pending: dict[tuple[str, int], list[tuple[int, float]]] = {}
        self._prev: dict[str, tuple[Any, ...]] = {}
        self._position: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._done.set()
        if self._poller.is_alive():
            self._poller.join(10)

    def note(self, tick: dict[str, Any]) -> None:
        quote = (tick["ts_ms"], tick.get("bid"), tick.get("ask"))
        if self._prev.get(tick["symbol"]) == quote:
            return  # a re-sent quote counts once, as in the worker
        self._prev[tick["symbol"]] = quote
        bar = (tick["symbol"], tick["ts_ms"] - tick["ts_ms"] % 60_000)
        self._position[bar] = self._position.get(bar, 0) + 1
        with self._lock:
            self._pending.setdefault(bar, []).append((self._position[bar], time.monotonic()))

    def waiting(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self._pending.values())

    def oldest_waiting_s(self) -> float:
        """Age of the oldest tick sent and not yet in PostgreSQL (0 when none waits)."""
        with self._lock:
            heads = [queue[0][1] for queue in self._pending.values() if queue]
        return time.monotonic() - min(heads) if heads else 0.0

    def snapshot(self, start: int = 0) -> list[tuple[str, float, float]]:
        with self._lock:
            return self.arrived[start:]

    def _poll(self) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            while not self._done.is_set():
                now = time.monotonic()
                try:
                    rows = conn.execute("SELECT symbol, ts_utc, tick_volume FROM "
                                        "market_data_candles WHERE timeframe = '1m'").fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                with self._lock:
                    for symbol, start, count in rows:
                        queue = self._pending.get((symbol, start))
                        while queue and queue[0][0] <= count:
                            self.arrived.append((symbol, queue.pop(0)[1], now))
                time.sleep(0.01)


def _wait_joined(worker: Service, sink: Service) -> None:
    wait_until(lambda: (worker.check(), sink.check(), "assigned" in sink.log.read_text()
                        and "recovered candle state" in worker.log.read_text())[2],
               120, "worker and sink to join their groups", interval_s=0.2)


LATENCY_EDGES_MS = [0, 10, 20, 30, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1e9]


def measure_latency(env: BenchEnv, rate: float, duration_s: float, symbols: list[str],
                    seed: int, ceiling: bool = False) -> dict[str, float]:
    """From a tick's produce to the moment its 1m bar's row in PostgreSQL counts it, at a
    steady ``rate`` of live ticks (see ``_Arrivals``). With ``ceiling`` the worker is
    ``bench.latency_ceiling_worker``: the same fold without Faust or a changelog."""
    from pipeline.db.migrate import migrate
    s = env.settings
    migrate(s)
    worker = Service(env, "worker", module="bench.latency_ceiling_worker" if ceiling else None)
    sink = Service(env, "sink")
    arrivals = _Arrivals(s)
    try:
        _wait_joined(worker, sink)
        arrivals.start()
        report = run_synthetic(s, symbols, rate=rate, duration_s=duration_s, seed=seed,
                               paced=True, live_time=True, on_publish=arrivals.note)
        sent = report.ticks
        wait_until(lambda: arrivals.waiting() == 0, 120, "every tick to reach PostgreSQL")
        peaks = {"worker_peak_rss_mb": worker.peak_rss_mb(),
                 "sink_peak_rss_mb": sink.peak_rss_mb()}
    finally:
        arrivals.stop()
        worker_log = worker.stop()
        sink.stop()
    # Whether the worker kept up: a worker slower than the stream applies it over a
    # longer span than it was produced in, and the figures below then measure its
    # backlog rather than the pipeline's latency.
    match = _STOPPING.search(worker_log)
    worker_s = float(match[3]) if match else float("nan")
    ordered = sorted(arrived - sent_at for _, sent_at, arrived in arrivals.arrived)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    edges = LATENCY_EDGES_MS
    histogram = [sum(1 for x in ordered if lo <= x * 1000 < hi)
                 for lo, hi in itertools.pairwise(edges)]
    return {"rate": rate, "duration_s": duration_s, "ticks": sent, "samples": len(ordered),
            "messages": report.messages, "produced_s": report.seconds,
            "worker_s": worker_s, "worker_to_produced": worker_s / report.seconds,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": ordered[-1] * 1000, "histogram_edges_ms": edges[:-1],
            "histogram": histogram, **peaks}


def summarize_latency(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several latency runs side by side: each run's figures and their spread, no single
    figure (one run on a shared 2-core machine moves by tens of ms)."""
    p50s = [r["p50_ms"] for r in runs]
    p99s = [r["p99_ms"] for r in runs]
    return {
        "rate": runs[0]["rate"], "duration_s": runs[0]["duration_s"], "runs": runs,
        "p50s_ms": p50s, "p99s_ms": p99s,
        "p50_min_ms": min(p50s), "p50_max_ms": max(p50s),
        "p99_min_ms": min(p99s), "p99_max_ms": max(p99s),
        "max_ms": max(r["max_ms"] for r in runs),
        "worker_to_produced_max": max(r["worker_to_produced"] for r in runs),
        "histogram_edges_ms": runs[0]["histogram_edges_ms"],
        "histogram": [sum(col) for col in zip(*(r["histogram"] for r in runs), strict=True)],
        "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in runs),
        "sink_peak_rss_mb": max(r["sink_peak_rss_mb"] for r in runs),
    }


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
        data = generated_ticks(symbols, ticks, seed)
        time.sleep(1.0)  # let the last assignment's recovery finish before the ticks come
        publish_ticks(s, data)
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


def _describe_group(settings: Settings, group: str | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    group = group or settings.worker_group
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.describe_consumer_groups([group], request_timeout=10)
    return futures[group].result(timeout=15)


def _group_members(settings: Settings) -> int:
    return len(_describe_group(settings).members)


def _group_stable(settings: Settings) -> bool:
    from confluent_kafka import ConsumerGroupState

    return _describe_group(settings).state == ConsumerGroupState.STABLE


def measure_backlog_drain(env: BenchEnv, workers: int, ticks: int, symbols: list[str],
                          seed: int) -> dict[str, Any]:
    """A backlog first (no worker running), then N workers started at once: seconds from
    their launch to lag 0 (start-up, joining and rebalancing included), and each worker's
    rate from its own first to last message."""
    s = env.settings
    run_synthetic(s, symbols, rate=EVENT_RATE, duration_s=None, count=ticks, seed=seed,
                  paced=False, live_time=False)
    launched = time.monotonic()
    procs = [Service(env, "worker") for _ in range(workers)]
    try:
        drained = wait_until(lambda: (all(p.check() is None for p in procs),
                                      total_lag(s, s.worker_group, s.topics.ticks) == 0)[1],
                             900, f"{workers} worker(s) to drain the backlog", interval_s=0.25)
    finally:
        logs = [p.stop() for p in procs]
    per_worker = []
    for log in logs:
        stopping, span = _STOPPING.search(log), _SPAN.search(log)
        if not stopping or not span:
            raise RuntimeError(f"no throughput line in a worker log:\n{log[-2000:]}")
        worked = float(span[2]) > 0
        seconds = float(stopping[3])
        per_worker.append({
            "messages": int(stopping[1]), "ticks": int(stopping[2]), "seconds": seconds,
            "ticks_per_s": int(stopping[2]) / seconds if seconds else 0.0,
            "first_message_s": float(span[2]) - launched if worked else None,
            "last_message_s": float(span[3]) - launched if worked else None})
    worked = [w for w in per_worker if w["first_message_s"] is not None]
    total = sum(w["ticks"] for w in per_worker)
    first = min(w["first_message_s"] for w in worked)
    span_s = max(w["last_message_s"] for w in worked) - first
    return {"workers": workers, "partitions": s.partitions, "symbols": len(symbols),
            "ticks_produced": ticks, "ticks": total, "drain_s": drained - launched,
            "first_message_s": first, "span_s": span_s,
            "ticks_per_s": total / span_s if span_s else float("nan"),
            "drain_ticks_per_s": total / (drained - launched),
            "workers_that_worked": len(worked), "per_worker": per_worker}


# --- failover -----------------------------------------------------------------------------


def broker_min_session_timeout_s(settings: Settings) -> float:
    """The broker's group.min.session.timeout.ms: a lower session timeout is refused."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    broker = min(admin.list_topics(timeout=10).brokers)
    resource = ConfigResource(ConfigResource.Type.BROKER, str(broker))
    configs = admin.describe_configs([resource], request_timeout=10)[resource].result(timeout=15)
    return int(configs["group.min.session.timeout.ms"].value) / 1000


def _ticks_assignment(settings: Settings) -> dict[str, set[int]]:
    """member id -> the tick partitions it holds."""
    return {m.member_id: {tp.partition for tp in m.assignment.topic_partitions
                          if tp.topic == settings.topics.ticks}
            for m in _describe_group(settings).members}


def _partition_symbols(settings: Settings) -> dict[int, set[str]]:
    """Which symbols the tick topic's partitions hold, read from the keys on the topic."""
    topic = settings.topics.ticks
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"bench-keys-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        out: dict[int, set[str]] = {p: set() for p in partitions}
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    continue
                out[msg.partition()].add(msg.key().decode())
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    ends.pop(msg.partition(), None)
        return out
    finally:
        consumer.close()


_LOG_TIME = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})")


def _log_times(log: str, marker: str) -> list[float]:
    """Wall-clock times (epoch s) of the log lines holding ``marker``, where the line starts
    with a local timestamp as Faust's and the sink's logs do; others are left out."""
    out = []
    for line in log.splitlines():
        if marker in line and (m := _LOG_TIME.match(line)):
            out.append(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp()
                       + int(m[2]) / 1000)
    return out


def measure_failover(env: BenchEnv, rate: float, symbols: list[str], seed: int,
                     settle_s: float = 8.0) -> dict[str, Any]:
    """Two workers in one group and a sink under a steady live load; kill -9 one worker and
    time, for each symbol on the partitions it held, from the kill to the first tick
    published after the kill that reaches its bar in PostgreSQL (see ``_Arrivals``).

    Expected: at least the session timeout (the broker notices the dead member) plus the
    rebalance, the changelog recovery on the survivor and the catch-up."""
    from pipeline.db.migrate import migrate

    s = env.settings
    migrate(s)
    sink, victim = Service(env, "sink"), Service(env, "worker")
    procs = [sink, victim]
    arrivals = _Arrivals(s)
    stop = threading.Event()
    produced: dict[str, Any] = {}

    def produce() -> None:
        try:
            produced["report"] = run_synthetic(s, symbols, rate=rate, duration_s=None,
                                               seed=seed, paced=True, live_time=True,
                                               on_publish=arrivals.note,
                                               should_stop=stop.is_set)
        except BaseException as exc:  # reported by the main thread
            produced["error"] = exc

    producer = threading.Thread(target=produce, daemon=True)
    try:
        _wait_joined(victim, sink)
        wait_until(lambda: _group_members(s) == 1 and _group_stable(s), 120,
                   "the first worker to hold the group", interval_s=0.3)
        victim_id = next(iter(_ticks_assignment(s)))
        survivor = Service(env, "worker")
        procs.append(survivor)
        wait_until(lambda: (survivor.check(), _group_members(s) == 2 and _group_stable(s)
                            and "recovered candle state" in survivor.log.read_text())[1],
                   180, "the second worker to join", interval_s=0.3)
        time.sleep(1.0)
        arrivals.start()
        producer.start()
        time.sleep(settle_s)
        wait_until(lambda: len({a[0] for a in arrivals.snapshot()}) == len(symbols), 60,
                   "every symbol to reach PostgreSQL before the kill", interval_s=0.2)
        try:  # kill a caught-up pipeline where it gets there: nothing sent 0.5 s ago waits
            wait_until(lambda: arrivals.oldest_waiting_s() < 0.5, 30, "", interval_s=0.1)
            caught_up = True
        except TimeoutError:
            caught_up = False
        assignment = _ticks_assignment(s)
        if victim_id not in assignment or len(assignment) != 2:
            raise RuntimeError(f"unexpected worker group before the kill: {assignment}")
        killed_partitions = sorted(assignment[victim_id])
        by_partition = _partition_symbols(s)
        killed_symbols = sorted(x for p in killed_partitions for x in by_partition[p])
        if not killed_symbols:
            raise RuntimeError(f"the worker to kill holds no symbol: {assignment}")

        behind_s = arrivals.oldest_waiting_s()
        killed_at, killed_wall = time.monotonic(), time.time()
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        evicted_at: float | None = None
        recovered: dict[str, float] = {}
        seen = 0
        deadline = killed_at + s.session_timeout_s + 180
        while len(recovered) < len(killed_symbols):
            if time.monotonic() > deadline:
                missing = len(killed_symbols) - len(recovered)
                raise TimeoutError(f"benchmark: after the kill, {missing} symbols did not "
                                   f"reach PostgreSQL in {deadline - killed_at:.0f} s")
            if "error" in produced:
                raise RuntimeError(f"producer failed: {produced['error']!r}")
            survivor.check()
            sink.check()
            if evicted_at is None and _group_members(s) == 1:
                evicted_at = time.monotonic()
            new = arrivals.snapshot(seen)
            seen += len(new)
            for symbol, sent_at, arrived in new:
                if sent_at >= killed_at and symbol in killed_symbols:
                    recovered.setdefault(symbol, arrived)
            time.sleep(0.1)
        all_back = max(recovered.values())
        time.sleep(2.0)  # some steady flow after the recovery
        stop.set()
        producer.join(60)
        wait_until(lambda: arrivals.waiting() == 0, 120, "every tick to reach PostgreSQL")
    finally:
        stop.set()
        arrivals.stop()
        for proc in procs:
            proc.stop()
    seconds = sorted(t - killed_at for t in recovered.values())
    others = [arrived - sent_at for symbol, sent_at, arrived in arrivals.arrived
              if symbol not in killed_symbols and killed_at <= sent_at <= all_back]
    # The 3 s before the kill, ending 1 s before it: the victim's last ticks wait for the
    # failover and would count here otherwise.
    before = sorted(arrived - sent_at for _, sent_at, arrived in arrivals.arrived
                    if killed_at - 4 <= sent_at < killed_at - 1)
    ready = _log_times(survivor.log.read_text(), "Worker ready")
    ready_after = [t - killed_wall for t in ready if t > killed_wall]
    return {
        "session_timeout_s": s.session_timeout_s, "rate": rate, "partitions": s.partitions,
        "symbols": len(symbols), "settle_s": settle_s,
        "killed_partitions": killed_partitions, "killed_symbols": len(killed_symbols),
        "caught_up_before_kill": caught_up, "behind_at_kill_s": behind_s,
        "evicted_s": evicted_at - killed_at if evicted_at is not None else None,
        "survivor_ready_s": ready_after[0] if ready_after else None,
        "recovery_max_s": seconds[-1], "recovery_median_s": seconds[len(seconds) // 2],
        "recovery_min_s": seconds[0],
        "recovery_s": {x: recovered[x] - killed_at for x in killed_symbols},
        "survivor_symbols_max_latency_s": max(others) if others else None,
        "p50_before_kill_ms": before[len(before) // 2] * 1000 if before else None,
        "p99_before_kill_ms": before[min(len(before) - 1, int(0.99 * len(before)))] * 1000
        if before else None,
        "ticks": produced["report"].ticks if "report" in produced else None,
    }


SENTIMENT_OBSERVATIONS = 200_000
_SENTIMENT_STOPPING = re.compile(r"sentiment worker stopping: (\d+) messages, (\d+) "
                                 r"observations.*?; ([\d.]+) s between the first and the last "
                                 r"message")


def measure_sentiment_agent(env: BenchEnv, observations: int, symbols: list[str], seed: int,
                            frame_size: int) -> dict[str, float]:
    """The sentiment agent alone on a pre-filled positioning topic (a synthetic provider
    reporting every 30 s per symbol), from its first to its last message."""
    from producers.synthetic_sentiment import run_synthetic_sentiment

    s = env.settings
    produced = run_synthetic_sentiment(s, symbols, interval_s=30.0, duration_s=None,
                                       count=observations, seed=seed, paced=False,
                                       live_time=False, frame_size=frame_size)
    worker = Service(env, "worker")
    try:
        wait_until(lambda: (worker.check(), total_lag(s, s.worker_group, s.topics.sentiment)
                            == 0 and any(p.committed for p in _group_lag(s)))[1], 900,
                   "the worker to reach lag 0 on the sentiment topic", interval_s=0.5)
    finally:
        log = worker.stop()
    match = _SENTIMENT_STOPPING.search(log)
    if not match:
        raise RuntimeError(f"no sentiment throughput line in the worker log:\n{log[-2000:]}")
    messages, count, seconds = int(match[1]), int(match[2]), float(match[3])
    return {"messages": messages, "observations": count, "seconds": seconds,
            "observations_per_s": count / seconds if seconds else float("nan"),
            "observations_produced": produced.observations}


def _group_lag(settings: Settings) -> list[Any]:
    from pipeline.monitor import group_lag

    return group_lag(settings, settings.worker_group, settings.topics.sentiment)
