"""Versioned JSON Schemas of every fxstream message, and validators compiled from them.

Validation happens at the edges (producers, the sink) and in the tests; the
worker's hot path uses an equivalent hand-written check (pipeline.core.ticks)
that the tests hold to these schemas.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson

SCHEMAS = {
    "tick": "tick.v1.json",
    "tick_frame": "tick_frame.v1.json",
    "dom_snapshot": "dom_snapshot.v2.json",
    "sentiment_observation": "sentiment_observation.v2.json",
    "candle": "candle.v1.json",
    "candle_frame": "candle_frame.v1.json",
    "dom_metric": "dom_metric.v2.json",
    "depth_sample": "depth_sample.v1.json",
    "sentiment_metric": "sentiment_metric.v2.json",
    "sentiment_data": "sentiment_data.v1.json",
    "dead_letter": "dead_letter.v1.json",
}


class SchemaError(ValueError):
    """A message that does not match its schema; the message says where and why."""


def load_schema(name: str) -> dict[str, Any]:
    """The schema as a dict, with references to sibling files inlined."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema {name!r}; known: {sorted(SCHEMAS)}")
    return _inline(_read(SCHEMAS[name]))


def _read(filename: str) -> dict[str, Any]:
    return orjson.loads(resources.files("schemas").joinpath(filename).read_bytes())


def _inline(node: Any) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.endswith(".json"):
            inner = copy.deepcopy(_read(ref))
            inner.pop("$schema", None)
            inner.pop("$id", None)
            return _inline(inner)
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


@cache
def _compiled(name: str) -> Any:
    return fastjsonschema.compile(load_schema(name))


def validate(name: str, message: Any) -> None:
    """Raise SchemaError when ``message`` does not match schema ``name``."""
    try:
        _compiled(name)(message)
    except fastjsonschema.JsonSchemaValueException as exc:
        message = exc.message
        definition = exc.definition if isinstance(exc.definition, dict) else {}
        if exc.rule in ("anyOf", "oneOf") and definition.get("description"):
            message += f": {definition['description']}"
        raise SchemaError(f"{name}: {message}") from None


def is_valid(name: str, message: Any) -> bool:
    try:
        validate(name, message)
    except SchemaError:
        return False
    return True
