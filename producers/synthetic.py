"""Synthetic FX ticks: realistic enough to exercise the pipeline, deterministic for a seed.

Per symbol the mid follows a random walk (a very weak pull back to its start level
keeps long runs plausible), the spread widens and narrows around a typical level
and now and then spikes, and bid/ask are rounded to the symbol's decimals. Arrivals
switch between calm and burst regimes; over time they average ``rate`` per second.

All prices are handled in integer "points" (1 / 10**decimals). A bid or ask is
``points / 10**decimals``, which is exactly what ``round(price, decimals)`` gives,
and one pip is 10 points on every instrument.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator, Sequence

DEFAULT_START_MS = 1_704_672_000_000  # 2024-01-08 00:00:00 UTC, a Monday
POINTS_PER_PIP = 10

CURRENCIES = ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")  # market base priority
_USD_VALUE = {
    "EUR": 1.0850,
    "GBP": 1.2700,
    "AUD": 0.6650,
    "NZD": 0.6100,
    "USD": 1.0,
    "CAD": 1 / 1.3650,
    "CHF": 1 / 0.8950,
    "JPY": 1 / 155.50,
}
MAJORS = ("EUR/USD", "USD/JPY", "GBP/USD", "AUD/USD", "USD/CHF", "USD/CAD", "NZD/USD")
FX_PAIRS = tuple(
    f"{base}/{quote}" for i, base in enumerate(CURRENCIES) for quote in CURRENCIES[i + 1 :]
)
METALS = {"XAU/USD": (2400.0, 2), "XAG/USD": (28.0, 3)}


def _is_pair(symbol: str) -> bool:
    base, sep, quote = symbol.partition("/")
    return bool(sep) and len(base) == 3 and len(quote) == 3 and base.isalpha() and quote.isalpha()


def price_decimals(symbol: str) -> int:
    """Decimals a price of ``symbol`` is quoted with (its pipette precision)."""
    if symbol in METALS:
        return METALS[symbol][1]
    if _is_pair(symbol):
        return 3 if symbol.endswith("/JPY") else 5
    return 2


class _Decimals(dict[str, int]):
    """Known symbols listed; any other symbol is answered by ``price_decimals``."""

    def __missing__(self, symbol: str) -> int:
        return price_decimals(symbol)

    def get(self, symbol: str, default: int | None = None) -> int:  # type: ignore[override]
        return self[symbol]


PIP_DECIMALS: dict[str, int] = _Decimals({s: price_decimals(s) for s in (*FX_PAIRS, *METALS)})


def _stable_unit(symbol: str) -> float:
    """A number in [0, 1) fixed by the symbol alone (str hash() varies per process)."""
    return zlib.crc32(symbol.encode()) / 2**32


def start_price(symbol: str) -> float:
    """A realistic level for known instruments, a fixed pseudo-random one otherwise."""
    if symbol in METALS:
        return METALS[symbol][0]
    decimals = price_decimals(symbol)
    base, _, quote = symbol.partition("/")
    if base in _USD_VALUE and quote in _USD_VALUE:
        level = _USD_VALUE[base] / _USD_VALUE[quote]
    elif _is_pair(symbol):
        low, high = (50.0, 250.0) if decimals == 3 else (0.5, 2.5)
        level = low * (high / low) ** _stable_unit(symbol)
    else:
        level = 50.0 * 800.0 ** _stable_unit(symbol)  # 50 .. 40,000, like indices
    return round(level, decimals)


START_PRICES: dict[str, float] = {s: start_price(s) for s in (*FX_PAIRS, *METALS)}

# Relative activity: share of ticks, before a per-seed jitter.
_ACTIVITY = {
    "EUR/USD": 10.0, "USD/JPY": 8.0, "GBP/USD": 7.0, "XAU/USD": 6.0, "AUD/USD": 5.0,
    "USD/CAD": 4.0, "USD/CHF": 4.0, "NZD/USD": 3.0, "EUR/JPY": 3.0, "GBP/JPY": 3.0,
    "EUR/GBP": 2.5, "XAG/USD": 2.0,
}  # fmt: skip
# Typical spread in pips.
_SPREAD_PIPS = {
    "EUR/USD": 0.6, "USD/JPY": 0.7, "GBP/USD": 0.9, "AUD/USD": 0.8, "USD/CHF": 1.0,
    "USD/CAD": 1.1, "NZD/USD": 1.2, "EUR/GBP": 1.0, "EUR/JPY": 1.2, "GBP/JPY": 2.0,
    "XAU/USD": 2.5, "XAG/USD": 2.5,
}  # fmt: skip

# Arrival regimes: calm most of the time, short bursts at a multiple of the rate.
# Time shares 6/7 and 1/7 with rates 2/3 and 3 times the mean average to exactly 1.
_CALM_MEAN_S, _BURST_MEAN_S = 3.0, 0.5
_CALM_RATE, _BURST_RATE = 2.0 / 3.0, 3.0
_BURST_VOL, _BURST_SPREAD = 1.6, 1.5

_SPREAD_REVERT = 0.08  # share of the gap to the target spread closed per tick
_SPREAD_NOISE = 0.10  # per-tick spread noise, relative to the target spread
_SPIKE_BITS = 11  # a spread spike on about 1 tick in 2**11; else that draw picks the noise
_MID_REVERT = 1e-6  # pull of the mid to its start level per tick

_POOL_BITS = 14  # lookup tables of 2**14 deviates stand in for per-tick gauss()/expovariate()
_VOLUME_BITS = 10
_VOLUME_ABSENT = 0.10


class SyntheticTicks:
    """Deterministic tick stream for ``symbols`` at ``rate`` ticks per second overall.

    ``ticks()`` can be called repeatedly; each call continues where the previous
    one stopped, in event time and in every symbol's price. Use one iterator at a time.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        rate: float,
        seed: int = 0,
        start_ms: int | None = None,
        provider: str = "synthetic",
    ) -> None:
        if not symbols:
            raise ValueError("symbols is empty")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols contains duplicates")
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a finite number > 0, got {rate}")
        self.symbols = tuple(symbols)
        self.rate = float(rate)
        self.seed = seed
        self.start_ms = DEFAULT_START_MS if start_ms is None else int(start_ms)
        self.provider = provider
        rng = random.Random(seed)
        self._rng = rng

        n = len(self.symbols)
        self._scale = [10 ** price_decimals(s) for s in self.symbols]
        anchors = [start_price(s) * k for s, k in zip(self.symbols, self._scale, strict=True)]
        self._anchor = anchors
        self._mid = list(anchors)
        step_pips = [self._base_step_pips(s) * rng.uniform(0.8, 1.25) for s in self.symbols]
        self._step = [POINTS_PER_PIP * min(max(p, 0.1), 0.5) for p in step_pips]
        self._target = [
            POINTS_PER_PIP * _SPREAD_PIPS.get(s, 2.0) * rng.uniform(0.85, 1.2) for s in self.symbols
        ]
        self._spread = list(self._target)

        weights = [_ACTIVITY.get(s, 1.0) * rng.uniform(0.75, 1.3) for s in self.symbols]
        self._pick_bits = max(10, min(16, (16 * n - 1).bit_length()))
        self._pick = _proportional_table(weights, 1 << self._pick_bits)

        normals = [rng.gauss(0.0, 1.0) for _ in range(1 << _POOL_BITS)]
        mean = math.fsum(normals) / len(normals)
        sd = math.sqrt(math.fsum((z - mean) ** 2 for z in normals) / len(normals))
        self._normals = [(z - mean) / sd for z in normals]
        exps = [rng.expovariate(1.0) for _ in range(1 << _POOL_BITS)]
        exp_mean = math.fsum(exps) / len(exps)
        self._exps = [e / exp_mean for e in exps]
        volumes: list[float | None] = [_lots(rng) for _ in range(1 << _VOLUME_BITS)]
        for k in rng.sample(range(len(volumes)), round(_VOLUME_ABSENT * len(volumes))):
            volumes[k] = None
        self._volumes = volumes

        self._t = float(self.start_ms)
        self._burst = False
        self._regime_end = self._t + rng.expovariate(1.0) * _CALM_MEAN_S * 1000.0

    @staticmethod
    def _base_step_pips(symbol: str) -> float:
        if symbol in MAJORS:
            return 0.18
        if symbol in METALS:
            return 0.4
        if symbol.endswith("/JPY"):
            return 0.35
        return 0.28

    def ticks(self, count: int | None = None, duration_s: float | None = None) -> Iterator[dict]:
        """Yield ticks in event-time order until ``count`` ticks or ``duration_s`` of event time.

        With both given, whichever comes first stops the stream. Event time starts where
        the previous call stopped (``start_ms`` for the first call); every tick has
        ``ts_ms`` <= start + duration.
        """
        if count is None and duration_s is None:
            raise ValueError("give count, duration_s or both")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        remaining = -1 if count is None else int(count)  # -1 never reaches 0: no count limit
        end = math.inf if duration_s is None else self._t + float(duration_s) * 1000.0

        rng = self._rng
        bits = rng.getrandbits
        mids, anchors, steps = self._mid, self._anchor, self._step
        spreads, targets, scales = self._spread, self._target, self._scale
        symbols, provider = self.symbols, self.provider
        pick, normals, exps, volumes = self._pick, self._normals, self._exps, self._volumes
        pick_bits, pool_bits, spike_bits, volume_bits = (
            self._pick_bits,
            _POOL_BITS,
            _SPIKE_BITS,
            _VOLUME_BITS,
        )
        mid_revert, sp_revert, sp_noise = _MID_REVERT, _SPREAD_REVERT, _SPREAD_NOISE

        t = self._t
        regime_end = self._regime_end
        burst = self._burst
        calm_gap = 1000.0 / (self.rate * _CALM_RATE)
        burst_gap = 1000.0 / (self.rate * _BURST_RATE)
        gap = burst_gap if burst else calm_gap
        vol = _BURST_VOL if burst else 1.0
        widen = _BURST_SPREAD if burst else 1.0

        try:
            while remaining:
                nt = t + exps[bits(pool_bits)] * gap
                while nt >= regime_end:
                    # Exponential gaps are memoryless: restart the wait at the switch.
                    t = regime_end
                    burst = not burst
                    mean_s = _BURST_MEAN_S if burst else _CALM_MEAN_S
                    regime_end = t + rng.expovariate(1.0) * mean_s * 1000.0
                    gap = burst_gap if burst else calm_gap
                    vol = _BURST_VOL if burst else 1.0
                    widen = _BURST_SPREAD if burst else 1.0
                    nt = t + rng.expovariate(1.0) * gap
                if nt > end:
                    t = end
                    return
                t = nt

                i = pick[bits(pick_bits)]
                mid = mids[i]
                mid += normals[bits(pool_bits)] * steps[i] * vol
                mid += (anchors[i] - mid) * mid_revert
                mids[i] = mid

                target = targets[i] * widen
                spread = spreads[i]
                spread += (target - spread) * sp_revert
                k = bits(spike_bits)
                if k:
                    spread += normals[k] * target * sp_noise
                    if spread < 0.5 * target:
                        spread = 0.5 * target
                else:
                    spread += target * (1.5 + 3.0 * rng.random())
                spreads[i] = spread

                scale = scales[i]
                bid_pts = int(mid - 0.5 * spread)
                ask_pts = bid_pts + (int(spread + 0.5) or 1)
                volume = volumes[bits(volume_bits)]
                if volume is None:
                    yield {
                        "symbol": symbols[i],
                        "ts_ms": int(t),
                        "bid": bid_pts / scale,
                        "ask": ask_pts / scale,
                        "provider": provider,
                    }
                else:
                    yield {
                        "symbol": symbols[i],
                        "ts_ms": int(t),
                        "bid": bid_pts / scale,
                        "ask": ask_pts / scale,
                        "volume": volume,
                        "provider": provider,
                    }
                remaining -= 1
        finally:
            self._t = t
            self._regime_end = regime_end
            self._burst = burst


def _lots(rng: random.Random) -> float:
    """A trade size in lots: mostly small, a long tail, 0.01 .. 10."""
    return min(max(round(math.exp(rng.gauss(-0.7, 1.3)), 2), 0.01), 10.0)


def _proportional_table(weights: Sequence[float], size: int) -> list[int]:
    """``size`` symbol indexes, each appearing in proportion to its weight (at least once)."""
    total = math.fsum(weights)
    counts = [max(1, round(w / total * size)) for w in weights]
    diff = size - sum(counts)
    order = sorted(range(len(weights)), key=lambda k: -weights[k])
    k = 0
    while diff:
        j = order[k % len(order)]
        if diff > 0:
            counts[j] += 1
            diff -= 1
        elif counts[j] > 1:
            counts[j] -= 1
            diff += 1
        k += 1
    table: list[int] = []
    for j, c in enumerate(counts):
        table.extend([j] * c)
    return table
