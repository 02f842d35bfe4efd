"""The worker runtime's offset commit across a rebalance, on its own.

Faust's driver drops from a commit every partition that its consumer thread no
longer holds and still answers True, so a commit that meets a rebalance cannot be
taken as done: had the runtime recorded it, it would never send those offsets
again while no new message moved the cursor, and the group's committed lag would
stay where it was (a drained backlog then shows lag for minutes)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, NamedTuple

from pipeline.runtime.worker import WorkerRuntime


class TP(NamedTuple):
    topic: str
    partition: int


class _Agent:
    source_topic = "fx.ticks"

    def __init__(self) -> None:
        self.ready = True
        self.committed: dict[int, int] = {}
        self.cursor_next = {0: 120, 1: 80}

    def committable(self) -> dict[int, int]:
        return {p: n for p, n in self.cursor_next.items() if self.committed.get(p) != n}

    def on_revoked(self) -> None:
        self.ready = False

    def settling(self) -> list[Any]:
        return []

    def settle(self, marks: list[Any]) -> None:
        pass


def _runtime(on_flush: Any) -> tuple[WorkerRuntime, _Agent, list[dict[Any, int]]]:
    agent = _Agent()
    sent: list[dict[Any, int]] = []
    tps = [TP("fx.ticks", p) for p in (0, 1)]

    async def flush() -> None:
        await on_flush(runtime)

    async def commit(offsets: dict[Any, int]) -> bool:
        sent.append(dict(offsets))
        return True  # what Faust answers, whatever it dropped

    app = SimpleNamespace(rebalancing=False,
                          consumer=SimpleNamespace(assignment=lambda: tps, _commit=commit),
                          producer=SimpleNamespace(flush=flush))
    metric = SimpleNamespace(observe=lambda *_: None, set=lambda *_: None,
                             labels=lambda *_: metric)
    runtime = object.__new__(WorkerRuntime)
    runtime.app = app  # type: ignore[assignment]
    runtime.settings = SimpleNamespace(worker_group="g")  # type: ignore[assignment]
    runtime.metrics = SimpleNamespace(commit_seconds=metric,  # type: ignore[assignment]
                                      common=SimpleNamespace(last_commit=metric))
    runtime.agents = [agent]  # type: ignore[list-item]
    runtime._rebalances = 0
    return runtime, agent, sent


def test_a_commit_that_meets_a_rebalance_is_sent_again() -> None:
    async def rebalance_meanwhile(runtime: WorkerRuntime) -> None:
        await runtime._on_revoked(runtime.app, set())
        runtime.app.rebalancing = True

    runtime, agent, sent = _runtime(rebalance_meanwhile)
    asyncio.run(runtime.commit_applied())
    assert len(sent) == 1
    assert agent.committed == {}, "a commit that met a rebalance was taken as done"


def test_a_quiet_commit_is_recorded_and_not_repeated() -> None:
    async def nothing(runtime: WorkerRuntime) -> None:
        return None

    runtime, agent, sent = _runtime(nothing)
    asyncio.run(runtime.commit_applied())
    asyncio.run(runtime.commit_applied())
    assert agent.committed == {0: 120, 1: 80}
    assert len(sent) == 1
