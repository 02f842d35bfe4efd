import re

import pytest

import schemas
from schemas import SchemaError, validate

GOOD = {
    "tick": [
        {"symbol": "EUR/USD", "ts_ms": 1709323200000, "bid": 1.0812, "ask": 1.0813},
        {"symbol": "EUR/USD", "ts_ms": 0, "bid": 1.0812},
        {"symbol": "EUR/USD", "ts_ms": 1, "ask": 1.0813, "bid": None, "volume": 2.5,
         "provider": "ctrader"},
        {"symbol": "US30", "ts_ms": 5, "bid": 39000, "ask": 39001, "extra": "ignored"},
        {"symbol": "EUR/USD", "ts_ms": 32503680000000, "bid": 1e9, "ask": 1e-320,
         "volume": 1e12, "provider": "p" * 64},
    ],
    "tick_frame": [
        {"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1},
        [{"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1}, {"anything": "checked per tick"}],
    ],
    "dom_snapshot": [
        {"symbol": "EUR/USD", "ts_ms": 1, "bids": [[1.1, 100000]], "asks": [[1.2, 5]]},
        {"symbol": "EUR/USD", "ts_ms": 1, "bids": [], "asks": []},
    ],
    "sentiment_observation": [
        {"symbol": "EUR/USD", "ts_ms": 1, "provider": "myfxbook", "long_pct": 61.5,
         "short_pct": 38.5},
        {"symbol": "EUR/USD", "ts_ms": 1, "provider": "ig", "long_pct": 0, "short_pct": 100,
         "total_traders": 12, "confidence": None},
    ],
    "candle": [
        {"v": 1, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 60000, "open": 1.1,
         "high": 1.2, "low": 1.0, "close": 1.15, "tick_volume": 3, "volume": 0.0,
         "complete": False, "provider_source": "replay"},
    ],
    "candle_frame": [
        [{"v": 1, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 0, "open": 1.1, "high": 1.2,
          "low": 1.0, "close": 1.15, "tick_volume": 3, "volume": 0.0, "complete": True}],
    ],
    "dom_metric": [
        {"v": 2, "kind": "dom_bar", "symbol": "EUR/USD", "timeframe": "1s", "ts_utc": 1000,
         "provider": "p", "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15,
         "spread_mean": -0.1, "spread_min": -0.2, "spread_max": 0.0, "depth_imbalance": -0.5,
         "depth_levels": 20, "microprice": 1.1, "weighted_mid": 1.1, "updates": 3,
         "crossed": 2, "complete": True, "src_partition": 0, "src_offset": 9},
        {"v": 2, "kind": "dom_bar", "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 0,
         "open": None, "high": None, "low": None, "close": None, "depth_imbalance": None,
         "microprice": None, "updates": 1, "crossed": 0, "complete": False},
    ],
    "depth_sample": [
        {"v": 1, "kind": "depth_sample", "symbol": "EUR/USD", "bucket_utc": 1000,
         "ts_utc": 1999, "provider": None, "bids": [[1.1, 0]], "asks": [], "mid_price": None,
         "spread": None, "imbalance": None, "src_partition": 1, "src_offset": 2},
    ],
    "sentiment_metric": [
        {"v": 2, "kind": "sentiment_metric", "symbol": "EUR/USD", "provider": "ig",
         "ts_utc": 1, "long_pct": 70.5, "ma_5m": 70.5, "ma_5m_full": False, "ma_15m": 70.5,
         "ma_15m_full": False, "ma_1h": 70.5, "ma_1h_full": False, "change_1h": None,
         "contrarian_signal": -1, "contrarian_strength": -0.41, "ratio": 0.41,
         "confidence": 0.41, "label": "bullish", "src_partition": 0, "src_offset": 3},
    ],
    "sentiment_data": [
        {"v": 1, "kind": "sentiment_data", "symbol": "EUR/USD", "provider": "ig", "ts_utc": 1,
         "long_pct": 70.5, "short_pct": 29.5, "total_traders": None, "confidence": 0.8},
    ],
    "dead_letter": [
        {"v": 1, "reason": "late", "detail": "400 s behind", "stage": "worker",
         "source": {"topic": "fx.ticks", "partition": 1, "offset": 9, "index": 3},
         "payload": "{}", "symbol": "EUR/USD", "failed_at_ms": 1},
    ],
}

BAD = {
    "tick": [
        ({"symbol": "EUR/USD", "ts_ms": 1}, "needs a bid or an ask"),  # no side
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": None, "ask": None}, "needs a bid or an ask"),
        ({"symbol": "EUR/USD", "ts_ms": -1, "bid": 1.1}, "ts_ms"),
        ({"symbol": "EUR/USD", "ts_ms": "1", "bid": 1.1}, "ts_ms"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 0}, "bid"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": "1.1"}, "bid"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "volume": -1}, "volume"),
        ({"symbol": "", "ts_ms": 1, "bid": 1.1}, "symbol"),
        ({"ts_ms": 1, "bid": 1.1}, "symbol"),
        ([1, 2], "object"),
        ({"symbol": "EUR/USD", "ts_ms": 32503680000001, "bid": 1.1}, "ts_ms"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1e308}, "bid"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "ask": 1000000001}, "ask"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": True}, "bid"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "volume": 2**64}, "volume"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "provider": "fe\x00ed"}, "provider"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "provider": "x\x85"}, "provider"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "provider": "x\n"}, "provider"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bid": 1.1, "provider": ""}, "provider"),
        ({"symbol": "EUR/USD\x00", "ts_ms": 1, "bid": 1.1}, "symbol"),
    ],
    "tick_frame": [
        ([], "must be valid"),
        ("text", "must be valid"),
        ({"symbol": "EUR/USD"}, "must be valid"),
    ],
    "dom_snapshot": [
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": [[1.1]], "asks": []}, "bids"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": [[-1, 1]], "asks": []}, "bids"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": [[1.1, 1e13]], "asks": []}, "bids"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": [], "asks": [[1e10, 1]]}, "asks"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": []}, "must contain"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "bids": [], "asks": [], "provider": "x\x00"},
         "provider"),
    ],
    "sentiment_observation": [
        ({"symbol": "EUR/USD", "ts_ms": 1, "provider": "ig", "long_pct": 101, "short_pct": 0},
         "long_pct"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "long_pct": 50, "short_pct": 50}, "must contain"),
        ({"symbol": "EUR/USD", "ts_ms": 1, "provider": "i\x00g", "long_pct": 50,
          "short_pct": 50}, "provider"),
    ],
    "candle": [
        ({"v": 2, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 0, "open": 1, "high": 1,
          "low": 1, "close": 1, "tick_volume": 1, "volume": 0, "complete": True}, "v"),
        ({"v": 1, "symbol": "EUR/USD", "timeframe": "1x", "ts_utc": 0, "open": 1, "high": 1,
          "low": 1, "close": 1, "tick_volume": 1, "volume": 0, "complete": True}, "timeframe"),
        ({"v": 1, "symbol": "EUR/USD", "timeframe": "1m", "ts_utc": 0, "open": 1, "high": 1,
          "low": 1, "close": 1, "tick_volume": 0, "volume": 0, "complete": True}, "tick_volume"),
    ],
    "candle_frame": [([], "must be valid"), ({"v": 1}, "must be valid")],
    "dom_metric": [
        ({"v": 2, "kind": "dom_bar", "symbol": "EUR/USD", "timeframe": "1s", "ts_utc": 1,
          "depth_imbalance": 2, "updates": 1, "crossed": 0, "complete": True}, "imbalance"),
        ({"v": 2, "kind": "dom_bar", "symbol": "EUR/USD", "timeframe": "1s", "ts_utc": 1,
          "updates": 0, "crossed": 0, "complete": True}, "updates"),
        ({"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "imbalance": 0.5}, "must contain"),
    ],
    "depth_sample": [
        ({"v": 1, "kind": "depth_sample", "symbol": "EUR/USD", "bucket_utc": 0, "ts_utc": 1,
          "bids": [[0, 1]], "asks": []}, "bids"),
        ({"v": 1, "kind": "dom_bar", "symbol": "EUR/USD", "bucket_utc": 0, "ts_utc": 1,
          "bids": [], "asks": []}, "kind"),
    ],
    "sentiment_metric": [
        ({"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "long_pct": 50, "label": "up"}, "must contain"),
    ],
    "sentiment_data": [
        ({"v": 1, "kind": "sentiment_data", "symbol": "EUR/USD", "provider": "ig", "ts_utc": 1,
          "long_pct": 170.5, "short_pct": 29.5}, "long_pct"),
    ],
    "dead_letter": [({"v": 1, "reason": "late"}, "must contain")],
}


@pytest.mark.parametrize(("name", "message"), [(n, m) for n, ms in GOOD.items() for m in ms])
def test_accepts(name: str, message: object) -> None:
    validate(name, message)


@pytest.mark.parametrize(
    ("name", "message", "fragment"), [(n, m, f) for n, ms in BAD.items() for m, f in ms]
)
def test_rejects_with_a_reason(name: str, message: object, fragment: str) -> None:
    with pytest.raises(SchemaError, match=fragment):
        validate(name, message)


def test_every_schema_is_covered_and_versioned() -> None:
    assert set(GOOD) == set(schemas.SCHEMAS) == set(BAD)
    for name, filename in schemas.SCHEMAS.items():
        version = re.fullmatch(rf"{name}\.v([1-9][0-9]*)\.json", filename)
        assert version, filename
        assert schemas.load_schema(name)["title"].endswith(f"v{version.group(1)}")
