"""`fxstream produce sentiment-replay`: publish a positioning CSV in file order, framed
per symbol on the sentiment topic.

Header, exactly: ``symbol,ts_ms,provider,long_pct,short_pct,total_traders,confidence``;
one observation per line, an empty field meaning absent (total_traders and confidence
may be; the others may not). A line that does not have seven fields, or whose
numbers are not numbers (``nan`` and ``inf`` are not), goes to the dead-letter topic
as ``bad_row``; an observation that breaks a rule of the one definition
(pipeline.core.positioning) with that rule's reason (``invalid_observation``,
``pct_out_of_range``, ``pct_sum``, ``bad_symbol``), both with their line number. The
future and lateness rules need the worker's clock and the series' history and are
the worker's.
"""

from __future__ import annotations

import csv
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.deadletters import dead_letter
from pipeline.core.positioning import ObservationError, observation_message, parse_observation
from pipeline.settings import Settings
from pipeline.symbols import count_refused
from producers.kafka_io import TickPublisher

log = logging.getLogger("fxstream.sentiment_replay")

HEADER = ("symbol", "ts_ms", "provider", "long_pct", "short_pct", "total_traders",
          "confidence")
HEADER_LINE = ",".join(HEADER)
_INT = re.compile(r"-?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")


class CsvHeaderError(ValueError):
    """The first line is not the expected header."""


class BadRow(ValueError):
    """A line that is not an observation at all (reason ``bad_row``)."""


@dataclass
class SentimentReplayReport:
    lines: int = 0
    observations: int = 0
    rejected: int = 0
    messages: int = 0
    seconds: float = 0.0
    # published items of symbols the configuration does not accept (the worker refuses them)
    refused: dict[str, int] = field(default_factory=dict)


def sentiment_publisher(settings: Settings, frame_size: int | None = None) -> TickPublisher:
    """The tick producers' framing, idempotence and partitioner, on the sentiment topic."""
    return TickPublisher(settings, frame_size=frame_size, topic=settings.topics.sentiment)


def row_values(fields: list[str]) -> dict[str, Any]:
    """The fields of one data line as an observation's JSON values, or raise BadRow;
    whether they make a valid observation is for `parse_observation` to say."""
    if len(fields) != len(HEADER):
        raise BadRow(f"expected {len(HEADER)} fields ({HEADER_LINE}), got {len(fields)}")
    text = dict(zip(HEADER, (f.strip() for f in fields), strict=True))
    out: dict[str, Any] = {"symbol": text["symbol"]}
    if text["provider"]:
        out["provider"] = text["provider"]
    for name in ("ts_ms", "total_traders"):
        if text[name]:
            if not _INT.fullmatch(text[name]):
                raise BadRow(f"{name} {text[name][:30]!r} is not an integer")
            out[name] = int(text[name])
    for name in ("long_pct", "short_pct", "confidence"):
        if text[name]:
            if not _DECIMAL.fullmatch(text[name]):
                raise BadRow(f"{name} {text[name][:30]!r} is not a number")
            out[name] = float(text[name])
    return out


def read_sentiment_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """(line number, values or BadRow) of every data line; the header is line 1."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=False)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            found = "nothing (empty file)" if header is None else repr(",".join(header))
            raise CsvHeaderError(f"{path}: expected header {HEADER_LINE!r}, found {found}")
        for fields in reader:
            line_no = reader.line_num
            try:
                yield line_no, row_values(fields)
            except BadRow as exc:
                yield line_no, exc


def replay_sentiment(settings: Settings, path: Path, speed: float | None = None,
                     frame_size: int | None = None) -> SentimentReplayReport:
    """Publish every valid observation; the others go to the dead-letter topic."""
    publisher = sentiment_publisher(settings, frame_size)
    report = SentimentReplayReport()
    started = time.monotonic()
    first_ts: int | None = None
    source = f"file:{path.name}"
    accepted = frozenset(settings.symbols)
    for line_no, item in read_sentiment_csv(path):
        report.lines += 1
        if isinstance(item, BadRow):
            _reject(publisher, source, line_no, "bad_row", str(item), None)
            report.rejected += 1
            continue
        try:
            obs = parse_observation(item, settings.sentiment_sum_tolerance)
        except ObservationError as exc:
            _reject(publisher, source, line_no, exc.reason, exc.detail, item)
            report.rejected += 1
            log.warning("%s line %d: %s", path.name, line_no, exc,
                        extra={"symbol": item.get("symbol")})
            continue
        if speed is not None:
            first_ts = obs.ts_ms if first_ts is None else first_ts
            due = started + (obs.ts_ms - first_ts) / 1000 / speed
            while (wait := due - time.monotonic()) > 0:
                publisher.tick()
                time.sleep(min(wait, 0.005))
        publisher.publish(obs.symbol, observation_message(obs))
        report.observations += 1
        count_refused(report.refused, obs.symbol, accepted)
        if report.lines % 4096 == 0:
            publisher.tick()
    publisher.flush()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - started
    return report


def _reject(publisher: TickPublisher, source: str, line_no: int, reason: str, detail: str,
            payload: object) -> None:
    publisher.dead_letter(dead_letter(
        reason=reason, detail=f"line {line_no}: {detail}", stage="producer", topic=source,
        partition=0, offset=line_no, index=None, payload=payload, symbol=None,
        now_ms=int(time.time() * 1000)))
