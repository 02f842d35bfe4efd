"""The worker consumer's commit guard (pipeline.runtime.commit_floor), on its own."""

from __future__ import annotations

from pipeline.runtime.commit_floor import CommitFloor

A, B = ("fx.ticks", 0), ("fx.ticks", 1)


def test_an_older_offset_is_dropped_once_a_newer_one_was_committed() -> None:
    floor = CommitFloor()
    floor.committed({A: 455, B: 40}, held={A, B})
    # Faust's committer, its acknowledgements stuck behind a re-read range
    assert floor.ahead({A: 149, B: 41}) == {B: 41}
    assert floor.ahead({A: 455}) == {A: 455}  # the same offset again is harmless


def test_partitions_the_commit_did_not_hold_are_not_recorded() -> None:
    floor = CommitFloor()
    floor.committed({A: 100, B: 100}, held={A})  # B left mid-commit: the driver dropped it
    assert floor.ahead({A: 50, B: 50}) == {B: 50}


def test_a_revoked_or_restarted_partition_starts_afresh() -> None:
    floor = CommitFloor()
    floor.committed({A: 900, B: 900}, held={A, B})
    floor.forget([A])  # revoked, or its topic re-created: from 0 on purpose
    assert floor.ahead({A: 0, B: 0}) == {A: 0}
