"""What the worker and the sink count, as Prometheus metrics.

Each process builds one `CollectorRegistry` in its shell (`pipeline.runtime.run`,
`consumers.sinks`) and passes the metrics below down to its runtime; nothing is
registered in prometheus-client's global registry. The runtimes count per
message (a frame of ticks) or per batch, never per tick or per row.

Names shared by both processes, so one alert or panel covers them:

- ``fxstream_dead_letters_total{stage, source, reason}``: stage ``worker`` (source:
  the agent) or ``sink`` (source: the table);
- ``fxstream_consumer_lag{group, topic, partition}``: messages between the end of
  the partition and what the process has applied (worker) or written (sink);
- ``fxstream_last_commit_timestamp_seconds{group, topic}``: the last offset commit;
- ``fxstream_ready``, ``fxstream_heartbeat_age_seconds``: what /readyz and /healthz
  answer (pipeline.observability.health).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

WORKER_METRICS_PORT = 9464
SINK_METRICS_PORT = 9465

# Seconds: from a millisecond (a small COPY) to ten minutes (a long recovery).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def new_registry() -> CollectorRegistry:
    """A process's registry, with the process collector (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class CommonMetrics:
    """Metrics of both processes."""

    dead_letters: Counter
    consumer_lag: Gauge
    last_commit: Gauge
    ready: Gauge
    heartbeat_age: Gauge

    @classmethod
    def build(cls, registry: CollectorRegistry) -> CommonMetrics:
        return cls(
            dead_letters=Counter(
                "fxstream_dead_letters", "Records sent to the dead-letter topic",
                ["stage", "source", "reason"], registry=registry),
            consumer_lag=Gauge(
                "fxstream_consumer_lag", "Messages between the partition's end and what this "
                "process has applied or written", ["group", "topic", "partition"],
                registry=registry),
            last_commit=Gauge(
                "fxstream_last_commit_timestamp_seconds", "Unix time of the last offset "
                "commit", ["group", "topic"], registry=registry),
            ready=Gauge("fxstream_ready", "1 when /readyz answers 200", registry=registry),
            heartbeat_age=Gauge("fxstream_heartbeat_age_seconds", "Seconds since the process "
                                "loop last beat (/healthz fails past the stale limit)",
                                registry=registry),
        )


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's metrics; every per-agent series is labelled ``agent``."""

    common: CommonMetrics
    messages_in: Counter
    records_in: Counter
    messages_skipped: Counter
    messages_reread: Counter
    records_out: Counter
    messages_out: Counter
    recovering: Gauge
    recovery_seconds: Histogram
    state_keys: Gauge
    state_bytes: Gauge
    commit_seconds: Histogram

    @classmethod
    def build(cls, registry: CollectorRegistry) -> WorkerMetrics:
        agent = ["agent"]
        return cls(
            common=CommonMetrics.build(registry),
            messages_in=Counter("fxstream_worker_messages_in", "Source messages applied "
                                "(a frame counts once)", agent, registry=registry),
            records_in=Counter("fxstream_worker_records_in", "Items in the applied messages: "
                               "ticks, book snapshots or positioning observations", agent,
                               registry=registry),
            messages_skipped=Counter("fxstream_worker_messages_skipped", "Messages delivered "
                                     "again at or below the partition's cursor (applied "
                                     "already)", agent, registry=registry),
            messages_reread=Counter("fxstream_worker_messages_reread", "Messages the consumer "
                                    "skipped, read directly from Kafka", agent,
                                    registry=registry),
            records_out=Counter("fxstream_worker_records_out", "Records published: candles, "
                                "DOM bars and samples, sentiment metrics", agent,
                                registry=registry),
            messages_out=Counter("fxstream_worker_messages_out", "Messages (frames) published "
                                 "on the output topic", agent, registry=registry),
            recovering=Gauge("fxstream_worker_recovering", "1 from a rebalance (or the start) "
                             "until the agent's table is recovered and taken in", agent,
                             registry=registry),
            recovery_seconds=Histogram("fxstream_worker_recovery_seconds", "From a rebalance "
                                       "(or the start) until the agent's recovered table was "
                                       "taken in", agent, buckets=DURATION_BUCKETS,
                                       registry=registry),
            state_keys=Gauge("fxstream_worker_state_keys", "Keys (symbols) of held partitions "
                             "in the agent's table", agent, registry=registry),
            state_bytes=Gauge("fxstream_worker_state_bytes", "Bytes of those keys' state "
                              "records", agent, registry=registry),
            commit_seconds=Histogram("fxstream_worker_commit_seconds", "Producer flush and "
                                     "offset commit of the applied offsets",
                                     buckets=DURATION_BUCKETS, registry=registry),
        )


@dataclass(frozen=True)
class SinkMetrics:
    """The sink's metrics; every per-table series is labelled ``table``."""

    common: CommonMetrics
    messages_in: Counter
    records_in: Counter
    rows_out: Counter
    batches: Counter
    batch_seconds: Histogram
    copy_seconds: Histogram
    commit_seconds: Histogram
    produce_to_row_seconds: Histogram
    postgres_outages: Counter
    postgres_retries: Counter
    postgres_up: Gauge

    @classmethod
    def build(cls, registry: CollectorRegistry) -> SinkMetrics:
        table = ["table"]
        return cls(
            common=CommonMetrics.build(registry),
            messages_in=Counter("fxstream_sink_messages_in", "Messages in written batches",
                                table, registry=registry),
            records_in=Counter("fxstream_sink_records_in", "Records in those messages (a "
                               "frame's items), valid or not", table, registry=registry),
            rows_out=Counter("fxstream_sink_rows_out", "Rows committed to PostgreSQL by "
                             "what happened to them: insert, update, or older (a newer "
                             "version was stored)", ["table", "op"], registry=registry),
            batches=Counter("fxstream_sink_batches", "Batches committed", table,
                            registry=registry),
            batch_seconds=Histogram("fxstream_sink_batch_seconds", "A batch's transaction, "
                                    "from its start to PostgreSQL's commit", table,
                                    buckets=DURATION_BUCKETS, registry=registry),
            copy_seconds=Histogram("fxstream_sink_copy_seconds", "COPY and merge of a batch's "
                                   "rows", table, buckets=DURATION_BUCKETS, registry=registry),
            commit_seconds=Histogram("fxstream_sink_commit_seconds", "Commits: PostgreSQL's "
                                     "transaction commit, then Kafka's offset commit",
                                     ["table", "store"], buckets=DURATION_BUCKETS,
                                     registry=registry),
            produce_to_row_seconds=Histogram(
                "fxstream_sink_produce_to_row_seconds", "Per batch: from when its oldest "
                "message was produced to the sink's topic to its rows' commit", table,
                buckets=DURATION_BUCKETS, registry=registry),
            postgres_outages=Counter("fxstream_sink_postgres_outages", "Times PostgreSQL "
                                     "stopped answering", table, registry=registry),
            postgres_retries=Counter("fxstream_sink_postgres_retries", "Failed attempts to "
                                     "reach PostgreSQL during outages", table,
                                     registry=registry),
            postgres_up=Gauge("fxstream_sink_postgres_up", "0 while the sink finds PostgreSQL "
                              "unreachable", table, registry=registry),
        )


@dataclass(frozen=True)
class AgentMetrics:
    """One agent's series, bound once (a label lookup per message would cost more)."""

    messages_in: Any
    records_in: Any
    messages_skipped: Any
    messages_reread: Any
    records_out: Any
    messages_out: Any
    recovering: Any
    recovery_seconds: Any
    state_keys: Any
    state_bytes: Any
    dead_letters: Counter
    name: str

    @classmethod
    def of(cls, metrics: WorkerMetrics, agent: str) -> AgentMetrics:
        return cls(
            messages_in=metrics.messages_in.labels(agent),
            records_in=metrics.records_in.labels(agent),
            messages_skipped=metrics.messages_skipped.labels(agent),
            messages_reread=metrics.messages_reread.labels(agent),
            records_out=metrics.records_out.labels(agent),
            messages_out=metrics.messages_out.labels(agent),
            recovering=metrics.recovering.labels(agent),
            recovery_seconds=metrics.recovery_seconds.labels(agent),
            state_keys=metrics.state_keys.labels(agent),
            state_bytes=metrics.state_bytes.labels(agent),
            dead_letters=metrics.common.dead_letters,
            name=agent,
        )

    def dead_letter(self, reason: str, count: int = 1) -> None:
        self.dead_letters.labels("worker", self.name, reason).inc(count)


@dataclass(frozen=True)
class TableMetrics:
    """One sink's series, bound once."""

    messages_in: Any
    records_in: Any
    inserted: Any
    updated: Any
    older: Any
    batches: Any
    batch_seconds: Any
    copy_seconds: Any
    postgres_commit_seconds: Any
    kafka_commit_seconds: Any
    produce_to_row_seconds: Any
    postgres_outages: Any
    postgres_retries: Any
    postgres_up: Any
    dead_letters: Counter
    consumer_lag: Gauge
    last_commit: Gauge
    table: str

    @classmethod
    def of(cls, metrics: SinkMetrics, table: str) -> TableMetrics:
        return cls(
            messages_in=metrics.messages_in.labels(table),
            records_in=metrics.records_in.labels(table),
            inserted=metrics.rows_out.labels(table, "insert"),
            updated=metrics.rows_out.labels(table, "update"),
            older=metrics.rows_out.labels(table, "older"),
            batches=metrics.batches.labels(table),
            batch_seconds=metrics.batch_seconds.labels(table),
            copy_seconds=metrics.copy_seconds.labels(table),
            postgres_commit_seconds=metrics.commit_seconds.labels(table, "postgresql"),
            kafka_commit_seconds=metrics.commit_seconds.labels(table, "kafka"),
            produce_to_row_seconds=metrics.produce_to_row_seconds.labels(table),
            postgres_outages=metrics.postgres_outages.labels(table),
            postgres_retries=metrics.postgres_retries.labels(table),
            postgres_up=metrics.postgres_up.labels(table),
            dead_letters=metrics.common.dead_letters,
            consumer_lag=metrics.common.consumer_lag,
            last_commit=metrics.common.last_commit,
            table=table,
        )

    def dead_letter(self, reason: str, count: int = 1) -> None:
        self.dead_letters.labels("sink", self.table, reason).inc(count)
