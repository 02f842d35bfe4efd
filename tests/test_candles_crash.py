"""Crashes in the middle: kill -9 of the worker or the sink, a PostgreSQL restart, a scale-out.

Every scenario ends with the candles in PostgreSQL equal to the reference: nothing
lost, nothing counted twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pipeline.monitor import total_lag
from pipeline.settings import Settings
from tests.conftest import wait_for
from tests.exactness_data import write_adversarial_csv
from tests.pipeline_helpers import Proc, committed_total, run_cli
from tests.stack_fixtures import RealStack
from tests.test_candles_pipeline import pipeline_settings, reference, wait_for_reference

pytestmark = pytest.mark.integration


def replay(settings: Settings, csv: Path, tmp: Path, frame_size: int) -> Proc:
    return Proc(settings, ["produce", "replay", str(csv), "--frame-size", str(frame_size),
                           "--no-progress"], tmp / f"replay-{csv.stem}.log")


def sink_offsets_total(settings: Settings) -> int:
    try:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def database_activity(settings: Settings) -> str:
    """What every other PostgreSQL session is doing and waiting for, and the stored
    offsets: the evidence when a sink stops making progress."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            sessions = conn.execute(
                "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, "
                "left(query, 120) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchall()
            offsets = conn.execute("SELECT partition, next_offset FROM sink_offsets "
                                   "ORDER BY partition").fetchall()
    except psycopg.Error as exc:
        return f"\n--- PostgreSQL: {exc}"
    lines = "\n".join(map(str, sessions))
    return f"\n--- PostgreSQL sessions:\n{lines}\n--- sink_offsets: {offsets}"


def group_settled(settings: Settings, members: int) -> bool:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    group = settings.worker_group
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except Exception:
        return False
    return len(desc.members) == members and desc.state == ConsumerGroupState.STABLE


@pytest.fixture
def big_csv(tmp_path: Path) -> Path:
    csv = tmp_path / "big.csv"
    write_adversarial_csv(csv, seed=23, ticks_per_symbol=12_000)
    return csv


def test_worker_killed_at_random_points(make_settings: Callable[..., Settings], tmp_path: Path,
                                        big_csv: Path) -> None:
    settings = pipeline_settings(make_settings)
    ref = reference(big_csv)
    rng = random.Random(1)
    producer = replay(settings, big_csv, tmp_path, frame_size=4)
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    worker: Proc | None = None
    try:
        target = 0
        for round_no in range(3):
            worker = Proc(settings, ["worker"], tmp_path / f"worker-{round_no}.log")
            target += rng.randint(800, 2500)
            wait_for(lambda t=target: committed_total(settings, settings.worker_group,
                                                      settings.topics.ticks) >= t,
                     120, f"the worker to get past offset total {target}",
                     watch=[worker, sink])
            worker.kill9()
        worker = Proc(settings, ["worker"], tmp_path / "worker-final.log")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
        assert producer.stop() == 0, producer.tail()
    finally:
        for p in (worker, sink):
            if p is not None and p.alive():
                p.stop()


def test_sink_killed_at_random_points(make_settings: Callable[..., Settings], tmp_path: Path,
                                      big_csv: Path) -> None:
    settings = pipeline_settings(make_settings, sink_batch_size=500)
    ref = reference(big_csv)
    rng = random.Random(2)
    assert run_cli(settings, ["produce", "replay", str(big_csv), "--frame-size", "4",
                              "--no-progress"], tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink: Proc | None = None
    try:
        target = 0
        for round_no in range(3):
            sink = Proc(settings, ["sink"], tmp_path / f"sink-{round_no}.log")
            target += rng.randint(2_000, 8_000)
            try:
                wait_for(lambda t=target: sink_offsets_total(settings) >= t, 120,
                         f"the sink to store offsets past {target}", watch=[worker, sink])
            except AssertionError as exc:
                raise AssertionError(f"{exc}{database_activity(settings)}") from None
            sink.kill9()
        sink = Proc(settings, ["sink"], tmp_path / "sink-final.log")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
        # The stored offsets cover the whole candle topic: nothing read twice or skipped.
        wait_for(lambda: total_lag(settings, settings.sink_group, settings.topics.candles) == 0,
                 60, "the sink's Kafka offsets to catch up")
    finally:
        for p in (worker, sink):
            if p is not None and p.alive():
                p.stop()


def test_postgres_restart_in_the_middle(stack: RealStack, make_settings: Callable[..., Settings],
                                        tmp_path: Path, big_csv: Path) -> None:
    stack.require_server_control()
    settings = pipeline_settings(make_settings, sink_batch_size=500)
    ref = reference(big_csv)
    assert run_cli(settings, ["produce", "replay", str(big_csv), "--frame-size", "4",
                              "--no-progress"], tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_for(lambda: sink_offsets_total(settings) >= 3_000, 120, "the sink to write rows")
        stack.stop_postgres_immediately()
        try:
            wait_for(lambda: "PostgreSQL unavailable" in sink.log.read_text(), 60,
                     "the sink to notice PostgreSQL is down")
            assert sink.alive(), sink.tail()
        finally:
            stack.start_postgres()
        wait_for(lambda: "PostgreSQL is back" in sink.log.read_text(), 90,
                 "the sink to resume after PostgreSQL came back")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
    finally:
        worker.stop()
        sink.stop()


def test_scale_out_and_hand_over(make_settings: Callable[..., Settings], tmp_path: Path,
                                 big_csv: Path) -> None:
    settings = pipeline_settings(make_settings, partitions=8)
    ref = reference(big_csv)
    lines = big_csv.read_text().splitlines(keepends=True)
    half = len(lines) // 2
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("".join(lines[:half]))
    second.write_text(lines[0] + "".join(lines[half:]))

    a = Proc(settings, ["worker"], tmp_path / "worker-a.log")
    b = Proc(settings, ["worker"], tmp_path / "worker-b.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        # Both workers in the group and settled before the ticks come, so that the
        # partitions are split between them rather than taken by whoever starts first.
        wait_for(lambda: group_settled(settings, members=2), 120, "two settled workers")
        assert run_cli(settings, ["produce", "replay", str(first), "--frame-size", "50",
                                  "--no-progress"], tmp_path).returncode == 0
        wait_for(lambda: total_lag(settings, settings.worker_group, settings.topics.ticks) == 0,
                 120, "both workers to finish the first half")
        assert b.stop() == 0, b.tail()
        log_b = b.log.read_text()
        processed_b = int(log_b.split("candle worker stopping: ")[1].split(" messages")[0])
        log_a_before = a.log.read_text()
        assert processed_b > 0, "worker b owned no symbols: the split did not happen"
        assert "candle worker stopping" not in log_a_before

        # The second half goes to worker a alone, which must continue b's symbols from
        # the state it recovers from b's changelog partitions.
        assert run_cli(settings, ["produce", "replay", str(second), "--frame-size", "50",
                                  "--no-progress"], tmp_path).returncode == 0
        wait_for_reference(settings, ref, [a, sink], timeout_s=300)
    finally:
        for p in (a, b, sink):
            if p.alive():
                p.stop()
