"""The tick CSV used for replay.

Header, exactly: ``symbol,ts_ms,bid,ask,volume``. One tick per line; an empty
field means the value is absent. At least one of bid and ask must be present.
Values are held to the one definition of a valid tick (pipeline.core.ticks:
time, price and volume bounds, no control characters in the symbol or the
provider); the future rule needs the worker's clock and is the worker's.
Symbols are returned as written (stripped); normalization happens elsewhere.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator

from pipeline.core.ticks import (
    CONTROL_CHARS,
    MAX_PRICE,
    MAX_PROVIDER_LENGTH,
    MAX_TS_MS,
    MAX_VOLUME,
    MIN_TS_MS,
    valid_price,
    valid_provider,
    valid_text,
    valid_ts,
    valid_volume,
)
from pipeline.symbols import MAX_SYMBOL_LENGTH, SymbolError, normalize_symbol

HEADER = ("symbol", "ts_ms", "bid", "ask", "volume")
HEADER_LINE = ",".join(HEADER)

_INT = re.compile(r"-?[0-9]+")


class CsvHeaderError(ValueError):
    """The first line is not the expected header."""


class RowError(ValueError):
    """A data line that is not a valid tick."""

    def __init__(self, line_no: int, detail: str, raw: str, reason: str = "bad_row") -> None:
        super().__init__(f"line {line_no}: {detail}")
        self.line_no = line_no
        self.reason = reason
        self.detail = detail
        self.raw = raw


def _price(name: str, text: str, line_no: int, raw: str) -> float | None:
    """A present price is a number with 0 < price <= MAX_PRICE; empty means absent."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    # float() also takes "1_0" and "nan"/"inf"; none of them is a price.
    if value is None or "_" in text or not valid_price(value):
        raise RowError(line_no, f"{name} {text!r} is not a number > 0 and <= {MAX_PRICE:g}",
                       raw)
    return value


def _volume(text: str, line_no: int, raw: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or "_" in text or not valid_volume(value):
        raise RowError(line_no, f"volume {text!r} is not a number >= 0 and <= "
                       f"{MAX_VOLUME:g}", raw)
    return value or 0.0  # -0.0 becomes 0.0


def parse_row(fields: list[str], line_no: int, raw: str, provider: str = "replay") -> dict:
    """Turn the fields of one data line into a tick dict, or raise RowError."""
    if len(fields) != 5:
        raise RowError(line_no, f"expected 5 fields ({HEADER_LINE}), got {len(fields)}", raw)
    if not valid_provider(provider):
        raise ValueError(f"provider must be 1 to {MAX_PROVIDER_LENGTH} characters without "
                         f"control characters, got {provider!r:.100}")
    symbol_text, ts_text, bid_text, ask_text, volume_text = fields
    if CONTROL_CHARS.search(symbol_text):
        raise RowError(line_no, f"symbol {symbol_text!r:.60} contains control characters", raw)
    symbol = symbol_text.strip()
    if not symbol:
        raise RowError(line_no, "symbol is empty", raw)
    if not valid_text(symbol, MAX_SYMBOL_LENGTH):
        raise RowError(line_no, f"symbol is longer than {MAX_SYMBOL_LENGTH} characters", raw)
    ts_text = ts_text.strip()
    if not _INT.fullmatch(ts_text):
        raise RowError(line_no, f"ts_ms {ts_text!r} is not an integer", raw)
    if len(ts_text) > 20:  # also keeps int() clear of its digit limit
        raise RowError(line_no, f"ts_ms {ts_text[:24]}... is out of range", raw)
    if ts_text.startswith("-"):  # also "-0": a time is written without a sign
        raise RowError(line_no, f"ts_ms {ts_text} is negative", raw)
    ts_ms = int(ts_text)
    if not valid_ts(ts_ms):
        raise RowError(line_no, f"ts_ms {ts_ms} is out of range ({MIN_TS_MS} to {MAX_TS_MS})",
                       raw)
    bid = _price("bid", bid_text, line_no, raw)
    ask = _price("ask", ask_text, line_no, raw)
    if bid is None and ask is None:
        raise RowError(line_no, "bid and ask are both empty", raw)
    volume = _volume(volume_text, line_no, raw)
    tick: dict = {"symbol": symbol, "ts_ms": ts_ms}
    if bid is not None:
        tick["bid"] = bid
    if ask is not None:
        tick["ask"] = ask
    if volume is not None:
        tick["volume"] = volume
    tick["provider"] = provider
    return tick


def read_tick_csv(
    path: str | os.PathLike[str], provider: str = "replay"
) -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line_no, tick or RowError)`` for every data line; the header is line 1.

    Bad lines are yielded, not raised, so a replay can count and report them and go
    on. A missing or wrong header raises CsvHeaderError before anything is yielded,
    a provider that is not a valid one ValueError.
    """
    if not valid_provider(provider):
        raise ValueError(f"provider must be 1 to {MAX_PROVIDER_LENGTH} characters without "
                         f"control characters, got {provider!r:.100}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        # The reader gets its lines through this generator so each row's raw text is known.
        last_line = [""]

        def lines() -> Iterator[str]:
            for line in handle:
                last_line[0] = line
                yield line

        reader = csv.reader(lines(), strict=False)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            found = "nothing (empty file)" if header is None else repr(",".join(header))
            raise CsvHeaderError(f"{path}: expected header {HEADER_LINE!r}, found {found}")
        for fields in reader:
            line_no = reader.line_num
            raw = last_line[0].rstrip("\r\n")
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                yield line_no, RowError(line_no, "blank line", raw)
                continue
            try:
                yield line_no, parse_row(fields, line_no, raw, provider)
            except RowError as exc:
                yield line_no, exc


def count_data_lines(path: str | os.PathLike[str]) -> int:
    """Number of lines after the header (blank ones included), counted without parsing."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


def count_symbols(path: str | os.PathLike[str]) -> dict[str, int]:
    """Items per canonical symbol of a CSV whose first column is the symbol (tick and
    positioning files), counted before a replay publishes anything; symbols that do not
    normalize are left out (their lines are bad rows)."""
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=False)
        next(reader, None)
        for fields in reader:
            if not fields:
                continue
            try:
                symbol = normalize_symbol(fields[0])
            except SymbolError:
                continue
            counts[symbol] = counts.get(symbol, 0) + 1
    return counts
