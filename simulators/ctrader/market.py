"""What the simulated broker lists, and the depth ladder it quotes around a price.

Broker names are written the way brokers write them (``EURUSD``, ``XAUUSD``, ``US30``),
so the producer has to map them to canonical symbols; ids are not 1..n in list order, so
nothing can assume them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from producers.synthetic import FX_PAIRS, METALS, price_decimals

EXTRA_INSTRUMENTS = ("US30", "GER40")  # listed, not streamed unless asked for


@dataclass(frozen=True)
class Instrument:
    symbol_id: int
    broker_name: str
    symbol: str  # canonical
    digits: int


def broker_name(symbol: str) -> str:
    return symbol.replace("/", "")


def instruments(extra: tuple[str, ...] = ()) -> list[Instrument]:
    """Every listed instrument: the 28 crosses of the majors, gold, silver, two indices and
    ``extra`` canonical symbols (e.g. the ones a demo is asked to stream)."""
    names = list(dict.fromkeys([*FX_PAIRS, *METALS, *EXTRA_INSTRUMENTS, *extra]))
    out = []
    for symbol in names:
        symbol_id = 1 + zlib.crc32(symbol.encode()) % 9000 + 1000 * (len(out) % 3)
        while any(i.symbol_id == symbol_id for i in out):
            symbol_id += 1
        out.append(Instrument(symbol_id, broker_name(symbol), symbol, price_decimals(symbol)))
    return out


def depth_levels(bid_raw: int, ask_raw: int, digits: int, levels: int, salt: int
                 ) -> list[tuple[int, int, bool]]:
    """(raw price, size in cents, is_bid) of a ladder around the quote, best first per side.

    Steps are one pipette of the symbol in wire units; sizes vary with ``salt``.
    """
    step = max(1, 10 ** (5 - digits)) if digits <= 5 else 1
    out: list[tuple[int, int, bool]] = []
    for i in range(levels):
        size = (100_000 * (1 + i) + 50_000 * ((salt * 7 + i * 13) % 5)) * 100
        out.append((bid_raw - i * step, size, True))
        out.append((ask_raw + i * step, size, False))
    return out
