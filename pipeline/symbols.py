"""Canonical symbols: "EUR/USD".

Pairs written in any of the usual spellings ("EURUSD", "eur/usd", "EUR-USD",
"EUR_USD", "XAUUSD") become BASE/QUOTE; names that are not pairs ("US30",
"GER40") are kept, uppercased. Garbage is rejected with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache

MAX_SYMBOL_LENGTH = 32
_SEPARATORS = re.compile(r"[\s/_\-]+")
_PAIR_SIDES = re.compile(r"^[A-Z]{3}$")
_ALLOWED = re.compile(r"^[A-Z0-9.]+$")


class SymbolError(ValueError):
    """A symbol that cannot be normalized; the message says why."""


@lru_cache(maxsize=4096)
def normalize_symbol(raw: str) -> str:
    """Return the canonical form of ``raw`` or raise SymbolError."""
    if not isinstance(raw, str):
        raise SymbolError(f"symbol must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise SymbolError("symbol is empty")
    if len(text) > MAX_SYMBOL_LENGTH:
        raise SymbolError(f"symbol is longer than {MAX_SYMBOL_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise SymbolError("symbol contains control characters")
    upper = text.upper()
    parts = [p for p in _SEPARATORS.split(upper) if p]
    if len(parts) == 2 and all(_PAIR_SIDES.match(p) for p in parts):
        return f"{parts[0]}/{parts[1]}"
    joined = "".join(parts)
    if len(parts) == 1 and len(joined) == 6 and joined.isalpha():
        return f"{joined[:3]}/{joined[3:]}"
    if len(parts) != 1 or not _ALLOWED.match(joined):
        raise SymbolError(f"{raw!r} is neither a currency pair nor an instrument name")
    return joined


def base_and_quote(symbol: str) -> tuple[str, str]:
    """Split a canonical pair; raises SymbolError for non-pairs."""
    base, sep, quote = normalize_symbol(symbol).partition("/")
    if not sep:
        raise SymbolError(f"{symbol!r} is not a currency pair")
    return base, quote


def not_accepted(symbols: Iterable[str], accepted: Collection[str]) -> list[str]:
    """The canonical symbols among ``symbols`` that the configuration does not accept, in
    order of first appearance (the worker dead-letters their items as unknown_symbol)."""
    out: list[str] = []
    for symbol in symbols:
        if symbol not in accepted and symbol not in out:
            out.append(symbol)
    return out


def refusal_note(refused: Mapping[str, int] | Sequence[str], what: str) -> str:
    """One sentence for a producer's start and summary: how many items of which symbols
    the worker refuses, and which setting accepts them. ``refused`` maps symbols to
    counts, or lists symbols whose count is not known yet."""
    if isinstance(refused, Mapping):
        names = ", ".join(f"{s} ({n:,})" for s, n in
                          sorted(refused.items(), key=lambda kv: (-kv[1], kv[0])))
        head = f"{sum(refused.values()):,} {what} of {names}"
    else:
        head = f"the {what} of {', '.join(refused)}"
    return (f"{head} will be refused by the worker (dead letters with reason unknown_symbol): "
            "the configuration does not accept these symbols; add them to the setting "
            "`symbols` (FXSTREAM_SYMBOLS, or `symbols:` in the --config YAML) to accept them")


def refused_counts(counts: Mapping[str, int], accepted: Collection[str]) -> dict[str, int]:
    """The part of ``counts`` (canonical symbol -> items) the configuration refuses."""
    return {s: n for s, n in counts.items() if s not in accepted}


def count_refused(refused: dict[str, int], symbol: str, accepted: Collection[str]) -> None:
    """Count one item of ``symbol`` in ``refused`` when the configuration refuses it."""
    if symbol not in accepted:
        refused[symbol] = refused.get(symbol, 0) + 1
