"""Edge values on the real broker and database: a tick from the future, numbers whose
sums leave 64 bits or overflow to infinity, text PostgreSQL refuses. Each goes to the
dead-letter topic where it enters, and the symbol, its partition and the sink go on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from pipeline.settings import Settings
from pipeline.topics import create_topics
from producers.kafka_io import producer_config
from tests.conftest import wait_for
from tests.pipeline_helpers import Proc, db_candles, read_topic

pytestmark = pytest.mark.integration

T0 = 1_709_323_200_000  # Fri 2024-03-01 20:00:00 UTC
YEAR_2999 = 32_472_144_000_000  # 2999-01-01 00:00:00 UTC, still below the year-3000 cap
DAY_MS = 86_400_000


def tick(ts: int, bid: Any, symbol: str = "EUR/USD", **extra: Any) -> dict[str, Any]:
    ask = bid + 0.0002 if type(bid) is float else bid
    return {"symbol": symbol, "ts_ms": ts, "bid": bid, "ask": ask, **extra}


def edge_settings(make_settings: Callable[..., Settings]) -> Settings:
    # One partition: every symbol shares it, so a wedged partition would stop them all.
    return make_settings(symbols=("EUR/USD", "GBP/USD"), timeframes=("1m",), partitions=1,
                         session_timeout_s=6.0)


def produce(settings: Settings, messages: list[tuple[str, Any]]) -> None:
    """Send each value as JSON text written by the standard library, which (unlike
    orjson) writes integers past 64 bits and NUL characters as they are."""
    create_topics(settings)
    producer = Producer(producer_config(settings))
    for key, value in messages:
        producer.produce(settings.topics.ticks, key=key.encode(), value=json.dumps(value).encode())
    assert producer.flush(30) == 0


def dead_letters(settings: Settings) -> list[tuple[str, int | None]]:
    records = [v for _, v in read_topic(settings, settings.topics.dead_letter)]
    return sorted(((r["reason"], r["source"]["index"]) for r in records),
                  key=lambda x: (x[0], -1 if x[1] is None else x[1]))


def bars(settings: Settings) -> dict[tuple[str, int], tuple[int, Any, Any]]:
    return {(s, ts): (r["tick_volume"], r["volume"], r["provider_source"])
            for (s, _, ts), r in db_candles(settings).items()}


def wait_until(settings: Settings, procs: list[Proc], want_bars: dict[tuple[str, int], Any],
               want_dead: list[tuple[str, int | None]], timeout_s: float = 90) -> None:
    """Wait until PostgreSQL holds exactly ``want_bars`` and the dead-letter topic exactly
    ``want_dead``; on a timeout say what was there instead, with the process logs."""
    got_bars: dict[tuple[str, int], Any] = {}
    got_dead: list[tuple[str, int | None]] = []

    def matches() -> bool:
        nonlocal got_bars, got_dead
        got_bars, got_dead = bars(settings), dead_letters(settings)
        return got_bars == want_bars and got_dead == want_dead

    try:
        wait_for(matches, timeout_s, "the expected bars and dead letters", interval_s=0.5)
        return
    except AssertionError:
        pass
    logs = "\n".join(f"--- {p.log.name} (alive: {p.alive()})\n{p.tail(15)}" for p in procs)
    raise AssertionError(f"after {timeout_s} s\n bars in PostgreSQL: {got_bars}\n  wanted: "
                         f"{want_bars}\n dead letters: {got_dead[:12]} ({len(got_dead)})\n  "
                         f"wanted: {want_dead}\n{logs}")


def run_pipeline(settings: Settings, tmp_path: Path, want_bars: dict[tuple[str, int], Any],
                 want_dead: list[tuple[str, int | None]]) -> None:
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_until(settings, [worker, sink], want_bars, want_dead)
        assert worker.alive() and sink.alive()
    finally:
        worker.stop()
        sink.stop()


def test_a_tick_from_the_future_is_refused_and_the_symbol_goes_on(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = edge_settings(make_settings)
    tomorrow = int(time.time() * 1000) + DAY_MS
    ordinary = [tick(T0 + 1_000 + i, 1.1 + i * 1e-5) for i in range(50)]
    produce(settings, [
        ("EUR/USD", tick(T0, 1.1)),
        ("EUR/USD", tick(YEAR_2999, 1.2)),  # a glitch: the year 2999
        ("EUR/USD", tick(tomorrow, 1.3)),  # a day ahead of the wall clock
        ("EUR/USD", ordinary),  # then the real ticks, in a frame
        ("EUR/USD", tick(T0 + 61_000, 1.4)),
        ("GBP/USD", tick(T0, 1.25, "GBP/USD")),
    ])
    run_pipeline(settings, tmp_path,
                 want_bars={("EUR/USD", T0): (51, 0.0, None),
                            ("EUR/USD", T0 + 60_000): (1, 0.0, None),
                            ("GBP/USD", T0): (1, 0.0, None)},
                 want_dead=[("future", None), ("future", None)])


def test_numbers_that_would_overflow_a_bar_are_refused_and_the_partition_goes_on(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = edge_settings(make_settings)
    t1 = T0 + 60_000
    produce(settings, [
        ("EUR/USD", tick(T0, 1.1)),
        # Two integer volumes of 2**63: their sum, 2**64, is past what orjson writes.
        ("EUR/USD", [tick(t1, 1.1, volume=2**63), tick(t1 + 1, 1.1, volume=2**63)]),
        ("EUR/USD", tick(t1 + 2, 1.1, volume=2**64)),  # read as the float 1.8e19
        ("EUR/USD", tick(t1 + 3, 1e308)),  # bid + ask overflows to infinity
        ("EUR/USD", tick(t1 + 4, 10**30)),  # an integer price past 64 bits
        ("EUR/USD", tick(t1 + 5, 1.1, volume=10**40)),  # an integer volume past 64 bits
        ("EUR/USD", tick(2**63, 1.1)),  # a time past 64 bits signed
        ("EUR/USD", tick(t1 + 6, True)),  # a boolean is not a price
        # After them, ticks of the same symbol and of another one on the same partition.
        ("EUR/USD", [tick(T0 + 120_000, 1.2, volume=2), tick(T0 + 120_001, 1.2, volume=3)]),
        ("GBP/USD", tick(T0, 1.25, "GBP/USD", volume=1)),
    ])
    run_pipeline(settings, tmp_path,
                 want_bars={("EUR/USD", T0): (1, 0.0, None),
                            ("EUR/USD", T0 + 120_000): (2, 5.0, None),
                            ("GBP/USD", T0): (1, 1.0, None)},
                 want_dead=[("invalid_tick", None)] * 6 + [("invalid_tick", 0),
                                                           ("invalid_tick", 1)])


def test_control_characters_are_refused_and_the_sink_goes_on(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = edge_settings(make_settings)
    produce(settings, [
        ("EUR/USD", tick(T0, 1.1, provider="feed")),
        # PostgreSQL refuses NUL in text. GBP/USD gets no later tick, so a bar carrying this
        # provider would be the last version the sink sees of it.
        ("GBP/USD", tick(T0, 1.25, "GBP/USD", provider="fe\u0000ed")),
        ("EUR/USD", tick(T0 + 2, 1.3, provider="feed\u001b[0m")),  # an escape sequence
        ("EUR/USD", tick(T0 + 3, 1.3, provider="feed\u0085")),  # C1 control (NEL)
        ("EUR/USD", tick(T0 + 4, 1.3, "EUR/USD\u0000")),  # NUL in the symbol
        ("EUR/USD", tick(T0 + 60_000, 1.4, provider="feed")),  # later bars still land
    ])
    run_pipeline(settings, tmp_path,
                 want_bars={("EUR/USD", T0): (1, 0.0, "feed"),
                            ("EUR/USD", T0 + 60_000): (1, 0.0, "feed")},
                 want_dead=[("invalid_tick", None)] * 4)


def test_a_tick_refused_from_a_typed_frame_is_dead_lettered_as_it_was_sent(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A clean frame reaches the fold typed (pipeline.core.ticks.TickRecord); a tick the
    fold then refuses makes the runtime fold the message again from plain JSON, so the
    dead letter holds the tick as sent (an integer price stays an integer) and the
    other ticks of the frame count once."""
    settings = edge_settings(make_settings)
    tomorrow = int(time.time() * 1000) + DAY_MS
    frame = [tick(T0 + i, 1.1 + i * 1e-5, provider="feed") for i in range(10)]
    frame[3] = tick(tomorrow, 2, provider="feed")  # from the future, integer prices
    frame[6] = tick(T0 + 6, 1.1, provider="fe\u0000ed")  # NUL in the provider
    produce(settings, [("EUR/USD", frame)])
    run_pipeline(settings, tmp_path, want_bars={("EUR/USD", T0): (8, 0.0, "feed")},
                 want_dead=[("future", 3), ("invalid_tick", 6)])
    payloads = {r["source"]["index"]: json.loads(r["payload"])
                for _, r in read_topic(settings, settings.topics.dead_letter)}
    assert payloads == {3: frame[3], 6: frame[6]}
    assert type(payloads[3]["bid"]) is int
