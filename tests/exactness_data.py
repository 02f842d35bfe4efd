"""Deterministic adversarial tick CSV for end-to-end candle exactness tests.

The file mixes realistic quotes for four symbols with the cases a streaming aggregator tends to
get wrong: ticks exactly on bar boundaries (including 4h/1d ones), several ticks in the same
millisecond, re-sent quotes, one-sided quotes, symbol spelling variants, late ticks inside and
beyond the allowed lateness (including both sides of the exact boundary), unparseable rows,
unknown symbols and a weekend gap. Only ``random.Random(seed)`` is used, so the same arguments
always produce the same bytes.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

HEADER = "symbol,ts_ms,bid,ask,volume"
KNOWN_SYMBOLS = {"EUR/USD", "USD/JPY", "XAU/USD", "GBP/USD"}

START_MS = 1_709_323_200_000  # Fri 2024-03-01 20:00:00 UTC (also a 4h boundary)
GAP_START_MS = 1_709_330_400_000  # Fri 2024-03-01 22:00:00 UTC: no ticks from here ...
GAP_END_MS = 1_709_503_200_000  # ... until Sun 2024-03-03 22:00:00 UTC
MONDAY_MS = 1_709_510_400_000  # Mon 2024-03-04 00:00:00 UTC (4h and 1d boundary)

MINUTE_MS = 60_000
FOUR_HOURS_MS = 4 * 3_600_000
MAX_GAP_MS = 3_000

_BAD_ROWS = (
    "EUR/USD,notanumber,1.1,1.1,",
    "EUR/USD,{ts},,,",
    "GBP/USD,{ts},-1,1.2,",
    "???,{ts},1.1,1.1,",
    "EUR/USD,{ts},1.1,1.1",
    "EUR/USD,{ts},1.1,1.1,1,2",
    "USD/JPY",
    "",
    "   ",
    "USD/JPY,-{ts},150.1,150.2,",
    "EUR/USD,{ts}.5,1.1,1.1,",
    "EUR/USD,1e12,1.1,1.1,",
    "EUR/USD,,1.1,1.1,",
    "EUR/USD,{ts},nan,1.1,",
    "EUR/USD,{ts},1.1,inf,",
    "XAU/USD,{ts},0,2400.50,",
    "EUR/USD,{ts},1.1,1.1,-1",
    "EUR/USD,{ts},1.1,1.1,abc",
    "EUR/US,{ts},1.1,1.1,",
    "EURO/USD,{ts},1.1,1.1,",
    "EUR/USD/JPY,{ts},1.1,1.1,",
    ",{ts},1.1,1.1,",
    "X" * 33 + ",{ts},1.1,1.1,",
)

_UNKNOWN_ROWS = (
    "FOO/BAR,{ts},1.23450,1.23470,",
    "foobar,{ts},1.23451,1.23471,2.5",
    "US30,{ts},39001.5,39003.5,",
)


@dataclass
class _Instrument:
    symbol: str
    digits: int
    bid_pts: int  # current bid in units of the last decimal
    step_pts: int  # largest move per tick
    max_spread_pts: int
    variants: tuple[str, ...]
    newest_ms: int | None = None
    last_quote: tuple[int, str, str] | None = None  # ts, bid text, ask text of last accepted row


def _instruments() -> list[_Instrument]:
    return [
        _Instrument(
            "EUR/USD",
            5,
            108_000,
            3,
            12,
            ("EURUSD", "eur/usd", "EUR-USD", "EUR_USD", " eurusd ", "Eur Usd"),
        ),
        _Instrument("USD/JPY", 3, 150_200, 4, 15, (" usdjpy ", "USDJPY", "usd_jpy", "USD-JPY")),
        _Instrument("XAU/USD", 2, 240_000, 25, 60, ("xauusd", "XAUUSD", "xau/usd", "XAU_USD")),
        _Instrument("GBP/USD", 5, 126_500, 4, 15, ("gbpusd", "GBPUSD", "gbp-usd", "GBP/usd")),
    ]


def _fmt_price(points: int, digits: int) -> str:
    scale = 10**digits
    return f"{points // scale}.{points % scale:0{digits}d}"


class _Writer:
    def __init__(self, rng: random.Random, lateness_ms: int) -> None:
        self.rng = rng
        self.lateness_ms = lateness_ms
        self.rows: list[str] = [HEADER]
        self.instruments = _instruments()
        self.clock = START_MS
        self.segment_start = START_MS

    # -- small helpers -------------------------------------------------------------------------

    def volume(self) -> str:
        roll = self.rng.random()
        if roll < 0.5:
            return ""
        if roll < 0.55:
            return "0"
        if roll < 0.65:
            return str(self.rng.choice((1_000, 10_000, 100_000, 1_000_000)))
        return f"{self.rng.randint(1, 500) / 100:.2f}"

    def name(self, inst: _Instrument, variant_prob: float = 0.12) -> str:
        if self.rng.random() < variant_prob:
            return self.rng.choice(inst.variants)
        return inst.symbol

    def move(self, inst: _Instrument, *, nonzero: bool = False) -> None:
        delta = self.rng.randint(-inst.step_pts, inst.step_pts)
        if nonzero and delta == 0:
            delta = self.rng.choice((-1, 1))
        inst.bid_pts += delta

    def emit(self, symbol_text: str, ts: int, bid: str, ask: str, volume: str) -> None:
        self.rows.append(f"{symbol_text},{ts},{bid},{ask},{volume}")

    def quote(
        self,
        inst: _Instrument,
        ts: int,
        *,
        side: str | None = None,
        nonzero_move: bool = False,
        spread: int | None = None,
    ) -> None:
        """An in-order quote at ``ts`` (never late: ``ts`` is the newest time in the file)."""
        self.move(inst, nonzero=nonzero_move)
        if side is None:
            roll = self.rng.random()
            side = "bid" if roll < 0.03 else "ask" if roll < 0.06 else "both"
        if spread is None:
            spread = self.rng.randint(1, inst.max_spread_pts)
        bid = _fmt_price(inst.bid_pts, inst.digits) if side in ("both", "bid") else ""
        ask = _fmt_price(inst.bid_pts + spread, inst.digits) if side in ("both", "ask") else ""
        self.emit(self.name(inst), ts, bid, ask, self.volume())
        self.accepted(inst, ts, bid, ask)

    def accepted(self, inst: _Instrument, ts: int, bid: str, ask: str) -> None:
        inst.last_quote = (ts, bid, ask)
        inst.newest_ms = ts if inst.newest_ms is None else max(inst.newest_ms, ts)

    # -- adversarial extras --------------------------------------------------------------------

    def same_ms_burst(self, inst: _Instrument, ts: int) -> None:
        """Two to four quotes in one millisecond, each at a different price than the one before."""
        first: tuple[str, str] | None = None
        spread = self.rng.randint(1, inst.max_spread_pts)
        for _ in range(self.rng.randint(2, 4)):
            self.quote(inst, ts, side="both", nonzero_move=True, spread=spread)
            assert inst.last_quote is not None
            if first is None:
                first = inst.last_quote[1:]
        if first is not None and self.rng.random() < 0.3:
            # Same as an earlier quote of the burst but not the previous one: it counts.
            self.emit(self.name(inst), ts, first[0], first[1], self.volume())
            self.accepted(inst, ts, first[0], first[1])

    def resend(self, inst: _Instrument) -> None:
        """Repeat the symbol's previous accepted quote, possibly with another volume/spelling."""
        if inst.last_quote is None:
            return
        ts, bid, ask = inst.last_quote
        self.emit(self.name(inst, 0.3), ts, bid, ask, self.volume())

    def late(self, inst: _Instrument, behind_ms: int, *, accepted: bool) -> bool:
        """A stale quote ``behind_ms`` before the symbol's newest tick; False if not placeable."""
        if inst.newest_ms is None:
            return False
        ts = inst.newest_ms - behind_ms
        if ts < self.segment_start:
            return False  # would fall before the start or into the weekend gap
        bid_pts = inst.bid_pts + self.rng.randint(-5 * inst.step_pts, 5 * inst.step_pts)
        spread = self.rng.randint(1, inst.max_spread_pts)
        bid = _fmt_price(bid_pts, inst.digits)
        ask = _fmt_price(bid_pts + spread, inst.digits)
        self.emit(self.name(inst), ts, bid, ask, self.volume())
        if accepted:
            self.accepted(inst, ts, bid, ask)
        return True

    def bad_row(self) -> None:
        self.rows.append(self.rng.choice(_BAD_ROWS).format(ts=self.clock))

    def unknown_symbol(self) -> None:
        self.rows.append(self.rng.choice(_UNKNOWN_ROWS).format(ts=self.clock))

    def run_extra(self, kind: str, current: _Instrument) -> bool:
        """Emit one extra of ``kind``; False means it must be retried at a later step."""
        inst = self.rng.choice(self.instruments)
        lateness = self.lateness_ms
        if kind == "burst":
            self.same_ms_burst(current, self.clock)
        elif kind == "resend":
            self.resend(current)
        elif kind == "late_ok":
            behind = self.rng.randint(1_000, min(290_000, max(1_000, lateness)))
            return self.late(inst, min(behind, lateness), accepted=True)
        elif kind == "late_edge_ok":
            return self.late(inst, lateness, accepted=True)
        elif kind == "late_bad":
            behind = self.rng.randint(lateness + 1_000, lateness + 600_000)
            return self.late(inst, behind, accepted=False)
        elif kind == "late_edge_bad":
            return self.late(inst, lateness + 1, accepted=False)
        elif kind == "bad":
            self.bad_row()
        elif kind == "unknown":
            self.unknown_symbol()
        else:
            raise AssertionError(kind)
        return True

    # -- time line -----------------------------------------------------------------------------

    def everyone_at(self, ts: int) -> None:
        order = list(self.instruments)
        self.rng.shuffle(order)
        for inst in order:
            self.quote(inst, ts)

    def cross_minute(self, boundary: int) -> int:
        """Handle the clock passing ``boundary``; returns the time of the step's regular tick."""
        if boundary % FOUR_HOURS_MS == 0:
            self.clock = boundary
            self.everyone_at(boundary)
            self.same_ms_burst(self.rng.choice(self.instruments), boundary)
            return boundary
        if self.rng.random() < 0.15 and boundary - 1 >= self.clock:
            # Several ticks in the last millisecond of the bar: a tie for the close.
            self.same_ms_burst(self.rng.choice(self.instruments), boundary - 1)
        if self.rng.random() < 0.15:
            # Several ticks in the first millisecond of the bar: a tie for the open.
            self.same_ms_burst(self.rng.choice(self.instruments), boundary)
        if self.rng.random() < 0.5:
            return boundary
        return -1


def _resume_after_weekend(remaining_rows: int) -> int:
    """Sunday 22:00, unless too few rows remain to reach Monday 00:00 from there."""
    expected_span = remaining_rows * (MAX_GAP_MS // 2)
    if expected_span * 0.8 >= MONDAY_MS - GAP_END_MS:
        return GAP_END_MS
    start = MONDAY_MS - expected_span // 2
    return start - start % MINUTE_MS


def write_adversarial_csv(
    path: str | os.PathLike[str],
    *,
    seed: int = 7,
    ticks_per_symbol: int = 3000,
    lateness_ms: int = 300_000,
) -> None:
    """Write the adversarial tick CSV to ``path`` (UTF-8, ``\\n`` line endings)."""
    rng = random.Random(seed)
    writer = _Writer(rng, lateness_ms)
    instruments = writer.instruments

    schedule = [i for i in range(len(instruments)) for _ in range(ticks_per_symbol)]
    rng.shuffle(schedule)
    n = len(schedule)

    per_kind = max(25, n // 250)
    counts = {
        "burst": per_kind,
        "resend": per_kind,
        "late_ok": per_kind,
        "late_bad": per_kind,
        "bad": per_kind,
        "late_edge_ok": 5,
        "late_edge_bad": 5,
        "unknown": 8,
    }
    plan: dict[int, list[str]] = {}
    for kind, count in counts.items():
        for _ in range(count):
            plan.setdefault(rng.randrange(max(n, 1)), []).append(kind)

    writer.everyone_at(START_MS)
    weekend_done = False
    pending: list[str] = []
    for i, inst_index in enumerate(schedule):
        current = instruments[inst_index]
        ts = writer.clock + rng.randint(0, MAX_GAP_MS)
        if not weekend_done and (ts >= GAP_START_MS or i >= n // 2):
            weekend_done = True
            writer.clock = _resume_after_weekend(n - i)
            writer.segment_start = writer.clock
            writer.everyone_at(writer.clock)
            ts = writer.clock + rng.randint(0, MAX_GAP_MS)
        boundary = ts - ts % MINUTE_MS
        if boundary > writer.clock:
            snapped = writer.cross_minute(boundary)
            if snapped >= 0:
                ts = snapped
        writer.clock = ts
        writer.quote(current, ts)

        pending.extend(plan.get(i, ()))
        still_pending: list[str] = []
        for kind in pending:
            if not writer.run_extra(kind, current):
                still_pending.append(kind)
        pending = still_pending

    Path(path).write_bytes(("\n".join(writer.rows) + "\n").encode("utf-8"))
