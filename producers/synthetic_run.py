"""`fxstream produce synthetic`: publish generated ticks at a rate, or as fast as possible."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import Settings
from pipeline.symbols import count_refused
from producers.kafka_io import TickPublisher
from producers.synthetic import SyntheticTicks


@dataclass
class SyntheticReport:
    ticks: int = 0
    messages: int = 0
    seconds: float = 0.0
    # ticks published of symbols the configuration does not accept
    refused: dict[str, int] = field(default_factory=dict)


def run_synthetic(settings: Settings, symbols: list[str], rate: float, duration_s: float | None,
                  count: int | None = None, seed: int = 0, paced: bool = True,
                  frame_size: int | None = None, live_time: bool = True,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_progress: Callable[[int], None] | None = None,
                  on_publish: Callable[[dict[str, Any]], None] | None = None) -> SyntheticReport:
    """Generate ticks (same seed, same ticks) and publish them framed.

    paced: hold to ``rate`` ticks per second of wall time; otherwise as fast as the
    producer goes. live_time: stamp ticks with the wall clock (the demo) instead of
    the generator's fixed 2024 event time (the benchmarks' reproducible data).
    """
    start_ms = int(time.time() * 1000) if live_time else None
    generator = SyntheticTicks(symbols, rate=rate, seed=seed, start_ms=start_ms)
    publisher = TickPublisher(settings, frame_size=frame_size)
    report = SyntheticReport()
    wall_start = time.monotonic()
    first_ts: int | None = None
    accepted = frozenset(settings.symbols)
    for tick in _stream(generator, count, duration_s):
        if paced:
            first_ts = tick["ts_ms"] if first_ts is None else first_ts
            due = wall_start + (tick["ts_ms"] - first_ts) / 1000
            while (wait := due - time.monotonic()) > 0:
                publisher.tick()
                time.sleep(min(wait, 0.005))
        publisher.publish(tick["symbol"], tick)
        if on_publish is not None:
            on_publish(tick)
        report.ticks += 1
        count_refused(report.refused, tick["symbol"], accepted)
        if report.ticks % 2048 == 0:
            publisher.tick()
            if on_progress is not None:
                on_progress(report.ticks)
            if should_stop():
                break
    publisher.flush()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - wall_start
    return report


def publish_ticks(settings: Settings, ticks: list[dict[str, Any]], frame_size: int | None = None
                  ) -> SyntheticReport:
    """Publish ticks made beforehand, as fast as the producer goes, and wait until Kafka
    has them: what a benchmark times when generating the ticks is not its subject."""
    publisher = TickPublisher(settings, frame_size=frame_size)
    report = SyntheticReport()
    wall_start = time.monotonic()
    publish = publisher.publish
    for n, tick in enumerate(ticks, 1):
        publish(tick["symbol"], tick)
        if n % 2048 == 0:
            publisher.tick()
    publisher.flush()
    report.ticks = len(ticks)
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - wall_start
    return report


def _stream(generator: SyntheticTicks, count: int | None, duration_s: float | None
            ) -> Iterator[dict[str, Any]]:
    """The generator's ticks; with neither count nor duration, without end."""
    if count is not None or duration_s is not None:
        yield from generator.ticks(count=count, duration_s=duration_s)
        return
    while True:
        yield from generator.ticks(duration_s=60.0)
