"""Bad input of every kind goes to the dead-letter topic with its reason and identity,
and the pipeline goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

import schemas
from pipeline.settings import Settings
from pipeline.topics import create_topics
from producers.kafka_io import producer_config
from tests.conftest import wait_for
from tests.pipeline_helpers import Proc, db_candles, read_topic, run_cli

pytestmark = pytest.mark.integration

T0 = 1_709_323_200_000


def tick(ts: int, bid: float, symbol: str = "EUR/USD") -> dict[str, object]:
    return {"symbol": symbol, "ts_ms": ts, "bid": bid, "ask": bid + 0.0002}


def test_bad_messages_are_dead_lettered_and_the_pipeline_goes_on(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    settings = make_settings(symbols=("EUR/USD", "GBP/USD"), timeframes=("1m",), partitions=2,
                             session_timeout_s=6.0)
    create_topics(settings)
    producer = Producer(producer_config(settings))
    t = settings.topics.ticks
    producer.produce(t, key=b"EUR/USD", value=b"{not json")
    producer.produce(t, key=None, value=orjson.dumps(tick(T0, 1.1)))
    producer.produce(t, key=b"eurusd", value=orjson.dumps(tick(T0, 1.1)))
    producer.produce(t, key=b"EUR/USD", value=orjson.dumps(
        [tick(T0, 1.1), {"symbol": "EUR/USD", "ts_ms": "x", "bid": 1.0}, tick(T0 + 1, 1.2)]))
    producer.produce(t, key=b"FOO/BAR", value=orjson.dumps(tick(T0, 2.0, "FOO/BAR")))
    producer.produce(t, key=b"EUR/USD", value=orjson.dumps(tick(T0 + 61_000, 1.3)))
    producer.produce(settings.topics.candles, key=b"EUR/USD", value=b"\x00garbage")
    producer.produce(settings.topics.candles, key=b"EUR/USD", value=orjson.dumps({"v": 9}))
    # Text that is not UTF-8 inside frames both fast paths would otherwise take.
    producer.produce(t, key=b"EUR/USD", value=orjson.dumps(
        [{**tick(T0 + 2, 1.2), "provider": "feed"}]).replace(b"feed", b"fe\xffd"))
    candle = {"v": 1, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": T0, "open": 1.1,
              "high": 1.1, "low": 1.1, "close": 1.1, "tick_volume": 1, "volume": 0.0,
              "complete": False, "provider_source": "feed"}
    producer.produce(settings.topics.candles, key=b"EUR/USD",
                     value=orjson.dumps([candle]).replace(b"feed", b"fe\xffd"))
    assert producer.flush(30) == 0

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_for(lambda: len(db_candles(settings)) == 2, 120, "both EUR/USD bars in PostgreSQL")
        bars = db_candles(settings)
        first = bars[("EUR/USD", "1m", T0)]
        assert (first["tick_volume"], first["open"], first["close"]) == (2, 1.1001, 1.2001)

        def reasons() -> list[tuple[str, str, int | None]]:
            recs = [v for _, v in read_topic(settings, settings.topics.dead_letter)]
            return sorted((r["reason"], r["stage"], r["source"]["index"]) for r in recs)

        expected = sorted([("invalid_json", "worker", None), ("bad_key", "worker", None),
                           ("bad_key", "worker", None), ("invalid_tick", "worker", 1),
                           ("unknown_symbol", "worker", None), ("invalid_candle", "sink", None),
                           ("invalid_candle", "sink", None), ("invalid_json", "worker", None),
                           ("invalid_candle", "sink", None)])
        wait_for(lambda: reasons() == expected, 60, f"dead letters {expected}")
        for key, rec in read_topic(settings, settings.topics.dead_letter):
            schemas.validate("dead_letter", rec)
            src = rec["source"]
            assert src["topic"] in (settings.topics.ticks, settings.topics.candles)
            assert key == f"{src['topic']}:{src['partition']}:{src['offset']}:".encode() + (
                b"" if src["index"] is None else str(src["index"]).encode())

        status = run_cli(settings, ["status"], tmp_path)
        assert status.returncode == 0, status.stderr
        assert settings.worker_group in status.stdout and settings.sink_group in status.stdout
        assert "EUR/USD" in status.stdout
    finally:
        assert worker.stop() == 0, worker.tail()
        assert sink.stop() == 0, sink.tail()


def test_replay_reports_bad_rows_and_a_bad_header(make_settings: Callable[..., Settings],
                                                  tmp_path: Path) -> None:
    settings = make_settings(partitions=1)
    good = tmp_path / "good.csv"
    good.write_text("symbol,ts_ms,bid,ask,volume\nEURUSD,1,1.1,1.2,\nEUR/USD,x,1,1,\n"
                    "???,5,1.1,1.2,\n")
    result = run_cli(settings, ["produce", "replay", str(good), "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "replayed 1 ticks" in result.stdout and "2 bad rows" in result.stdout
    assert "line 3" in result.stderr and "line 4" in result.stderr
    dead = [v for _, v in read_topic(settings, settings.topics.dead_letter)]
    assert sorted(d["source"]["offset"] for d in dead) == [3, 4]
    assert {d["source"]["topic"] for d in dead} == {"file:good.csv"}

    bad = tmp_path / "bad.csv"
    bad.write_text("sym,ts,bid\nEURUSD,1,1.1\n")
    result = run_cli(settings, ["produce", "replay", str(bad), "--no-progress"], tmp_path)
    assert result.returncode == 2
    assert "expected header 'symbol,ts_ms,bid,ask,volume'" in result.stderr

    result = run_cli(settings, ["produce", "replay", str(good), "--speed", "fast"], tmp_path)
    assert result.returncode == 2 and "--speed" in result.stderr
