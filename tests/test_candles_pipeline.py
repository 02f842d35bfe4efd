"""Candles end to end on the real broker and database: replay -> worker -> sink -> PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.conftest import wait_for
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.pipeline_helpers import Proc, db_candles, read_topic, run_cli
from tests.reference_candles import RefResult, compare_candles, reference_from_csv

pytestmark = pytest.mark.integration

TFS = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")


def pipeline_settings(make_settings: Callable[..., Settings], **kw: object) -> Settings:
    values: dict[str, object] = {
        "symbols": tuple(sorted(KNOWN_SYMBOLS)), "timeframes": TFS, "partitions": 4,
        "lateness_ms": 300_000, "session_timeout_s": 6.0, "log_level": "INFO",
    }
    values.update(kw)
    return make_settings(**values)


def reference(csv: Path) -> RefResult:
    return reference_from_csv(str(csv), timeframes=TFS, lateness_ms=300_000,
                              known_symbols=set(KNOWN_SYMBOLS))


def wait_for_reference(settings: Settings, ref: RefResult, procs: list[Proc],
                       timeout_s: float = 240) -> None:
    last: list[str] = []

    def matches() -> bool:
        for p in procs:
            assert p.alive(), f"{p.log.name} died:\n{p.tail()}"
        actual = db_candles(settings)
        last[:] = compare_candles(ref.candles, actual)
        if not last:
            return all(r["complete"] for r in actual.values())
        return False

    try:
        wait_for(matches, timeout_s, "the candles in PostgreSQL to equal the reference")
    except AssertionError:
        logs = "\n".join(f"--- {p.log.name}\n{p.tail(25)}" for p in procs)
        raise AssertionError(f"{len(last)} differences, first: {last[:5]}\n{logs}") from None


def dead_letter_reasons(settings: Settings) -> Counter[str]:
    records = {key: value for key, value in read_topic(settings, settings.topics.dead_letter)}
    return Counter(r["reason"] for r in records.values())


@pytest.mark.parametrize(("frame_size", "store", "event_loop"),
                         [(500, "memory", "uvloop"), (1, "memory", "asyncio"),
                          (500, "rocksdb", "uvloop")])
def test_replayed_candles_equal_the_reference(make_settings: Callable[..., Settings],
                                              tmp_path: Path, frame_size: int,
                                              store: str, event_loop: str) -> None:
    settings = pipeline_settings(make_settings, store=store, event_loop=event_loop)
    csv = tmp_path / "ticks.csv"
    write_adversarial_csv(csv, seed=5, ticks_per_symbol=1500)
    ref = reference(csv)

    replay = run_cli(settings, ["produce", "replay", str(csv), "--frame-size", str(frame_size),
                                "--no-progress"], tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert "bad rows" in replay.stdout

    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    try:
        wait_for_reference(settings, ref, [worker, sink])
        expected = Counter(d.reason for d in ref.dead_letters)
        assert expected["late"] >= 20 and expected["bad_row"] >= 10
        wait_for(lambda: dead_letter_reasons(settings) == expected, 60,
                 f"dead letters {dict(expected)}")
        assert f"event loop: {event_loop}" in worker.log.read_text()
    finally:
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()


def test_synthetic_producer_with_a_count_publishes_that_many_ticks(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """70,000 ticks at 1,000/s span 70 s of event time: the default 60 s span applies
    only when no count is given."""
    settings = pipeline_settings(make_settings)
    out = run_cli(settings, ["produce", "synthetic", "--count", "70000", "--max-speed",
                             "--frame-size", "500"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "published 70000 ticks" in out.stdout, out.stdout
    frames = [v for _, v in read_topic(settings, settings.topics.ticks)]
    assert sum(len(f) if isinstance(f, list) else 1 for f in frames) == 70_000
