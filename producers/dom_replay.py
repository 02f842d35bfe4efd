"""`fxstream produce dom-replay`: publish recorded book snapshots (JSON lines) in
file order, framed per symbol.

One snapshot (a JSON object, schemas/dom_snapshot.v2.json) per line; blank lines
are passed over. Each is held to the one definition of a valid snapshot
(pipeline.core.book): a line that is not JSON goes to the dead-letter topic as
``bad_row``, a snapshot that breaks a rule with that rule's reason
(``invalid_snapshot``, ``bad_symbol``, ``unordered_book``, ``too_many_levels``),
both with their line number. The future and lateness rules need the worker's
clock and the symbol's history and are the worker's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.book import SnapshotError, parse_snapshot
from pipeline.core.deadletters import dead_letter
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, count_refused, normalize_symbol
from producers.book_publisher import BookPublisher, snapshot_message

log = logging.getLogger("fxstream.dom_replay")


@dataclass
class DomReplayReport:
    lines: int = 0
    snapshots: int = 0
    rejected: int = 0
    messages: int = 0
    seconds: float = 0.0
    # snapshots published of symbols the configuration does not accept
    refused: dict[str, int] = field(default_factory=dict)


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line, numbered from 1."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line


def count_symbols(path: Path) -> dict[str, int]:
    """Snapshots per canonical symbol, counted before a replay publishes anything; lines
    that are not JSON objects with a symbol that normalizes are left out."""
    counts: dict[str, int] = {}
    for _, line in read_lines(path):
        try:
            value = orjson.loads(line)
            symbol = normalize_symbol(value["symbol"])
        except (orjson.JSONDecodeError, TypeError, KeyError, SymbolError):
            continue
        counts[symbol] = counts.get(symbol, 0) + 1
    return counts


def replay_dom(settings: Settings, path: Path, speed: float | None = None,
               frame_size: int | None = None) -> DomReplayReport:
    """Publish every valid snapshot; the others go to the dead-letter topic."""
    publisher = BookPublisher(settings, frame_size=frame_size)
    report = DomReplayReport()
    started = time.monotonic()
    first_ts: int | None = None
    source = f"file:{path.name}"
    accepted = frozenset(settings.symbols)
    for line_no, line in read_lines(path):
        report.lines += 1
        value: Any
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            _reject(publisher, source, line_no, "bad_row", f"not JSON: {exc}", line)
            report.rejected += 1
            continue
        try:
            snap = parse_snapshot(value, settings.dom_max_levels)
        except SnapshotError as exc:
            _reject(publisher, source, line_no, exc.reason, exc.detail, value)
            report.rejected += 1
            log.warning("%s line %d: %s", path.name, line_no, exc,
                        extra={"symbol": value.get("symbol") if isinstance(value, dict) else None})
            continue
        if speed is not None:
            first_ts = snap.ts_ms if first_ts is None else first_ts
            due = started + (snap.ts_ms - first_ts) / 1000 / speed
            while (wait := due - time.monotonic()) > 0:
                publisher.tick()
                time.sleep(min(wait, 0.005))
        publisher.publish(snap.symbol, snapshot_message(snap))
        report.snapshots += 1
        count_refused(report.refused, snap.symbol, accepted)
        if report.lines % 4096 == 0:
            publisher.tick()
    publisher.flush()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - started
    return report


def _reject(publisher: BookPublisher, source: str, line_no: int, reason: str, detail: str,
            payload: object) -> None:
    publisher.dead_letter(dead_letter(
        reason=reason, detail=f"line {line_no}: {detail}", stage="producer", topic=source,
        partition=0, offset=line_no, index=None, payload=payload, symbol=None,
        now_ms=int(time.time() * 1000)))
