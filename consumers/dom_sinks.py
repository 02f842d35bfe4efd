"""The DOM sinks: fx.dom-metrics into dom_metrics and market_depth, as declarations
on the sink runtime.

The DOM agent sends both kinds of record on one topic, one frame per source
message: metric bars (``"kind": "dom_bar"``, schemas/dom_metric.v2.json) and depth
samples (``"kind": "depth_sample"``, schemas/depth_sample.v1.json). Each sink runs
in its own consumer group (consumers.sinks) and takes its kind; the dom_metrics
sink owns the topic's bad messages (anything that is neither a valid bar nor a
depth sample goes to the dead-letter topic from it, once), the market_depth sink
passes over everything that is not a depth sample.

Versions are (src_partition, src_offset), the fx.dom position of the state that
produced the record; the runtime never lets an older one overwrite a newer one.
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.types.json import Jsonb

import schemas
from consumers.runtime import Decoded, NotJson, Rejected, SinkSpec
from pipeline.core.dom import SAMPLE_KIND

VERSION = ("src_partition", "src_offset")

BAR_COLUMNS = ("symbol", "timeframe", "ts_utc", "provider", "open", "high", "low", "close",
               "spread_mean", "spread_min", "spread_max", "depth_imbalance", "depth_levels",
               "microprice", "weighted_mid", "updates", "crossed", "complete", *VERSION)
BAR_TYPES = ("text", "text", "int8", "text", "float8", "float8", "float8", "float8", "float8",
             "float8", "float8", "float8", "int4", "float8", "float8", "int8", "int8", "bool",
             "int4", "int8")

SAMPLE_COLUMNS = ("symbol", "bucket_utc", "ts_utc", "provider", "bids", "asks", "mid_price",
                  "spread", "imbalance", *VERSION)
SAMPLE_TYPES = ("text", "int8", "int8", "text", "jsonb", "jsonb", "float8", "float8", "float8",
                "int4", "int8")


def _items(value: Any) -> tuple[list[Any], bool]:
    framed = type(value) is list
    return (value if framed else [value]), framed


def decode_bars(values: list[Any]) -> Decoded:
    """Rows of dom_metrics; what is neither a bar nor a depth sample is rejected."""
    out = Decoded()
    for m, value in enumerate(values):
        if isinstance(value, NotJson):
            out.rejected.append(Rejected(m, None, value.error, None))
            continue
        items, framed = _items(value)
        if not items:
            out.rejected.append(Rejected(m, None, "an empty frame", value))
        for i, item in enumerate(items):
            where = i if framed else None
            if type(item) is dict and item.get("kind") == SAMPLE_KIND:
                continue  # the market_depth sink's
            try:
                schemas.validate("dom_metric", item)
            except schemas.SchemaError as exc:
                out.rejected.append(Rejected(m, where, str(exc), item))
                continue
            out.rows.append(tuple(item.get(c) for c in BAR_COLUMNS))
            out.origins.append((m, where))
    return out


def _json(levels: Any) -> Jsonb:
    return Jsonb(levels, dumps=orjson.dumps)


def decode_samples(values: list[Any]) -> Decoded:
    """Rows of market_depth: the depth samples; everything else is the dom_metrics sink's."""
    out = Decoded()
    for m, value in enumerate(values):
        if isinstance(value, NotJson):
            continue
        items, framed = _items(value)
        for i, item in enumerate(items):
            if type(item) is not dict or item.get("kind") != SAMPLE_KIND:
                continue
            where = i if framed else None
            try:
                schemas.validate("depth_sample", item)
            except schemas.SchemaError as exc:
                out.rejected.append(Rejected(m, where, str(exc), item))
                continue
            row = [item.get(c) for c in SAMPLE_COLUMNS]
            row[4], row[5] = _json(row[4]), _json(row[5])
            out.rows.append(tuple(row))
            out.origins.append((m, where))
    return out


DOM_METRICS = SinkSpec(
    name="dom-metrics",
    topic="dom_metrics",
    table="dom_metrics",
    columns=BAR_COLUMNS,
    types=BAR_TYPES,
    key=("symbol", "timeframe", "ts_utc"),
    version=VERSION,
    decode=decode_bars,
    invalid_reason="invalid_dom_metric",
)

MARKET_DEPTH = SinkSpec(
    name="market-depth",
    topic="dom_metrics",
    table="market_depth",
    columns=SAMPLE_COLUMNS,
    types=SAMPLE_TYPES,
    key=("symbol", "bucket_utc"),
    version=VERSION,
    decode=decode_samples,
    invalid_reason="invalid_depth_sample",
)
