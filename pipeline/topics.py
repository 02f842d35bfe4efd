"""Topic creation through the AdminClient, idempotent."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from pipeline.settings import Settings


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: dict[str, int]  # name -> partition count


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.require_connections().kafka_bootstrap})


def list_topics(admin: AdminClient, settings: Settings, timeout_s: float) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConnectionError(
            f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}"
        ) from None


def create_topics(settings: Settings, timeout_s: float = 30.0) -> TopicReport:
    """Create every fxstream topic that does not exist yet; leave the others alone."""
    admin = admin_client(settings)
    metadata = list_topics(admin, settings, timeout_s)
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
    if wanted:  # new here, or made a moment ago by another process
        wait_for_leaders(settings, wanted, timeout_s * 2)
    return TopicReport(created=created, existing={
        t: n for t, n in existing.items() if t in settings.topics.all()
    })


def create_changelog_topics(settings: Settings, names: Iterable[str],
                            config: Mapping[str, str], timeout_s: float = 30.0) -> list[str]:
    """Create the worker's changelog topics before the worker starts, with the source
    topics' partition count, and wait until every partition has a leader.

    Faust would create them itself, but while it starts: a consumer that joins the group
    before the new topic reaches its metadata records it with no partitions, and Faust's
    table then refuses every write of that table (PartitionsMismatch) until a metadata
    refresh minutes later; the agent's stream stalls meanwhile. An existing changelog with
    another partition count cannot hold the tables' partitions: a clear error."""
    names = list(names)
    admin = admin_client(settings)
    metadata = list_topics(admin, settings, timeout_s)
    created = []
    for name in names:
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            if len(topic.partitions) != settings.partitions:
                raise RuntimeError(
                    f"changelog topic {name!r} has {len(topic.partitions)} partitions, but the "
                    f"worker's source topics have {settings.partitions} (FXSTREAM_PARTITIONS): "
                    "a table's changelog must match its source. Use another worker group "
                    "(FXSTREAM_WORKER_GROUP) or delete the changelog to rebuild the state.")
            continue
        created.append(name)
    if created:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=settings.partitions,
                      replication_factor=settings.replication_factor, config=dict(config))
             for name in created], request_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name!r}: {err.str()}") from None
    wait_for_leaders(settings, names, timeout_s)
    return created


def wait_for_leaders(settings: Settings, names: Iterable[str], timeout_s: float = 60.0) -> None:
    """Wait until every partition of ``names`` takes writes.

    A topic just created is in the cluster's metadata, leaders and all, before its leader
    has made the partition in its log manager: on a busy broker that takes a second or
    more, one partition after another. Records produced into that window were seen to
    be lost without an error (an idempotent producer's first batch to the partition), so
    a partition counts only once its leader answers for its offsets (ListOffsets goes to
    the partition itself, not to the metadata cache)."""
    names = list(names)
    admin = admin_client(settings)
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                      "group.id": "fxstream-topic-probe", "enable.auto.commit": False})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            topics = list_topics(admin, settings, 10).topics
            missing = []
            for name in names:
                meta = topics.get(name)
                if meta is None or meta.error is not None or not meta.partitions:
                    missing.append(name)
                    continue
                for p, part in meta.partitions.items():
                    if part.leader < 0 or part.error is not None:
                        missing.append(f"{name}[{p}]")
                        continue
                    try:
                        probe.get_watermark_offsets(TopicPartition(name, p), timeout=5)
                    except KafkaException:
                        missing.append(f"{name}[{p}]")
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ConnectionError(f"Kafka partitions not taking writes after "
                                      f"{timeout_s:.0f} s: {', '.join(missing[:5])}")
            time.sleep(0.2)
    finally:
        probe.close()
