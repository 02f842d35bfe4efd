"""What an agent declares; the runtime (pipeline.runtime.worker) does the rest.

An agent folds the messages of one key (a canonical symbol) into that key's
state. Its three functions are pure: no Kafka, no Faust, no clock of their own.

- ``fold(state, key, items, position, now_ms, settled)``: one source message
  (``items`` are its decoded JSON values: a frame or a single value in a list)
  applied to the key's state (None when there is none yet). ``position`` is the
  message's logical offset, increasing within the source partition; ``settled`` the
  newest position of that partition whose outputs Kafka has acknowledged (-1: none
  known). Whatever a message after ``settled`` sent must stay re-sendable from the
  state: Kafka stores the changelog record and the outputs of a message
  independently, so a kill -9 can keep the state of many messages and lose their
  outputs. It must not modify ``state``: the runtime keeps a key's state in memory
  from one message to the next, and a refused message leaves it as it was.
  With a ``record`` type declared, a frame that decodes whole into a list of it
  (no null, no unknown field, every bound of the type held) reaches the fold as
  those records instead of dicts: a fast path the fold may trust for types and
  bounds. A record the fold cannot take that way it must reject; the runtime then
  folds the message again from its plain JSON decode, which stays the authority on
  what is valid and why not, and dead-letters the items as they were sent.
- ``clock(state, now_ms, last_arrival_ms)``: records the wall clock closes while no
  message arrives (e.g. a quiet bar). The runtime remembers what it sent; the next
  message folds as usual.
- ``resend(state, now_ms)``: every record the state still stands for, re-sent after
  recovery: at least everything the unsettled messages sent (downstream upserts
  make the repeat harmless).

Every record the runtime publishes carries its version: ``src_partition`` and
``src_offset``, the source position of the state that produced it, so a sink can
refuse to go backwards. A record that names another topic in ``TARGET`` (one of
the declaration's ``also`` topics) goes there instead, as it is (without the
name and without a version): a message for another agent, e.g. a derived
observation for the sentiment agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

State = dict[str, Any]
Record = dict[str, Any]
TARGET = "_topic"  # a record's other topic: a field of pipeline.settings.Topics


@dataclass(frozen=True, slots=True)
class Reject:
    """One refused item of a message: its index in the frame, a reason code, why."""

    index: int
    reason: str
    detail: str
    payload: Any


@dataclass(slots=True)
class FoldOutcome:
    state: State | None  # the new state to store; None: store nothing for this key
    outputs: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    accepted: int = 0  # items that changed the state (for the stopping report)
    skipped: bool = False  # the state had applied this position already


@dataclass(frozen=True)
class AgentSpec:
    """One agent: its topics (names of fields of `pipeline.settings.Topics`), its
    table, the keys it accepts, and its pure functions."""

    name: str  # used in logs: "candle" -> "candle worker stopping: ..."
    source: str  # e.g. "ticks"
    output: str  # e.g. "candles"
    table: str  # Faust table name, e.g. "candle-state"
    fold: Callable[[State | None, str, list[Any], int, int, int], FoldOutcome]
    clock: Callable[[State, int, int | None], list[Record]]
    resend: Callable[[State, int], list[Record]]
    known_keys: frozenset[str] | None = None  # None: every canonical symbol
    item_noun: str = "ticks"  # what the stopping report counts
    also: tuple[str, ...] = ()  # other topics (Topics fields) records may name in TARGET
    record: type[Any] | None = None  # a msgspec Struct: frames of it skip the plain decode
