"""Pure conversions between Open API messages and fxstream records.

Prices on the wire are integers in units of 1/100000 whatever the symbol; a symbol's
``digits`` (from ProtoOASymbolByIdRes) say how many decimals its quotes really have, so
a price is ``round(raw / 100000, digits)``. Depth sizes are in cents of a unit.

A spot event carries only the sides that changed: the other side keeps its last known
value, which lives in a ``SpotState`` per symbol. An event that carries neither side (a
trendbar or session-close update) is not a tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.symbols import SymbolError, normalize_symbol

PRICE_SCALE = 100_000
SIZE_SCALE = 100
PROVIDER = "ctrader"


def to_price(raw: int, digits: int) -> float:
    """A wire price (1/100000 units) as a float rounded to the symbol's digits."""
    return round(raw / PRICE_SCALE, digits)


def to_raw_price(price: float) -> int:
    """A price as the wire carries it (the simulator's direction)."""
    return round(price * PRICE_SCALE)


def to_size(raw: int) -> float:
    """A depth size in cents of a unit as units."""
    return raw / SIZE_SCALE


@dataclass(frozen=True)
class SymbolInfo:
    """One subscribed instrument: the broker's id and name, the canonical name, digits."""

    symbol_id: int
    broker_name: str
    symbol: str
    digits: int


@dataclass
class SpotState:
    """The last known bid and ask of one symbol, kept across reconnects."""

    bid: float | None = None
    ask: float | None = None


def spot_to_tick(info: SymbolInfo, state: SpotState, bid_raw: int | None, ask_raw: int | None,
                 ts_ms: int, provider: str = PROVIDER) -> dict[str, Any] | None:
    """The tick a spot event stands for, updating ``state``; None when it carries no price."""
    if bid_raw is None and ask_raw is None:
        return None
    if bid_raw is not None and bid_raw > 0:
        state.bid = to_price(bid_raw, info.digits)
    if ask_raw is not None and ask_raw > 0:
        state.ask = to_price(ask_raw, info.digits)
    tick: dict[str, Any] = {"symbol": info.symbol, "ts_ms": int(ts_ms), "provider": provider}
    if state.bid is not None:
        tick["bid"] = state.bid
    if state.ask is not None:
        tick["ask"] = state.ask
    if "bid" not in tick and "ask" not in tick:
        return None
    return tick


def spot_event_to_tick(info: SymbolInfo, state: SpotState, event: Any,
                       now_ms: int) -> dict[str, Any] | None:
    """``spot_to_tick`` on a ProtoOASpotEvent; the server's timestamp, else ``now_ms``."""
    bid = event.bid if event.HasField("bid") else None
    ask = event.ask if event.HasField("ask") else None
    ts = event.timestamp if event.HasField("timestamp") else now_ms
    return spot_to_tick(info, state, bid, ask, ts)


class AccountChoiceError(LookupError):
    """No account of the access token fits the configured environment and id."""


@dataclass(frozen=True)
class Account:
    account_id: int
    is_live: bool
    login: int | None = None


def choose_account(accounts: Sequence[Account], environment: str,
                   account_id: int | None) -> Account:
    """The account whose isLive matches ``environment`` ('demo' or 'live') and, when given,
    whose id is ``account_id``. With no id and several candidates, the lowest id, so the
    choice does not depend on the order the server lists them in."""
    want_live = environment == "live"
    fitting = [a for a in accounts if a.is_live == want_live]
    if account_id is not None:
        for a in accounts:
            if a.account_id == account_id:
                if a.is_live != want_live:
                    raise AccountChoiceError(
                        f"account {account_id} is a {'live' if a.is_live else 'demo'} account "
                        f"but the configured environment is {environment}")
                return a
        raise AccountChoiceError(
            f"account {account_id} is not among the {len(accounts)} accounts this access "
            f"token grants ({', '.join(str(a.account_id) for a in accounts) or 'none'})")
    if not fitting:
        raise AccountChoiceError(f"the access token grants no {environment} account "
                                 f"({len(accounts)} accounts in all)")
    return min(fitting, key=lambda a: a.account_id)


@dataclass
class SymbolMatch:
    """The configured symbols found in the broker's list (canonical -> broker id and name),
    and those the broker does not offer."""

    found: dict[str, tuple[int, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def match_symbols(light_symbols: Iterable[tuple[int, str, bool]],
                  wanted: Sequence[str]) -> SymbolMatch:
    """Broker names (``EURUSD``, ``XAUUSD``, ``EUR/USD`` ...) to canonical symbols.

    ``light_symbols`` are (symbolId, symbolName, enabled). Disabled symbols and names that
    are not symbols are skipped; when two broker names map to one canonical symbol (a
    broker listing ``EURUSD`` and ``EURUSD.m``, say, only the first of which normalizes),
    the lowest id wins.
    """
    by_canonical: dict[str, tuple[int, str]] = {}
    for symbol_id, name, enabled in light_symbols:
        if not enabled:
            continue
        try:
            canonical = normalize_symbol(name)
        except SymbolError:
            continue
        prev = by_canonical.get(canonical)
        if prev is None or symbol_id < prev[0]:
            by_canonical[canonical] = (symbol_id, name)
    match = SymbolMatch()
    for symbol in wanted:
        if symbol in by_canonical:
            match.found[symbol] = by_canonical[symbol]
        else:
            match.missing.append(symbol)
    return match


def describe_error(kind: str, error_code: str, description: str | None,
                   account_id: int | None = None,
                   maintenance_end_ms: int | None = None) -> str:
    """One log line for a ProtoOAErrorRes or ProtoErrorRes."""
    parts = [f"{kind} errorCode={error_code}"]
    if account_id:
        parts.append(f"account={account_id}")
    if description:
        parts.append(f"description={description!r}")
    if maintenance_end_ms:
        parts.append(f"maintenance ends at {maintenance_end_ms} ms")
    return " ".join(parts)


def decode_tick_data(entries: Iterable[tuple[int, int]], digits: int) -> list[tuple[int, float]]:
    """ProtoOATickData (timestamp, tick) pairs into (ts_ms, price), oldest first.

    The first entry is absolute and each later one is the difference from the one before
    it; the server lists them newest first.
    """
    out: list[tuple[int, float]] = []
    ts = raw = 0
    for i, (d_ts, d_tick) in enumerate(entries):
        if i == 0:
            ts, raw = d_ts, d_tick
        else:
            ts += d_ts
            raw += d_tick
        out.append((ts, to_price(raw, digits)))
    out.reverse()
    return out


def encode_tick_data(ticks_newest_first: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(ts_ms, raw price) pairs, newest first, into delta-coded ProtoOATickData pairs."""
    out: list[tuple[int, int]] = []
    prev: tuple[int, int] | None = None
    for ts, raw in ticks_newest_first:
        out.append((ts, raw) if prev is None else (ts - prev[0], raw - prev[1]))
        prev = (ts, raw)
    return out


@dataclass(frozen=True)
class Bar:
    ts_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: int


def decode_trendbar(low: int, delta_open: int, delta_high: int, delta_close: int,
                    utc_minutes: int, volume: int, digits: int) -> Bar:
    """A ProtoOATrendbar: low is absolute, open, high and close are low plus their delta."""
    return Bar(utc_minutes * 60_000, to_price(low + delta_open, digits),
               to_price(low + delta_high, digits), to_price(low, digits),
               to_price(low + delta_close, digits), volume)
