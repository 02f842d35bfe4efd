"""The latency step's ceiling: the candle fold on a plain librdkafka loop.

It consumes the tick topic with confluent-kafka (with the worker's fetch wait), applies
``pipeline.core.candles`` through the candle agent's declaration and sends each message's
records as the worker runtime does (bars in frames to the candle topic with their source
partition and position, order flow to the sentiment topic), through a producer configured
as the worker's output producer. It has no Faust, no changelog, no dead letters and no
recovery: it is not exactly-once and exists only so that ``fxstream bench --only ceiling``
can show about how fast the rest of the path (the producers' framing, the broker, the
sink, PostgreSQL) can be at the latency step's rate, beside the real worker's figures.

Run as ``python -m bench.latency_ceiling_worker CONFIG``; SIGTERM stops it. Like a candle
worker it logs "recovered candle state" once it holds its partitions and its producer is
connected, and a "candle worker stopping" line the bench reads.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer

from pipeline.agents.candles import candle_agent
from pipeline.runtime.declaration import TARGET
from pipeline.runtime.output_producer import output_producer_config
from pipeline.runtime.worker import output_frames
from pipeline.settings import Settings, load_settings


def run(settings: Settings) -> None:
    spec = candle_agent(settings)
    topics = settings.topics
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.worker_group}-ceiling",
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.worker_fetch_wait_ms,
    })
    producer = Producer(output_producer_config(settings, settings.worker_linger_ms))
    failed: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(f"{msg.topic()}: {err}")

    def assigned(consumer: Consumer, partitions: list[Any]) -> None:
        # Ready as the worker is: its partitions held and its producer connected
        for topic in (topics.candles, topics.sentiment):
            producer.list_topics(topic, timeout=30)
        print(f"recovered candle state of 0 symbols (latency ceiling: {len(partitions)} "
              "partitions, no state kept)", flush=True)

    consumer.subscribe([topics.ticks], on_assign=assigned)
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    states: dict[bytes, dict[str, Any]] = {}
    messages = ticks = 0
    first = last = 0.0
    while not stopping:
        head = consumer.poll(0.1)
        producer.poll(0)
        if failed:
            sys.exit(f"latency ceiling: Kafka refused a record ({failed[0]})")
        if head is None:
            continue
        for msg in [head, *consumer.consume(500, 0)]:
            if msg.error() or msg.key() is None:
                continue
            last = time.monotonic()
            first = first or last
            key = msg.key()
            value = orjson.loads(msg.value())
            items = value if isinstance(value, list) else [value]
            position = msg.offset()  # a fresh topic: the runtime's positions are its offsets
            # Every earlier message's outputs count as stored: nothing is re-sent later
            outcome = spec.fold(states.get(key), key.decode(), items, position,
                                int(time.time() * 1000), position - 1)
            if outcome.state is not None and not outcome.skipped:
                states[key] = outcome.state
                by_topic: dict[str, list[dict[str, Any]]] = {}
                for record in outcome.outputs:
                    target = record.pop(TARGET, None)
                    if target is None:  # a bar, versioned by its source message
                        record["src_partition"] = msg.partition()
                        record["src_offset"] = position
                    name = topics.candles if target is None else getattr(topics, target)
                    by_topic.setdefault(name, []).append(record)
                for name, records in by_topic.items():
                    for frame in output_frames(records, settings.max_state_bytes):
                        producer.produce(name, frame, key, on_delivery=delivered)
            messages += 1
            ticks += len(items)
    producer.flush(30)
    consumer.close()
    print(f"candle worker stopping: {messages} messages, {ticks} ticks; {last - first:.3f} s "
          "between the first and the last message", flush=True)


if __name__ == "__main__":
    run(load_settings(sys.argv[1]).require_connections())
