"""The Kafka side of every fxstream producer: framing, delivery, dead letters."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from pipeline.core.deadletters import dead_letter_key
from pipeline.settings import Settings
from producers.framing import FrameCoalescer

log = logging.getLogger("fxstream.producer")


class DeliveryError(RuntimeError):
    """Kafka refused messages after the producer's own retries; the message says which."""


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.require_connections().kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        # The same partition for a symbol whichever client writes it (Java, aiokafka/Faust).
        "partitioner": "murmur2_random",
        # Frames already wait FXSTREAM_FRAME_LINGER_MS for their ticks; a second long
        # wait here would only add latency. Large frames fill batches by themselves.
        "linger.ms": 5,
        "batch.size": 1 << 20,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1 << 20,
        "message.max.bytes": 8 << 20,
    }
    config.update(extra)
    return config


class TickPublisher:
    """Publishes ticks to the raw tick topic in per-symbol frames.

    A symbol's frame goes out at ``frame_size`` ticks or after ``linger_ms``,
    whichever comes first. With frame_size 1 each tick is its own message (a JSON
    object rather than an array), as external producers may send.
    """

    def __init__(self, settings: Settings, frame_size: int | None = None,
                 linger_ms: int | None = None, producer: Producer | None = None,
                 topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.ticks  # DOM snapshots go out framed the same way
        self.frame_size = frame_size or settings.frame_size
        self.linger_ms = settings.frame_linger_ms if linger_ms is None else linger_ms
        self.coalescer = FrameCoalescer(self.frame_size, self.linger_ms)
        self.producer = producer or Producer(producer_config(settings))
        self.sent_ticks = 0
        self.sent_messages = 0
        self.dead_letters = 0
        self.failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}[{msg.key()!r}]: {err.str()}")

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain

    def _send(self, frames: list[tuple[str, list[Any]]]) -> None:
        for symbol, frame in frames:
            value = orjson.dumps(frame[0] if self.frame_size == 1 else frame)
            self._produce(self.topic, symbol.encode(), value)
            self.sent_ticks += len(frame)
            self.sent_messages += 1

    def publish(self, symbol: str, tick: dict[str, Any], now_ms: float | None = None) -> None:
        """Queue one tick of a canonical symbol."""
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        ready = self.coalescer.add(symbol, tick, now)
        if ready:
            self._send(ready)

    def tick(self, now_ms: float | None = None) -> None:
        """Send frames whose linger has passed and serve delivery callbacks."""
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        due = self.coalescer.due(now)
        if due:
            self._send(due)
        self.producer.poll(0)
        self._raise_failures()

    def dead_letter(self, record: dict[str, Any]) -> None:
        self._produce(self.settings.topics.dead_letter, dead_letter_key(record),
                      orjson.dumps(record))
        self.dead_letters += 1

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send everything buffered and wait until Kafka has acknowledged it."""
        self._send(self.coalescer.drain())
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} messages not acknowledged by Kafka after "
                                f"{timeout_s:.0f} s (is the broker at "
                                f"{self.settings.kafka_bootstrap} up?)")
        self._raise_failures()

    def _raise_failures(self) -> None:
        if self.failures:
            first = self.failures[:3]
            raise DeliveryError(f"{len(self.failures)} messages were refused: {first}")
