"""The derived orderflow provider, pure: the candle fold's minute counts against the plain
reference, by hand, revised by late ticks, closed by the clock, re-sent by recovery;
and the runtime's routing of a record to another topic."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.agents.candles import candle_agent
from pipeline.core import orderflow
from pipeline.core.candles import CandleConfig, all_bars, closed_by_clock, fold
from pipeline.core.positioning import parse_observation
from pipeline.runtime.declaration import TARGET
from pipeline.settings import load_settings
from tests.exactness_data import KNOWN_SYMBOLS, write_adversarial_csv
from tests.reference_candles import accepted_ticks
from tests.reference_sentiment import reference_orderflow
from tests.test_candles_core import NOW, TFS, messages_from_csv

CONFIG = CandleConfig.from_names(TFS, lateness_ms=300_000, close_grace_ms=2_000,
                                 known_symbols=frozenset(KNOWN_SYMBOLS), orderflow=True)
T0 = 1_709_323_200_000


def observations(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[float, float]]:
    """What the sentiment agent keeps: the last observation of every (symbol, time)."""
    out = {}
    for r in records:
        if r.get(TARGET) == "sentiment":
            obs = parse_observation({k: v for k, v in r.items() if k != TARGET})
            assert obs.provider == "orderflow"
            out[(obs.symbol, obs.ts_ms)] = (obs.long_pct, obs.short_pct)
    return out


def fold_all(msgs: list[tuple[str, list[Any]]], lose_outputs: float = 0.0, seed: int = 0
             ) -> list[dict[str, Any]]:
    """Fold every message (states through JSON); with ``lose_outputs``, that share of the
    messages' records is lost and recovery re-sends the state's; then the clock closes
    what is left."""
    rng = random.Random(seed)
    states: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for offset, (symbol, ticks) in enumerate(msgs):
        r = fold(states.get(symbol), symbol, ticks, offset, NOW, CONFIG)
        states[symbol] = orjson.loads(orjson.dumps(r.state))
        if rng.random() < lose_outputs:
            records.extend(all_bars(states[symbol], NOW, CONFIG))
        else:
            records.extend(r.candles)
    for state in states.values():
        records.extend(closed_by_clock(state, NOW, CONFIG, NOW - 10_000))
    return records


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow") / "ticks.csv"
    write_adversarial_csv(path, seed=9, ticks_per_symbol=3000)
    return path


@pytest.mark.parametrize(("frame_size", "lose"), [(1, 0.0), (50, 0.0), (500, 0.0), (20, 0.3)])
def test_orderflow_equals_the_reference(adversarial: Path, frame_size: int, lose: float) -> None:
    ticks, _ = accepted_ticks(str(adversarial), lateness_ms=300_000,
                              known_symbols=set(KNOWN_SYMBOLS), now_ms=NOW)
    expected = reference_orderflow(ticks)
    msgs, _ = messages_from_csv(adversarial, frame_size, seed=frame_size)
    got = observations(fold_all(msgs, lose_outputs=lose, seed=frame_size))
    assert len(expected) > 100
    assert got.keys() == expected.keys()
    for key, (long_pct, short_pct) in expected.items():
        assert got[key] == (pytest.approx(long_pct, rel=1e-12),
                            pytest.approx(short_pct, rel=1e-12)), key


def tick(ts: int, mid: float) -> dict[str, Any]:
    return {"symbol": "EUR/USD", "ts_ms": ts, "bid": mid - 0.0001, "ask": mid + 0.0001}


def test_minutes_by_hand_revised_by_a_late_tick() -> None:
    cfg = CandleConfig.from_names(("1m",), lateness_ms=300_000, orderflow=True)
    # minute T0: 1.1, up, up, same, down -> 2 up, 1 down; minute T0+1m: up
    r = fold(None, "EUR/USD", [tick(T0, 1.1), tick(T0 + 1, 1.2), tick(T0 + 2, 1.3),
                               tick(T0 + 3, 1.3), tick(T0 + 4, 1.25),
                               tick(T0 + 60_000, 1.26)], 0, NOW, cfg)
    obs = observations(r.candles)
    assert obs == {("EUR/USD", T0 + 60_000): (pytest.approx(200 / 3), pytest.approx(100 / 3))}
    # the forming minute is not sent; a late tick into the closed one revises it
    r = fold(r.state, "EUR/USD", [tick(T0 + 5, 1.0)], 1, NOW, cfg)
    assert observations(r.candles) == {("EUR/USD", T0 + 60_000): (50.0, 50.0)}
    # (the late 1.0 came after 1.26 by arrival: a down-tick of minute T0)
    # the clock closes the quiet minute T0 + 1 min: 1.25 -> 1.26, one up-tick
    closed = observations(closed_by_clock(r.state, T0 + 10**6, cfg, T0))
    assert closed == {("EUR/USD", T0 + 120_000): (100.0, 0.0)}


def test_no_observation_for_a_minute_without_moves() -> None:
    cfg = CandleConfig.from_names(("1m",), orderflow=True)
    r = fold(None, "EUR/USD", [tick(T0, 1.1), tick(T0 + 1000, 1.1), tick(T0 + 60_000, 1.1),
                               tick(T0 + 120_000, 1.1)], 0, NOW, cfg)
    assert observations(r.candles) == {}
    assert observations(all_bars(r.state, NOW, cfg)) == {}


def test_orderflow_off_leaves_the_candle_fold_as_it_was() -> None:
    off = CandleConfig.from_names(("1m",))
    ticks = [tick(T0 + k * 7_000, 1.1 + (k % 5) / 1000) for k in range(40)]
    r = fold(None, "EUR/USD", ticks, 0, NOW, off)
    assert "flow" not in r.state and all("timeframe" in c for c in r.candles)
    on = fold(None, "EUR/USD", ticks, 0, NOW, CandleConfig.from_names(("1m",), orderflow=True))
    assert [c for c in on.candles if TARGET not in c] == r.candles


def test_the_candle_agent_declares_the_sentiment_topic() -> None:
    env = {"FXSTREAM_STATE_DIR": "/nonexistent"}
    spec = candle_agent(load_settings(env=env))
    assert spec.also == ("sentiment",) and orderflow.TARGET == TARGET
    from pipeline.core import orderbook

    assert orderbook.TARGET == TARGET and orderbook.TOPIC == orderflow.TOPIC == "sentiment"
    book_spec, _ = dom_spec()
    assert book_spec.also == ("sentiment",)
    off = candle_agent(load_settings(env={**env, "FXSTREAM_SENTIMENT_ORDERFLOW": "false"}))
    assert off.also == ()


# --- the orderbook provider on the DOM agent -------------------------------------------------


def dom_spec(**kw: Any) -> Any:
    from pipeline.agents.dom import dom_agent
    from pipeline.agents.orderbook import with_orderbook
    from tests.dom_data import KNOWN, LATENESS_MS

    values: dict[str, Any] = {"FXSTREAM_STATE_DIR": "/nonexistent",
                              "FXSTREAM_SYMBOLS": ",".join(KNOWN),
                              "FXSTREAM_DOM_DEPTH_LEVELS": "3", "FXSTREAM_DOM_MAX_LEVELS": "10",
                              "FXSTREAM_LATENESS_MS": str(LATENESS_MS),
                              "FXSTREAM_DOM_LATENESS_MS": str(LATENESS_MS)}
    values.update(kw)
    settings = load_settings(env=values)
    return with_orderbook(dom_agent(settings), settings), dom_agent(settings)


def run_spec(spec: Any, msgs: list[tuple[str, list[Any]]], lose_outputs: float = 0.0,
             seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rng = random.Random(seed)
    states: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for offset, (key, items) in enumerate(msgs):
        out = spec.fold(states.get(key), key, items, offset, NOW, offset - 1)
        states[key] = orjson.loads(orjson.dumps(out.state))
        if rng.random() < lose_outputs:
            records.extend(spec.resend(states[key], NOW))
        else:
            records.extend(out.outputs)
    for state in states.values():
        records.extend(spec.clock(state, NOW, NOW - 10_000))
    return records, states


def orderbook_observations(records: list[dict[str, Any]]
                           ) -> dict[tuple[str, int], tuple[float, float]]:
    out = {}
    for r in records:
        if r.get(TARGET) == "sentiment":
            obs = parse_observation({k: v for k, v in r.items() if k != TARGET})
            assert obs.provider == "orderbook"
            out[(obs.symbol, obs.ts_ms)] = (obs.long_pct, obs.short_pct)
    return out


@pytest.mark.parametrize(("max_frame", "lose"), [(1, 0.0), (7, 0.0), (60, 0.0), (9, 0.3)])
def test_orderbook_equals_the_reference(max_frame: int, lose: float) -> None:
    from tests.dom_data import KNOWN, LATENESS_MS, adversarial_snapshots, bad_snapshots
    from tests.reference_dom import reference_dom
    from tests.reference_sentiment import reference_orderbook
    from tests.test_dom_core import messages

    snaps = adversarial_snapshots(seed=max_frame, per_symbol=400)
    snaps = snaps[:200] + [b for b, _ in bad_snapshots(NOW)] + snaps[200:]
    ref = reference_dom(snaps, timeframes=("1s", "1m"), depth_levels=3, max_levels=10,
                        lateness_ms=LATENESS_MS, known_symbols=set(KNOWN), now_ms=NOW)
    expected = reference_orderbook(snaps, {i for i, _ in ref.dead_letters}, 3)
    spec, plain = dom_spec()
    msgs = messages(snaps, max_frame, max_frame)
    records, _ = run_spec(spec, msgs, lose, seed=max_frame)
    got = orderbook_observations(records)
    assert len(expected) > 20
    assert got.keys() == expected.keys()
    for key, (long_pct, short_pct) in expected.items():
        assert got[key] == (pytest.approx(long_pct, rel=1e-9),
                            pytest.approx(short_pct, rel=1e-9)), key
    # the DOM agent's own records are those of the DOM agent alone
    if not lose:
        dom_only, _ = run_spec(plain, msgs)
        assert [r for r in records if TARGET not in r] == dom_only


def test_orderbook_minutes_by_hand_and_the_state_they_keep() -> None:
    spec, _ = dom_spec(FXSTREAM_DOM_DEPTH_LEVELS="1", FXSTREAM_DOM_LATENESS_MS="120000")

    def snap(ts: int, bid: float, ask: float) -> dict[str, Any]:
        return {"symbol": "EUR/USD", "ts_ms": ts, "provider": "p", "bids": [[1.0, bid]],
                "asks": [[1.1, ask]]}

    # B=3, A=1 for 15 s; then B=1, A=1 for 45 s -> B 90, A 60 (unit-seconds)
    out = spec.fold(None, "EUR/USD", [snap(T0, 3.0, 1.0), snap(T0 + 15_000, 1.0, 1.0),
                                      snap(T0 + 60_000, 0.0, 0.0)], 0, NOW, -1)
    assert orderbook_observations(out.outputs) == {("EUR/USD", T0 + 60_000): (60.0, 40.0)}
    # a late snapshot revises the minute: B=0, A=2 from T0 + 30 s -> B 45 + 15, A 15 + 15 + 60
    out = spec.fold(out.state, "EUR/USD", [snap(T0 + 30_000, 0.0, 2.0)], 1, NOW, 0)
    assert orderbook_observations(out.outputs) == {("EUR/USD", T0 + 60_000): (40.0, 60.0)}
    # an empty book all minute: no observation, by the clock either
    assert orderbook_observations(spec.clock(out.state, NOW, NOW - 10_000)) == {}
    state = out.state
    for k in range(2, 40):
        state = spec.fold(state, "EUR/USD", [snap(T0 + k * 60_000, 1.0, 1.0)], k, NOW,
                          k - 1).state
    assert len(state["orderbook"]) <= 4  # the lateness is two minutes
