"""Sentiment end to end on the real broker and database: sentiment-replay -> worker (the
sentiment agent beside the candle and DOM agents) -> the sentiment_metrics and
sentiment_data sinks -> PostgreSQL, against the plain reference; bad observations of
every kind; kill -9 of the worker mid-stream; the orderflow provider derived by the
candle agent from replayed ticks."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from psycopg.rows import dict_row

from pipeline.settings import Settings
from pipeline.topics import create_topics
from producers.kafka_io import producer_config
from tests.conftest import unique_topics, wait_for
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.pipeline_helpers import FXSTREAM, Proc, committed_total, read_topic, run_cli
from tests.reference_candles import accepted_ticks
from tests.reference_sentiment import (
    DATA_FIELDS,
    METRIC_FIELDS,
    RefSentiment,
    compare,
    reference_orderbook,
    reference_orderflow,
    reference_sentiment,
)
from tests.sentiment_data import (
    KNOWN,
    LATENESS_MS,
    T0,
    adversarial_observations,
    bad_items,
    bad_observations,
    write_csv,
)
from tests.stack_fixtures import RealStack

pytestmark = pytest.mark.integration

SINKS = ["sink", "--table", "sentiment_metrics,sentiment_data"]
KEY = ("symbol", "provider", "ts_utc")
WORKER_REASONS = ("future", "unknown_symbol", "late")
NOT_A_NUMBER_ROW = "EUR/USD,1709323200000,ig,sixty,40,,"


def sentiment_settings(make_settings: Callable[..., Settings], **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "symbols": KNOWN, "timeframes": ("1m",), "partitions": 4,
        "sentiment_lateness_ms": LATENESS_MS, "session_timeout_s": 6.0,
    }
    values.update(kw)
    return make_settings(**values)


def db_rows(settings: Settings, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    try:
        with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {tuple(r[k] for k in KEY): r for r in rows}


def wait_for_reference(settings: Settings, ref: RefSentiment, procs: list[Proc],
                       timeout_s: float = 240) -> None:
    last: list[str] = []

    def matches() -> bool:
        for p in procs:
            assert p.alive(), f"{p.log.name} died:\n{p.tail()}"
        last[:] = (compare(ref.metrics, db_rows(settings, "sentiment_metrics"), METRIC_FIELDS)
                   + compare(ref.data, db_rows(settings, "sentiment_data"), DATA_FIELDS))
        return not last

    try:
        wait_for(matches, timeout_s, "sentiment_metrics and sentiment_data to equal the "
                 "reference")
    except AssertionError:
        logs = "\n".join(f"--- {p.log.name}\n{p.tail(25)}" for p in procs)
        raise AssertionError(f"{len(last)} differences, first: {last[:5]}\n{logs}") from None


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """Distinct dead letters (by their identity key: a repeat after a restart counts once)."""
    return list({key: value for key, value in read_topic(settings,
                                                         settings.topics.dead_letter)}.values())


def data(seed: int, per_series: int) -> tuple[list[dict[str, Any]], list[tuple[Any, str]]]:
    obs = adversarial_observations(seed=seed, per_series=per_series)
    bad = bad_observations(int(time.time() * 1000))
    return obs[:100] + [b for b, _ in bad] + obs[100:], bad


def reference(items: list[Any]) -> RefSentiment:
    return reference_sentiment(items, lateness_ms=LATENESS_MS, known_symbols=set(KNOWN))


@pytest.mark.parametrize("frame_size", [50, 1])
def test_replayed_observations_equal_the_reference(make_settings: Callable[..., Settings],
                                                   tmp_path: Path, frame_size: int) -> None:
    settings = sentiment_settings(make_settings)
    items, bad = data(seed=11, per_series=250)
    path = write_csv(tmp_path / "positioning.csv", items, extra_lines=(NOT_A_NUMBER_ROW,))
    ref = reference(items)

    replay = run_cli(settings, ["produce", "sentiment-replay", str(path), "--frame-size",
                                str(frame_size)], tmp_path)
    assert replay.returncode == 0, replay.stderr
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, SINKS, tmp_path / "sink.log")
    try:
        wait_for_reference(settings, ref, [worker, sink])
        expected = Counter((r, "worker" if r in WORKER_REASONS else "producer")
                           for _, r in ref.dead_letters)
        expected[("bad_row", "producer")] += 1
        assert expected[("late", "worker")] >= 10
        assert {r for _, r in bad} <= {r for r, _ in expected}

        def reasons() -> Counter[tuple[str, str]]:
            return Counter((d["reason"], d["stage"]) for d in dead_letters(settings))

        wait_for(lambda: reasons() == expected, 60, f"dead letters {dict(expected)}")
        rows = db_rows(settings, "sentiment_metrics")
        assert all(r["src_offset"] is not None for r in rows.values())
        assert {("EUR/USD", "myfxbook"), ("EUR/USD", "ig")} <= {k[:2] for k in rows}
        assert {r["contrarian_signal"] for r in rows.values()} == {-1, 0, 1}
        assert any(not r["ma_1h_full"] for r in rows.values())
    finally:
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()
    assert "sentiment worker stopping" in worker.log.read_text()


def test_bad_observations_sent_to_the_topic_reach_the_dead_letter_topic(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = sentiment_settings(make_settings)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    topic = settings.topics.sentiment
    good = {"symbol": "EUR/USD", "ts_ms": T0, "provider": "ig", "long_pct": 75.0,
            "short_pct": 25.0}
    bad = bad_observations(int(time.time() * 1000)) + bad_items()
    for item, _ in bad:
        key = b"AUD/CAD" if type(item) is dict and item.get("symbol") == "AUD/CAD" else (
            b"EUR/USD")
        # an item that is a JSON array goes in a frame of its own: alone it would be one
        producer.produce(topic, key=key, value=orjson.dumps(item if type(item) is dict
                                                            else [item]))
    producer.produce(topic, key=b"EUR/USD", value=b'{"symbol": "EUR/USD", "long_pct": 5')
    producer.produce(topic, key=b"eurusd", value=orjson.dumps(good))
    producer.produce(topic, key=b"EUR/USD", value=orjson.dumps(
        [good, {**good, "long_pct": 75.0, "short_pct": 75.0}, {**good, "symbol": "USD/JPY"},
         {**good, "ts_ms": T0 + 60_000, "long_pct": 25.0, "short_pct": 75.0}]))
    producer.produce(topic, key=b"EUR/USD", value=orjson.dumps(
        {**good, "ts_ms": T0 + 60_000 - LATENESS_MS - 1}))
    assert producer.flush(30) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, SINKS, tmp_path / "sink.log")
    try:
        def order(x: tuple[str, str, int | None]) -> tuple[str, str, int]:
            return x[0], x[1], -1 if x[2] is None else x[2]

        def got() -> list[tuple[str, str, int | None]]:
            return sorted(((d["reason"], d["stage"], d["source"]["index"])
                           for d in dead_letters(settings)), key=order)

        expected = sorted([(r, "worker", None if type(b) is dict else 0) for b, r in bad]
                          + [("invalid_json", "worker", None), ("bad_key", "worker", None),
                             ("pct_sum", "worker", 1), ("symbol_mismatch", "worker", 2),
                             ("late", "worker", None)], key=order)
        wait_for(lambda: got() == expected, 120, "every bad observation in the dead-letter topic")
        for d in dead_letters(settings):
            assert d["detail"] and d["source"]["topic"] == topic and d["payload"]
        # the pipeline went on: the good observations are measured
        wait_for(lambda: len(db_rows(settings, "sentiment_metrics")) == 2, 120,
                 "the good observations' metrics")
        rows = db_rows(settings, "sentiment_metrics")
        first, second = rows[("EUR/USD", "ig", T0)], rows[("EUR/USD", "ig", T0 + 60_000)]
        assert first["contrarian_signal"] == -1 and first["label"] == "bullish"
        assert first["ma_5m"] == 75.0 and not first["ma_5m_full"]
        assert second["contrarian_signal"] == 1 and second["ma_5m"] == 75.0
        assert second["contrarian_strength"] == pytest.approx(0.5)
        assert second["change_1h"] is None
        wait_for(lambda: len(db_rows(settings, "sentiment_data")) == 2, 60, "the raw rows")
    finally:
        sink.stop()
        worker.stop()


def test_worker_killed_mid_stream(make_settings: Callable[..., Settings],
                                  tmp_path: Path) -> None:
    settings = sentiment_settings(make_settings)
    items, _ = data(seed=23, per_series=1500)
    path = write_csv(tmp_path / "big.csv", items)
    ref = reference(items)
    rng = random.Random(3)
    producer = Proc(settings, ["produce", "sentiment-replay", str(path), "--frame-size", "4"],
                    tmp_path / "replay.log")
    sink = Proc(settings, SINKS, tmp_path / "sink.log")
    worker: Proc | None = None
    try:
        target = 0
        for round_no in range(3):
            worker = Proc(settings, ["worker"], tmp_path / f"worker-{round_no}.log")
            target += rng.randint(150, 400)
            wait_for(lambda t=target: committed_total(settings, settings.worker_group,
                                                      settings.topics.sentiment) >= t,
                     120, f"the worker to get past offset total {target}")
            worker.kill9()
        worker = Proc(settings, ["worker"], tmp_path / "worker-final.log")
        wait_for_reference(settings, ref, [worker, sink], timeout_s=300)
        assert producer.stop() == 0, producer.tail()
    finally:
        for p in (worker, sink):
            if p is not None and p.alive():
                p.stop()


def test_orderflow_of_replayed_ticks_equals_the_reference(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(symbols=tuple(sorted(KNOWN_SYMBOLS)), timeframes=("1m", "5m"),
                             partitions=4, lateness_ms=300_000, session_timeout_s=6.0)
    csv = tmp_path / "ticks.csv"
    write_adversarial_csv(csv, seed=5, ticks_per_symbol=1500)
    ticks, _ = accepted_ticks(str(csv), lateness_ms=300_000, known_symbols=set(KNOWN_SYMBOLS))
    flow = reference_orderflow(ticks)
    observations = [{"symbol": symbol, "ts_ms": ts, "provider": "orderflow",
                     "long_pct": long_pct, "short_pct": short_pct}
                    for (symbol, ts), (long_pct, short_pct) in sorted(flow.items())]
    ref = reference_sentiment(observations, lateness_ms=300_000)
    assert len(ref.data) > 50 and not ref.dead_letters

    replay = run_cli(settings, ["produce", "replay", str(csv), "--frame-size", "50",
                                "--no-progress"], tmp_path)
    assert replay.returncode == 0, replay.stderr
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, SINKS, tmp_path / "sink.log")
    try:
        wait_for_reference(settings, ref, [worker, sink])
        assert {k[1] for k in db_rows(settings, "sentiment_data")} == {"orderflow"}
        # nothing of the derived feed was refused by the sentiment agent
        letters = dead_letters(settings)
        assert not [d for d in letters if d["source"]["topic"] == settings.topics.sentiment]
    finally:
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()


def test_the_bench_measures_the_sentiment_agent(make_settings: Callable[..., Settings],
                                                 tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    from bench.harness import BenchEnv, measure_sentiment_agent

    base = make_settings(symbols=KNOWN, partitions=2, session_timeout_s=6.0)
    env = BenchEnv.fresh(base, tmp_path / "bench")
    admin = AdminClient({"bootstrap.servers": base.kafka_bootstrap})

    def tagged() -> list[str]:
        return [t for t in admin.list_topics(timeout=10).topics if env.tag in t]

    try:
        got = measure_sentiment_agent(env, 3_000, list(KNOWN), seed=1, frame_size=100)
        # the measurement's own topics and the worker's changelogs
        assert any(t.endswith("-changelog") for t in tagged()), tagged()
    finally:
        env.remove()
    assert got["observations"] == got["observations_produced"] == 3_000
    assert got["messages"] >= 30 and got["observations_per_s"] > 0
    # nothing of the measurement stays behind on the broker
    wait_for(lambda: not tagged(), 30, "the measurement's topics to be deleted")


def test_the_demo_shows_sentiment(stack: RealStack, tmp_path: Path) -> None:
    url = stack.new_database()
    # topics of its own: the default ones may hold another demo's ticks and observations
    config = tmp_path / "topics.yaml"
    config.write_text(yaml.safe_dump({"topics": unique_topics().model_dump()}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FXSTREAM_")}
    env.update({"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "DATABASE_URL": url,
                "FXSTREAM_STATE_DIR": str(tmp_path / "state"), "FXSTREAM_WORKER_GROUP": "dw",
                "FXSTREAM_SINK_GROUP": "ds", "FXSTREAM_SESSION_TIMEOUT_S": "6",
                "FXSTREAM_CONFIG": str(config), "COLUMNS": "200"})
    result = subprocess.run([FXSTREAM, "demo", "--duration", "30", "--symbols", "2", "--rate",
                             "300"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "worker and sink shut down cleanly" in result.stdout
    assert "sentiment: long %" in result.stdout and "synthetic " in result.stdout
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT symbol, provider, count(*) FROM sentiment_metrics "
                            "GROUP BY symbol, provider ORDER BY symbol").fetchall()
    counts = {(r[0], r[1]): r[2] for r in rows}
    assert counts[("EUR/USD", "synthetic")] >= 2 and counts[("GBP/USD", "synthetic")] >= 2
    # a minute may have closed meanwhile: then the derived providers are there too
    assert {k[0] for k in counts} == {"EUR/USD", "GBP/USD"}
    assert {k[1] for k in counts} <= {"synthetic", "orderflow", "orderbook"}


def test_orderbook_of_replayed_books_equals_the_reference(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from tests.dom_data import KNOWN as BOOK_SYMBOLS
    from tests.dom_data import LATENESS_MS as BOOK_LATENESS_MS
    from tests.dom_data import adversarial_snapshots, bad_snapshots, write_jsonl
    from tests.reference_dom import reference_dom

    settings = make_settings(symbols=BOOK_SYMBOLS, timeframes=("1m",), partitions=4,
                             lateness_ms=BOOK_LATENESS_MS, dom_lateness_ms=BOOK_LATENESS_MS,
                             dom_timeframes=("1s", "1m"),
                             dom_depth_levels=3, dom_max_levels=10, session_timeout_s=6.0)
    snaps = adversarial_snapshots(seed=13, per_symbol=500)
    snaps = snaps[:100] + [b for b, _ in bad_snapshots(int(time.time() * 1000))] + snaps[100:]
    refused = {i for i, _ in reference_dom(
        snaps, timeframes=("1s", "1m"), depth_levels=3, max_levels=10,
        lateness_ms=BOOK_LATENESS_MS, known_symbols=set(BOOK_SYMBOLS)).dead_letters}
    book = reference_orderbook(snaps, refused, 3)
    observations = [{"symbol": symbol, "ts_ms": ts, "provider": "orderbook",
                     "long_pct": long_pct, "short_pct": short_pct}
                    for (symbol, ts), (long_pct, short_pct) in sorted(book.items())]
    ref = reference_sentiment(observations, lateness_ms=BOOK_LATENESS_MS)
    assert len(ref.data) > 20 and not ref.dead_letters

    path = write_jsonl(tmp_path / "books.jsonl", snaps)
    replay = run_cli(settings, ["produce", "dom-replay", str(path), "--frame-size", "20"],
                     tmp_path)
    assert replay.returncode == 0, replay.stderr
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, SINKS, tmp_path / "sink.log")
    try:
        wait_for_reference(settings, ref, [worker, sink])
        assert {k[1] for k in db_rows(settings, "sentiment_data")} == {"orderbook"}
        letters = dead_letters(settings)
        assert not [d for d in letters if d["source"]["topic"] == settings.topics.sentiment]
    finally:
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()


def test_the_state_keeps_what_unacknowledged_messages_sent(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The worker tells the fold how far Kafka has acknowledged its outputs: until the
    commit timer's producer flush, each message's state keeps what the earlier
    messages sent (for recovery to re-send); after it, only its own. (A run of
    messages writes the key's state once, as of its last message.)"""
    settings = sentiment_settings(make_settings)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    topic = settings.topics.sentiment
    changelog = f"{settings.worker_group}-sentiment-state-changelog"

    def send(k: int) -> None:
        producer.produce(topic, key=b"EUR/USD", value=orjson.dumps(
            {"symbol": "EUR/USD", "ts_ms": T0 + k * 60_000, "provider": "ig",
             "long_pct": 40.0 + k % 20, "short_pct": 60.0 - k % 20}))
        assert producer.flush(30) == 0

    def unsettled() -> dict[int, list[int]]:
        """Per stored state: the positions whose records it keeps re-sendable."""
        return {value["o"]: [u[0] for u in value["s"]["providers"]["ig"]["unsettled"]]
                for key, value in read_topic(settings, changelog) if key == b"EUR/USD"}

    burst = 40
    for k in range(burst):  # one message each, all before the worker's first commit tick
        send(k)
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sent = [burst]
    try:
        wait_for(lambda: committed_total(settings, settings.worker_group, topic) >= burst,
                 120, "the worker to commit the burst", watch=[worker])
        kept = unsettled()
        assert max(kept) == burst - 1, kept
        assert all(v[-1] == o and v == sorted(v) for o, v in kept.items()), kept
        assert max(len(v) for v in kept.values()) >= 2, kept

        def only_its_own() -> bool:
            """Once a flush has settled what came before, a message's state keeps only
            what it sent itself; each try sends one more message once the last is
            committed (a commit can be Faust's own, before the runtime's flush)."""
            if committed_total(settings, settings.worker_group, topic) < sent[0]:
                return False
            newest = max(kept := unsettled())
            if newest == sent[0] - 1 and kept[newest] == [newest]:
                return True
            send(sent[0])
            sent[0] += 1
            return False

        wait_for(only_its_own, 60, "a message whose state keeps only its own records",
                 watch=[worker])
    finally:
        assert worker.stop() == 0, worker.tail()
