"""The embedded stack and the contracts, on the real broker and database."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from pipeline.db.migrate import DatabaseError, head_revision, migrate
from pipeline.settings import Settings
from pipeline.stack import EmbeddedStack, StackError
from pipeline.stack.postgres import PG_BIN
from pipeline.stack.process import free_port
from pipeline.topics import create_topics
from tests.conftest import wait_for
from tests.stack_fixtures import RealStack, embedded_stack

pytestmark = pytest.mark.integration

needs_local_servers = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("java") is None,
    reason="the embedded stack needs Debian's PostgreSQL 15 and Java (scripts/setup.sh installs)",
)


def fxstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("fxstream")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_status_prints_versions_as_the_servers_report_them(stack: RealStack) -> None:
    result = fxstream("stack", "status", env={
        "KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "DATABASE_URL": stack.database_url,
        "FXSTREAM_STATE_DIR": str(stack.state_dir), "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "metadata.version 4." in result.stdout
    assert "PostgreSQL 15." in result.stdout


def test_topics_and_migrations_run_twice_without_harm(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(partitions=3)
    first = create_topics(settings)
    assert sorted(first.created) == sorted(settings.topics.all())
    second = create_topics(settings)
    assert second.created == []
    assert second.existing == {t: 3 for t in settings.topics.all()}

    assert migrate(settings) == (None, head_revision())
    assert migrate(settings) == (head_revision(), head_revision())
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (column_name LIKE 'ts%%' "
            "OR column_name IN ('tick_volume', 'next_offset'))"
        ).fetchall()
        tables = {r[0] for r in rows}
        pk = conn.execute(
            "SELECT string_agg(a.attname, ',' ORDER BY array_position(i.indkey, a.attnum)) "
            "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = 'market_data_candles'::regclass AND i.indisprimary"
        ).fetchone()
    assert {"market_data_candles", "market_depth", "dom_metrics", "sentiment_data",
            "sentiment_metrics", "sink_offsets"} <= tables
    assert all(r[2] == "bigint" for r in rows), rows
    assert pk == ("symbol,timeframe,ts_utc",)


def test_migrate_against_a_dead_database_says_so(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(database_url="postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(DatabaseError, match="unreachable"):
        migrate(settings)


@needs_local_servers
def test_data_survives_down_and_up(tmp_path: Path) -> None:
    with embedded_stack(tmp_path / "restart") as real:
        es = real.embedded
        assert es is not None
        topic = f"restart-{uuid.uuid4().hex[:6]}"
        producer = Producer({"bootstrap.servers": real.kafka_bootstrap, "acks": "all"})
        producer.produce(topic, key=b"EUR/USD", value=b"kept across restarts")
        assert producer.flush(30) == 0
        with psycopg.connect(real.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('row survives')")

        assert es.down() == {"kafka": True, "postgres": True}
        assert es.running() == {"kafka": False, "postgres": False}
        assert not es.connection_file.exists()
        assert es.up() == {"postgres": True, "kafka": True}
        assert es.up() == {"postgres": False, "kafka": False}  # second up is a no-op

        consumer = Consumer({"bootstrap.servers": real.kafka_bootstrap, "group.id": topic,
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        try:
            msg = wait_for(lambda: consumer.poll(1.0), 60, "the message after the restart")
            assert msg.error() is None
            assert msg.value() == b"kept across restarts"
        finally:
            consumer.close()
        with psycopg.connect(real.database_url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("row survives",)]


@needs_local_servers
@pytest.mark.parametrize("which", ["kafka", "postgres"])
def test_a_port_already_taken_gives_a_clear_error(tmp_path: Path, which: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        other = free_port()
        while other in (taken, taken + 1):
            other = free_port()
        ports = (taken, other) if which == "kafka" else (other, taken)
        stack = EmbeddedStack(tmp_path / "taken", *ports)
        with pytest.raises(StackError, match=f"port {taken} .* already taken"):
            stack.up()
        assert stack.running() == {"kafka": False, "postgres": False}

        setting = "FXSTREAM_KAFKA_PORT" if which == "kafka" else "FXSTREAM_POSTGRES_PORT"
        result = fxstream("stack", "up", env={
            "FXSTREAM_STATE_DIR": str(tmp_path / "cli"), "FXSTREAM_KAFKA_PORT": str(ports[0]),
            "FXSTREAM_POSTGRES_PORT": str(ports[1]), "KAFKA_BOOTSTRAP": "", "DATABASE_URL": ""})
        assert result.returncode == 2
        assert f"port {taken}" in result.stderr and setting in result.stderr
    EmbeddedStack(tmp_path / "cli", *ports).down()


def test_commands_without_a_stack_explain_what_to_do(tmp_path: Path) -> None:
    result = fxstream("topics", "create", env={
        "FXSTREAM_STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "", "DATABASE_URL": ""})
    assert result.returncode == 2
    assert "fxstream stack up" in result.stderr
