"""Metrics and health endpoints of a running worker and sink, on the real broker and database.

The counters are checked against what was produced and what PostgreSQL holds, the
dead letters by reason against the dead-letter topic, and /readyz against recovery:
a worker's readiness is false until its recovered state is taken in.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import pytest
from confluent_kafka import Producer

from pipeline.observability.health import Health, serve
from pipeline.observability.metrics import SinkMetrics, WorkerMetrics, new_registry
from pipeline.observability.scrape import Samples, lag_rows, probe, scrape
from pipeline.settings import Settings
from pipeline.stack.process import free_port
from producers.kafka_io import producer_config
from tests.conftest import wait_for
from tests.pipeline_helpers import (
    Proc,
    candle_record,
    end_offsets,
    produce_candles,
    read_topic,
    run_cli,
)
from tests.stack_fixtures import RealStack

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ("EUR/USD", "USD/JPY", "GBP/USD")
TICKS = 20_000


def _answer(url: str, path: str) -> tuple[int, str] | None:
    try:
        return probe(url, path, timeout_s=2)
    except OSError:
        return None  # not listening yet


def _first_answer(url: str, path: str, proc: Proc) -> tuple[int, str]:
    def answered() -> tuple[int, str] | None:
        assert proc.alive(), f"{proc.log.name} died:\n{proc.tail()}"
        return _answer(url, path)

    return wait_for(answered, 60, f"{url}{path} to answer", interval_s=0.05)


def _ready(url: str, proc: Proc, timeout_s: float = 120) -> set[str]:
    """Wait for /readyz to answer 200; returns the reasons it gave before."""
    reasons: set[str] = set()

    def ready() -> bool:
        assert proc.alive(), f"{proc.log.name} died:\n{proc.tail()}"
        got = _answer(url, "/readyz")
        if got is not None and got[0] != 200:
            reasons.update(got[1].splitlines())
        return got is not None and got[0] == 200

    try:
        wait_for(ready, timeout_s, f"{url}/readyz to answer 200", interval_s=0.05)
    except AssertionError:
        raise AssertionError(f"{_answer(url, '/readyz')}\n{proc.tail()}") from None
    return reasons


def _produce_bad_tick(settings: Settings) -> None:
    producer = Producer(producer_config(settings))
    bad = {"symbol": "EUR/USD", "ts_ms": 1_704_067_200_000, "bid": -1.0, "ask": 1.1}
    producer.produce(settings.topics.ticks, key=b"EUR/USD", value=orjson.dumps([bad]))
    assert producer.flush(30) == 0


def _table_rows(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM market_data_candles").fetchone()
    return int(row[0]) if row else 0


def _worker_dead_letters(settings: Settings) -> Counter[str]:
    return Counter(r["reason"] for _, r in read_topic(settings, settings.topics.dead_letter)
                   if r.get("stage") == "worker")


@pytest.mark.integration
def test_worker_and_sink_metrics_match_what_was_produced_and_written(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(symbols=SYMBOLS, partitions=4, session_timeout_s=6.0,
                             log_level="INFO")
    worker_url = f"http://127.0.0.1:{(worker_port := free_port())}"
    sink_url = f"http://127.0.0.1:{(sink_port := free_port())}"
    worker = Proc(settings, ["worker", "--metrics-port", str(worker_port)],
                  tmp_path / "worker.log")
    sink = Proc(settings, ["sink", "--metrics-port", str(sink_port)], tmp_path / "sink.log")
    restarted: Proc | None = None
    try:
        # Not ready before it holds its partitions; ready after; alive throughout.
        status, body = _first_answer(worker_url, "/readyz", worker)
        assert status == 503, body
        _ready(worker_url, worker)
        _ready(sink_url, sink)
        assert _answer(worker_url, "/healthz") == (200, "ok\n")
        assert _answer(sink_url, "/healthz") == (200, "ok\n")

        produced = run_cli(settings, ["produce", "synthetic", "--symbols", ",".join(SYMBOLS),
                                      "--count", str(TICKS), "--max-speed", "--seed", "11"],
                           tmp_path)
        assert produced.returncode == 0, produced.stderr
        _produce_bad_tick(settings)
        bad_candle = candle_record("EUR/USD", 60_000, 1.1)
        bad_candle["high"] = "not a price"
        produce_candles(settings, [("EUR/USD", bad_candle)])

        # The worker: every tick produced came in; the planted one is a dead letter.
        def worker_done() -> Samples | None:
            samples = scrape(worker_url)
            done = samples.get("fxstream_worker_records_in_total", agent="candle")
            return samples if done == TICKS + 1 else None

        wait_for(worker_done, 180, f"the worker to count {TICKS + 1} ticks in")
        dead = wait_for(lambda: (c := _worker_dead_letters(settings)) and c, 60,
                        "the worker's dead letters on their topic")
        samples = scrape(worker_url)
        counted = {labels["reason"]: v for labels, v in
                   samples.series("fxstream_dead_letters_total")
                   if labels["stage"] == "worker" and v > 0}
        assert counted == dict(dead) == {"invalid_tick": 1}, (counted, dead)
        assert samples.get("fxstream_worker_messages_in_total", agent="candle") >= 2
        assert (samples.get("fxstream_worker_records_out_total", agent="candle") or 0) > 0

        # The sink: every message of its topic written, rows out = rows in PostgreSQL.
        # One moment where the worker's messages out, the topic's end and the sink's
        # messages in agree (the worker's clock may still close bars meanwhile).
        def sink_caught_up() -> tuple[Samples, Samples] | None:
            assert sink.alive(), sink.tail()
            sent = scrape(worker_url)
            ends = sum(end_offsets(settings, settings.topics.candles).values())
            got = scrape(sink_url)
            out = sent.get("fxstream_worker_messages_out_total", agent="candle")
            written = got.get("fxstream_sink_messages_in_total", table="market_data_candles")
            return (sent, got) if out and written == ends == out + 1 else None

        worker_samples, got = wait_for(sink_caught_up, 180,
                                       "the sink to write every candle message")
        table = "market_data_candles"
        assert got.get("fxstream_sink_records_in_total", table=table) == worker_samples.get(
            "fxstream_worker_records_out_total", agent="candle") + 1
        # Rows out = rows in PostgreSQL (read twice around the count: nothing written between)
        def rows_agree() -> bool:
            before = scrape(sink_url).get("fxstream_sink_rows_out_total", table=table,
                                          op="insert")
            rows = _table_rows(settings)
            after = scrape(sink_url).get("fxstream_sink_rows_out_total", table=table,
                                         op="insert")
            return before == after == rows > 0

        wait_for(rows_agree, 60, "rows inserted by the sink = rows in market_data_candles")
        assert got.get("fxstream_dead_letters_total", stage="sink", source=table,
                       reason="invalid_candle") == 1
        assert got.get("fxstream_sink_batch_seconds_count", table=table) == got.get(
            "fxstream_sink_batches_total", table=table) > 0
        assert got.get("fxstream_sink_produce_to_row_seconds_count", table=table) > 0
        assert got.get("fxstream_sink_postgres_up", table=table) == 1
        assert got.get("fxstream_last_commit_timestamp_seconds", group=settings.sink_group,
                       topic=settings.topics.candles) > 0
        lags = wait_for(lambda: [r for r in lag_rows([scrape(sink_url), scrape(worker_url)])
                                 if r.topic in (settings.topics.candles, settings.topics.ticks)
                                 and r.lag == 0] or None, 60, "lag 0 in both processes")
        assert {(r.group, r.topic) for r in lags} >= {
            (settings.worker_group, settings.topics.ticks),
            (settings.sink_group, settings.topics.candles)}
        assert scrape(worker_url).get("fxstream_worker_state_keys", agent="candle") == len(
            SYMBOLS)

        # A new worker recovers the candle state: not ready until it has taken it in.
        assert worker.stop() == 0, worker.tail()
        restart_port = free_port()
        restart_url = f"http://127.0.0.1:{restart_port}"
        restarted = Proc(settings, ["worker", "--metrics-port", str(restart_port)],
                         tmp_path / "worker-2.log")
        status, body = _first_answer(restart_url, "/readyz", restarted)
        assert status == 503, body
        reasons = _ready(restart_url, restarted) | {body.strip()}
        # the seconds from its start to the recovered state taken in answer "not ready"
        assert any("recover" in r for r in reasons), reasons
        after = scrape(restart_url)
        assert after.get("fxstream_worker_recovery_seconds_count", agent="candle") >= 1
        assert after.get("fxstream_worker_recovering", agent="candle") == 0
        assert after.get("fxstream_worker_state_keys", agent="candle") == len(SYMBOLS)
        assert (after.get("fxstream_worker_state_bytes", agent="candle") or 0) > 0
        assert after.get("fxstream_ready") == 1
        # Nothing re-applied: every offset was applied by the first worker.
        assert (after.get("fxstream_worker_records_in_total", agent="candle") or 0) == 0
    finally:
        for proc in (sink, restarted, worker):
            if proc is not None and proc.alive():
                assert proc.stop() == 0, proc.tail()


@pytest.mark.integration
def test_sink_readiness_follows_the_database(stack: RealStack,
                                            make_settings: Callable[..., Settings],
                                            tmp_path: Path) -> None:
    """Alive but not ready while its database does not exist yet; ready once it does;
    not ready again, with an outage counted, when it goes away. The database is this
    test's own, so the shared server stays up for everyone else."""
    settings = make_settings()
    name = f"t_{uuid.uuid4().hex[:12]}"
    settings = settings.model_copy(update={"database_url": urlunsplit(
        urlsplit(settings.database_url)._replace(path=f"/{name}"))})
    created = run_cli(settings, ["topics", "create"], tmp_path)
    assert created.returncode == 0, created.stderr
    url = f"http://127.0.0.1:{(port := free_port())}"
    sink = Proc(settings, ["sink", "--metrics-port", str(port)], tmp_path / "sink.log")
    try:
        status, body = _first_answer(url, "/readyz", sink)
        assert status == 503 and "waiting for PostgreSQL" in body, body
        assert _answer(url, "/healthz") == (200, "ok\n")
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        _ready(url, sink)
        assert scrape(url).get("fxstream_sink_postgres_up", table="market_data_candles") == 1

        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        _, body = wait_for(lambda: (got := _answer(url, "/readyz")) and got[0] == 503 and got,
                           60, "/readyz to fail once the database is gone")
        assert "PostgreSQL unreachable" in body, body
        # A batch to write finds it gone: an outage, counted; the loop stays alive.
        produce_candles(settings, [("EUR/USD", candle_record("EUR/USD", 60_000, 1.1))])
        wait_for(lambda: scrape(url).get("fxstream_sink_postgres_outages_total",
                                         table="market_data_candles") == 1, 60,
                 "the outage to be counted")
        assert scrape(url).get("fxstream_sink_postgres_up", table="market_data_candles") == 0
        assert _answer(url, "/healthz") == (200, "ok\n")
    finally:
        assert sink.stop() == 0, sink.tail()


def test_healthz_fails_when_a_loop_stops_beating_and_readyz_says_why() -> None:
    registry = new_registry()
    metrics = WorkerMetrics.build(registry)
    health = Health(stale_after_s=0.2)
    beat = health.heartbeat("event loop")
    reason: list[str | None] = ["recovering table state"]
    health.checks.append(lambda: reason[0])
    health.bind(metrics.common)
    server = serve(registry, health, "127.0.0.1", free_port(), "worker")
    assert server is not None
    try:
        beat.beat()
        assert probe(server.url, "/healthz") == (200, "ok\n")
        assert probe(server.url, "/readyz") == (503, "recovering table state\n")
        assert scrape(server.url).get("fxstream_ready") == 0
        _, body = wait_for(lambda: (got := probe(server.url, "/healthz"))[0] == 503 and got,
                           10, "/healthz to fail once the loop stopped beating")
        assert "event loop: no heartbeat" in body
        assert scrape(server.url).get("fxstream_heartbeat_age_seconds") > 0.2
        beat.beat()
        reason[0] = None
        assert probe(server.url, "/healthz")[0] == 200
        assert probe(server.url, "/readyz") == (200, "ok\n")
        assert scrape(server.url).get("fxstream_ready") == 1
        assert probe(server.url, "/nothing")[0] == 404
        # A taken port is reported and leaves the process running without endpoints.
        port = int(server.url.rsplit(":", 1)[1])
        assert serve(new_registry(), health, "127.0.0.1", port, "sink") is None
        assert serve(new_registry(), health, "127.0.0.1", 0, "sink") is None
    finally:
        server.close()


def test_metric_names_the_rules_and_dashboard_use_exist() -> None:
    """Every fxstream_* name in the rule file and the dashboard is one the processes
    export (a renamed metric would leave an alert that never fires)."""
    import re

    names: set[str] = set()
    for build in (WorkerMetrics.build, SinkMetrics.build):
        registry = new_registry()
        build(registry)
        for family in registry.collect():
            names.update(s.name for s in family.samples)
            names.add(family.name)
            if family.type == "histogram":
                names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum",
                                                                      "_count"))
            if family.type == "counter":
                names.add(f"{family.name}_total")
    used: set[str] = set()
    for path in (REPO / "ops/prometheus/fxstream-rules.yml", REPO / "ops/grafana/fxstream.json"):
        used.update(re.findall(r"\bfxstream_[a-z_]+", path.read_text()))
    assert used, "no fxstream metric named in the rule file or the dashboard"
    assert used <= names, sorted(used - names)


def test_the_rule_file_passes_promtool_and_its_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: scripts/setup.sh installs Debian's prometheus "
                    "package, which provides it; run `make setup`")
    rules = REPO / "ops/prometheus/fxstream-rules.yml"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    config = subprocess.run([promtool, "check", "config",
                             str(REPO / "ops/prometheus/prometheus.yml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert config.returncode == 0, config.stdout + config.stderr
    # Each alert fires on what it names and not on its healthy counterpart.
    tested = subprocess.run([promtool, "test", "rules",
                             str(REPO / "ops/prometheus/fxstream-rules.test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_status_reads_counts_and_lag_from_a_scrape() -> None:
    """What `fxstream status` and the demo take from an exposition, as the processes
    write it (a renamed metric would silently empty their tables)."""
    from prometheus_client import generate_latest

    from pipeline.observability.metrics import AgentMetrics, TableMetrics
    from pipeline.observability.scrape import parse, throughput, total_lag

    registry = new_registry()
    worker = WorkerMetrics.build(registry)
    candle = AgentMetrics.of(worker, "candle")
    candle.records_in.inc(1000)
    candle.records_out.inc(40)
    candle.dead_letter("late", 3)
    worker.common.consumer_lag.labels("w", "fx.ticks", "0").set(5)
    worker.common.consumer_lag.labels("w", "fx.ticks", "1").set(7)
    sink_registry = new_registry()
    sink = TableMetrics.of(SinkMetrics.build(sink_registry), "market_data_candles")
    sink.records_in.inc(40)
    sink.inserted.inc(30)
    sink.updated.inc(8)
    sink.older.inc(2)
    sink.dead_letter("invalid_candle")
    sink.consumer_lag.labels("s", "fx.candles", "1").set(2)

    worker_samples = parse(generate_latest(registry).decode())
    sink_samples = parse(generate_latest(sink_registry).decode())
    counted = throughput("http://w", worker_samples) + throughput("http://s", sink_samples)
    by_name = {(t.kind, t.name): (t.records_in, t.records_out, t.dead_letters) for t in counted}
    assert by_name[("worker", "candle")] == (1000, 40, 3)
    assert by_name[("sink", "market_data_candles")] == (40, 38, 1)
    rows = lag_rows([worker_samples, sink_samples])
    assert [(r.group, r.topic, r.partition, r.lag) for r in rows] == [
        ("s", "fx.candles", 1, 2), ("w", "fx.ticks", 0, 5), ("w", "fx.ticks", 1, 7)]
    assert total_lag(rows, "w", "fx.ticks") == 12
    assert total_lag(rows, "w", "fx.dom") is None
