"""Publishing order-book snapshots: the tick publisher's framing and delivery, on
the DOM topic."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from pipeline.core.book import Snapshot
from pipeline.settings import Settings
from producers.kafka_io import TickPublisher


class BookPublisher(TickPublisher):
    """Frames of snapshots of ONE symbol on `settings.topics.dom`, keyed by the
    canonical symbol, with the same framing, idempotence and partitioner as ticks
    (``sent_ticks`` counts snapshots)."""

    def __init__(self, settings: Settings, frame_size: int | None = None,
                 linger_ms: int | None = None, producer: Producer | None = None) -> None:
        super().__init__(settings, frame_size=frame_size, linger_ms=linger_ms,
                         producer=producer)
        self.topic = settings.topics.dom


def snapshot_message(snap: Snapshot) -> dict[str, Any]:
    """A checked snapshot as it goes on the wire (schemas/dom_snapshot.v2.json)."""
    out: dict[str, Any] = {"symbol": snap.symbol, "ts_ms": snap.ts_ms, "bids": snap.bids,
                           "asks": snap.asks}
    if snap.provider is not None:
        out["provider"] = snap.provider
    return out
