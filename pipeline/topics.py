"""Topic creation through the AdminClient, idempotent."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.settings import Settings


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: dict[str, int]  # name -> partition count


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.require_connections().kafka_bootstrap})


def create_topics(settings: Settings, timeout_s: float = 30.0) -> TopicReport:
    """Create every fxstream topic that does not exist yet; leave the others alone."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConnectionError(
            f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}"
        ) from None
    existing = {name: len(t.partitions) for name, t in metadata.topics.items()}
    wanted = [t for t in settings.topics.all() if t not in existing]
    created: list[str] = []
    if wanted:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=settings.partitions,
                      replication_factor=settings.replication_factor) for t in wanted],
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
                existing[name] = settings.partitions
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name!r}: {err.str()}") from None
                existing[name] = settings.partitions
    return TopicReport(created=created, existing={
        t: n for t, n in existing.items() if t in settings.topics.all()
    })
