"""docker-compose.yml scaled out: three workers and two sinks in containers, one worker
killed mid-stream, and every candle in PostgreSQL equal to the reference.

Runs when a Docker engine answers and a compose command is installed, with the images
FXSTREAM_KAFKA_IMAGE, FXSTREAM_POSTGRES_IMAGE and FXSTREAM_IMAGE (`make test-docker`
builds them); otherwise it skips and the pytest header says why.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from pipeline.settings import Settings
from pipeline.stack.process import free_port
from producers.synthetic import SyntheticTicks
from tests.compose_fixtures import ComposeProject, compose_unavailable, docker
from tests.conftest import wait_for
from tests.pipeline_helpers import db_candles, read_topic
from tests.reference_candles import HEADER, RefResult, compare_candles, reference_from_csv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(compose_unavailable() is not None, reason=str(compose_unavailable())),
    pytest.mark.timeout(1200),
]

SYMBOLS = ("EUR/USD", "GBP/USD", "USD/JPY", "AUD/USD", "USD/CHF", "USD/CAD")
TICKS = 60_000
EVENT_RATE = 100  # ticks per second of event time: 10 minutes of bars
SPEED = "30x"  # the replay takes about 20 s


def tick_csv(path: Path) -> list[str]:
    """The ticks the producer replays (deterministic for the seed), as CSV lines."""
    lines = [HEADER]
    for t in SyntheticTicks(SYMBOLS, rate=EVENT_RATE, seed=19).ticks(count=TICKS):
        volume = "" if t.get("volume") is None else repr(t["volume"])
        bid = "" if t.get("bid") is None else repr(t["bid"])
        ask = "" if t.get("ask") is None else repr(t["ask"])
        lines.append(f"{t['symbol']},{t['ts_ms']},{bid},{ask},{volume}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return lines


def worker_assignment(bootstrap: str, group: str, topic: str) -> list[set[int]]:
    """The partitions of ``topic`` each member of ``group`` holds, per member."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    return [{tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            for m in description.members]


@pytest.fixture
def project() -> Iterator[tuple[ComposeProject, Settings, Path]]:
    replay_dir = Path(tempfile.mkdtemp(prefix="fxstream-compose-"))
    replay_dir.chmod(0o755)  # the producer container's user reads the CSV
    override = replay_dir / "compose-replay.yml"
    override.write_text(
        "services:\n"
        "  producer:\n"
        f"    command: [fxstream, produce, replay, /replay/ticks.csv, --speed, '{SPEED}',"
        " --no-progress]\n"
        f"    volumes: ['{replay_dir}:/replay:ro']\n")
    kafka_port, pg_port = free_port(), free_port()
    password = secrets.token_urlsafe(12)
    compose = ComposeProject({"FXSTREAM_KAFKA_HOST_PORT": str(kafka_port),
                              "FXSTREAM_POSTGRES_HOST_PORT": str(pg_port),
                              "FXSTREAM_POSTGRES_PASSWORD": password},
                             overrides=[override], profiles=["producer"])
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{kafka_port}",
                        database_url=f"postgresql://postgres:{password}@127.0.0.1:{pg_port}"
                                     "/fxstream",
                        state_dir=replay_dir / "state", external_stack=True)
    try:
        yield compose, settings, replay_dir
    finally:
        compose.down()
        shutil.rmtree(replay_dir, ignore_errors=True)


def candle_rows(settings: Settings) -> int:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*) FROM market_data_candles").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def test_three_workers_share_the_ticks_and_a_killed_one_loses_and_doubles_nothing(
        project: tuple[ComposeProject, Settings, Path]) -> None:
    compose, settings, replay_dir = project
    ref: RefResult = reference_from_csv(tick_csv(replay_dir / "ticks.csv"),
                                        known_symbols=set(settings.symbols))
    assert not ref.dead_letters
    ticks_topic = settings.topics.ticks

    # The pipeline without the producer: Kafka, PostgreSQL, init, 3 workers, 2 sinks.
    compose.run("up", "-d", "--scale", "worker=3", "--scale", "sink=2",
                "kafka", "postgres", "init", "worker", "sink")
    workers = compose.container_ids("worker")
    assert len(workers) == 3 and len(compose.container_ids("sink")) == 2

    def shared_by_three() -> bool:
        try:
            parts = worker_assignment(settings.kafka_bootstrap, settings.worker_group,
                                      ticks_topic)
        except Exception:
            return False
        return (len(parts) == 3 and all(parts)
                and set().union(*parts) == set(range(settings.partitions)))

    try:
        wait_for(shared_by_three, 240, "three workers to share the tick partitions")
    except AssertionError:
        raise AssertionError(compose.logs("worker", "init")) from None

    compose.run("up", "-d", "--no-deps", "producer")
    producer = compose.container_ids("producer")[0]
    wait_for(lambda: candle_rows(settings) > 0, 180, "the first candles in PostgreSQL")
    # Mid-stream: the producer is still publishing when a worker dies.
    assert docker("inspect", "-f", "{{.State.Running}}", producer) == "true", \
        f"the replay ended before a worker could be killed:\n{compose.logs('producer')}"
    killed = workers[0]
    docker("kill", killed)
    wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", producer) == "false", 300,
             "the producer to finish its replay")
    assert docker("inspect", "-f", "{{.State.ExitCode}}", producer) == "0", \
        compose.logs("producer")

    last: list[str] = []

    def exact() -> bool:
        actual = db_candles(settings)
        last[:] = compare_candles(ref.candles, actual)
        return not last and all(r["complete"] for r in actual.values())

    try:
        wait_for(exact, 420, "the candles in PostgreSQL to equal the reference")
    except AssertionError:
        raise AssertionError(f"{len(last)} differences, first: {last[:5]}\n"
                             f"{compose.logs('worker', 'sink')}") from None
    # Every tick once: equal tick volumes above, and nothing refused on the way.
    assert read_topic(settings, settings.topics.dead_letter) == []
    # The killed worker's partitions are held by the running workers, one member each.
    seen: list[object] = []

    def held_by_the_running() -> bool:
        parts = worker_assignment(settings.kafka_bootstrap, settings.worker_group, ticks_topic)
        running = [c for c in compose.container_ids("worker")
                   if docker("inspect", "-f", "{{.State.Running}}", c) == "true"]
        seen[:] = [parts, running]
        return (len(parts) == len(running) and all(parts)
                and set().union(*parts) == set(range(settings.partitions)))

    try:
        wait_for(held_by_the_running, 120, "the running workers to hold every partition")
    except AssertionError:
        raise AssertionError(f"last seen (partitions per member, running workers): {seen}"
                             ) from None
