"""The candle sink: fx.candles into market_data_candles, as a declaration on the sink runtime.

Everything about the commit protocol (batching, last version wins, COPY and the
versioned merge, offsets in PostgreSQL, the Kafka commit, pausing, retries,
refused rows and dead letters) lives in `consumers.runtime`. This module says
what a candle message is and which rows it makes.

A message is one candle or a frame of them (what one source message produced).
A candle's version is (src_partition, src_offset): the fx.ticks partition and
the logical offset of the source message whose fold produced that bar state.
Candles without them (older workers) have no version and are applied as they
come.
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import Any

import schemas
from consumers.runtime import Decoded, NotJson, Rejected, SinkRuntime, SinkSpec, SinkStats
from pipeline.settings import Settings

__all__ = ["CANDLES", "COLUMNS", "CandleSink", "SinkStats", "decode_candles", "run_sink",
           "validate_candle"]

# The candle's own columns (the bench writes these, in this order).
COLUMNS = ("symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "tick_volume",
           "volume", "provider_source", "complete")
VERSION = ("src_partition", "src_offset")
WRITE_COLUMNS = COLUMNS + VERSION
TYPES = ("text", "text", "int8", "float8", "float8", "float8", "float8", "int8", "float8",
         "text", "bool", "int4", "int8")
INT8_MAX = 2**63 - 1
INT4_MAX = 2**31 - 1

_ALL = itemgetter(*WRITE_COLUMNS)
_UNVERSIONED = itemgetter(*COLUMNS)
_V = itemgetter("v")
_NO_VERSION = (None, None)


def decode_candles(values: list[Any]) -> Decoded:
    """Rows for a batch: frames are turned into tuples at C speed, then every column
    of the whole batch is checked at once; only a batch with something unusual in
    it is checked candle by candle, against the schema."""
    out = Decoded()
    rows, origins = out.rows, out.origins
    candles: list[Any] = []
    slow: list[tuple[int, Any]] = []
    for m, value in enumerate(values):
        frame = value if type(value) is list else None
        items = frame if frame is not None else [value]
        try:
            if type(items[0]) is dict and "src_offset" in items[0]:
                got = list(map(_ALL, items))
            else:  # an older worker's candles: no version
                got = [g + _NO_VERSION for g in map(_UNVERSIONED, items)]
        except (KeyError, TypeError, IndexError):
            slow.append((m, value))
            continue
        rows += got
        candles += items
        if frame is None:
            origins.append((m, None))
        else:
            origins += zip(repeat(m, len(items)), range(len(items)), strict=False)
    if rows and not _columns_valid(rows, candles):
        checked = Decoded()
        for row, candle, (m, index) in zip(rows, candles, origins, strict=True):
            try:
                validate_candle(candle)
            except schemas.SchemaError as exc:
                checked.rejected.append(Rejected(m, index, str(exc), candle))
                continue
            checked.rows.append(row)
            checked.origins.append((m, index))
        out = checked
    for m, value in slow:
        _decode_slowly(m, value, out)
    return out


def _decode_slowly(m: int, value: Any, out: Decoded) -> None:
    if isinstance(value, NotJson):
        out.rejected.append(Rejected(m, None, value.error, None))
        return
    frame = isinstance(value, list)
    for index, candle in enumerate(value if frame else (value,)):
        where = index if frame else None
        try:
            validate_candle(candle)
        except schemas.SchemaError as exc:
            out.rejected.append(Rejected(m, where, str(exc), candle))
            continue
        out.rows.append(tuple(candle.get(c) for c in WRITE_COLUMNS))
        out.origins.append((m, where))


def _columns_valid(rows: list[tuple[Any, ...]], candles: list[Any]) -> bool:
    """What schemas/candle.v1.json requires, checked a whole column at a time.

    Columns are read through itemgetters rather than transposed with zip(*rows), which
    allocates an iterator per row (and with them, garbage collections)."""
    try:
        if set(map(_V, candles)) != {1}:
            return False
        (symbol, timeframe, ts, o, h, lo, c, ticks, volume, source, complete, src_p,
         src_o) = _COLUMN
        if not all(type(s) is str and 0 < len(s) <= 32 for s in set(map(symbol, rows))):
            return False
        if not set(map(timeframe, rows)) <= _KNOWN_TIMEFRAMES:
            return False
        for get, low in ((ts, 0), (ticks, 1)):
            col = list(map(get, rows))
            if set(map(type, col)) != {int} or min(col) < low:
                return False
        for get in (o, h, lo, c):
            col = list(map(get, rows))
            if set(map(type, col)) != {float} or min(col) <= 0:
                return False
        col = list(map(volume, rows))
        if not set(map(type, col)) <= {float, int} or min(col) < 0:
            return False
        if set(map(type, map(complete, rows))) != {bool}:
            return False
        if not all(s is None or (type(s) is str and len(s) <= 64)
                   for s in set(map(source, rows))):
            return False
        for get, top in ((src_p, INT4_MAX), (src_o, INT8_MAX)):
            col = list(map(get, rows))
            types = set(map(type, col))
            if types != {int}:
                if not types <= {int, type(None)}:
                    return False
                col = [v for v in col if v is not None]
            if col and (min(col) < 0 or max(col) > top):
                return False
        return True
    except (TypeError, KeyError):  # an unhashable or unorderable value, no "v": one by one
        return False


_COLUMN = tuple(itemgetter(i) for i in range(len(WRITE_COLUMNS)))

_CANDLE_KEYS = ("symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "tick_volume",
                "volume", "complete")


def validate_candle(candle: Any) -> None:
    """schemas/candle.v1.json, with a fast path for what the worker writes.

    The full validator runs only when the cheap structural check finds something
    unusual, so a bad candle is always reported with the schema's own message."""
    if (type(candle) is dict and candle.get("v") == 1 and all(k in candle for k in _CANDLE_KEYS)
            and type(candle["ts_utc"]) is int and type(candle["tick_volume"]) is int
            and candle["tick_volume"] >= 1 and type(candle["complete"]) is bool
            and type(candle["symbol"]) is str and type(candle["timeframe"]) is str
            and all(type(candle[k]) is float and candle[k] > 0
                    for k in ("open", "high", "low", "close"))
            and type(candle["volume"]) in (float, int) and candle["volume"] >= 0
            and candle["timeframe"] in _KNOWN_TIMEFRAMES
            and 0 < len(candle["symbol"]) <= 32 and candle["ts_utc"] >= 0
            and _version_ok(candle.get("src_partition"), INT4_MAX)
            and _version_ok(candle.get("src_offset"), INT8_MAX)):
        return
    schemas.validate("candle", candle)


def _version_ok(value: Any, top: int) -> bool:
    return value is None or (type(value) is int and 0 <= value <= top)


_KNOWN_TIMEFRAMES = frozenset(f"{n}{u}" for u in "mhd" for n in range(1, 1000))

CANDLES = SinkSpec(
    name="candle",
    topic="candles",
    table="market_data_candles",
    columns=WRITE_COLUMNS,
    types=TYPES,
    key=("symbol", "timeframe", "ts_utc"),
    version=VERSION,
    decode=decode_candles,
    invalid_reason="invalid_candle",
)


class CandleSink(SinkRuntime):
    """The candle declaration on the sink runtime."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(CANDLES, settings)


def run_sink(settings: Settings) -> SinkStats:
    sink = CandleSink(settings)
    sink.install_signal_handlers()
    return sink.run()
