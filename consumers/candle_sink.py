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

from typing import Annotated, Any, Literal

import msgspec

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
Positive = Annotated[float, msgspec.Meta(gt=0)]
# Every name the schema's timeframe pattern ^[1-9][0-9]{0,3}[mhd]$ admits, as a
# Literal: msgspec checks it with one hash lookup, where the pattern cost a regex
# search per candle (a third of the decoding time).
TIMEFRAME_NAMES = tuple(f"{n}{unit}" for unit in "mhd" for n in range(1, 10_000))


class CandleRecord(msgspec.Struct, gc=False):
    """schemas/candle.v1.json as a msgspec type, for the runtime's fast path: a message
    of candles that decodes into it is valid by the schema too (the schema stays the
    authority: what this refuses is checked against it, candle by candle)."""

    v: Literal[1]
    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    timeframe: Literal[TIMEFRAME_NAMES]  # type: ignore[valid-type]
    ts_utc: Annotated[int, msgspec.Meta(ge=0)]
    open: Positive
    high: Positive
    low: Positive
    close: Positive
    tick_volume: Annotated[int, msgspec.Meta(ge=1)]
    volume: Annotated[float, msgspec.Meta(ge=0)]
    complete: bool
    provider_source: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    src_partition: Annotated[int, msgspec.Meta(ge=0, le=INT4_MAX)] | None = None
    src_offset: Annotated[int, msgspec.Meta(ge=0, le=INT8_MAX)] | None = None


def decode_candles(values: list[Any]) -> Decoded:
    """Rows of messages the fast path did not take, each candle checked against the
    schema, so a bad one is reported with the schema's own message."""
    out = Decoded()
    for m, value in enumerate(values):
        if isinstance(value, NotJson):
            out.rejected.append(Rejected(m, None, value.error, None))
            continue
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
    return out


def validate_candle(candle: Any) -> None:
    """schemas/candle.v1.json; raises schemas.SchemaError with the schema's message."""
    schemas.validate("candle", candle)


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
    record=CandleRecord,
)


class CandleSink(SinkRuntime):
    """The candle declaration on the sink runtime."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(CANDLES, settings)


def run_sink(settings: Settings) -> SinkStats:
    sink = CandleSink(settings)
    sink.install_signal_handlers()
    return sink.run()
