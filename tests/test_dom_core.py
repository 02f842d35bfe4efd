"""The DOM fold and the one definition of a snapshot, pure: against the plain reference
(tests/reference_dom.py), by hand, and against the schema."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

import schemas
from pipeline.core.book import SnapshotError, book_metrics, parse_snapshot
from pipeline.core.dom import DomConfig, all_records, closed_by_clock, fold
from tests.dom_data import KNOWN, LATENESS_MS, T0, adversarial_snapshots, bad_snapshots
from tests.framing import random_frames
from tests.reference_dom import BAR_FIELDS, SAMPLE_FIELDS, compare, reference_dom

NOW = T0 + 86_400_000 * 30  # the wall clock of the pure tests: a month after the data
TFS = ("1s", "1m")


def config(**kw: Any) -> DomConfig:
    values: dict[str, Any] = {"depth_levels": 3, "max_levels": 10, "sample_ms": 1000,
                              "lateness_ms": LATENESS_MS, "close_grace_ms": 2000,
                              "known_symbols": frozenset(KNOWN)}
    values.update(kw)
    return DomConfig.from_names(TFS, **values)


def canonical(raw: Any) -> str:
    """The key a producer gives it; the bad snapshots' is EUR/USD."""
    from pipeline.symbols import SymbolError, normalize_symbol

    try:
        return normalize_symbol(raw["symbol"])
    except (SymbolError, TypeError, KeyError):
        return "EUR/USD"


def messages(snapshots: list[Any], seed: int, max_frame: int) -> list[tuple[str, list[Any]]]:
    return random_frames(snapshots, canonical, seed, max_frame)


def run_fold(msgs: list[tuple[str, list[Any]]], cfg: DomConfig, roundtrip: bool = True
             ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[tuple[Any, str]]]:
    """Fold every message (states through JSON, as the table stores them); returns the
    states, every record in order, and every rejection."""
    states: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    rejects: list[tuple[Any, str]] = []
    for offset, (key, items) in enumerate(msgs):
        r = fold(states.get(key), key, items, offset, NOW, cfg)
        assert not r.skipped
        states[key] = orjson.loads(orjson.dumps(r.state)) if roundtrip else r.state
        records.extend(r.records)
        rejects.extend((x.snapshot, x.reason) for x in r.rejected)
    return states, records, rejects


def final_rows(records: list[dict[str, Any]]) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """What an upsert keeps: the last record of every key."""
    bars: dict[Any, Any] = {}
    samples: dict[Any, Any] = {}
    for rec in records:
        if rec["kind"] == "dom_bar":
            bars[(rec["symbol"], rec["timeframe"], rec["ts_utc"])] = rec
        else:
            samples[(rec["symbol"], rec["bucket_utc"])] = rec
    return bars, samples


@pytest.mark.parametrize(("seed", "max_frame"), [(1, 1), (2, 7), (3, 60)])
def test_fold_equals_the_reference(seed: int, max_frame: int) -> None:
    snaps = adversarial_snapshots(seed=seed, per_symbol=400)
    bad = bad_snapshots(NOW)
    snaps = snaps[:200] + [b for b, _ in bad] + snaps[200:]
    cfg = config()
    ref = reference_dom(snaps, timeframes=TFS, depth_levels=3, max_levels=10,
                        lateness_ms=LATENESS_MS, known_symbols=set(KNOWN), now_ms=NOW)
    states, records, rejects = run_fold(messages(snaps, seed, max_frame), cfg)
    for state in states.values():  # the wall clock closes what is left, once quiet
        records.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
    bars, samples = final_rows(records)

    assert compare(ref.bars, bars, BAR_FIELDS) == []
    assert compare(ref.samples, samples, SAMPLE_FIELDS) == []
    assert all(b["provider"] == "rec" for b in bars.values())
    reasons = sorted(r for _, r in ref.dead_letters)
    assert sorted(r for _, r in rejects) == reasons
    assert reasons.count("late") >= 10
    assert {r for _, r in bad} <= set(reasons)
    # the data covers what it claims to
    values = list(bars.values())
    assert any(b["crossed"] for b in values)
    assert any(b["depth_imbalance"] is None for b in values)
    assert any(b["open"] is None for b in values)  # only one-sided books in that bar
    assert any(s["imbalance"] in (1.0, -1.0) for s in samples.values())  # zero depth a side


def test_frames_and_single_snapshots_give_the_same_rows() -> None:
    snaps = adversarial_snapshots(seed=4, per_symbol=300)
    cfg = config()
    outs = []
    for max_frame in (1, 500):
        states, records, _ = run_fold(messages(snaps, 4, max_frame), cfg)
        for state in states.values():
            records.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
        outs.append(final_rows(records))
    assert outs[0] == outs[1]


def test_a_message_applied_again_is_skipped_and_recovery_resends_the_same() -> None:
    snaps = adversarial_snapshots(seed=5, per_symbol=200)
    cfg = config()
    msgs = messages(snaps, 5, 9)
    states, records, _ = run_fold(msgs, cfg)
    for offset, (key, items) in enumerate(msgs):
        again = fold(states[key], key, items, offset, NOW, cfg)
        assert again.skipped and again.records == [] and again.rejected == []
    # Recovery re-sends what the states hold; with the clock after it, the rows are
    # those of the uninterrupted run.
    expected_records = list(records)
    for state in states.values():
        expected_records.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
    resent = list(records)
    for state in states.values():
        resent.extend(all_records(state, cfg))
        resent.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
    assert final_rows(resent) == final_rows(expected_records)


def test_a_crash_between_messages_changes_nothing() -> None:
    """State k stored, the messages after it applied again from k's offset on."""
    snaps = adversarial_snapshots(seed=6, per_symbol=200)
    cfg = config()
    msgs = messages(snaps, 6, 5)
    whole = run_fold(msgs, cfg)[0]
    cut = len(msgs) // 2
    states: dict[str, Any] = {}
    for offset, (key, items) in enumerate(msgs[:cut]):
        states[key] = fold(states.get(key), key, items, offset, NOW, cfg).state
    for offset, (key, items) in enumerate(msgs):  # redelivered from the start
        r = fold(states.get(key), key, items, offset, NOW, cfg)
        states[key] = r.state
        assert r.skipped == (offset < cut)
    assert orjson.dumps(states, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        whole, option=orjson.OPT_SORT_KEYS)


def snap(ts: int, bids: list[list[float]], asks: list[list[float]],
         symbol: str = "EUR/USD") -> dict[str, Any]:
    return {"symbol": symbol, "ts_ms": ts, "provider": "p", "bids": bids, "asks": asks}


def test_metrics_of_one_book_by_hand() -> None:
    bids = [[1.0998, 2.0], [1.0997, 3.0], [1.0996, 5.0], [1.0995, 7.0], [1.0994, 11.0],
            [1.0993, 13.0]]
    asks = [[1.1002, 1.0], [1.1003, 4.0]]
    m = book_metrics(bids, asks, depth_levels=3)
    assert m.best_bid == 1.0998 and m.best_ask == 1.1002
    assert m.mid == pytest.approx(1.1)
    assert m.spread == pytest.approx(0.0004)
    assert not m.crossed
    assert m.microprice == pytest.approx((1.0998 * 1.0 + 1.1002 * 2.0) / 3.0)
    vwap_bid = (1.0998 * 2 + 1.0997 * 3 + 1.0996 * 5 + 1.0995 * 7 + 1.0994 * 11) / 28
    vwap_ask = (1.1002 * 1 + 1.1003 * 4) / 5
    assert m.weighted_mid == pytest.approx((vwap_bid + vwap_ask) / 2)
    assert (m.bid_depth, m.ask_depth) == (10.0, 5.0)  # top 3 bids; only 2 asks exist
    assert m.imbalance == pytest.approx(5 / 15)
    assert m.depth_ratio == pytest.approx(41 / 5)
    assert (m.bid_levels, m.ask_levels) == (6, 2)


def test_crossed_locked_one_sided_and_zero_books() -> None:
    crossed = book_metrics([[1.2, 1.0]], [[1.1, 1.0]])
    assert crossed.crossed and crossed.spread == pytest.approx(-0.1)
    locked = book_metrics([[1.1, 1.0]], [[1.1, 3.0]])
    assert locked.crossed and locked.spread == 0.0
    for bids, asks in (([], [[1.1, 1.0]]), ([[1.1, 1.0]], []), ([], [])):
        m = book_metrics(bids, asks)
        assert m.mid is None and m.spread is None and m.microprice is None
        assert m.weighted_mid is None and m.imbalance is None and m.depth_ratio is None
        assert not m.crossed
    zero_bids = book_metrics([[1.0, 0.0]], [[1.1, 2.0]])
    assert zero_bids.imbalance == -1.0 and zero_bids.weighted_mid is None
    assert zero_bids.microprice == pytest.approx(1.0) and zero_bids.depth_ratio == 0.0
    zero = book_metrics([[1.0, 0.0]], [[1.1, 0.0]])
    assert zero.imbalance is None and zero.microprice is None and zero.depth_ratio is None
    assert zero.mid == pytest.approx(1.05)


def test_time_weighted_imbalance_by_hand() -> None:
    cfg = DomConfig.from_names(("1s",), depth_levels=1, lateness_ms=10_000)
    t = T0
    up = ([[1.0, 3.0]], [[1.1, 1.0]])  # imbalance +0.5
    down = ([[1.0, 1.0]], [[1.1, 3.0]])  # -0.5
    even = ([[1.0, 1.0]], [[1.1, 1.0]])  # 0
    r = fold(None, "EUR/USD", [snap(t, *up), snap(t + 250, *down), snap(t + 250, *even)], 0,
             NOW, cfg)
    bar = r.records[0]
    assert not bar["complete"]
    # forming: the last snapshot stands until the newest event time (t + 250)
    assert bar["depth_imbalance"] == pytest.approx(0.5)
    r = fold(r.state, "EUR/USD", [snap(t + 750, [], [[1.1, 1.0]])], 1, NOW, cfg)
    assert r.records[0]["depth_imbalance"] == pytest.approx(250 * 0.5 / 750)
    r2 = fold(r.state, "EUR/USD", [snap(t + 1000, *down)], 2, NOW, cfg)
    done = next(x for x in r2.records if x["kind"] == "dom_bar" and x["ts_utc"] == t)
    assert done["complete"] and done["updates"] == 4
    # [t, t+250) +0.5, [t+250, t+750) 0, [t+750, t+1000) one-sided: left out
    assert done["depth_imbalance"] == pytest.approx(125 / 750)
    nxt = next(x for x in r2.records if x["kind"] == "dom_bar" and x["ts_utc"] == t + 1000)
    assert nxt["depth_imbalance"] is None  # one snapshot that stood for no time yet
    # the wall clock closes the quiet second: its snapshot stands to the end
    closed = closed_by_clock(r2.state, t + 5000, cfg, t + 1000)
    assert [c["depth_imbalance"] for c in closed] == [pytest.approx(-0.5)]
    assert closed[0]["complete"]


def test_a_late_snapshot_revises_only_its_own_bar() -> None:
    cfg = DomConfig.from_names(("1s",), depth_levels=1, lateness_ms=10_000)
    up = ([[1.0, 3.0]], [[1.1, 1.0]])
    down = ([[1.0, 1.0]], [[1.1, 3.0]])
    r = fold(None, "EUR/USD", [snap(T0 + 500, *up), snap(T0 + 1500, *up),
                               snap(T0 + 2500, *up)], 0, NOW, cfg)
    r = fold(r.state, "EUR/USD", [snap(T0 + 800, *down)], 1, NOW, cfg)
    bars = [x for x in r.records if x["kind"] == "dom_bar"]
    assert [b["ts_utc"] for b in bars] == [T0]  # the second after it is untouched
    assert bars[0]["depth_imbalance"] == pytest.approx((300 * 0.5 - 200 * 0.5) / 500)
    assert bars[0]["close"] == pytest.approx(1.05) and bars[0]["updates"] == 2
    samples = [x for x in r.records if x["kind"] == "depth_sample"]
    assert [s["ts_utc"] for s in samples] == [T0 + 800]  # the later one of its second
    # beyond the lateness: refused, nothing sent
    r = fold(r.state, "EUR/USD", [snap(T0 + 2500 - 10_001, *down)], 2, NOW, cfg)
    assert [x.reason for x in r.rejected] == ["late"] and r.records == []


def test_ties_keep_arrival_order() -> None:
    cfg = DomConfig.from_names(("1s",), depth_levels=1)
    a = snap(T0 + 10, [[1.0, 1.0]], [[1.2, 1.0]])  # mid 1.1
    b = snap(T0 + 10, [[1.1, 1.0]], [[1.3, 1.0]])  # mid 1.2
    rec = fold(None, "EUR/USD", [a, b], 0, NOW, cfg).records
    bar = next(x for x in rec if x["kind"] == "dom_bar")
    assert (bar["open"], bar["close"]) == (pytest.approx(1.1), pytest.approx(1.2))
    sample = next(x for x in rec if x["kind"] == "depth_sample")
    assert sample["bids"] == [[1.1, 1.0]]


@pytest.mark.parametrize(("bad", "reason"), [
    (b, r) for b, r in bad_snapshots(NOW) if r not in ("future", "unknown_symbol")])
def test_every_refusal_has_its_reason(bad: Any, reason: str) -> None:
    with pytest.raises(SnapshotError) as info:
        parse_snapshot(bad, max_levels=10)
    assert info.value.reason == reason
    r = fold(None, "EUR/USD", [bad], 0, NOW, config())
    assert [x.reason for x in r.rejected] == [reason]
    assert r.records == [] and r.accepted == 0


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_prices_and_sizes_are_refused(value: float) -> None:
    for bids in ([[value, 1.0]], [[1.1, value]]):
        with pytest.raises(SnapshotError, match="invalid_snapshot"):
            parse_snapshot(snap(T0, bids, []))


def test_future_mismatch_and_unknown_symbols_in_the_fold() -> None:
    cfg = config()
    good = snap(T0, [[1.1, 1.0]], [[1.2, 1.0]])
    r = fold(None, "EUR/USD", [{**good, "ts_ms": NOW + 60_001}, {**good, "symbol": "USDJPY"},
                               good], 0, NOW, cfg)
    assert [x.reason for x in r.rejected] == ["future", "symbol_mismatch"]
    assert r.accepted == 1
    r = fold(None, "AUD/CAD", [{**good, "symbol": "AUD/CAD"}], 0, NOW, cfg)
    assert [x.reason for x in r.rejected] == ["unknown_symbol"]


def test_the_schema_states_the_same_snapshot() -> None:
    """Every shape and bound rule of pipeline.core.book is the schema's too (the order,
    the symbol's normal form and the configurable level count only the code can check)."""
    cases: list[Any] = [b for b, r in bad_snapshots(NOW)
                        if r in ("invalid_snapshot",)]
    for bad in cases:
        assert not schemas.is_valid("dom_snapshot", bad), bad
    good = [snap(T0, [[1.1, 0]], []), snap(0, [], [[1e9, 1e12]]),
            {**snap(32_503_680_000_000, [[1, 2]], [[3, 4]]), "provider": None},
            snap(T0, [[1.1 - i / 1000, 1.0] for i in range(100)], [])]
    for g in good:
        schemas.validate("dom_snapshot", g)
        parse_snapshot(g)
    too_many = snap(T0, [[1.1 - i / 1000, 1.0] for i in range(101)], [])
    assert not schemas.is_valid("dom_snapshot", too_many)
    with pytest.raises(SnapshotError, match="too_many_levels"):
        parse_snapshot(too_many)


def test_records_match_their_schemas() -> None:
    snaps = adversarial_snapshots(seed=8, per_symbol=150)
    cfg = config()
    states, records, _ = run_fold(messages(snaps, 8, 10), cfg)
    for state in states.values():
        records.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
    for rec in records:
        full = {**rec, "src_partition": 0, "src_offset": 1}
        schemas.validate("dom_metric" if rec["kind"] == "dom_bar" else "depth_sample", full)


def test_state_leaves_old_bars_and_samples_behind() -> None:
    cfg = DomConfig.from_names(("1s", "1m"), lateness_ms=5_000)
    state = None
    for k in range(400):
        state = fold(state, "EUR/USD", [snap(T0 + k * 1000, [[1.1, 1.0]], [[1.2, 1.0]])], k,
                     NOW, cfg).state
    assert state is not None
    assert len(state["bars"]["1s"]) <= 8 and len(state["samples"]) <= 8
    assert len(state["bars"]["1m"]) <= 2


def test_settled_points_give_what_all_points_give() -> None:
    """Points behind the lateness horizon leave a bar's state folded into a sum; the bar's
    imbalance stays what the whole list of points gives."""
    rng = random.Random(9)
    snaps = []
    ts = T0
    for _ in range(3000):
        ts += rng.choice([0, 1, 5, 30, 200])
        bids = [[1.0, float(rng.randint(0, 5))]] if rng.random() < 0.9 else []
        snaps.append(snap(ts, bids, [[1.1, float(rng.randint(0, 5))]]))
    outs = []
    for lateness in (500, 10**9):
        cfg = DomConfig.from_names(("1s", "1m", "1h"), depth_levels=1, lateness_ms=lateness)
        states, records, _ = run_fold(messages(snaps, 9, 20), cfg)
        for state in states.values():
            records.extend(closed_by_clock(state, NOW, cfg, NOW - 10_000))
        outs.append(final_rows(records)[0])
        if lateness == 500:
            hour = states["EUR/USD"]["bars"]["1h"][0]
            assert len(hour[17][0]) < 200  # settled: far fewer points than snapshots
    assert compare(outs[1], outs[0], BAR_FIELDS) == []


def test_a_sample_of_a_state_from_before_positions_were_kept_is_released_once_settled() -> None:
    """States written before samples carried the position that changed them: such a
    sample takes the state's position once, and is reduced when that is settled
    (compared with the state's moving position it stayed whole for good)."""
    cfg = config(lateness_ms=3_600_000)  # nothing leaves by the horizon here
    book = ([[1.1, 1.0]], [[1.1002, 1.0]])
    state = fold(None, "EUR/USD", [snap(T0, *book)], 0, NOW, cfg, -1).state
    state = orjson.loads(orjson.dumps(state))
    state["samples"] = [s[:8] for s in state["samples"]]  # as an older worker wrote it
    for position in range(1, 6):
        state = fold(state, "EUR/USD", [snap(T0 + 1_000 * position, *book)], position, NOW,
                     cfg, position - 2).state  # acknowledgements a message behind
    first = next(s for s in state["samples"] if s[0] == T0 - T0 % 1000)
    assert len(first) == 2, first
