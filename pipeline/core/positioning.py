"""What a valid positioning observation is: the one definition every stage uses.

A positioning observation says, for one symbol at one instant, which share of one
provider's traders hold long and short positions. The sentiment replay, the
sentiment fold and schemas/sentiment_observation.v2.json (which the tests hold to
this module) all use these rules. An observation is a JSON object:

- symbol, ts_ms: the rules of a tick (pipeline.core.ticks): ts_ms an integer from 0
  to the year 3000 (and, in the worker, at most the future tolerance ahead of its
  clock, reason ``future``), symbol 1 to 32 characters without control characters
  that normalizes (reason ``bad_symbol``);
- provider: required, 1 to 64 characters without control characters (it is part of
  the key of every row the observation makes);
- long_pct, short_pct: numbers (not bools) from 0 to 100 inclusive (reason
  ``pct_out_of_range``), and long_pct + short_pct at most ``sum_tolerance``
  (default 1 point) away from 100 (reason ``pct_sum``): providers round, and some
  leave a small undecided share, but a sum far from 100 is a unit or field mistake;
- total_traders: absent, null, or an integer from 0 to 10**12;
- confidence: the provider's own, absent, null, or a number from 0 to 1.

Every other shape or type mistake has reason ``invalid_observation``. Integers
become floats (total_traders stays an int), so an accepted observation holds
plain, finite floats.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.core.ticks import (
    MAX_PROVIDER_LENGTH,
    MAX_TS_MS,
    MIN_TS_MS,
    valid_provider,
    valid_text,
    valid_ts,
)
from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol

DEFAULT_SUM_TOLERANCE = 1.0
MAX_TRADERS = 10**12


class ObservationError(ValueError):
    """An observation that cannot be used. ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Observation(NamedTuple):
    symbol: str  # canonical
    ts_ms: int
    provider: str
    long_pct: float
    short_pct: float
    total_traders: int | None
    confidence: float | None


def _number(value: Any) -> bool:
    kind = type(value)
    return kind is float or kind is int


def _pct(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if not _number(value):
        raise ObservationError("invalid_observation",
                               f"{name} must be a number, got {value!r:.100}")
    if not 0 <= value <= 100:  # NaN fails this too
        raise ObservationError("pct_out_of_range",
                               f"{name} must be from 0 to 100, got {value!r:.100}")
    return float(value) + 0.0  # -0.0 becomes 0.0


def parse_observation(obj: Any, sum_tolerance: float = DEFAULT_SUM_TOLERANCE) -> Observation:
    """The observation with its canonical symbol and float percentages, or raise
    ObservationError. The future rule needs the wall clock and is the fold's."""
    if type(obj) is not dict:
        raise ObservationError("invalid_observation", f"an observation must be a JSON object, "
                               f"got {type(obj).__name__}")
    ts = obj.get("ts_ms")
    if not valid_ts(ts):
        raise ObservationError("invalid_observation", f"ts_ms must be an integer of epoch "
                               f"milliseconds from {MIN_TS_MS} to {MAX_TS_MS}, got {ts!r:.100}")
    provider = obj.get("provider")
    if not valid_provider(provider):
        raise ObservationError("invalid_observation", f"provider must be 1 to "
                               f"{MAX_PROVIDER_LENGTH} characters without control characters, "
                               f"got {provider!r:.100}")
    raw_symbol = obj.get("symbol")
    if not valid_text(raw_symbol, MAX_SYMBOL_LENGTH):
        raise ObservationError("invalid_observation", f"symbol must be 1 to {MAX_SYMBOL_LENGTH} "
                               f"characters without control characters, got {raw_symbol!r:.100}")
    try:
        symbol = normalize_symbol(raw_symbol)
    except SymbolError as exc:
        raise ObservationError("bad_symbol", str(exc)) from None
    long_pct = _pct(obj, "long_pct")
    short_pct = _pct(obj, "short_pct")
    if not abs(long_pct + short_pct - 100.0) <= sum_tolerance:
        raise ObservationError("pct_sum", f"long_pct + short_pct is {long_pct + short_pct:g}, "
                               f"more than {sum_tolerance:g} from 100")
    traders = obj.get("total_traders")
    if traders is not None:
        kind = type(traders)
        if not ((kind is int or (kind is float and traders.is_integer()))
                and 0 <= traders <= MAX_TRADERS):
            raise ObservationError("invalid_observation", f"total_traders must be an integer "
                                   f"from 0 to {MAX_TRADERS}, got {traders!r:.100}")
        traders = int(traders)
    confidence = obj.get("confidence")
    if confidence is not None:
        if not (_number(confidence) and 0 <= confidence <= 1):
            raise ObservationError("invalid_observation", f"confidence must be a number from 0 "
                                   f"to 1, got {confidence!r:.100}")
        confidence = float(confidence) + 0.0
    return Observation(symbol, int(ts), provider, long_pct, short_pct, traders, confidence)


def observation_message(obs: Observation) -> dict[str, Any]:
    """A checked observation as it goes on the wire (schemas/sentiment_observation.v2.json)."""
    out: dict[str, Any] = {"symbol": obs.symbol, "ts_ms": obs.ts_ms, "provider": obs.provider,
                           "long_pct": obs.long_pct, "short_pct": obs.short_pct}
    if obs.total_traders is not None:
        out["total_traders"] = obs.total_traders
    if obs.confidence is not None:
        out["confidence"] = obs.confidence
    return out
