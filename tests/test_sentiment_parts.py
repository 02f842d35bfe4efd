"""The sentiment path's pure parts around the fold: the replay CSV, the synthetic feed,
the sinks' decoding, the settings and the agent's declaration."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from consumers.runtime import NotJson
from consumers.sentiment_sinks import DATA_COLUMNS, METRIC_COLUMNS, decode_data, decode_metrics
from consumers.sinks import SINKS, parse_tables, sink_settings
from pipeline.agents.sentiment import sentiment_agent, sentiment_config
from pipeline.core.positioning import ObservationError, parse_observation
from pipeline.core.sentiment import SentimentConfig, fold
from pipeline.settings import SettingsError, load_settings
from producers.sentiment_replay import CsvHeaderError, read_sentiment_csv
from producers.synthetic_sentiment import SyntheticPositioning
from tests.sentiment_data import T0, bad_observations, write_csv

ENV = {"FXSTREAM_STATE_DIR": "/nonexistent"}


def records() -> list[dict[str, Any]]:
    obs = [{"symbol": "EUR/USD", "ts_ms": T0 + k * 30_000, "provider": "ig",
            "long_pct": 40.0 + 10 * k, "short_pct": 60.0 - 10 * k} for k in range(4)]
    out = fold(None, "EUR/USD", obs, 0, T0 + 10**9, SentimentConfig()).records
    for r in out:
        r["src_partition"], r["src_offset"] = 0, 7
    return out


def test_each_sink_takes_its_kind_from_a_mixed_frame() -> None:
    frame = records()
    kinds = [r["kind"] for r in frame]
    assert kinds.count("sentiment_data") == 4 and kinds.count("sentiment_metric") == 4
    metrics = decode_metrics([frame, frame[-1]])
    data = decode_data([frame, frame[0]])
    assert metrics.rejected == [] and data.rejected == []
    assert len(metrics.rows) == 5 and len(data.rows) == 5
    first_metric = next(r for r in frame if r["kind"] == "sentiment_metric")
    row = dict(zip(METRIC_COLUMNS, metrics.rows[0], strict=True))
    assert all(row[c] == first_metric[c] for c in METRIC_COLUMNS)
    drow = dict(zip(DATA_COLUMNS, data.rows[0], strict=True))
    assert drow["long_pct"] == 40.0 and drow["total_traders"] is None
    assert drow["src_offset"] == 7
    assert metrics.origins[-1] == (1, None) and data.origins[0] == (0, 0)


def test_bad_records_are_rejected_once_by_the_metrics_sink() -> None:
    good = records()
    bad_metric = {**next(r for r in good if r["kind"] == "sentiment_metric"), "label": "up"}
    bad_data = {**next(r for r in good if r["kind"] == "sentiment_data"), "long_pct": 170.0}
    values = [NotJson("not JSON: x"), [bad_metric, {"kind": "other"}], bad_data, []]
    metrics = decode_metrics(values)
    assert [(r.message, r.index) for r in metrics.rejected] == [(0, None), (1, 0), (1, 1),
                                                                (3, None)]
    assert metrics.rows == []
    data = decode_data(values)
    assert [(r.message, r.index) for r in data.rejected] == [(2, None)]
    assert data.rows == []


def test_the_replay_csv_reads_values_and_refuses_what_is_not_a_number(tmp_path: Path) -> None:
    bad = bad_observations(T0)
    path = write_csv(tmp_path / "s.csv", [b for b, _ in bad], extra_lines=(
        "EUR/USD,1709323200000,ig,nan,40,,", "EUR/USD,17093e3,ig,60,40,,",
        "EUR/USD,1709323200000,ig,60,40", "", "EUR/USD,1709323200000,ig,60,40,12,0.5"))
    got = list(read_sentiment_csv(path))
    assert [n for n, _ in got] == list(range(2, 2 + len(bad) + 5))
    reasons = []
    for (_, values), (_, reason) in zip(got, bad, strict=False):
        assert not isinstance(values, ValueError)
        with pytest.raises(ObservationError) as info:
            parse_observation(values)
            raise ObservationError(reason, "accepted here, the worker refuses it")
        reasons.append(info.value.reason)
    assert reasons == [r for _, r in bad]
    tail = [v for _, v in got[len(bad):]]
    assert [type(v).__name__ for v in tail] == ["BadRow"] * 4 + ["dict"]
    assert tail[-1] == {"symbol": "EUR/USD", "ts_ms": 1709323200000, "provider": "ig",
                        "long_pct": 60.0, "short_pct": 40.0, "total_traders": 12,
                        "confidence": 0.5}
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("symbol,ts_ms,long_pct\n")
    with pytest.raises(CsvHeaderError, match="expected header"):
        list(read_sentiment_csv(wrong))


def test_the_synthetic_feed_is_valid_plausible_and_deterministic() -> None:
    def feed(seed: int) -> list[dict[str, Any]]:
        return list(SyntheticPositioning(["EUR/USD", "XAU/USD"], interval_s=60, seed=seed,
                                         providers=("a", "b")).observations(count=4000))

    obs = feed(3)
    assert obs == feed(3) and obs != feed(4)
    for o in obs:
        parse_observation(o)  # valid by the one definition
    times = [o["ts_ms"] for o in obs]
    assert times == sorted(times)
    levels = [o["long_pct"] for o in obs]
    assert min(levels) >= 3.0 and max(levels) <= 97.0
    assert any(v > 70 for v in levels) or any(v < 30 for v in levels)
    assert {(o["symbol"], o["provider"]) for o in obs} == {
        (s, p) for s in ("EUR/USD", "XAU/USD") for p in ("a", "b")}
    one = [o for o in obs if o["symbol"] == "EUR/USD" and o["provider"] == "a"]
    steps = [b["long_pct"] - a["long_pct"] for a, b in itertools.pairwise(one)]
    assert max(abs(s) for s in steps) < 15  # a walk, not noise
    limited = SyntheticPositioning(["EUR/USD"], interval_s=1).observations(duration_s=10)
    assert len(list(limited)) == 10


def test_sentiment_settings_and_declaration() -> None:
    s = load_settings(env={**ENV, "FXSTREAM_SENTIMENT_SUM_TOLERANCE": "2.5",
                           "FXSTREAM_SENTIMENT_CONTRARIAN_HIGH": "75",
                           "FXSTREAM_SENTIMENT_CONTRARIAN_LOW": "25",
                           "FXSTREAM_SENTIMENT_BULLISH_ABOVE": "55",
                           "FXSTREAM_SENTIMENT_BEARISH_BELOW": "45",
                           "FXSTREAM_SENTIMENT_LATENESS_MS": "1000"})
    cfg = sentiment_config(s)
    assert (cfg.sum_tolerance, cfg.contrarian_high, cfg.contrarian_low, cfg.bullish_above,
            cfg.bearish_below, cfg.lateness_ms) == (2.5, 75.0, 25.0, 55.0, 45.0, 1000)
    defaults = sentiment_config(load_settings(env=ENV))
    assert (defaults.sum_tolerance, defaults.contrarian_high, defaults.contrarian_low,
            defaults.bullish_above, defaults.bearish_below) == (1.0, 70.0, 30.0, 60.0, 40.0)
    assert defaults.lateness_ms == load_settings(env=ENV).lateness_ms
    with pytest.raises(SettingsError, match="sentiment_contrarian_low"):
        load_settings(env={**ENV, "FXSTREAM_SENTIMENT_CONTRARIAN_LOW": "80"})
    with pytest.raises(SettingsError, match="sentiment_sum_tolerance"):
        load_settings(env={**ENV, "FXSTREAM_SENTIMENT_SUM_TOLERANCE": "-1"})
    spec = sentiment_agent(s)
    assert (spec.source, spec.output, spec.table) == ("sentiment", "sentiment_metrics",
                                                      "sentiment-state")
    assert spec.clock({"symbol": "EUR/USD"}, T0, T0) == []


def test_sentiment_sinks_are_selectable_with_their_own_groups() -> None:
    assert parse_tables("sentiment_metrics,sentiment_data") == ("sentiment_metrics",
                                                                "sentiment_data")
    assert {"sentiment_metrics", "sentiment_data"} <= set(parse_tables("all"))
    s = load_settings(env={**ENV, "FXSTREAM_SINK_GROUP": "g"})
    assert sink_settings("sentiment_metrics", s).sink_group == "g-sentiment-metrics"
    assert sink_settings("sentiment_data", s).sink_group == "g-sentiment-data"
    assert SINKS["sentiment_metrics"][0].key == ("symbol", "provider", "ts_utc")
