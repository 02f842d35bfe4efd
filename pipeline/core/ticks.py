"""Checking one tick on the worker's hot path.

`parse_tick` accepts exactly what schemas/tick.v1.json accepts (the tests hold
the two to each other), but costs a few attribute lookups instead of a
generic validator call, because it runs once per tick.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol

MAX_TS_MS = 32_503_680_000_000  # year 3000: anything later is a unit mistake
_INF = float("inf")


class TickError(ValueError):
    """A tick that cannot be used. ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Tick(NamedTuple):
    symbol: str  # canonical
    ts_ms: int
    bid: float | None
    ask: float | None
    volume: float
    provider: str | None


def _price(value: Any, name: str) -> float | None:
    if value is None:
        return None
    kind = type(value)
    if (kind is not float and kind is not int) or not 0 < value < _INF:
        raise TickError("invalid_tick", f"{name} must be a number > 0, got {value!r}")
    return value


def parse_tick(obj: Any) -> Tick:
    """Return the tick with its canonical symbol, or raise TickError."""
    if type(obj) is not dict:
        raise TickError("invalid_tick", f"a tick must be a JSON object, got {type(obj).__name__}")
    ts = obj.get("ts_ms")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise TickError("invalid_tick", f"ts_ms must be epoch milliseconds, got {ts!r}")
    bid = _price(obj.get("bid"), "bid")
    ask = _price(obj.get("ask"), "ask")
    if bid is None and ask is None:
        raise TickError("invalid_tick", "a tick needs a bid or an ask")
    volume = obj.get("volume")
    if volume is None:
        volume = 0.0
    elif (type(volume) is not float and type(volume) is not int) or not 0 <= volume < _INF:
        raise TickError("invalid_tick", f"volume must be a number >= 0, got {volume!r}")
    provider = obj.get("provider")
    if provider is not None and (type(provider) is not str or len(provider) > 64):
        raise TickError("invalid_tick", f"provider must be a short string, got {provider!r}")
    raw_symbol = obj.get("symbol")
    if type(raw_symbol) is not str or not 0 < len(raw_symbol) <= MAX_SYMBOL_LENGTH:
        raise TickError("invalid_tick", f"symbol must be a non-empty string, got {raw_symbol!r}")
    try:
        symbol = normalize_symbol(raw_symbol)
    except SymbolError as exc:
        raise TickError("bad_symbol", str(exc)) from None
    return Tick(symbol, ts, bid, ask, volume, provider)
