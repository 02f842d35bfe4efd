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
        {"symbol": "EUR/USD", "ts_ms": 1, "long_pct": 61.5, "short_pct": 38.5},
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
        {"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "imbalance": -0.5, "levels": 3,
         "bid_depth": 1.0, "ask_depth": 3.0},
    ],
    "sentiment_metric": [
        {"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "long_pct": 70.5, "label": "bullish",
         "contrarian_signal": -0.41},
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
    ],
    "sentiment_observation": [
        ({"symbol": "EUR/USD", "ts_ms": 1, "long_pct": 101, "short_pct": 0}, "long_pct"),
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
    "dom_metric": [({"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "imbalance": 2}, "imbalance")],
    "sentiment_metric": [
        ({"v": 1, "symbol": "EUR/USD", "ts_utc": 1, "long_pct": 50, "label": "up"}, "label"),
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
        assert ".v1." in filename
        assert schemas.load_schema(name)["title"].endswith("v1")
