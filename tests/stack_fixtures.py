"""Where the tests get a real Kafka broker and PostgreSQL server from.

One interface, three sources, chosen in this order:
1. external: KAFKA_BOOTSTRAP and DATABASE_URL are set in the environment;
2. testcontainers: a Docker engine answers (images from FXSTREAM_KAFKA_IMAGE and
   FXSTREAM_POSTGRES_IMAGE);
3. embedded: fxstream's own stack (Kafka jars from Maven, Debian's PostgreSQL)
   in a temporary state directory on free ports.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pipeline.stack import EmbeddedStack
from pipeline.stack.process import free_port


@dataclass
class RealStack:
    kind: str  # "external" | "testcontainers" | "embedded"
    kafka_bootstrap: str
    database_url: str
    state_dir: Path
    embedded: EmbeddedStack | None = None
    _cleanup: list[object] = field(default_factory=list)

    def new_database(self) -> str:
        """A fresh, empty database on the same server; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def real_stack(tmp_root: Path) -> Iterator[RealStack]:
    if os.environ.get("KAFKA_BOOTSTRAP") and os.environ.get("DATABASE_URL"):
        tmp_root.mkdir(parents=True, exist_ok=True)
        yield RealStack("external", os.environ["KAFKA_BOOTSTRAP"], os.environ["DATABASE_URL"],
                        tmp_root)
        return
    if os.environ.get("FXSTREAM_TEST_STACK", "auto") in ("auto", "testcontainers") and (
        _docker_reachable()
    ):
        with _testcontainers_stack(tmp_root) as stack:
            yield stack
        return
    with embedded_stack(tmp_root) as stack:
        yield stack


@contextlib.contextmanager
def embedded_stack(state_dir: Path) -> Iterator[RealStack]:
    kafka_port = _free_pair()
    stack = EmbeddedStack(state_dir, kafka_port, free_port())
    # Share the Maven-resolved jars between test stacks instead of copying them again.
    shared_jars = Path(os.environ.get("FXSTREAM_TEST_JARS", Path.cwd() / ".fxstream/kafka-jars"))
    if shared_jars.is_dir() and not stack.kafka.jars.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        stack.kafka.jars.symlink_to(shared_jars.resolve(), target_is_directory=True)
    stack.up()
    try:
        yield RealStack("embedded", stack.kafka.bootstrap, stack.postgres.url, state_dir,
                        embedded=stack)
    finally:
        stack.down()


def _free_pair() -> int:
    """A port p with p+1 free too (the broker's controller listens on p+1)."""
    from pipeline.stack.process import port_is_free

    for _ in range(50):
        port = free_port()
        if port < 65000 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports found")


@contextlib.contextmanager
def _testcontainers_stack(tmp_root: Path) -> Iterator[RealStack]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.postgres import PostgresContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    kafka_port = free_port()
    kafka = (
        DockerContainer(os.environ.get("FXSTREAM_KAFKA_IMAGE", "apache/kafka:4.1.1"))
        .with_bind_ports(9092, kafka_port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kafka_port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                  "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )
    postgres = PostgresContainer(os.environ.get("FXSTREAM_POSTGRES_IMAGE", "postgres:15"),
                                 username="postgres", password="postgres", dbname="fxstream",
                                 driver=None)
    with kafka, postgres:
        bootstrap = f"127.0.0.1:{kafka_port}"
        _wait_for_admin(bootstrap, timeout_s=90)
        url = postgres.get_connection_url().replace("localhost", "127.0.0.1")
        tmp_root.mkdir(parents=True, exist_ok=True)
        yield RealStack("testcontainers", bootstrap, url, tmp_root)


def _wait_for_admin(bootstrap: str, timeout_s: float) -> None:
    from confluent_kafka.admin import AdminClient

    from pipeline.stack.process import wait_until

    def answers() -> bool:
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            return bool(admin.describe_cluster(request_timeout=2).result(timeout=3).nodes)
        except Exception:
            return False

    wait_until(answers, timeout_s, f"Kafka at {bootstrap}")
