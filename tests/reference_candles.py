"""Plain reference candle aggregation for checking the pipeline's candles.

This module deliberately avoids streaming state: it parses a whole tick CSV, decides for each row
whether it is accepted, ignored (re-sent quote) or dead-lettered, then builds every bar from the
full list of its accepted ticks. It is meant to be easy to read and check by hand, not fast.

Contract summary (see ``reference_from_csv``):

* CSV header is exactly ``symbol,ts_ms,bid,ask,volume``; fields are split on ``,`` with no quoting.
  An empty field means absent. Numeric fields are not stripped: ``" 1.1"`` is a bad row.
* Rows are processed in file order, which is the arrival order.
* Bars are UTC epoch aligned, half-open ``[start, start + duration)`` and keyed by open time in
  epoch milliseconds: ``(symbol, timeframe, start_ms)``.
* Bounds (written out here on their own, not taken from the pipeline, so a slip in one is caught
  by the other): ts_ms from 0 to 3000-01-01 00:00 UTC, prices above 0 and at most one billion,
  volume from 0 to one trillion, no control character (C0, DEL, C1) anywhere in the symbol field.
  A row past either bound is a ``bad_row``. A tick more than ``future_tolerance_ms`` after
  ``now_ms`` (the wall clock by default) is dead-lettered as ``future``.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

HEADER = "symbol,ts_ms,bid,ask,volume"
DEFAULT_TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
DEFAULT_LATENESS_MS = 300_000
DEFAULT_FUTURE_TOLERANCE_MS = 60_000

LAST_TS_MS = int(datetime(3000, 1, 1, tzinfo=UTC).timestamp()) * 1000
HIGHEST_PRICE = 1_000_000_000.0
HIGHEST_VOLUME = 1_000_000_000_000.0

REASON_BAD_ROW = "bad_row"
REASON_UNKNOWN_SYMBOL = "unknown_symbol"
REASON_LATE = "late"
REASON_FUTURE = "future"

MAX_SYMBOL_LEN = 32

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TIMEFRAME_RE = re.compile(r"([1-9][0-9]*)([mhd])")
_INT_RE = re.compile(r"[0-9]+")
# A plain decimal literal: no whitespace, no underscores, no "nan"/"inf", no hex.
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SEPARATORS_RE = re.compile(r"[\s/_-]+")
_LETTERS3_RE = re.compile(r"[A-Z]{3}")
_LETTERS6_RE = re.compile(r"[A-Z]{6}")
_PLAIN_SYMBOL_RE = re.compile(r"[A-Z0-9.]+")

PRICE_FIELDS = ("open", "high", "low", "close")
CANDLE_FIELDS = (*PRICE_FIELDS, "tick_volume", "volume")

CandleKey = tuple[str, str, int]


@dataclass(frozen=True)
class RefCandle:
    symbol: str
    timeframe: str
    ts_utc: int  # bar open time, epoch milliseconds UTC
    open: float
    high: float
    low: float
    close: float
    tick_volume: int
    volume: float


@dataclass(frozen=True)
class RefDeadLetter:
    line_no: int  # 1-based line number in the CSV file; the header is line 1
    reason: str


@dataclass(frozen=True)
class RefResult:
    candles: dict[CandleKey, RefCandle]
    dead_letters: list[RefDeadLetter]


@dataclass(frozen=True)
class RefTick:
    """One accepted tick; ``line_no`` doubles as the arrival order."""

    line_no: int
    symbol: str
    ts_ms: int
    bid: float | None
    ask: float | None
    price: float
    volume: float


# --------------------------------------------------------------------------------------------
# Parsing


def normalize_symbol(raw: str) -> str | None:
    """Return the canonical symbol (``"EUR/USD"``, ``"US30"``) or None when it is not valid."""
    for ch in raw:
        if ord(ch) < 32 or 127 <= ord(ch) <= 159:
            return None
    text = raw.strip()
    if text == "" or len(text) > MAX_SYMBOL_LEN:
        return None
    parts = _SEPARATORS_RE.split(text.upper())
    if len(parts) == 2 and all(_LETTERS3_RE.fullmatch(part) for part in parts):
        return parts[0] + "/" + parts[1]
    if len(parts) == 1 and _LETTERS6_RE.fullmatch(parts[0]):
        return parts[0][:3] + "/" + parts[0][3:]
    if len(parts) == 1 and _PLAIN_SYMBOL_RE.fullmatch(parts[0]):
        return parts[0]
    return None


def timeframe_ms(timeframe: str) -> int:
    """Duration in milliseconds of ``"<N>m"``, ``"<N>h"`` or ``"<N>d"`` (N >= 1)."""
    match = _TIMEFRAME_RE.fullmatch(timeframe)
    if match is None:
        raise ValueError(f"unsupported timeframe {timeframe!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _parse_ts(field: str) -> int | None:
    if _INT_RE.fullmatch(field) is None:
        return None
    value = int(field)
    if value > LAST_TS_MS:
        return None
    return value


def _parse_number(field: str) -> float | None:
    """Parse a decimal literal; None when it is not one or is not finite (e.g. ``1e999``)."""
    if _DECIMAL_RE.fullmatch(field) is None:
        return None
    value = float(field)
    if not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class _Row:
    symbol: str
    ts_ms: int
    bid: float | None
    ask: float | None
    volume: float | None


def _parse_row(line: str) -> _Row | None:
    """Parse one data line; None means the row is a ``bad_row``."""
    if line.strip() == "":
        return None
    fields = line.split(",")
    if len(fields) != 5:
        return None
    raw_symbol, raw_ts, raw_bid, raw_ask, raw_volume = fields

    symbol = normalize_symbol(raw_symbol)
    if symbol is None:
        return None

    ts_ms = _parse_ts(raw_ts)
    if ts_ms is None:
        return None

    bid: float | None = None
    if raw_bid != "":
        bid = _parse_number(raw_bid)
        if bid is None or bid <= 0 or bid > HIGHEST_PRICE:
            return None

    ask: float | None = None
    if raw_ask != "":
        ask = _parse_number(raw_ask)
        if ask is None or ask <= 0 or ask > HIGHEST_PRICE:
            return None

    if bid is None and ask is None:
        return None

    volume: float | None = None
    if raw_volume != "":
        volume = _parse_number(raw_volume)
        if volume is None or volume < 0 or volume > HIGHEST_VOLUME:
            return None

    return _Row(symbol=symbol, ts_ms=ts_ms, bid=bid, ask=ask, volume=volume)


def _price(bid: float | None, ask: float | None) -> float:
    if bid is not None and ask is not None:
        return (bid + ask) / 2
    if bid is not None:
        return bid
    assert ask is not None
    return ask


def _strip_line_end(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _read_lines(source: str | os.PathLike[str] | Iterable[str]) -> list[str]:
    """A ``str`` or path-like is a file path; anything else is an iterable of lines."""
    if isinstance(source, (str, os.PathLike)):
        text = Path(source).read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            # The file's final newline terminates the last line; it does not start a new one.
            lines.pop()
        return [_strip_line_end(line) for line in lines]
    return [_strip_line_end(line) for line in source]


# --------------------------------------------------------------------------------------------
# Acceptance and aggregation


def accepted_ticks(
    source: str | os.PathLike[str] | Iterable[str],
    *,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    known_symbols: set[str] | None = None,
    now_ms: int | None = None,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> tuple[list[RefTick], list[RefDeadLetter]]:
    """Apply the row checks, future rule, re-sent quote rule and lateness rule, in arrival order.

    Returns the accepted ticks and the dead letters, both in file order. Re-sent quotes appear
    in neither list. ``now_ms`` None means the wall clock now.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    lines = _read_lines(source)
    if not lines or lines[0] != HEADER:
        first = lines[0] if lines else None
        raise ValueError(f"CSV header must be exactly {HEADER!r}, got {first!r}")

    ticks: list[RefTick] = []
    dead_letters: list[RefDeadLetter] = []
    previous_accepted: dict[str, tuple[int, float | None, float | None]] = {}
    newest_ts: dict[str, int] = {}

    for line_no, line in enumerate(lines, start=1):
        if line_no == 1:
            continue
        row = _parse_row(line)
        if row is None:
            dead_letters.append(RefDeadLetter(line_no, REASON_BAD_ROW))
            continue
        if known_symbols is not None and row.symbol not in known_symbols:
            dead_letters.append(RefDeadLetter(line_no, REASON_UNKNOWN_SYMBOL))
            continue
        if row.ts_ms - now_ms > future_tolerance_ms:
            dead_letters.append(RefDeadLetter(line_no, REASON_FUTURE))
            continue

        quote = (row.ts_ms, row.bid, row.ask)
        if previous_accepted.get(row.symbol) == quote:
            continue  # re-sent quote: ignored, not counted, not a dead letter

        newest = newest_ts.get(row.symbol)
        if newest is not None and row.ts_ms < newest - lateness_ms:
            dead_letters.append(RefDeadLetter(line_no, REASON_LATE))
            continue

        ticks.append(
            RefTick(
                line_no=line_no,
                symbol=row.symbol,
                ts_ms=row.ts_ms,
                bid=row.bid,
                ask=row.ask,
                price=_price(row.bid, row.ask),
                volume=row.volume if row.volume is not None else 0.0,
            )
        )
        previous_accepted[row.symbol] = quote
        newest_ts[row.symbol] = row.ts_ms if newest is None else max(newest, row.ts_ms)

    return ticks, dead_letters


def bar_start(ts_ms: int, duration_ms: int) -> int:
    return ts_ms - (ts_ms % duration_ms)


def aggregate(
    ticks: Sequence[RefTick], timeframes: Sequence[str] = DEFAULT_TIMEFRAMES
) -> dict[CandleKey, RefCandle]:
    """Build candles from accepted ticks given in arrival order (ascending ``line_no``)."""
    bars: dict[CandleKey, list[RefTick]] = {}
    for timeframe in dict.fromkeys(timeframes):
        duration = timeframe_ms(timeframe)
        for tick in ticks:
            key = (tick.symbol, timeframe, bar_start(tick.ts_ms, duration))
            bars.setdefault(key, []).append(tick)

    candles: dict[CandleKey, RefCandle] = {}
    for key, bar_ticks in bars.items():
        symbol, timeframe, start = key
        # Event time first, arrival order second: the first element is the open (earliest
        # arrival among the smallest ts), the last is the close (latest arrival among the largest).
        by_time = sorted(bar_ticks, key=lambda t: (t.ts_ms, t.line_no))
        prices = [t.price for t in bar_ticks]
        candles[key] = RefCandle(
            symbol=symbol,
            timeframe=timeframe,
            ts_utc=start,
            open=by_time[0].price,
            high=max(prices),
            low=min(prices),
            close=by_time[-1].price,
            tick_volume=len(bar_ticks),
            volume=math.fsum(t.volume for t in bar_ticks),
        )
    return candles


def reference_from_csv(
    path_or_text_lines: str | os.PathLike[str] | Iterable[str],
    *,
    timeframes: Sequence[str] = DEFAULT_TIMEFRAMES,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    known_symbols: set[str] | None = None,
    now_ms: int | None = None,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> RefResult:
    """Expected candles and dead letters for a tick CSV.

    ``path_or_text_lines`` is a file path (``str`` or path-like) or an iterable of lines whose
    first element is the header. Raises ValueError when the header is not exactly ``HEADER``.
    """
    ticks, dead_letters = accepted_ticks(
        path_or_text_lines,
        lateness_ms=lateness_ms,
        known_symbols=known_symbols,
        now_ms=now_ms,
        future_tolerance_ms=future_tolerance_ms,
    )
    return RefResult(candles=aggregate(ticks, timeframes), dead_letters=dead_letters)


# --------------------------------------------------------------------------------------------
# Comparison

_MISSING = object()


def _field(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        pass
    try:
        return obj[name]
    except (KeyError, IndexError, TypeError):
        return _MISSING


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value is _MISSING:
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None


def _describe_key(key: Any) -> str:
    if isinstance(key, tuple) and len(key) == 3 and isinstance(key[2], int):
        symbol, timeframe, ts_ms = key
        when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{symbol} {timeframe} {ts_ms} ({when} UTC)"
    return repr(key)


def _sorted_keys(keys: Iterable[Any]) -> list[Any]:
    keys = list(keys)
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def compare_candles(
    expected: Mapping[Any, Any],
    actual: Mapping[Any, Any],
    *,
    volume_rel_tol: float = 1e-9,
) -> list[str]:
    """Human-readable differences between two candle mappings keyed by (symbol, tf, ts_ms).

    Values may be objects with candle attributes or mappings with candle keys. Prices must be
    equal with ``==`` (a ``Decimal`` is converted to float first); ``tick_volume`` must be equal;
    ``volume`` is compared with ``math.isclose(rel_tol=volume_rel_tol)``. Returns ``[]`` when
    both sides agree.
    """
    diffs: list[str] = []
    for key in _sorted_keys(expected.keys() - actual.keys()):
        diffs.append(f"missing candle {_describe_key(key)}: expected {expected[key]!r}")
    for key in _sorted_keys(actual.keys() - expected.keys()):
        diffs.append(f"unexpected candle {_describe_key(key)}: got {actual[key]!r}")

    for key in _sorted_keys(expected.keys() & actual.keys()):
        exp, act = expected[key], actual[key]
        where = _describe_key(key)
        for name in CANDLE_FIELDS:
            want = _field(exp, name)
            got = _field(act, name)
            if got is _MISSING:
                diffs.append(f"{where}: field {name!r} missing in actual")
                continue
            if name in PRICE_FIELDS:
                got_float = _as_float(got)
                if got_float is None or got_float != want:
                    diffs.append(f"{where}: {name} expected {want!r}, got {got!r}")
            elif name == "tick_volume":
                if isinstance(got, bool) or got != want:
                    diffs.append(f"{where}: tick_volume expected {want!r}, got {got!r}")
            else:
                got_float = _as_float(got)
                if got_float is None or not math.isclose(got_float, want, rel_tol=volume_rel_tol):
                    diffs.append(f"{where}: volume expected {want!r}, got {got!r}")
    return diffs
