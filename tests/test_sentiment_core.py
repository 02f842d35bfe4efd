"""The sentiment fold and the one definition of an observation, pure: against the plain
reference (tests/reference_sentiment.py), by hand, and against the schemas."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

import schemas
from pipeline.core.positioning import ObservationError, parse_observation
from pipeline.core.sentiment import SentimentConfig, all_records, fold
from tests.framing import random_frames
from tests.reference_sentiment import (
    DATA_FIELDS,
    METRIC_FIELDS,
    compare,
    reference_sentiment,
)
from tests.sentiment_data import (
    KNOWN,
    LATENESS_MS,
    T0,
    adversarial_observations,
    bad_items,
    bad_observations,
)

NOW = T0 + 86_400_000 * 30  # the wall clock of the pure tests: a month after the data
MIN = 60_000
HOUR = 3_600_000


def config(**kw: Any) -> SentimentConfig:
    values: dict[str, Any] = {"lateness_ms": LATENESS_MS, "known_symbols": frozenset(KNOWN)}
    values.update(kw)
    return SentimentConfig(**values)


def canonical(raw: Any) -> str:
    from pipeline.symbols import SymbolError, normalize_symbol

    try:
        return normalize_symbol(raw["symbol"])
    except (SymbolError, TypeError, KeyError):
        return "EUR/USD"


def messages(items: list[Any], seed: int, max_frame: int) -> list[tuple[str, list[Any]]]:
    return random_frames(items, canonical, seed, max_frame)


def run_fold(msgs: list[tuple[str, list[Any]]], cfg: SentimentConfig
             ) -> tuple[dict[str, Any], list[dict[str, Any]], list[tuple[Any, str]]]:
    states: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    rejects: list[tuple[Any, str]] = []
    for offset, (key, items) in enumerate(msgs):
        r = fold(states.get(key), key, items, offset, NOW, cfg)
        assert not r.skipped
        states[key] = orjson.loads(orjson.dumps(r.state))  # as the table stores it
        records.extend(r.records)
        rejects.extend((x.observation, x.reason) for x in r.rejected)
    return states, records, rejects


def final_rows(records: list[dict[str, Any]]) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """What an upsert keeps: the last record of every key."""
    metrics: dict[Any, Any] = {}
    data: dict[Any, Any] = {}
    for rec in records:
        key = (rec["symbol"], rec["provider"], rec["ts_utc"])
        (metrics if rec["kind"] == "sentiment_metric" else data)[key] = rec
    return metrics, data


@pytest.mark.parametrize(("seed", "max_frame"), [(1, 1), (2, 7), (3, 60)])
def test_fold_equals_the_reference(seed: int, max_frame: int) -> None:
    obs = adversarial_observations(seed=seed, per_series=250)
    bad = [b for b, _ in bad_observations(NOW)] + [b for b, _ in bad_items()]
    items = obs[:300] + bad + obs[300:]
    ref = reference_sentiment(items, lateness_ms=LATENESS_MS, known_symbols=set(KNOWN),
                              now_ms=NOW)
    _, records, rejects = run_fold(messages(items, seed, max_frame), config())
    metrics, data = final_rows(records)
    assert compare(ref.metrics, metrics, METRIC_FIELDS) == []
    assert compare(ref.data, data, DATA_FIELDS) == []
    reasons = sorted(r for _, r in ref.dead_letters)
    assert sorted(r for _, r in rejects) == reasons
    # the data covers what it claims to
    assert reasons.count("late") >= 10
    values = list(metrics.values())
    assert {("EUR/USD", "myfxbook"), ("EUR/USD", "ig")} <= {(k[0], k[1]) for k in metrics}
    assert any(not m["ma_1h_full"] for m in values) and any(m["ma_1h_full"] for m in values)
    assert any(m["change_1h"] is None for m in values)
    assert any(m["change_1h"] is not None for m in values)
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(sorted(metrics)) if a[:2] == b[:2]]
    assert max(gaps) > HOUR  # a gap longer than every window
    assert {m["contrarian_signal"] for m in values} == {-1, 0, 1}
    assert {m["label"] for m in values} == {"bullish", "bearish", "neutral"}


def test_frames_and_single_observations_give_the_same_rows() -> None:
    obs = adversarial_observations(seed=4, per_series=200)
    outs = [final_rows(run_fold(messages(obs, 4, n), config())[1]) for n in (1, 500)]
    assert outs[0] == outs[1]


def o(ts: int, long_pct: float, provider: str = "p", **kw: Any) -> dict[str, Any]:
    return {"symbol": "EUR/USD", "ts_ms": ts, "provider": provider, "long_pct": long_pct,
            "short_pct": 100.0 - long_pct, **kw}


def metrics_of(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["ts_utc"]: r for r in records if r["kind"] == "sentiment_metric"}


def test_uneven_spacing_by_hand() -> None:
    # 40 stands 1 min, 60 stands 3 min, 80 stands 1 min: at T0 + 5 min
    r = fold(None, "EUR/USD", [o(T0, 40.0), o(T0 + MIN, 60.0), o(T0 + 4 * MIN, 80.0),
                               o(T0 + 5 * MIN, 20.0)], 0, NOW, config())
    m = metrics_of(r.records)
    first = m[T0]
    assert first["ma_5m"] == 40.0 and not first["ma_5m_full"]  # nothing stood yet: its own
    assert m[T0 + MIN]["ma_5m"] == 40.0  # only 40 stood, for the minute that exists
    last = m[T0 + 5 * MIN]
    assert last["ma_5m_full"]  # the observation at T0 stands at the window's start
    assert last["ma_5m"] == pytest.approx((40 * 1 + 60 * 3 + 80 * 1) / 5)
    assert not last["ma_15m_full"] and last["ma_15m"] == pytest.approx(300 / 5)
    assert last["change_1h"] is None
    assert last["contrarian_signal"] == 1 and last["contrarian_strength"] == pytest.approx(0.6)
    assert last["ratio"] == pytest.approx(-0.6) and last["confidence"] == pytest.approx(0.6)
    assert last["label"] == "bearish"
    at4 = m[T0 + 4 * MIN]
    assert at4["long_pct"] == 80.0 and at4["contrarian_signal"] == -1
    assert at4["contrarian_strength"] == pytest.approx(-0.6) and at4["label"] == "bullish"
    assert at4["ma_5m"] == pytest.approx((40 + 60 * 3) / 4) and not at4["ma_5m_full"]


def test_a_window_starts_from_the_observation_standing_at_its_start() -> None:
    # 30 from T0, 70 from T0 + 10 min; at T0 + 12 min the 5-minute window starts at
    # T0 + 7 min, where 30 stands
    r = fold(None, "EUR/USD", [o(T0, 30.0), o(T0 + 10 * MIN, 70.0), o(T0 + 12 * MIN, 50.0)],
             0, NOW, config())
    last = metrics_of(r.records)[T0 + 12 * MIN]
    assert last["ma_5m_full"] and last["ma_5m"] == pytest.approx((30 * 3 + 70 * 2) / 5)
    assert not last["ma_15m_full"] and last["ma_15m"] == pytest.approx((30 * 10 + 70 * 2) / 12)
    assert last["label"] == "neutral" and last["contrarian_signal"] == 0
    assert last["contrarian_strength"] == 0.0


def test_gaps_longer_than_a_window() -> None:
    # 20 at T0, then nothing for two hours, then 90 and 50
    r = fold(None, "EUR/USD", [o(T0, 20.0), o(T0 + 2 * HOUR, 90.0),
                               o(T0 + 2 * HOUR + 30_000, 50.0)], 0, NOW, config())
    m = metrics_of(r.records)
    after = m[T0 + 2 * HOUR]
    # every window lies inside the gap, where 20 stood
    assert all(after[f"ma_{w}"] == 20.0 and after[f"ma_{w}_full"] for w in ("5m", "15m", "1h"))
    assert after["change_1h"] == 70.0
    nxt = m[T0 + 2 * HOUR + 30_000]
    assert nxt["ma_5m"] == pytest.approx((20 * 270 + 90 * 30) / 300)
    assert nxt["ma_1h"] == pytest.approx((20 * 3570 + 90 * 30) / 3600)
    assert nxt["change_1h"] == 30.0


def test_change_1h_needs_an_observation_an_hour_before() -> None:
    r = fold(None, "EUR/USD", [o(T0, 40.0), o(T0 + HOUR - 1, 45.0), o(T0 + HOUR, 50.0)], 0,
             NOW, config())
    m = metrics_of(r.records)
    assert m[T0 + HOUR - 1]["change_1h"] is None
    assert m[T0 + HOUR]["change_1h"] == 10.0 and m[T0 + HOUR]["ma_1h_full"]


def test_two_providers_of_one_symbol_are_separate_series() -> None:
    r = fold(None, "EUR/USD", [o(T0, 20.0, "a"), o(T0 + MIN, 80.0, "b"),
                               o(T0 + 2 * MIN, 40.0, "a"), o(T0 + 3 * MIN, 60.0, "b")], 0,
             NOW, config())
    a = {x["ts_utc"]: x for x in r.records if x["provider"] == "a"
         and x["kind"] == "sentiment_metric"}
    b = {x["ts_utc"]: x for x in r.records if x["provider"] == "b"
         and x["kind"] == "sentiment_metric"}
    assert set(a) == {T0, T0 + 2 * MIN} and set(b) == {T0 + MIN, T0 + 3 * MIN}
    assert a[T0 + 2 * MIN]["ma_5m"] == 20.0 and b[T0 + 3 * MIN]["ma_5m"] == 80.0
    # lateness is per provider: b's newest does not make a's observation late
    r = fold(r.state, "EUR/USD", [o(T0 + 5 * HOUR, 50.0, "b"), o(T0 + 3 * MIN, 30.0, "a")],
             1, NOW, config())
    assert r.rejected == [] and r.accepted == 2


def test_a_late_observation_revises_every_metric_from_its_time_on() -> None:
    cfg = config(lateness_ms=10 * MIN)
    r = fold(None, "EUR/USD", [o(T0 + k * MIN, 50.0 + k) for k in range(8)], 0, NOW, cfg)
    late = fold(r.state, "EUR/USD", [o(T0 + 3 * MIN + 30_000, 10.0)], 1, NOW, cfg)
    kinds = [(x["kind"], x["ts_utc"]) for x in late.records]
    assert kinds == [("sentiment_data", T0 + 3 * MIN + 30_000)] + [
        ("sentiment_metric", t) for t in [T0 + 3 * MIN + 30_000] + [T0 + k * MIN
                                                                    for k in range(4, 8)]]
    m = metrics_of(late.records)
    assert m[T0 + 4 * MIN]["ma_5m"] == pytest.approx((50 + 51 + 52 + 53 * 0.5 + 10 * 0.5) / 4)
    # the same observation arriving again at once replaces the first: same rows again
    again = fold(late.state, "EUR/USD", [o(T0 + 3 * MIN + 30_000, 12.0)], 2, NOW, cfg)
    assert metrics_of(again.records)[T0 + 3 * MIN + 30_000]["long_pct"] == 12.0
    # beyond the lateness: refused, nothing sent
    beyond = fold(again.state, "EUR/USD", [o(T0 + 7 * MIN - 10 * MIN - 1, 10.0)], 3, NOW, cfg)
    assert [x.reason for x in beyond.rejected] == ["late"] and beyond.records == []


def test_thresholds_are_strict_and_configurable() -> None:
    cfg = config()
    r = fold(None, "EUR/USD", [o(T0, 70.0), o(T0 + 1, 30.0), o(T0 + 2, 60.0),
                               o(T0 + 3, 40.0), o(T0 + 4, 70.5)], 0, NOW, cfg)
    m = metrics_of(r.records)
    assert [m[T0 + k]["contrarian_signal"] for k in range(5)] == [0, 0, 0, 0, -1]
    assert [m[T0 + k]["label"] for k in range(5)] == ["bullish", "bearish", "neutral",
                                                       "neutral", "bullish"]
    strict = config(contrarian_high=65.0, contrarian_low=35.0, bullish_above=55.0,
                    bearish_below=45.0)
    m = metrics_of(fold(None, "EUR/USD", [o(T0, 66.0), o(T0 + 1, 34.0)], 0, NOW,
                        strict).records)
    assert m[T0]["contrarian_signal"] == -1 and m[T0]["contrarian_strength"] == pytest.approx(
        -0.32)
    assert m[T0 + 1]["contrarian_signal"] == 1 and m[T0 + 1]["label"] == "bearish"


def test_a_message_applied_again_is_skipped_and_recovery_resends_the_same() -> None:
    obs = adversarial_observations(seed=5, per_series=150)
    cfg = config()
    msgs = messages(obs, 5, 9)
    states, records, _ = run_fold(msgs, cfg)
    for offset, (key, items) in enumerate(msgs):
        again = fold(states[key], key, items, offset, NOW, cfg)
        assert again.skipped and again.records == [] and again.rejected == []
    resent = list(records)
    for state in states.values():
        resent.extend(all_records(state, cfg))
    assert final_rows(resent) == final_rows(records)


def test_recovery_after_each_message_resends_what_it_sent() -> None:
    """A crash right after any message's state was stored, before its outputs went
    out: the records recovery re-sends make the rows of the uninterrupted run."""
    obs = adversarial_observations(seed=6, per_series=120)
    cfg = config()
    msgs = messages(obs, 6, 5)
    _, expected, _ = run_fold(msgs, cfg)
    states: dict[str, Any] = {}
    got: list[dict[str, Any]] = []
    rng = random.Random(6)
    for offset, (key, items) in enumerate(msgs):
        r = fold(states.get(key), key, items, offset, NOW, cfg)
        states[key] = orjson.loads(orjson.dumps(r.state))
        if rng.random() < 0.3:  # this message's outputs are lost; recovery re-sends
            got.extend(all_records(states[key], cfg))
        else:
            got.extend(r.records)
    assert final_rows(got) == final_rows(expected)


def test_a_crash_between_messages_changes_nothing() -> None:
    obs = adversarial_observations(seed=7, per_series=150)
    cfg = config()
    msgs = messages(obs, 7, 5)
    whole = run_fold(msgs, cfg)[0]
    cut = len(msgs) // 2
    states: dict[str, Any] = {}
    for offset, (key, items) in enumerate(msgs[:cut]):
        states[key] = fold(states.get(key), key, items, offset, NOW, cfg).state
    for offset, (key, items) in enumerate(msgs):
        r = fold(states.get(key), key, items, offset, NOW, cfg)
        states[key] = r.state
        assert r.skipped == (offset < cut)
    assert orjson.dumps(states, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        whole, option=orjson.OPT_SORT_KEYS)


def test_state_keeps_only_what_the_hour_and_the_lateness_need() -> None:
    cfg = config(lateness_ms=5 * MIN)
    state = None
    for k in range(2000):  # one a minute for 33 hours
        state = fold(state, "EUR/USD", [o(T0 + k * MIN, 50.0 + k % 30)], k, NOW, cfg).state
    assert state is not None
    kept = state["providers"]["p"]["obs"]
    assert 60 <= len(kept) <= 60 + 5 + 2
    assert kept[0][0] <= T0 + 1999 * MIN - 5 * MIN - HOUR


@pytest.mark.parametrize(("bad", "reason"), bad_observations(NOW) + bad_items())
def test_every_refusal_has_its_reason(bad: Any, reason: str) -> None:
    r = fold(None, canonical(bad), [bad], 0, NOW, config())
    assert [x.reason for x in r.rejected] == [reason]
    assert r.records == [] and r.accepted == 0
    if reason not in ("future", "unknown_symbol"):
        with pytest.raises(ObservationError) as info:
            parse_observation(bad)
        assert info.value.reason == reason and info.value.detail


def test_the_sum_tolerance_is_configurable() -> None:
    near = o(T0, 60.0) | {"short_pct": 41.5}
    with pytest.raises(ObservationError, match="pct_sum"):
        parse_observation(near)
    assert parse_observation(near, sum_tolerance=2.0).long_pct == 60.0
    r = fold(None, "EUR/USD", [near], 0, NOW, config(sum_tolerance=2.0))
    assert r.accepted == 1


def test_mismatch_future_and_unknown_in_the_fold() -> None:
    cfg = config()
    r = fold(None, "EUR/USD", [o(NOW + 60_001, 50.0), o(T0, 50.0) | {"symbol": "USDJPY"},
                               o(T0, 50.0)], 0, NOW, cfg)
    assert [x.reason for x in r.rejected] == ["future", "symbol_mismatch"]
    assert r.accepted == 1
    r = fold(None, "AUD/CAD", [o(T0, 50.0) | {"symbol": "AUD/CAD"}], 0, NOW, cfg)
    assert [x.reason for x in r.rejected] == ["unknown_symbol"]


def test_the_schema_states_the_same_observation() -> None:
    """Every shape and bound rule of pipeline.core.positioning is the schema's too (the
    sum rule, the symbol's normal form and the clock only the code can check)."""
    for bad, reason in bad_observations(NOW) + bad_items():
        if reason in ("invalid_observation", "pct_out_of_range"):
            assert not schemas.is_valid("sentiment_observation", bad), bad
    good = [o(0, 0.0), o(32_503_680_000_000, 100.0), o(T0, 49.5) | {"short_pct": 51.5},
            o(T0, 50.0) | {"total_traders": 10**12, "confidence": 1},
            o(T0, 50.0) | {"total_traders": None, "confidence": None}, o(T0, 50) | {"x": 1}]
    for g in good:
        schemas.validate("sentiment_observation", g)
        parse_observation(g)


def test_records_match_their_schemas() -> None:
    obs = adversarial_observations(seed=8, per_series=100)
    _, records, _ = run_fold(messages(obs, 8, 10), config())
    assert {r["kind"] for r in records} == {"sentiment_metric", "sentiment_data"}
    for rec in records:
        full = {**rec, "src_partition": 0, "src_offset": 1}
        schemas.validate(rec["kind"], full)


def test_a_state_from_before_unsettled_positions_resends_what_its_message_sent() -> None:
    cfg = config(lateness_ms=5 * MIN)
    state = None
    for k in range(10):
        state = fold(state, "EUR/USD", [o(T0 + k * HOUR, 50.0 + k)], k, NOW, cfg).state
    late = fold(state, "EUR/USD", [o(T0 + 9 * HOUR - 4 * MIN, 20.0)], 10, NOW, cfg)
    assert late.state["providers"]["p"]["unsettled"] == [[10, T0 + 9 * HOUR - 4 * MIN]]
    old = orjson.loads(orjson.dumps(late.state))  # as an earlier fxstream stored it
    for p in old["providers"].values():
        p["sent_from"] = p.pop("unsettled")[0][1]
    assert all_records(old, cfg) == all_records(late.state, cfg)
    again = fold(old, "EUR/USD", [o(T0 + 10 * HOUR, 60.0)], 11, NOW, cfg, settled=9)
    assert again.state["providers"]["p"]["unsettled"] == [
        [10, T0 + 9 * HOUR - 4 * MIN], [11, T0 + 10 * HOUR]]
