"""What `fxstream gaps` and `fxstream backfill` print: a table or JSON of gaps, and a rich
progress bar per symbol while history is fetched."""

from __future__ import annotations

import sys
import time

import orjson
import psycopg
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pipeline.gaps import Gap, find_gaps, iso_utc, parse_instant
from pipeline.redact import Redactor
from pipeline.settings import Settings
from pipeline.symbols import SymbolError, normalize_symbol


def symbols_option(value: str | None, settings: Settings) -> list[str]:
    if not value:
        return list(settings.symbols)
    out: list[str] = []
    for raw in value.split(","):
        if not raw.strip():
            continue
        try:
            symbol = normalize_symbol(raw)
        except SymbolError as exc:
            raise typer.BadParameter(str(exc), param_hint="--symbols") from None
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise typer.BadParameter("no symbol given", param_hint="--symbols")
    return out


def range_options(from_text: str, to_text: str | None) -> tuple[int, int]:
    try:
        from_ms = parse_instant(from_text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from") from None
    try:
        to_ms = int(time.time() * 1000) if to_text is None else parse_instant(to_text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    if from_ms >= to_ms:
        raise typer.BadParameter(f"--from {iso_utc(from_ms)} is not before --to "
                                 f"{iso_utc(to_ms)}", param_hint="--from")
    return from_ms, to_ms


def show_gaps(settings: Settings, symbols_text: str | None, timeframe: str, from_text: str,
              to_text: str | None, as_json: bool, console: Console) -> list[Gap]:
    from pipeline.core.timeframes import parse_timeframe

    try:
        parse_timeframe(timeframe)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--timeframe") from None
    symbols = symbols_option(symbols_text, settings)
    from_ms, to_ms = range_options(from_text, to_text)
    try:
        with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
            found = find_gaps(conn, symbols, timeframe, from_ms, to_ms,
                              day_start_ms=settings.day_start_minutes * 60_000,
                              holidays=settings.market_holidays)
    except psycopg.errors.UndefinedTable:
        raise ConnectionError("market_data_candles does not exist in the database: run "
                              "`fxstream db migrate`") from None
    except psycopg.OperationalError as exc:
        raise ConnectionError(f"PostgreSQL did not answer: {exc}") from None
    if as_json:
        sys.stdout.write(orjson.dumps([g.as_json() for g in found]).decode() + "\n")
        return found
    table = Table(title=f"{timeframe} gaps {iso_utc(from_ms)} .. {iso_utc(to_ms)}")
    for column in ("symbol", "from (UTC)", "to (UTC)", "bars"):
        table.add_column(column, justify="right" if column == "bars" else "left")
    for gap in found:
        table.add_row(gap.symbol, iso_utc(gap.from_ms), iso_utc(gap.to_ms), str(gap.bars))
    console.print(table)
    console.print(f"{len(found)} gaps, {sum(g.bars for g in found)} missing bars in "
                  f"{len(symbols)} symbols")
    return found


class RichProgress:
    """One bar per symbol, in minutes of history."""

    def __init__(self, progress: Progress) -> None:
        self.bars = progress
        self.tasks: dict[str, TaskID] = {}

    def planned(self, symbol: str, total_ms: int) -> None:
        self.tasks[symbol] = self.bars.add_task(symbol, total=max(1, total_ms // 60_000))
        if not total_ms:
            self.bars.update(self.tasks[symbol], completed=1)

    def advanced(self, symbol: str, done_ms: int, report: object) -> None:
        self.bars.update(self.tasks[symbol], completed=done_ms // 60_000)


def run_backfill_command(settings: Settings, symbols_text: str | None, from_text: str,
                         to_text: str | None, gaps_only: bool, timeframes_text: str | None,
                         console: Console, err_console: Console, redactor: Redactor
                         ) -> int:
    """The backfill with its progress bars; returns the exit code."""
    from pipeline.db.migrate import migrate
    from producers.ctrader.backfill import run_backfill
    from producers.ctrader.connection import OpenApiError
    from producers.ctrader.credentials import CredentialsError, load_credentials
    from producers.ctrader.session import CtraderFatal

    symbols = symbols_option(symbols_text, settings)
    from_ms, to_ms = range_options(from_text, to_text)
    timeframes = None
    if timeframes_text:
        try:
            timeframes = Settings(timeframes=timeframes_text).timeframes
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--timeframes") from None
    try:
        credentials = load_credentials(settings.ctrader_secrets_file)
    except CredentialsError as exc:
        err_console.print(f"[red]fxstream:[/red] {redactor(str(exc))}", highlight=False)
        return 2
    redactor.watch(credentials.secrets)  # refreshed tokens included
    migrate(settings)
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("minutes"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console) as bars:
            report = run_backfill(settings, credentials, symbols, from_ms, to_ms, gaps_only,
                                  timeframes, RichProgress(bars))
    except CtraderFatal as exc:
        err_console.print(f"[red]fxstream:[/red] {redactor(str(exc))}", highlight=False)
        return 3
    except (OpenApiError, ConnectionError, OSError, psycopg.OperationalError) as exc:
        err_console.print(f"[red]fxstream:[/red] backfill stopped: {redactor(str(exc))}; "
                          "the steps written are kept, run it again to go on", highlight=False)
        return 1
    for symbol in report.missing_symbols:
        err_console.print(f"[yellow]{symbol}: the account offers no such symbol[/yellow]")
    until = min(to_ms, int(time.time() * 1000))
    table = Table(title=f"backfill {iso_utc(from_ms)} .. {iso_utc(until)}")
    for column in ("symbol", "steps", "ticks", "bars written", "live bars kept",
                   "trendbar steps", "minutes already fetched"):
        table.add_column(column, justify="left" if column == "symbol" else "right")
    for symbol, r in report.symbols.items():
        table.add_row(symbol, str(r.steps), str(r.ticks), str(r.bars), str(r.kept_live),
                      str(r.trendbar_steps), str(r.skipped_ms // 60_000))
    console.print(table)
    console.print(f"done in {report.seconds:.1f} s")
    return 0
