"""DOM metrics end to end on the real broker and database: dom-replay -> worker (the DOM
agent beside the candle agent) -> the dom_metrics and market_depth sinks -> PostgreSQL,
against the plain reference; bad snapshots of every kind; kill -9 of the worker and of
the sinks mid-stream."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.rows import dict_row

from pipeline.monitor import total_lag
from pipeline.settings import Settings
from pipeline.topics import create_topics
from producers.kafka_io import producer_config
from tests.conftest import wait_for
from tests.dom_data import (
    KNOWN,
    LATENESS_MS,
    T0,
    adversarial_snapshots,
    bad_snapshots,
    write_jsonl,
)
from tests.pipeline_helpers import Proc, committed_total, read_topic, run_cli
from tests.reference_dom import BAR_FIELDS, SAMPLE_FIELDS, RefDom, compare, reference_dom

pytestmark = pytest.mark.integration

DOM_SINKS = ["sink", "--table", "dom_metrics,market_depth"]
NOT_JSON = b'{"symbol": "EUR/USD", "ts_ms": 1709323200000, "bids": [[1e400, 1]], "asks": []}'


def dom_settings(make_settings: Callable[..., Settings], **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "symbols": KNOWN, "timeframes": ("1m",), "partitions": 4, "lateness_ms": LATENESS_MS,
        "dom_lateness_ms": LATENESS_MS,
        "dom_timeframes": ("1s", "1m"), "dom_depth_levels": 3, "dom_max_levels": 10,
        "session_timeout_s": 6.0,
    }
    values.update(kw)
    return make_settings(**values)


def reference(snapshots: list[Any]) -> RefDom:
    return reference_dom(snapshots, timeframes=("1s", "1m"), depth_levels=3, max_levels=10,
                         lateness_ms=LATENESS_MS, known_symbols=set(KNOWN))


def db_rows(settings: Settings, table: str, key: tuple[str, ...]
            ) -> dict[tuple[Any, ...], dict[str, Any]]:
    try:
        with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {tuple(r[k] for k in key): r for r in rows}


def wait_for_reference(settings: Settings, ref: RefDom, procs: list[Proc],
                       timeout_s: float = 240) -> None:
    last: list[str] = []

    def matches() -> bool:
        for p in procs:
            assert p.alive(), f"{p.log.name} died:\n{p.tail()}"
        bars = db_rows(settings, "dom_metrics", ("symbol", "timeframe", "ts_utc"))
        samples = db_rows(settings, "market_depth", ("symbol", "bucket_utc"))
        last[:] = (compare(ref.bars, bars, BAR_FIELDS)
                   + compare(ref.samples, samples, SAMPLE_FIELDS))
        return not last and all(b["provider"] == "rec" for b in bars.values())

    try:
        wait_for(matches, timeout_s, "dom_metrics and market_depth to equal the reference")
    except AssertionError:
        logs = "\n".join(f"--- {p.log.name}\n{p.tail(25)}" for p in procs)
        raise AssertionError(f"{len(last)} differences, first: {last[:5]}\n{logs}") from None


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """Distinct dead letters (by their identity key: a repeat after a restart counts once)."""
    return list({key: value for key, value in read_topic(settings,
                                                         settings.topics.dead_letter)}.values())


def data(seed: int, per_symbol: int) -> tuple[list[Any], list[tuple[Any, str]]]:
    snaps = adversarial_snapshots(seed=seed, per_symbol=per_symbol)
    bad = bad_snapshots(int(time.time() * 1000))
    return snaps[:100] + [b for b, _ in bad] + snaps[100:], bad


@pytest.mark.parametrize("frame_size", [50, 1])
def test_replayed_books_equal_the_reference(make_settings: Callable[..., Settings],
                                            tmp_path: Path, frame_size: int) -> None:
    settings = dom_settings(make_settings)
    snaps, bad = data(seed=11, per_symbol=500)
    path = write_jsonl(tmp_path / "books.jsonl", snaps, [NOT_JSON])
    ref = reference(snaps)

    replay = run_cli(settings, ["produce", "dom-replay", str(path), "--frame-size",
                                str(frame_size)], tmp_path)
    assert replay.returncode == 0, replay.stderr
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, DOM_SINKS, tmp_path / "sink.log")
    try:
        wait_for_reference(settings, ref, [worker, sink])
        expected = Counter((r, "worker" if r in ("future", "unknown_symbol", "late")
                            else "producer") for _, r in ref.dead_letters)
        expected[("bad_row", "producer")] += 1
        assert expected[("late", "worker")] >= 10
        assert {r for _, r in bad} <= {r for r, _ in expected}

        def reasons() -> Counter[tuple[str, str]]:
            return Counter((d["reason"], d["stage"]) for d in dead_letters(settings))

        wait_for(lambda: reasons() == expected, 60, f"dead letters {dict(expected)}")
        bars = db_rows(settings, "dom_metrics", ("symbol", "timeframe", "ts_utc"))
        assert all(b["complete"] and b["src_offset"] is not None for b in bars.values())
        assert any(b["crossed"] for b in bars.values())
        assert any(b["open"] is None for b in bars.values())
        samples = db_rows(settings, "market_depth", ("symbol", "bucket_utc"))
        assert any(s["imbalance"] in (1.0, -1.0) for s in samples.values())
    finally:
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()
    assert "dom worker stopping" in worker.log.read_text()


def test_bad_snapshots_sent_to_the_topic_reach_the_dead_letter_topic(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = dom_settings(make_settings)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    topic = settings.topics.dom
    good = {"symbol": "EUR/USD", "ts_ms": T0, "provider": "rec", "bids": [[1.1, 1.0]],
            "asks": [[1.2, 3.0]]}
    bad = bad_snapshots(int(time.time() * 1000))
    for snapshot, _ in bad:
        key = b"AUD/CAD" if snapshot.get("symbol") == "AUD/CAD" else b"EUR/USD"
        producer.produce(topic, key=key, value=orjson.dumps(snapshot))
    producer.produce(topic, key=b"EUR/USD", value=NOT_JSON)
    producer.produce(topic, key=b"eurusd", value=orjson.dumps(good))
    producer.produce(topic, key=b"EUR/USD", value=orjson.dumps(
        [good, {**good, "bids": [[1.0, 1.0], [1.1, 1.0]]}, {**good, "symbol": "USD/JPY"},
         {**good, "ts_ms": T0 + 1500, "asks": []}]))
    producer.produce(topic, key=b"EUR/USD", value=orjson.dumps(
        {**good, "ts_ms": T0 + 1500 - LATENESS_MS - 1}))
    assert producer.flush(30) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, DOM_SINKS, tmp_path / "sink.log")
    try:
        def got() -> Counter[tuple[str, str, int | None]]:
            return Counter((d["reason"], d["stage"], d["source"]["index"])
                           for d in dead_letters(settings))

        expected = Counter([(r, "worker", None) for _, r in bad]
                           + [("invalid_json", "worker", None), ("bad_key", "worker", None),
                              ("unordered_book", "worker", 1), ("symbol_mismatch", "worker", 2),
                              ("late", "worker", None)])
        wait_for(lambda: got() == expected, 120, "every bad snapshot in the dead-letter topic")
        for d in dead_letters(settings):
            assert d["detail"] and d["source"]["topic"] == topic and d["payload"]
        # the pipeline went on: the good snapshots are measured
        wait_for(lambda: len(db_rows(settings, "dom_metrics", ("symbol", "timeframe",
                                                                "ts_utc"))) == 3,
                 120, "the good snapshots' bars")
        bars = db_rows(settings, "dom_metrics", ("symbol", "timeframe", "ts_utc"))
        first = bars[("EUR/USD", "1s", T0)]
        assert first["updates"] == 1 and first["open"] == pytest.approx(1.15)
        assert first["depth_imbalance"] == pytest.approx(-0.5)
        assert bars[("EUR/USD", "1m", T0)]["updates"] == 2
        one_sided = bars[("EUR/USD", "1s", T0 + 1000)]
        assert one_sided["open"] is None and one_sided["spread_mean"] is None
        assert one_sided["depth_imbalance"] is None and one_sided["microprice"] is None
    finally:
        sink.stop()
        worker.stop()


def dom_sink_offsets(settings: Settings) -> int:
    try:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets "
                               "WHERE topic = %s", (settings.topics.dom_metrics,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, list[Any]]:
    snaps, _ = data(seed=23, per_symbol=3000)
    return write_jsonl(tmp_path / "big.jsonl", snaps), snaps


def test_worker_killed_mid_stream(make_settings: Callable[..., Settings], tmp_path: Path,
                                  big: tuple[Path, list[Any]]) -> None:
    settings = dom_settings(make_settings)
    path, snaps = big
    ref = reference(snaps)
    rng = random.Random(3)
    producer = Proc(settings, ["produce", "dom-replay", str(path), "--frame-size", "4"],
                    tmp_path / "replay.log")
    sink = Proc(settings, DOM_SINKS, tmp_path / "sink.log")
    worker: Proc | None = None
    try:
        target = 0
        for round_no in range(3):
            worker = Proc(settings, ["worker"], tmp_path / f"worker-{round_no}.log")
            target += rng.randint(200, 600)
            wait_for(lambda t=target: committed_total(settings, settings.worker_group,
                                                      settings.topics.dom) >= t,
                     120, f"the worker to get past offset total {target}")
            worker.kill9()
        worker = Proc(settings, ["worker"], tmp_path / "worker-final.log")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
        assert producer.stop() == 0, producer.tail()
    finally:
        for p in (worker, sink):
            if p is not None and p.alive():
                p.stop()


def test_sinks_killed_mid_stream(make_settings: Callable[..., Settings], tmp_path: Path,
                                 big: tuple[Path, list[Any]]) -> None:
    settings = dom_settings(make_settings, sink_batch_size=100)
    path, snaps = big
    ref = reference(snaps)
    rng = random.Random(4)
    assert run_cli(settings, ["produce", "dom-replay", str(path), "--frame-size", "4"],
                   tmp_path).returncode == 0
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink: Proc | None = None
    try:
        for round_no in range(3):
            # each round past where the one before was killed, so every kill is mid-stream
            target = dom_sink_offsets(settings) + rng.randint(100, 300)
            sink = Proc(settings, DOM_SINKS, tmp_path / f"sink-{round_no}.log")
            wait_for(lambda t=target: dom_sink_offsets(settings) >= t, 120,
                     f"the sinks to store offsets past {target}")
            sink.kill9()
        sink = Proc(settings, DOM_SINKS, tmp_path / "sink-final.log")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
        for suffix in ("-dom-metrics", "-market-depth"):
            wait_for(lambda s=suffix: total_lag(settings, settings.sink_group + s,
                                                settings.topics.dom_metrics) == 0,
                     60, f"the {suffix[1:]} sink's Kafka offsets to catch up")
    finally:
        for p in (worker, sink):
            if p is not None and p.alive():
                p.stop()


def test_synthetic_books_end_to_end(make_settings: Callable[..., Settings],
                                    tmp_path: Path) -> None:
    """`produce dom-synthetic` -> worker -> sinks equals the reference over the same
    generated books; their mids are the synthetic ticks' of the same seed."""
    from producers.synthetic import SyntheticTicks
    from producers.synthetic_book import SyntheticBooks

    symbols = ["EUR/USD", "USD/JPY"]
    settings = dom_settings(make_settings, symbols=tuple(symbols), dom_depth_levels=5,
                            dom_max_levels=100)
    books = list(SyntheticBooks(symbols, rate=200, seed=5).books(count=3000))
    ref = reference_dom(books, timeframes=("1s", "1m"), depth_levels=5, max_levels=100,
                        lateness_ms=LATENESS_MS, known_symbols=set(symbols))
    assert ref.dead_letters == []
    done = run_cli(settings, ["produce", "dom-synthetic", "--symbols", ",".join(symbols),
                              "--count", "3000", "--seed", "5", "--rate", "200",
                              "--max-speed"], tmp_path)
    assert done.returncode == 0, done.stderr
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, DOM_SINKS, tmp_path / "sink.log")
    try:
        def matches() -> bool:
            bars = db_rows(settings, "dom_metrics", ("symbol", "timeframe", "ts_utc"))
            samples = db_rows(settings, "market_depth", ("symbol", "bucket_utc"))
            return not (compare(ref.bars, bars, BAR_FIELDS)
                        or compare(ref.samples, samples, SAMPLE_FIELDS))

        wait_for(matches, 180, "the synthetic books' metrics to equal the reference")
        samples = db_rows(settings, "market_depth", ("symbol", "bucket_utc"))
        mids = {(t["symbol"], t["ts_ms"]): (t["bid"] + t["ask"]) / 2
                for t in SyntheticTicks(symbols, rate=200, seed=5).ticks(count=3000)}
        for row in samples.values():
            assert row["mid_price"] == pytest.approx(mids[(row["symbol"], row["ts_utc"])])
            assert row["provider"] == "synthetic"
    finally:
        sink.stop()
        worker.stop()
