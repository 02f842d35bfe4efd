"""The DOM path's pure parts around the fold: the sinks' decoding, the synthetic books,
the replay's checks, the settings and the sink selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumers.dom_sinks import BAR_COLUMNS, SAMPLE_COLUMNS, decode_bars, decode_samples
from consumers.runtime import NotJson
from consumers.sinks import SINKS, parse_tables, sink_settings
from pipeline.agents.dom import dom_agent
from pipeline.core.book import book_metrics, parse_snapshot
from pipeline.core.dom import DomConfig, fold
from pipeline.core.timeframes import parse_timeframe
from pipeline.settings import SettingsError, load_settings
from producers.synthetic import SyntheticTicks
from producers.synthetic_book import SyntheticBooks
from tests.dom_data import T0


def records() -> list[dict[str, Any]]:
    cfg = DomConfig.from_names(("1s",), depth_levels=2)
    snaps = [{"symbol": "EUR/USD", "ts_ms": T0 + k * 300, "provider": "p",
              "bids": [[1.1, 1.0]], "asks": [[1.2, 2.0]] if k % 2 else []} for k in range(5)]
    out = fold(None, "EUR/USD", snaps, 0, T0 + 10_000, cfg).records
    for r in out:
        r["src_partition"], r["src_offset"] = 0, 7
    return out


def test_each_sink_takes_its_kind_from_a_mixed_frame() -> None:
    frame = records()
    kinds = [r["kind"] for r in frame]
    assert "dom_bar" in kinds and "depth_sample" in kinds
    bars = decode_bars([frame, frame[0]])
    samples = decode_samples([frame, frame[0]])
    assert bars.rejected == [] and samples.rejected == []
    n_bars = kinds.count("dom_bar")
    assert len(bars.rows) == n_bars + (kinds[0] == "dom_bar")
    assert len(samples.rows) == kinds.count("depth_sample") + (kinds[0] == "depth_sample")
    row = dict(zip(BAR_COLUMNS, bars.rows[0], strict=True))
    first_bar = next(r for r in frame if r["kind"] == "dom_bar")
    assert all(row[c] == first_bar[c] for c in BAR_COLUMNS)
    srow = dict(zip(SAMPLE_COLUMNS, samples.rows[0], strict=True))
    first_sample = next(r for r in frame if r["kind"] == "depth_sample")
    assert srow["bids"].obj == first_sample["bids"] and srow["ts_utc"] == first_sample["ts_utc"]
    # origins name the message and the index in its frame
    assert bars.origins[0][0] == 0 and bars.origins[-1] in ((1, None), (0, len(frame) - 1))


def test_bad_records_are_rejected_once_by_the_metrics_sink() -> None:
    good = records()
    bad_bar = {**next(r for r in good if r["kind"] == "dom_bar"), "depth_imbalance": 3.0}
    bad_sample = {**next(r for r in good if r["kind"] == "depth_sample"), "bids": "x"}
    values = [NotJson("not JSON: x"), [bad_bar, {"kind": "other"}], bad_sample, []]
    bars = decode_bars(values)
    assert [(r.message, r.index) for r in bars.rejected] == [(0, None), (1, 0), (1, 1),
                                                             (3, None)]
    assert bars.rows == []
    samples = decode_samples(values)
    assert [(r.message, r.index) for r in samples.rejected] == [(2, None)]
    assert samples.rows == []


def test_synthetic_books_follow_the_synthetic_ticks() -> None:
    symbols = ["EUR/USD", "USD/JPY", "XAU/USD"]
    books = SyntheticBooks(symbols, rate=500, seed=11, levels=6).books(count=3000)
    ticks = SyntheticTicks(symbols, rate=500, seed=11).ticks(count=3000)
    for book, tick in zip(books, ticks, strict=True):
        snap = parse_snapshot(book)  # valid by the one definition
        assert (snap.symbol, snap.ts_ms) == (tick["symbol"], tick["ts_ms"])
        assert snap.bids[0][0] == tick["bid"] and snap.asks[0][0] == tick["ask"]
        m = book_metrics(snap.bids, snap.asks)
        assert m.mid == (tick["bid"] + tick["ask"]) / 2
        assert 1 <= len(snap.bids) <= 6 and 1 <= len(snap.asks) <= 6
        assert all(s > 0 and s == int(s) for _, s in snap.bids + snap.asks)


def test_replay_reads_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    from producers.dom_replay import read_lines

    path = tmp_path / "books.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"b": 2}\n')
    assert [n for n, _ in read_lines(path)] == [1, 4]


def test_dom_settings_and_seconds() -> None:
    s = load_settings(env={"FXSTREAM_DOM_TIMEFRAMES": "1m,1s,5s", "FXSTREAM_DOM_DEPTH_LEVELS": "5",
                           "FXSTREAM_DOM_SAMPLE_MS": "500", "FXSTREAM_DOM_MAX_LEVELS": "50",
                           "FXSTREAM_STATE_DIR": "/nonexistent"})
    assert s.dom_timeframes == ("1s", "5s", "1m")
    assert (s.dom_depth_levels, s.dom_sample_ms, s.dom_max_levels) == (5, 500, 50)
    assert load_settings(env={"FXSTREAM_STATE_DIR": "/nonexistent"}).dom_timeframes == (
        "1s", "1m")
    assert parse_timeframe("1s").ms == 1000 and parse_timeframe("30s").start_of(61_500) == 60_000
    with pytest.raises(ValueError, match="divide"):
        parse_timeframe("7s")
    with pytest.raises(SettingsError, match="shorter than a minute"):
        load_settings(env={"FXSTREAM_TIMEFRAMES": "1s,1m", "FXSTREAM_STATE_DIR": "/nonexistent"})
    with pytest.raises(SettingsError, match="dom_depth_levels"):
        load_settings(env={"FXSTREAM_DOM_DEPTH_LEVELS": "0", "FXSTREAM_STATE_DIR": "/x"})
    from pipeline.agents.dom import dom_config

    assert dom_config(s).lateness_ms == 10_000
    assert dom_config(s.model_copy(update={"dom_lateness_ms": None})).lateness_ms == s.lateness_ms
    assert dom_config(s.model_copy(update={"dom_lateness_ms": 5})).lateness_ms == 5
    spec = dom_agent(s)
    assert (spec.source, spec.output, spec.table) == ("dom", "dom_metrics", "dom-state")


def test_sink_selection_and_groups() -> None:
    assert parse_tables("all") == tuple(SINKS)
    assert parse_tables("dom_metrics, market_depth,dom_metrics") == ("dom_metrics",
                                                                     "market_depth")
    with pytest.raises(ValueError, match="unknown table candles"):
        parse_tables("candles")
    s = load_settings(env={"FXSTREAM_SINK_GROUP": "g", "FXSTREAM_STATE_DIR": "/nonexistent"})
    groups = {t: sink_settings(t, s).sink_group for t in SINKS}
    assert {t: groups[t] for t in ("market_data_candles", "dom_metrics", "market_depth")} == {
        "market_data_candles": "g", "dom_metrics": "g-dom-metrics",
        "market_depth": "g-market-depth"}
    assert len(set(groups.values())) == len(groups)  # each table its own group
