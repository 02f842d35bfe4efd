"""What a valid tick is: the one definition every stage uses.

The bounds below are what schemas/tick.v1.json states (the tests hold the two to
each other) and what the CSV reader, `parse_tick` and the fold's fast path check.
They keep every sum in a bar finite and within what orjson and PostgreSQL write:

- ts_ms: an integer (JSON Schema counts 1.0 as one too, so an integral float is
  taken and made an int), 0 <= ts_ms <= MAX_TS_MS (the year 3000; later is a
  unit mistake), and at most the future tolerance ahead of the worker's wall clock
  (`future_limit`, dead-letter reason ``future``);
- bid, ask: a number, 0 < price <= MAX_PRICE (1e9), kept as a float; at least
  one of the two is present;
- volume: absent, or a number, 0 <= volume <= MAX_VOLUME (1e12), kept as a float;
- provider: absent, or 1 to 64 characters without control characters (C0, DEL,
  C1: PostgreSQL refuses NUL in text, and the others corrupt logs and terminals);
- symbol: 1 to 32 characters without control characters, which then normalize.

A bool is not a number here (JSON true is not a price), nor is any other int or
float subclass. Integers are turned into floats, so an accepted tick holds only
plain floats and ints well inside 64 bits: a bar's volume stays below 1e12 times
its tick count, its prices below 1e9, and (bid + ask) / 2 cannot overflow.

`parse_tick` costs a few attribute lookups instead of a generic validator call,
because it runs for every tick the fold's fast path leaves to it. `TickRecord` is
the common tick as a msgspec type with the same bounds, so that a clean frame is
typed and checked while it is decoded; it is narrower than `parse_tick`, never
wider (tests/test_tick_record.py holds the two together).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

import msgspec

from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol

MIN_TS_MS = 0
MAX_TS_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z: anything later is a unit mistake
MAX_PRICE = 1e9  # 0 < price <= MAX_PRICE
MAX_VOLUME = 1e12  # 0 <= volume <= MAX_VOLUME
MAX_PROVIDER_LENGTH = 64
DEFAULT_FUTURE_TOLERANCE_MS = 60_000
# C0 controls, DEL and C1 controls; the schema's patterns name the same ranges.
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")

_has_control = CONTROL_CHARS.search


class TickRecord(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """The common tick, for the candle fold's fast path: both sides, an int time and
    numbers within the bounds above. A frame with anything else (a null time, side or
    volume, a missing side, an unknown field, an integral float time, a bool, a
    single tick outside a list) does not decode into it
    and goes through `parse_tick` as plain JSON. The symbol's and the provider's text
    rules and the future rule stay with the fold."""

    symbol: str
    ts_ms: Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
    bid: Annotated[float, msgspec.Meta(gt=0, le=MAX_PRICE)]
    ask: Annotated[float, msgspec.Meta(gt=0, le=MAX_PRICE)]
    volume: Annotated[float, msgspec.Meta(ge=0, le=MAX_VOLUME)] = 0.0
    provider: str | None = None


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


def valid_ts(value: Any) -> bool:
    """An integer (an int, not a bool, or an integral float) of epoch milliseconds
    within [MIN_TS_MS, MAX_TS_MS]."""
    kind = type(value)
    return ((kind is int or (kind is float and value.is_integer()))
            and MIN_TS_MS <= value <= MAX_TS_MS)


def valid_price(value: Any) -> bool:
    """A number (int or float, not a bool) with 0 < value <= MAX_PRICE."""
    kind = type(value)
    return (kind is float or kind is int) and 0 < value <= MAX_PRICE


def valid_volume(value: Any) -> bool:
    """A number (int or float, not a bool) with 0 <= value <= MAX_VOLUME."""
    kind = type(value)
    return (kind is float or kind is int) and 0 <= value <= MAX_VOLUME


def valid_text(value: Any, max_length: int) -> bool:
    """A str of 1 to ``max_length`` characters without control characters."""
    return (type(value) is str and 0 < len(value) <= max_length
            and _has_control(value) is None)


def valid_provider(value: Any) -> bool:
    return valid_text(value, MAX_PROVIDER_LENGTH)


def future_limit(now_ms: int, tolerance_ms: int) -> int:
    """The newest acceptable ts_ms at wall-clock time ``now_ms``."""
    return min(MAX_TS_MS, now_ms + tolerance_ms)


def _price(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if not valid_price(value):
        raise TickError("invalid_tick",
                        f"{name} must be a number > 0 and <= {MAX_PRICE:g}, got {value!r}")
    return float(value)


def parse_tick(obj: Any) -> Tick:
    """Return the tick with its canonical symbol and float prices, or raise TickError.

    The future rule needs the wall clock and is the fold's (`future_limit`)."""
    if type(obj) is not dict:
        raise TickError("invalid_tick", f"a tick must be a JSON object, got {type(obj).__name__}")
    ts = obj.get("ts_ms")
    if not valid_ts(ts):
        raise TickError("invalid_tick", f"ts_ms must be an integer of epoch milliseconds from "
                        f"{MIN_TS_MS} to {MAX_TS_MS}, got {ts!r}")
    ts = int(ts)
    bid = _price(obj.get("bid"), "bid")
    ask = _price(obj.get("ask"), "ask")
    if bid is None and ask is None:
        raise TickError("invalid_tick", "a tick needs a bid or an ask")
    volume = obj.get("volume")
    if volume is None:
        volume = 0.0
    elif valid_volume(volume):
        volume = float(volume) or 0.0  # -0.0 becomes 0.0
    else:
        raise TickError("invalid_tick", f"volume must be a number >= 0 and <= "
                        f"{MAX_VOLUME:g}, got {volume!r}")
    provider = obj.get("provider")
    if provider is not None and not valid_provider(provider):
        raise TickError("invalid_tick", f"provider must be 1 to {MAX_PROVIDER_LENGTH} "
                        f"characters without control characters, got {provider!r:.100}")
    raw_symbol = obj.get("symbol")
    if not valid_text(raw_symbol, MAX_SYMBOL_LENGTH):
        raise TickError("invalid_tick", f"symbol must be 1 to {MAX_SYMBOL_LENGTH} characters "
                        f"without control characters, got {raw_symbol!r:.100}")
    try:
        symbol = normalize_symbol(raw_symbol)
    except SymbolError as exc:
        raise TickError("bad_symbol", str(exc)) from None
    return Tick(symbol, ts, bid, ask, volume, provider)
