"""Where the tests get a real Kafka broker and PostgreSQL server from.

One interface, three sources, chosen in this order (``FXSTREAM_TEST_STACK`` = ``auto``,
the default; ``external``, ``testcontainers`` or ``embedded`` insists on one):
1. external: KAFKA_BOOTSTRAP and DATABASE_URL are set in the environment;
2. testcontainers: a Docker engine answers (DOCKER_HOST); images FXSTREAM_KAFKA_IMAGE
   and FXSTREAM_POSTGRES_IMAGE (`make test-docker` builds them without a registry);
3. embedded: fxstream's own stack (Kafka jars from Maven, Debian's PostgreSQL)
   in a temporary state directory on free ports.

Tests that stop or pause a server do it through the stack (``stop_postgres_immediately``,
``start_postgres``, ``kafka_paused``): processes on the embedded stack, containers on
testcontainers. An external stack is not the tests' to stop; those tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pipeline.stack import EmbeddedStack
from pipeline.stack.kafka import EmbeddedKafka
from pipeline.stack.process import free_port, wait_until

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:15"


class ServerControl(Protocol):
    """Stops, starts and pauses the servers of a stack the tests own."""

    def stop_postgres_immediately(self) -> None: ...
    def start_postgres(self) -> None: ...
    def pause_kafka(self) -> None: ...
    def resume_kafka(self) -> None: ...


@dataclass
class RealStack:
    kind: str  # "external" | "testcontainers" | "embedded"
    kafka_bootstrap: str
    database_url: str
    state_dir: Path
    embedded: EmbeddedStack | None = None
    control: ServerControl | None = field(default=None, repr=False)

    def new_database(self) -> str:
        """A fresh, empty database on the same server; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def _control(self) -> ServerControl:
        if self.control is None:
            pytest.skip(f"this test stops a server, and the {self.kind} stack's servers "
                        "are not the tests' to stop")
        return self.control

    def require_server_control(self) -> None:
        """Skip (with the reason) unless the tests may stop this stack's servers."""
        self._control()

    def stop_postgres_immediately(self) -> None:
        """PostgreSQL goes down as with ``pg_ctl stop -m immediate``: no checkpoint,
        every connection dropped."""
        self._control().stop_postgres_immediately()

    def start_postgres(self) -> None:
        """PostgreSQL starts again on the same address and answers SQL when this returns."""
        self._control().start_postgres()

    @contextlib.contextmanager
    def kafka_paused(self) -> Iterator[None]:
        """The broker frozen (SIGSTOP, or the container paused): connections stay open
        and nothing answers, until the block ends."""
        control = self._control()
        control.pause_kafka()
        try:
            yield
        finally:
            control.resume_kafka()


@dataclass(frozen=True)
class EmbeddedControl:
    stack: EmbeddedStack

    def stop_postgres_immediately(self) -> None:
        self.stack.postgres.stop(mode="immediate")

    def start_postgres(self) -> None:
        self.stack.postgres.start()

    def pause_kafka(self) -> None:
        os.kill(self._kafka_pid(), signal.SIGSTOP)

    def resume_kafka(self) -> None:
        os.kill(self._kafka_pid(), signal.SIGCONT)

    def _kafka_pid(self) -> int:
        pid = self.stack.kafka.pid()
        assert pid is not None, "the embedded broker is not running"
        return pid


@dataclass(frozen=True)
class ContainerControl:
    kafka: Any  # docker.models.containers.Container
    postgres: Any
    database_url: str

    def stop_postgres_immediately(self) -> None:
        # SIGQUIT is PostgreSQL's immediate shutdown, what `pg_ctl -m immediate` sends; the
        # server is the container's main process, so the container stops with it.
        self.postgres.kill(signal="SIGQUIT")
        self.postgres.wait(timeout=60)

    def start_postgres(self) -> None:
        self.postgres.start()
        _wait_for_postgres(self.database_url, self.postgres, timeout_s=60)

    def pause_kafka(self) -> None:
        self.kafka.pause()

    def resume_kafka(self) -> None:
        self.kafka.unpause()


def requested_source() -> str:
    return os.environ.get("FXSTREAM_TEST_STACK", "auto")


def docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def describe_source() -> str:
    """Which stack this run uses and why, for the pytest header."""
    wanted = requested_source()
    if wanted in ("auto", "external") and os.environ.get("KAFKA_BOOTSTRAP") and \
            os.environ.get("DATABASE_URL"):
        return f"external (KAFKA_BOOTSTRAP={os.environ['KAFKA_BOOTSTRAP']})"
    engine = os.environ.get("DOCKER_HOST", "the default Docker socket")
    if wanted in ("auto", "testcontainers") and docker_reachable():
        return (f"testcontainers on {engine} (images "
                f"{os.environ.get('FXSTREAM_KAFKA_IMAGE', KAFKA_IMAGE)}, "
                f"{os.environ.get('FXSTREAM_POSTGRES_IMAGE', POSTGRES_IMAGE)})")
    if wanted == "testcontainers":
        return f"testcontainers requested, but no Docker engine answers at {engine}"
    if wanted == "embedded":
        return "embedded (FXSTREAM_TEST_STACK=embedded)"
    return f"embedded (no external servers set, no Docker engine answers at {engine})"


@contextlib.contextmanager
def real_stack(tmp_root: Path) -> Iterator[RealStack]:
    wanted = requested_source()
    if wanted not in ("auto", "external", "testcontainers", "embedded"):
        raise RuntimeError(f"FXSTREAM_TEST_STACK={wanted}: expected auto, external, "
                           "testcontainers or embedded")
    if wanted in ("auto", "external") and os.environ.get("KAFKA_BOOTSTRAP") and \
            os.environ.get("DATABASE_URL"):
        tmp_root.mkdir(parents=True, exist_ok=True)
        yield RealStack("external", os.environ["KAFKA_BOOTSTRAP"], os.environ["DATABASE_URL"],
                        tmp_root)
        return
    if wanted == "external":
        raise RuntimeError("FXSTREAM_TEST_STACK=external needs KAFKA_BOOTSTRAP and DATABASE_URL")
    if wanted == "testcontainers" or (wanted == "auto" and docker_reachable()):
        if not docker_reachable():
            raise RuntimeError("FXSTREAM_TEST_STACK=testcontainers, but no Docker engine "
                               f"answers at {os.environ.get('DOCKER_HOST', 'the default socket')}"
                               " (`make test-docker` starts one)")
        with testcontainers_stack(tmp_root) as stack:
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
                        embedded=stack, control=EmbeddedControl(stack))
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


# The embedded broker's settings that do not name an address or a directory: the
# container broker runs with the same ones, so both stacks behave alike.
_PER_HOST_SETTINGS = ("listeners", "advertised.listeners", "controller.quorum.bootstrap.servers",
                      "controller.listener.names", "inter.broker.listener.name",
                      "listener.security.protocol.map", "log.dirs")


def kafka_container_env(host_port: int) -> dict[str, str]:
    """KAFKA_* variables (the apache/kafka image's convention) for one KRaft broker that
    clients on this machine reach at 127.0.0.1:<host_port>."""
    env: dict[str, str] = {}
    for line in EmbeddedKafka(Path("/unused"), 0).server_properties().splitlines():
        key, sep, value = line.partition("=")
        if sep and key not in _PER_HOST_SETTINGS:
            name = key.replace("-", "___").replace("_", "__").replace(".", "_").upper()
            env[f"KAFKA_{name}"] = value
    # Clients get 127.0.0.1:<host_port>, which inside the container leads nowhere; the
    # broker's requests to itself (transaction markers, partition verification) go
    # through its own listener BROKER.
    env.update({
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://localhost:9094,"
                           "CONTROLLER://localhost:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{host_port},"
                                      "BROKER://localhost:9094",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
                                                "BROKER:PLAINTEXT",
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        "KAFKA_HEAP_OPTS": f"-Xmx{os.environ.get('FXSTREAM_KAFKA_HEAP', '1G')} -Xms256m",
    })
    return env


@contextlib.contextmanager
def testcontainers_stack(tmp_root: Path) -> Iterator[RealStack]:
    from testcontainers.core.container import DockerContainer

    # Ryuk (the reaper container) comes from a registry; the containers are removed on exit.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    kafka_port, pg_port = free_port(), free_port()
    kafka = DockerContainer(os.environ.get("FXSTREAM_KAFKA_IMAGE", KAFKA_IMAGE))
    for name, value in kafka_container_env(kafka_port).items():
        kafka.with_env(name, value)
    password = secrets.token_urlsafe(18)
    postgres = (
        DockerContainer(os.environ.get("FXSTREAM_POSTGRES_IMAGE", POSTGRES_IMAGE))
        .with_env("POSTGRES_USER", "postgres")
        .with_env("POSTGRES_PASSWORD", password)
        .with_env("POSTGRES_DB", "fxstream")
        # The embedded server's settings.
        .with_command(["postgres", "-c", "fsync=on", "-c", "synchronous_commit=on",
                       "-c", "max_connections=100", "-c", "shared_buffers=256MB"])
        .with_kwargs(shm_size="512m")
    )
    # Published on 127.0.0.1 only: the docker SDK takes (address, port) where
    # with_bind_ports takes a port alone.
    kafka.ports[9092] = ("127.0.0.1", kafka_port)
    postgres.ports[5432] = ("127.0.0.1", pg_port)
    url = f"postgresql://postgres:{password}@127.0.0.1:{pg_port}/fxstream"
    with kafka, postgres:
        bootstrap = f"127.0.0.1:{kafka_port}"
        _wait_for_admin(bootstrap, kafka.get_wrapped_container(), timeout_s=120)
        _wait_for_postgres(url, postgres.get_wrapped_container(), timeout_s=120)
        tmp_root.mkdir(parents=True, exist_ok=True)
        yield RealStack("testcontainers", bootstrap, url, tmp_root,
                        control=ContainerControl(kafka.get_wrapped_container(),
                                                 postgres.get_wrapped_container(), url))


def _running(container: Any) -> bool:
    container.reload()
    if container.status != "running":
        logs = container.logs(tail=30).decode(errors="replace")
        raise RuntimeError(f"container {container.name} is {container.status}:\n{logs}")
    return True


def _wait_for_admin(bootstrap: str, container: Any, timeout_s: float) -> None:
    """Until the broker describes its cluster through the admin API (Kafka logs nothing
    reliable to wait on)."""
    from confluent_kafka.admin import AdminClient

    def answers() -> bool:
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            return bool(admin.describe_cluster(request_timeout=2).result(timeout=3).nodes)
        except Exception:
            return False

    wait_until(answers, timeout_s, f"Kafka at {bootstrap}", alive=lambda: _running(container))


def _wait_for_postgres(url: str, container: Any, timeout_s: float) -> None:
    """Until PostgreSQL answers SQL on the published port (not a log line: the entrypoint
    starts a server once for initialisation before the real one)."""

    def answers() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    wait_until(answers, timeout_s, "PostgreSQL", alive=lambda: _running(container))
