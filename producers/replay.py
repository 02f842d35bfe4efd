"""`fxstream produce replay`: publish a tick CSV in file order, framed per symbol."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.deadletters import dead_letter
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, count_refused, normalize_symbol
from producers.csv_ticks import RowError, count_data_lines, read_tick_csv
from producers.kafka_io import TickPublisher

log = logging.getLogger("fxstream.replay")


@dataclass
class ReplayReport:
    rows: int = 0
    ticks: int = 0
    bad_rows: int = 0
    messages: int = 0
    seconds: float = 0.0
    # ticks published of symbols the configuration does not accept (the worker refuses them)
    refused: dict[str, int] = field(default_factory=dict)


def parse_speed(text: str) -> float | None:
    """'max' -> None (as fast as possible), 'realtime' -> 1.0, '10x' -> 10.0."""
    value = text.strip().lower()
    if value == "max":
        return None
    if value == "realtime":
        return 1.0
    if value.endswith("x"):
        try:
            factor = float(value[:-1])
        except ValueError:
            factor = 0.0
        if factor > 0:
            return factor
    raise ValueError(f"speed {text!r} is not 'max', 'realtime' or '<N>x' (e.g. 60x)")


def replay_csv(settings: Settings, path: Path, speed: float | None = None,
               frame_size: int | None = None, progress: bool = True) -> ReplayReport:
    """Publish every row; bad rows go to the dead-letter topic with their line number."""
    publisher = TickPublisher(settings, frame_size=frame_size)
    report = ReplayReport()
    started = time.monotonic()
    first_ts: int | None = None
    source = f"file:{path.name}"
    total = count_data_lines(path)
    accepted = frozenset(settings.symbols)

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
        task = bar.add_task(f"replaying {path.name}", total=total)
        bar.start()
    try:
        for line_no, item in read_tick_csv(path):
            report.rows += 1
            if isinstance(item, RowError):
                _reject(publisher, source, line_no, item.detail, item.raw, None)
                report.bad_rows += 1
                log.warning("%s line %d: %s", path.name, line_no, item.detail)
                continue
            try:
                symbol = normalize_symbol(item["symbol"])
            except SymbolError as exc:
                _reject(publisher, source, line_no, str(exc), item, None)
                report.bad_rows += 1
                log.warning("%s line %d: %s", path.name, line_no, exc,
                            extra={"symbol": item["symbol"]})
                continue
            if speed is not None:
                first_ts = item["ts_ms"] if first_ts is None else first_ts
                due = started + (item["ts_ms"] - first_ts) / 1000 / speed
                while (wait := due - time.monotonic()) > 0:
                    publisher.tick()
                    time.sleep(min(wait, 0.005))
            item["symbol"] = symbol
            publisher.publish(symbol, item)
            report.ticks += 1
            count_refused(report.refused, symbol, accepted)
            if report.rows % 4096 == 0:
                publisher.tick()
                if bar is not None:
                    bar.update(task, completed=report.rows)
        publisher.flush()
    finally:
        if bar is not None:
            bar.update(task, completed=report.rows)
            bar.stop()
    report.messages = publisher.sent_messages
    report.seconds = time.monotonic() - started
    return report


def _reject(publisher: TickPublisher, source: str, line_no: int, detail: str, payload: object,
            symbol: str | None) -> None:
    publisher.dead_letter(dead_letter(
        reason="bad_row", detail=f"line {line_no}: {detail}", stage="producer", topic=source,
        partition=0, offset=line_no, index=None, payload=payload, symbol=symbol,
        now_ms=int(time.time() * 1000)))
