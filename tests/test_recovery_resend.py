"""What recovery re-sends covers every output Kafka may not have acknowledged, for every
declared agent (pure, on the declarations the worker runs).

The worker writes a message's state (with its run's) after publishing its outputs, but
Kafka acknowledges the two independently (different partitions, different batches): a
kill -9 can leave the changelog records of many messages stored while their outputs
are lost. The runtime tells the fold the newest position whose outputs Kafka has
acknowledged (``settled``: known after a producer flush); after a crash the re-sent
records of the recovered states, with what was acknowledged, must make the rows of
the run without a crash."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.agents.candles import candle_agent
from pipeline.agents.dom import dom_agent
from pipeline.agents.orderbook import with_orderbook
from pipeline.agents.sentiment import sentiment_agent
from pipeline.runtime.declaration import TARGET, AgentSpec
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, normalize_symbol
from producers.csv_ticks import RowError, read_tick_csv
from tests import dom_data, sentiment_data
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.framing import random_frames

NOW = 2_000_000_000_000  # 2033: every message is a replay


def identity(record: dict[str, Any]) -> tuple[Any, ...]:
    """The row (or the derived observation) a record upserts."""
    if TARGET in record:
        return (record[TARGET], record["symbol"], record["provider"], record["ts_ms"])
    kind = record.get("kind", "candle")
    if kind == "depth_sample":
        return (kind, record["symbol"], record["bucket_utc"])
    if kind.startswith("sentiment"):
        return (kind, record["symbol"], record["provider"], record["ts_utc"])
    return (kind, record["symbol"], record["timeframe"], record["ts_utc"])


def symbol_of(item: Any) -> str | None:
    try:
        return normalize_symbol(item["symbol"])
    except (SymbolError, TypeError, KeyError):
        return None


def tick_messages(tmp: Path) -> list[tuple[str, list[Any]]]:
    path = tmp / "ticks.csv"
    write_adversarial_csv(path, seed=31, ticks_per_symbol=600, lateness_ms=120_000)
    ticks = [item for _, item in read_tick_csv(path) if not isinstance(item, RowError)]
    return random_frames(ticks, symbol_of, seed=31, max_frame=6)


def agent_cases(tmp: Path) -> dict[str, tuple[AgentSpec, list[tuple[str, list[Any]]]]]:
    candles = Settings(symbols=tuple(sorted(KNOWN_SYMBOLS)), timeframes=("1m", "5m", "1h"),
                       lateness_ms=20_000, sentiment_orderflow=True)
    dom = Settings(symbols=dom_data.KNOWN, dom_lateness_ms=dom_data.LATENESS_MS,
                   sentiment_orderbook=True)
    sentiment = Settings(symbols=sentiment_data.KNOWN,
                         sentiment_lateness_ms=sentiment_data.LATENESS_MS)
    return {
        "candle": (candle_agent(candles), tick_messages(tmp)),
        "dom": (with_orderbook(dom_agent(dom), dom),
                random_frames(dom_data.adversarial_snapshots(seed=32, per_symbol=250),
                              symbol_of, seed=32, max_frame=5)),
        "sentiment": (sentiment_agent(sentiment),
                      random_frames(sentiment_data.adversarial_observations(
                          seed=33, per_series=250), symbol_of, seed=33, max_frame=4)),
    }


def fold_all(spec: AgentSpec, msgs: list[tuple[str, list[Any]]], start: int,
             states: dict[str, Any], settled: Callable[[int], int]
             ) -> list[list[dict[str, Any]]]:
    """Fold messages from ``start`` on into ``states``; each message's outputs."""
    outputs = []
    for position in range(start, len(msgs)):
        symbol, items = msgs[position]
        out = spec.fold(states.get(symbol), symbol, orjson.loads(orjson.dumps(items)),
                        position, NOW, settled(position))
        assert not out.skipped
        if out.state is not None:
            states[symbol] = orjson.loads(orjson.dumps(out.state))  # as the table keeps it
        outputs.append(out.outputs)
    return outputs


def upsert(rows: dict[tuple[Any, ...], Any], records: list[dict[str, Any]]) -> None:
    for record in records:
        rows[identity(record)] = record


@pytest.mark.parametrize("agent", ["candle", "dom", "sentiment"])
def test_recovery_resends_every_output_not_yet_acknowledged(agent: str,
                                                            tmp_path: Path) -> None:
    spec, msgs = agent_cases(tmp_path)[agent]
    assert len(msgs) > 300
    expected: dict[tuple[Any, ...], Any] = {}
    for out in fold_all(spec, msgs, 0, {}, lambda p: p - 1):
        upsert(expected, out)
    assert len(expected) > 200
    rng = random.Random(agent)
    for trial in range(12):
        # Acknowledgements lag the messages by up to `lag` positions (a flush a second).
        lag = rng.choice((1, 5, 40, 200))
        marks = [-1]
        for position in range(1, len(msgs)):
            marks.append(max(marks[-1], position - 1 - rng.randint(0, lag)))
        crash = rng.randrange(len(msgs) // 4, len(msgs) - 1)
        states: dict[str, Any] = {}
        before_crash = fold_all(spec, msgs[:crash + 1], 0, states, marks.__getitem__)
        acknowledged = marks[crash]
        rows: dict[tuple[Any, ...], Any] = {}
        for position, out in enumerate(before_crash):
            # Acknowledged outputs are stored; of the others, any may be lost.
            if position <= acknowledged or rng.random() < 0.3:
                upsert(rows, out)
        for state in states.values():  # recovery: every state's records re-sent
            upsert(rows, spec.resend(state, NOW))
        after = fold_all(spec, msgs, crash + 1, states, lambda p, c=crash: max(c, p - 1))
        for out in after:
            upsert(rows, out)
        missing = [k for k in expected if k not in rows]
        wrong = [k for k in expected if k in rows and rows[k] != expected[k]]
        assert (missing, wrong) == ([], []), (
            f"trial {trial}: crash after position {crash}, acknowledged up to {acknowledged}: "
            f"{len(missing)} rows missing, {len(wrong)} wrong; first {(missing + wrong)[:3]}")


@pytest.mark.parametrize("agent", ["candle", "dom", "sentiment"])
def test_several_crashes_in_a_row_still_leave_every_row_exact(agent: str,
                                                              tmp_path: Path) -> None:
    """Crash after crash, each before or after the restarted worker settled anything:
    what a recovery re-sent is acknowledged only by a later flush, and a float summed
    in other pieces (a bar settled at other messages) must still come out the same."""
    spec, msgs = agent_cases(tmp_path)[agent]
    expected: dict[tuple[Any, ...], Any] = {}
    for out in fold_all(spec, msgs, 0, {}, lambda p: p - 1):
        upsert(expected, out)
    rng = random.Random(f"{agent}-crashes")
    for trial in range(6):
        crashes = sorted(rng.sample(range(10, len(msgs) - 1), rng.randint(2, 6)))
        states: dict[str, Any] = {}
        rows: dict[tuple[Any, ...], Any] = {}
        resent: list[dict[str, Any]] = []  # what the last recovery re-sent
        start = 0
        for crash in [*crashes, len(msgs) - 1]:
            lag = rng.choice((1, 5, 40))
            marks = {start: -1}  # after a recovery nothing is settled until a flush
            for position in range(start + 1, crash + 1):
                step = position - 1 - rng.randint(0, lag)
                marks[position] = max(marks[position - 1], step if step >= start else -1)
            outs = fold_all(spec, msgs[:crash + 1], start, states, marks.__getitem__)
            last = crash == len(msgs) - 1
            acknowledged = marks[crash]
            # a settle after the recovery means its re-sent records were acknowledged
            if last or acknowledged >= 0 or rng.random() < 0.3:
                upsert(rows, resent)
            for position, out in zip(range(start, crash + 1), outs, strict=True):
                if last or position <= acknowledged or rng.random() < 0.3:
                    upsert(rows, out)
            resent = [r for state in states.values() for r in spec.resend(state, NOW)]
            start = crash + 1
        missing = [k for k in expected if k not in rows]
        wrong = [k for k in expected if k in rows and rows[k] != expected[k]]
        assert (missing, wrong) == ([], []), (
            f"trial {trial}: crashes after {crashes}: {len(missing)} rows missing, "
            f"{len(wrong)} wrong; first {(missing + wrong)[:3]}")
