"""The sentiment sinks: fx.sentiment-metrics into sentiment_metrics and sentiment_data,
as declarations on the sink runtime.

The sentiment agent sends both kinds of record on one topic, one frame per source
message: metrics (``"kind": "sentiment_metric"``, schemas/sentiment_metric.v2.json)
and the accepted observations themselves (``"kind": "sentiment_data"``,
schemas/sentiment_data.v1.json). So the raw table holds exactly what the metrics
were computed from: observations the worker refused (late, future, unknown) are in
the dead-letter topic and in neither table. Each sink runs in its own consumer group
(consumers.sinks) and takes its kind; the sentiment_metrics sink owns the topic's
bad messages (anything that is neither a valid metric nor an observation record goes
to the dead-letter topic from it, once), the sentiment_data sink passes over
everything that is not an observation record.

Versions are (src_partition, src_offset), the fx.sentiment position of the state
that produced the record; the runtime never lets an older one overwrite a newer one.
"""

from __future__ import annotations

from typing import Any

import schemas
from consumers.runtime import Decoded, NotJson, Rejected, SinkSpec
from pipeline.core.sentiment import DATA_KIND

VERSION = ("src_partition", "src_offset")

METRIC_COLUMNS = ("symbol", "provider", "ts_utc", "long_pct", "ma_5m", "ma_5m_full", "ma_15m",
                  "ma_15m_full", "ma_1h", "ma_1h_full", "change_1h", "contrarian_signal",
                  "contrarian_strength", "ratio", "confidence", "label", *VERSION)
METRIC_TYPES = ("text", "text", "int8", "float8", "float8", "bool", "float8", "bool", "float8",
                "bool", "float8", "int2", "float8", "float8", "float8", "text", "int4", "int8")

DATA_COLUMNS = ("symbol", "provider", "ts_utc", "long_pct", "short_pct", "total_traders",
                "confidence", *VERSION)
DATA_TYPES = ("text", "text", "int8", "float8", "float8", "int8", "float8", "int4", "int8")


def _items(value: Any) -> tuple[list[Any], bool]:
    framed = type(value) is list
    return (value if framed else [value]), framed


def decode_metrics(values: list[Any]) -> Decoded:
    """Rows of sentiment_metrics; what is neither a metric nor an observation record is
    rejected."""
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
            if type(item) is dict and item.get("kind") == DATA_KIND:
                continue  # the sentiment_data sink's
            try:
                schemas.validate("sentiment_metric", item)
            except schemas.SchemaError as exc:
                out.rejected.append(Rejected(m, where, str(exc), item))
                continue
            out.rows.append(tuple(item.get(c) for c in METRIC_COLUMNS))
            out.origins.append((m, where))
    return out


def decode_data(values: list[Any]) -> Decoded:
    """Rows of sentiment_data: the observation records; everything else is the
    sentiment_metrics sink's."""
    out = Decoded()
    for m, value in enumerate(values):
        if isinstance(value, NotJson):
            continue
        items, framed = _items(value)
        for i, item in enumerate(items):
            if type(item) is not dict or item.get("kind") != DATA_KIND:
                continue
            where = i if framed else None
            try:
                schemas.validate("sentiment_data", item)
            except schemas.SchemaError as exc:
                out.rejected.append(Rejected(m, where, str(exc), item))
                continue
            out.rows.append(tuple(item.get(c) for c in DATA_COLUMNS))
            out.origins.append((m, where))
    return out


SENTIMENT_METRICS = SinkSpec(
    name="sentiment-metrics",
    topic="sentiment_metrics",
    table="sentiment_metrics",
    columns=METRIC_COLUMNS,
    types=METRIC_TYPES,
    key=("symbol", "provider", "ts_utc"),
    version=VERSION,
    decode=decode_metrics,
    invalid_reason="invalid_sentiment_metric",
)

SENTIMENT_DATA = SinkSpec(
    name="sentiment-data",
    topic="sentiment_metrics",
    table="sentiment_data",
    columns=DATA_COLUMNS,
    types=DATA_TYPES,
    key=("symbol", "provider", "ts_utc"),
    version=VERSION,
    decode=decode_data,
    invalid_reason="invalid_sentiment_data",
)
