"""Kafka offset commits that never go back while a worker holds a partition.

Two committers share the worker's consumer: the runtime's (from the cursors, once a
second) and Faust's own (from its acknowledgement lists, every commit interval, at
revocation and at shutdown). Faust's lists stop at messages the runtime re-read
(Faust skipped them around a rebalance and never acknowledges them) and from there
advance by one offset a commit, so Faust would commit offsets far older than the
runtime's over them: the group's committed offsets went back and crawled up for a
minute or more after every message was applied. Both committers go through the
driver's ``_commit``; the floor there drops what would go back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


class CommitFloor:
    """The greatest offset committed per held partition since it was assigned."""

    def __init__(self) -> None:
        self._floor: dict[Any, int] = {}

    def ahead(self, offsets: Mapping[Any, int]) -> dict[Any, int]:
        """The offsets not below what was committed already (equal ones pass: harmless)."""
        floor = self._floor
        return {tp: off for tp, off in offsets.items() if off >= floor.get(tp, -1)}

    def committed(self, offsets: Mapping[Any, int], held: Collection[Any]) -> None:
        """Record a successful commit; only partitions still held count (the driver drops
        the others from the request and still reports success)."""
        floor = self._floor
        for tp, off in offsets.items():
            if tp in held and off > floor.get(tp, -1):
                floor[tp] = off

    def forget(self, tps: Collection[Any]) -> None:
        """Partitions revoked, or restarted on purpose (a re-created topic from 0)."""
        for tp in tps:
            self._floor.pop(tp, None)
