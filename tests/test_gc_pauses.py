"""Start-up objects are kept out of full collections (the worker and the sinks freeze
theirs before their loops: pipeline.gc_pauses)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline.gc_pauses import freeze_startup_objects


@pytest.fixture
def unfrozen_after() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen_after")
def test_objects_alive_at_the_call_leave_the_collected_generations() -> None:
    kept = [{"n": i} for i in range(10_000)]  # long-lived, tracked: what start-up makes
    frozen = freeze_startup_objects()
    assert frozen >= len(kept)
    in_reach = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
    assert not any(id(o) in in_reach for o in kept)
    # what is made afterwards is collected as before
    later: list[object] = []
    later.append(later)  # a cycle
    assert any(o is later for o in gc.get_objects(generation=0))

