from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from pipeline.settings import Settings, Topics
from tests.stack_fixtures import RealStack, real_stack


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which real servers this run uses, and whether the docker compose tests can run."""
    from tests.compose_fixtures import describe_compose
    from tests.stack_fixtures import describe_source

    return [f"fxstream stack: {describe_source()}", f"docker compose: {describe_compose()}"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The real Kafka broker and PostgreSQL server every integration test shares."""
    with real_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def unique_topics(prefix: str | None = None) -> Topics:
    p = prefix or f"t{uuid.uuid4().hex[:8]}"
    return Topics(
        ticks=f"{p}.ticks", dom=f"{p}.dom", sentiment=f"{p}.sentiment", candles=f"{p}.candles",
        dom_metrics=f"{p}.dom-metrics", sentiment_metrics=f"{p}.sentiment-metrics",
        dead_letter=f"{p}.dead-letter",
    )


@pytest.fixture
def make_settings(stack: RealStack, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the shared stack with this test's own topics, groups and database."""

    def build(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            "kafka_bootstrap": stack.kafka_bootstrap,
            "database_url": stack.new_database(),
            "state_dir": tmp_path / "state",
            "topics": unique_topics(f"t{tag}"),
            "worker_group": f"worker-{tag}",
            "sink_group": f"sink-{tag}",
            "external_stack": True,
        }
        values.update(overrides)
        return Settings(**values)

    return build


class Watched(Protocol):
    """A process a wait watches (tests.pipeline_helpers.Proc)."""

    log: Path

    def alive(self) -> bool: ...

    def tail(self, lines: int = 40) -> str: ...


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.2, watch: Sequence[Watched] = ()) -> Any:
    """Poll until condition() is truthy; fail with ``what`` after timeout_s.

    A process in ``watch`` that exits meanwhile fails the wait at once, and a timeout
    shows the end of every watched log: what the processes said is the evidence."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        dead = [p for p in watch if not p.alive()]
        if dead or time.monotonic() > deadline:
            problem = (f"{', '.join(p.log.name for p in dead)} exited" if dead
                       else f"timed out after {timeout_s} s")
            logs = "".join(f"\n--- {p.log.name}:\n{p.tail()}" for p in watch)
            raise AssertionError(f"{problem} waiting for {what}{logs}")
        time.sleep(interval_s)
