"""The worker runtime's offset commit across a rebalance, on its own.

Faust's driver drops from a commit every partition that its consumer thread no
longer holds and still answers True, so a commit that meets a rebalance cannot be
taken as done: had the runtime recorded it, it would never send those offsets
again while no new message moved the cursor, and the group's committed lag would
stay where it was (a drained backlog then shows lag for minutes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple, NoReturn

import pytest

from pipeline.runtime import worker
from pipeline.runtime.worker import AgentRuntime, WorkerRuntime


class TP(NamedTuple):
    topic: str
    partition: int


class _Agent:
    source_topic = "fx.ticks"

    def __init__(self) -> None:
        self.ready = True
        self.committed: dict[int, int] = {}
        self.cursor_next = {0: 120, 1: 80}
        self.unacknowledged: list[Any] = []
        self.settled: list[Any] = []

    def committable(self) -> dict[int, int]:
        return {p: n for p, n in self.cursor_next.items() if self.committed.get(p) != n}

    def on_revoked(self) -> None:
        self.ready = False

    def settling(self) -> tuple[list[Any], list[Any]]:
        sent, self.unacknowledged = self.unacknowledged, []
        return ["marks"], sent

    def settle(self, marks: list[Any]) -> None:
        self.settled.append(marks)


def _runtime(on_flush: Any) -> tuple[WorkerRuntime, _Agent, list[dict[Any, int]]]:
    agent = _Agent()
    sent: list[dict[Any, int]] = []
    tps = [TP("fx.ticks", p) for p in (0, 1)]

    async def flush() -> None:
        await on_flush(runtime)

    async def commit(offsets: dict[Any, int]) -> bool:
        sent.append(dict(offsets))
        return True  # what Faust answers, whatever it dropped

    app = SimpleNamespace(rebalancing=False, should_stop=False,
                          consumer=SimpleNamespace(assignment=lambda: tps, _commit=commit),
                          producer=SimpleNamespace(flush=flush))
    metric = SimpleNamespace(observe=lambda *_: None, set=lambda *_: None,
                             labels=lambda *_: metric)
    runtime = object.__new__(WorkerRuntime)
    runtime.app = app  # type: ignore[assignment]
    runtime.settings = SimpleNamespace(  # type: ignore[assignment]
        worker_group="g", output_ack_timeout_s=0.5)
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


class Stopped(Exception):
    """What the worker's fail-stop raises here instead of leaving the process."""


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    said: list[str] = []

    def fail_stop(what: str) -> NoReturn:
        said.append(what)
        raise Stopped(what)

    monkeypatch.setattr(worker, "fail_stop", fail_stop)
    return said


async def _nothing(runtime: WorkerRuntime) -> None:
    return None


def _commit_with(outcome: Callable[[asyncio.Future[Any]], None], stopping: bool = False
                 ) -> tuple[_Agent, list[dict[Any, int]]]:
    """One commit tick of a runtime whose agent published one output, which ``outcome``
    resolves (or leaves pending)."""
    runtime, agent, sent = _runtime(_nothing)
    runtime.app.should_stop = stopping

    async def tick() -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outcome(future)
        agent.unacknowledged.append(future)
        await runtime.commit_applied()

    asyncio.run(tick())
    return agent, sent


def test_positions_settle_once_kafka_acknowledged_their_outputs(stops: list[str]) -> None:
    agent, sent = _commit_with(lambda f: f.set_result("metadata"))
    assert agent.settled == [["marks"]] and len(sent) == 1 and not stops


def test_an_output_kafka_refused_stops_the_worker_before_anything_settles(
        stops: list[str]) -> None:
    with pytest.raises(Stopped):
        _commit_with(lambda f: f.set_exception(RuntimeError("MessageSizeTooLarge")))
    assert "Kafka refused 1 of 1 records the worker sent" in stops[0]


def test_outputs_not_acknowledged_in_time_stop_the_worker(stops: list[str]) -> None:
    with pytest.raises(Stopped):
        _commit_with(lambda f: None)  # never answered: the broker is gone
    assert "FXSTREAM_OUTPUT_ACK_TIMEOUT_S" in stops[0]


def test_a_cancelled_send_stops_a_running_worker(stops: list[str]) -> None:
    with pytest.raises(Stopped):
        _commit_with(lambda f: f.cancel())
    assert "cancelled unsent" in stops[0]


def test_a_send_cancelled_while_the_worker_stops_settles_nothing(stops: list[str]) -> None:
    agent, _ = _commit_with(lambda f: f.cancel(), stopping=True)
    assert agent.settled == [] and not stops


def test_waiting_for_acknowledgements_never_cancels_the_sends(stops: list[str]) -> None:
    """Faust's callback on a send expects a result or an exception, not a cancellation."""
    futures: list[asyncio.Future[Any]] = []
    with pytest.raises(Stopped):
        _commit_with(futures.append)  # never answered: the timeout passes
    assert not futures[0].cancelled()


# --- recoveries that overlap: Faust can start a second while the first re-sends ----------------


class _Table(dict[bytes, bytes]):
    data: object = None  # not a memory store: nothing to forget


def _recovering_agent(sends: list[tuple[int, bytes]]) -> tuple[AgentRuntime, dict[str, Any]]:
    """An agent over a recovered table of three states in partition 0; ``gates`` holds,
    per step and call (("identity", n), ("send", n)), an event that call waits for."""
    from pipeline.runtime.positions import encode_envelope

    agent = object.__new__(AgentRuntime)
    metric = SimpleNamespace(observe=lambda *_: None, set=lambda *_: None)
    agent.table = _Table({s: encode_envelope(0, i, {"n": i})  # type: ignore[assignment]
                          for i, s in enumerate((b"EUR/USD", b"GBP/USD", b"USD/JPY"))})
    agent.app = SimpleNamespace(  # type: ignore[assignment]
        consumer=SimpleNamespace(assignment=lambda: {TP("fx.ticks", 0)}))
    agent.source_topic = "fx.ticks"
    agent.spec = SimpleNamespace(name="candles",  # type: ignore[assignment]
                                 resend=lambda state, now: [dict(state)])
    agent.metrics = SimpleNamespace(recovery_seconds=metric,  # type: ignore[assignment]
                                    recovering=metric, state_keys=metric, state_bytes=metric)
    agent.views, agent.arrivals, agent.clock_sent, agent.committed = {}, {}, set(), {}
    agent.ready, agent.not_ready_since, agent.unacknowledged = False, 0.0, []
    agent.resending, agent._recoveries, agent.fetcher = 0, 0, None
    control: dict[str, Any] = {"gates": {}}

    async def identity(views: dict[int, Any], recovery: int) -> None:
        control.setdefault("identity_calls", 0)
        control["identity_calls"] += 1
        event = control["gates"].get(("identity", control["identity_calls"]))
        if event is not None:
            await event.wait()

    async def send(key: bytes, outputs: list[Any], p: int, o: int) -> None:
        assert control.get("connects"), "re-sent before the producers were connected"
        sends.append((agent._recoveries, key))
        event = control["gates"].get(("send", len(sends)))
        if event is not None:
            await event.wait()

    async def connected() -> None:
        control["connects"] = control.get("connects", 0) + 1

    agent._check_source_identity = identity  # type: ignore[method-assign]
    agent._send_outputs = send  # type: ignore[method-assign]
    agent.publishers = SimpleNamespace(connect=connected)  # type: ignore[assignment]
    return agent, control


def test_a_recovery_that_ends_while_an_earlier_one_re_sends_settles_nothing_yet() -> None:
    sends: list[tuple[int, bytes]] = []
    agent, control = _recovering_agent(sends)

    async def scenario() -> None:
        first_send_held = asyncio.Event()
        control["gates"][("send", 1)] = first_send_held
        first = asyncio.create_task(agent._after_recovery())
        while not sends:
            await asyncio.sleep(0)
        assert agent.settling()[0] == []  # re-sending
        await agent._after_recovery()  # a second recovery, done while the first waits
        assert agent.settling()[0] == [], "the first recovery still re-sends"
        first_send_held.set()
        await first
        marks = agent.settling()[0]
        assert [last for _, last in marks] == [2]

    asyncio.run(scenario())
    # the first stopped after its held send: the second re-sent every state itself
    assert [k for r, k in sends if r == 2] == [b"EUR/USD", b"GBP/USD", b"USD/JPY"]
    assert len(sends) == 4


def test_a_superseded_recovery_leaves_the_views_of_the_later_one() -> None:
    sends: list[tuple[int, bytes]] = []
    agent, control = _recovering_agent(sends)

    async def scenario() -> None:
        identity_held = asyncio.Event()
        control["gates"][("identity", 1)] = identity_held
        first = asyncio.create_task(agent._after_recovery())
        while control.get("identity_calls") != 1:
            await asyncio.sleep(0)
        await agent._after_recovery()
        views = agent.views
        identity_held.set()
        await first
        assert agent.views is views, "the earlier recovery replaced the later one's views"

    asyncio.run(scenario())
    assert len(sends) == 3  # the superseded one sent nothing


def test_a_recovery_that_meets_a_revocation_takes_in_nothing() -> None:
    """Its partitions may be another worker's by now: re-sending them, or closing their
    bars by the clock, would publish stale versions over the new owner's."""
    sends: list[tuple[int, bytes]] = []
    agent, control = _recovering_agent(sends)

    async def scenario() -> None:
        identity_held = asyncio.Event()
        control["gates"][("identity", 1)] = identity_held
        recovery = asyncio.create_task(agent._after_recovery())
        while control.get("identity_calls") != 1:
            await asyncio.sleep(0)
        agent.on_revoked()
        identity_held.set()
        await recovery

    asyncio.run(scenario())
    assert not agent.ready and agent.views == {} and sends == []


def _stall_check(monkeypatch: pytest.MonkeyPatch, view: Any, high: int,
                 position: Callable[[Any], Any]) -> tuple[AgentRuntime, list[dict[Any, int]]]:
    """Run the Faust path's stall check once over partition 4 of fx.sentiment, whose
    end is ``high`` and whose consumer answers ``position``; returns the seeks made."""
    agent = object.__new__(AgentRuntime)
    agent.views = {4: view}
    agent.ready, agent.source_topic, agent.fetcher = True, "fx.sentiment", None
    agent.settings = SimpleNamespace(kafka_bootstrap="127.0.0.1:9")  # type: ignore[assignment]
    agent.stats = worker.AgentStats()
    seeks: list[dict[Any, int]] = []
    tp = TP("fx.sentiment", 4)

    async def seek(_app: Any, offsets: dict[Any, int]) -> None:
        seeks.append(offsets)

    agent.app = SimpleNamespace(  # type: ignore[assignment]
        rebalancing=False, consumer=SimpleNamespace(assignment=lambda: {tp}, position=position))
    monkeypatch.setattr(worker, "watermarks", lambda *_: {4: (0, high)})
    monkeypatch.setattr(worker, "seek_in_consumer_thread", seek)
    asyncio.run(agent.resume_stalled(5.0))
    return agent, seeks


def test_a_partition_delivered_while_the_stall_check_waits_is_not_sought_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall check awaits the partition's ends and its consumer's read position;
    a message delivered meanwhile makes the partition one that is read, not stalled.
    Seen in a backlog drain: "delivered nothing for 0 s while offsets 0..1 wait
    unapplied; seeking back to 0" on the sentiment source, right after its first two
    records arrived."""
    from pipeline.runtime.worker import PartitionView

    view = PartitionView(last_seen=0.0)  # idle since long before the check

    async def position(_tp: Any) -> int:
        await asyncio.sleep(0)
        view.last_seen, view.applied = worker.time.monotonic(), 1  # both records delivered
        return 2

    agent, seeks = _stall_check(monkeypatch, view, 2, position)
    assert seeks == [] and agent.stats.resumed == 0


def test_a_partition_read_to_its_end_and_idle_is_sought_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side of the check above: nothing delivered, the consumer's position at
    the end, messages unapplied: sought to the first unapplied offset."""
    from pipeline.runtime.worker import PartitionView

    async def position(_tp: Any) -> int:
        return 9

    agent, seeks = _stall_check(monkeypatch, PartitionView(last_seen=0.0, applied=3), 9,
                                position)
    assert seeks == [{TP("fx.sentiment", 4): 4}] and agent.stats.resumed == 1


class _Fetcher:
    def __init__(self) -> None:
        self.epoch = 1
        self.assigned: list[dict[int, int]] = []

    def waiting_bytes(self) -> int:
        return 0

    def assign(self, offsets: dict[int, int]) -> None:
        self.epoch += 1
        self.assigned.append(offsets)


def _fetching_agent(views: dict[int, Any]) -> tuple[AgentRuntime, _Fetcher]:
    agent = object.__new__(AgentRuntime)
    fetcher = _Fetcher()
    agent.views, agent.fetcher = views, fetcher  # type: ignore[assignment]
    agent.ready, agent.source_topic = True, "fx.ticks"
    agent.settings = SimpleNamespace(kafka_bootstrap="127.0.0.1:9")  # type: ignore[assignment]
    agent.stats = worker.AgentStats()
    agent.app = SimpleNamespace(rebalancing=False)  # type: ignore[assignment]
    return agent, fetcher


def test_a_partition_the_fetcher_stopped_short_of_its_end_is_fetched_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka retries a failing fetch itself; should a partition still stop short
    of its end, the stall check assigns every held partition again from its first
    unapplied offset."""
    from pipeline.runtime.worker import PartitionView

    stalled, quiet = PartitionView(last_seen=0.0, applied=3), PartitionView(last_seen=0.0,
                                                                             applied=9)
    agent, fetcher = _fetching_agent({0: stalled, 1: quiet})
    monkeypatch.setattr(worker, "watermarks", lambda *_: {0: (0, 8), 1: (0, 10)})
    asyncio.run(agent.resume_stalled(5.0))
    assert fetcher.assigned == [{0: 4, 1: 10}] and agent.stats.resumed == 1


def test_a_partition_fetched_while_the_stall_check_asks_for_its_end_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.runtime.worker import PartitionView

    view = PartitionView(last_seen=0.0, applied=3)
    agent, fetcher = _fetching_agent({0: view})

    def ends(*_: Any) -> dict[int, tuple[int, int]]:
        view.last_seen = worker.time.monotonic()  # its messages came meanwhile
        return {0: (0, 8)}

    monkeypatch.setattr(worker, "watermarks", ends)
    asyncio.run(agent.resume_stalled(5.0))
    assert fetcher.assigned == [] and agent.stats.resumed == 0
