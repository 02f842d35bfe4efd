"""Builds the Faust application from the settings."""

from __future__ import annotations

import os

import faust

from pipeline.settings import Settings


def build_app(settings: Settings) -> faust.App:
    settings.require_connections()
    # RocksDB state persists here between runs (one rocksdb worker per state directory);
    # the memory store keeps nothing on disk, so every worker gets its own directory.
    datadir = settings.state_dir / "worker" / (
        "rocksdb" if settings.store == "rocksdb" else f"memory-{os.getpid()}")
    datadir.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")]
    return faust.App(
        settings.worker_group,
        broker=brokers,
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move after this long; the default (60 s) keeps a
        # symbol unprocessed for a minute after a crash.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 10),
        broker_commit_interval=1.0,
        # Standby copies of other workers' state would be read by the wall-clock timer;
        # recovery from the (compacted) changelog is fast enough here.
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=1 << 20,
        producer_compression_type="lz4",
        stream_buffer_maxsize=4096,
        broker_max_poll_records=2000,
        consumer_max_fetch_size=8 << 20,
        # Finish and commit what is in flight before a rebalance revokes partitions; without
        # it, processed offsets can be dropped from the commit bookkeeping mid-rebalance.
        stream_wait_empty=True,
    )
