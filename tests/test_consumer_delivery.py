"""The worker consumer's race of a message's delivery against the flow's suspension
(pipeline.runtime.app), on its own: it must end as mode's ``wait_first`` does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode.utils.locks import Event

from pipeline.runtime.app import _consumer_with_fetch_wait


def bare_consumer() -> Any:
    """The consumer class without a Faust app: only what ``wait_first`` reads."""
    consumer = object.__new__(_consumer_with_fetch_wait(20))
    consumer.suspend_flow = asyncio.Event()
    consumer._stopped, consumer._crashed = Event(), Event()
    consumer._interrupt = None
    return consumer


def test_a_delivery_that_completes_is_the_winner() -> None:
    async def main() -> None:
        consumer = bare_consumer()
        delivered = []

        async def deliver() -> str:
            delivered.append(1)
            return "delivered"

        for _ in range(3):  # the shared interrupt task serves message after message
            result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
            assert result.results == ["delivered"] and not result.stopped
        assert len(delivered) == 3
        assert consumer._interrupt is not None and not consumer._interrupt.done()
        consumer._interrupt.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("signal", ["suspend", "stop", "crash"])
def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended_or_the_consumer_stops(
        signal: str) -> None:
    async def main() -> None:
        consumer = bare_consumer()
        blocked = asyncio.Event()
        started = asyncio.Event()
        completed = []

        async def deliver() -> None:
            started.set()
            await blocked.wait()  # a full stream queue, say
            completed.append(1)

        waiting = asyncio.ensure_future(
            consumer.wait_first(deliver(), consumer.suspend_flow.wait()))
        await started.wait()
        {"suspend": consumer.suspend_flow, "stop": consumer._stopped,
         "crash": consumer._crashed}[signal].set()
        result = await asyncio.wait_for(waiting, 5)  # returns, does not raise
        assert result.stopped == (signal != "suspend")
        assert not result.results or result.results == [True]
        blocked.set()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)  # the cancelled delivery unwinds
        assert not completed, "the delivery went on after the flow was interrupted"

    asyncio.run(main())


def test_a_delivery_that_fails_raises_as_in_mode() -> None:
    async def main() -> None:
        consumer = bare_consumer()

        async def deliver() -> None:
            raise RuntimeError("stream gone")

        with pytest.raises(RuntimeError, match="stream gone"):
            await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        consumer._interrupt.cancel()

    asyncio.run(main())


def test_a_suspended_flow_goes_through_modes_own_path() -> None:
    async def main() -> None:
        consumer = bare_consumer()
        consumer.suspend_flow.set()
        consumer.loop = asyncio.get_running_loop()

        async def deliver() -> str:
            return "delivered"

        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        assert consumer._interrupt is None  # the fast path made no interrupt task

    asyncio.run(main())
