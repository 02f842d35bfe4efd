"""The `fxstream` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.logs import setup_logging
from pipeline.redact import redact
from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.stack import EmbeddedStack, StackError, server_versions

if TYPE_CHECKING:
    from pipeline.observability.scrape import Throughput

app = typer.Typer(help="fxstream: FX ticks in, candles out, through Kafka and PostgreSQL.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
stack_app = typer.Typer(help="The embedded stack: a real Kafka broker and PostgreSQL server.",
                        no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="PostgreSQL schema.", no_args_is_help=True)
produce_app = typer.Typer(help="Publish ticks, book snapshots or positioning to the raw topics.",
                          no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")
app.add_typer(produce_app, name="produce")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (or FXSTREAM_CONFIG).")
]


class Context:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None) -> None:
    ctx.obj = Context(config)


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj.settings


def embedded_stack(settings: Settings) -> EmbeddedStack:
    return EmbeddedStack(settings.state_dir.resolve(), settings.kafka_port, settings.postgres_port)


# --- stack -----------------------------------------------------------------------------------


@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Resolve the Kafka jars through Maven (once; later runs download nothing)."""
    stack = embedded_stack(settings_of(ctx))
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    ran = stack.kafka.fetch_jars()
    version = stack.kafka.pinned_version()
    console.print(f"Kafka {version} jars {'resolved' if ran else 'already cached'} in "
                  f"{stack.kafka.jars}")


@stack_app.command("up")
def stack_up(ctx: typer.Context) -> None:
    """Start Kafka and PostgreSQL (or do nothing if KAFKA_BOOTSTRAP and DATABASE_URL are set)."""
    settings = settings_of(ctx)
    setup_logging(settings, "stack")
    if settings.external_stack:
        console.print("KAFKA_BOOTSTRAP and DATABASE_URL are set: using that Kafka and PostgreSQL; "
                      "nothing to start.")
        return
    stack = embedded_stack(settings)
    with console.status("starting PostgreSQL and Kafka ..."):
        started = stack.up()
    for name, did in started.items():
        console.print(f"{name}: {'started' if did else 'already running'}")
    console.print(f"connection settings written to {stack.connection_file}")
    ctx.find_root().obj._settings = None  # the connection file now exists
    _bootstrap_contracts(settings_of(ctx))


def _bootstrap_contracts(settings: Settings) -> None:
    from pipeline.db.migrate import migrate
    from pipeline.topics import create_topics

    report = create_topics(settings)
    console.print(f"topics: {len(report.created)} created, "
                  f"{len(report.existing) - len(report.created)} already there")
    before, after = migrate(settings)
    console.print(f"database schema: {before or 'empty'} -> {after}")


@stack_app.command("down")
def stack_down(ctx: typer.Context) -> None:
    """Stop the embedded Kafka and PostgreSQL; their data stays for the next `up`."""
    stopped = embedded_stack(settings_of(ctx)).down()
    for name, did in stopped.items():
        console.print(f"{name}: {'stopped' if did else 'was not running'}")


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """Show whether the servers answer, and their versions as they report them."""
    settings = settings_of(ctx)
    table = Table(title="fxstream stack")
    table.add_column("server")
    table.add_column("address")
    table.add_column("version (as reported by the server)")
    if not settings.kafka_bootstrap or not settings.database_url:
        err_console.print(f"[red]no stack is up[/red] (no connection file in "
                          f"{settings.state_dir} and no KAFKA_BOOTSTRAP/DATABASE_URL)")
        raise typer.Exit(1)
    stack = embedded_stack(settings)
    if not stack.kafka.jars.is_dir():
        stack.state_dir.mkdir(parents=True, exist_ok=True)
    versions = server_versions(settings.kafka_bootstrap, settings.database_url,
                               stack.state_dir)
    table.add_row("Kafka", settings.kafka_bootstrap, f"metadata.version {versions.kafka}")
    table.add_row("PostgreSQL", redact(settings.database_url), versions.postgres)
    console.print(table)


# --- topics and db -----------------------------------------------------------------------------


@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every fxstream topic that is missing (idempotent)."""
    from pipeline.topics import create_topics

    settings = settings_of(ctx)
    report = create_topics(settings)
    table = Table(title=f"topics on {settings.kafka_bootstrap}")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("")
    for name in settings.topics.all():
        partitions = report.existing.get(name, settings.partitions)
        note = "created" if name in report.created else "exists"
        if partitions != settings.partitions:
            note += f" (settings ask for {settings.partitions})"
        table.add_row(name, str(partitions), note)
    console.print(table)


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Bring the PostgreSQL schema to the newest revision (idempotent)."""
    from pipeline.db.migrate import migrate

    settings = settings_of(ctx)
    setup_logging(settings, "migrate")
    before, after = migrate(settings)
    if before == after:
        console.print(f"database schema already at {after}")
    else:
        console.print(f"database schema: {before or 'empty'} -> {after}")


# --- producers --------------------------------------------------------------------------------


@produce_app.command("replay")
def produce_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="tick CSV")],
    speed: Annotated[str, typer.Option(help="max, realtime or <N>x")] = "max",
    frame_size: Annotated[int | None, typer.Option(min=1, help="ticks per message")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Publish a tick CSV (symbol,ts_ms,bid,ask,volume) in file order, framed per symbol."""
    from producers.csv_ticks import CsvHeaderError, count_symbols
    from producers.replay import parse_speed, replay_csv

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        factor = parse_speed(speed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--speed") from None
    _ensure_topics(settings)
    _refused_at_start(settings, count_symbols(file), "ticks")
    try:
        report = replay_csv(settings, file, speed=factor, frame_size=frame_size,
                            progress=progress)
    except CsvHeaderError as exc:
        err_console.print(f"[red]fxstream:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"replayed {report.ticks} ticks in {report.messages} messages from "
                  f"{report.rows} rows in {report.seconds:.1f} s; {report.bad_rows} bad rows "
                  f"sent to {settings.topics.dead_letter}")
    _refused_in_summary(report.refused, "ticks")


def synthetic_span(duration_s: float | None, count: int | None) -> float | None:
    """The seconds a synthetic producer runs: as given (0: without end), else 60 s, or
    until ``count`` when a count is given (which a default span must not cut short)."""
    if duration_s is None:
        return None if count is not None else 60.0
    return duration_s or None


@produce_app.command("synthetic")
def produce_synthetic(
    ctx: typer.Context,
    symbols: Annotated[str, typer.Option(help="comma-separated; default: the settings' list")] = "",
    rate: Annotated[float, typer.Option(min=0.001, help="ticks per second, all symbols")] = 1000,
    duration: Annotated[float | None, typer.Option(
        min=0, help="seconds; 0 = until interrupted; default 60, or none with --count")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="stop after this many ticks")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same ticks")] = 0,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="do not pace to --rate")] = False,
    frame_size: Annotated[int | None, typer.Option(min=1, help="ticks per message")] = None,
) -> None:
    """Publish realistic generated ticks (random-walk mids, real pip sizes, bursty arrivals)."""
    from pipeline.symbols import SymbolError, normalize_symbol
    from producers.synthetic_run import run_synthetic

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        names = [normalize_symbol(s) for s in symbols.split(",") if s.strip()] or list(
            settings.symbols)
    except SymbolError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols") from None
    _ensure_topics(settings)
    _refused_at_start(settings, names, "ticks")
    report = run_synthetic(settings, names, rate=rate,
                           duration_s=synthetic_span(duration, count), count=count, seed=seed,
                           paced=not max_speed, frame_size=frame_size,
                           live_time=not max_speed)
    console.print(f"published {report.ticks} ticks in {report.messages} messages in "
                  f"{report.seconds:.1f} s ({report.ticks / max(report.seconds, 1e-9):,.0f}/s)")
    _refused_in_summary(report.refused, "ticks")


@produce_app.command("dom-replay")
def produce_dom_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="book snapshots, one JSON object per line")],
    speed: Annotated[str, typer.Option(help="max, realtime or <N>x")] = "max",
    frame_size: Annotated[int | None, typer.Option(min=1, help="snapshots per message")] = None,
) -> None:
    """Publish recorded book snapshots (JSON lines) in file order, framed per symbol."""
    from producers.dom_replay import count_symbols, replay_dom
    from producers.replay import parse_speed

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        factor = parse_speed(speed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--speed") from None
    _ensure_topics(settings)
    _refused_at_start(settings, count_symbols(file), "snapshots")
    report = replay_dom(settings, file, speed=factor, frame_size=frame_size)
    console.print(f"replayed {report.snapshots} snapshots in {report.messages} messages from "
                  f"{report.lines} lines in {report.seconds:.1f} s; {report.rejected} rejected "
                  f"to {settings.topics.dead_letter}")
    _refused_in_summary(report.refused, "snapshots")


@produce_app.command("dom-synthetic")
def produce_dom_synthetic(
    ctx: typer.Context,
    symbols: Annotated[str, typer.Option(help="comma-separated; default: the settings' list")] = "",
    rate: Annotated[float, typer.Option(min=0.001, help="snapshots per second, all symbols")
                    ] = 200,
    duration: Annotated[float | None, typer.Option(
        min=0, help="seconds; 0 = until interrupted; default 60, or none with --count")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same books (and the ticks' path)")] = 0,
    levels: Annotated[int, typer.Option(min=1, help="most levels per side")] = 10,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="do not pace to --rate")] = False,
    frame_size: Annotated[int | None, typer.Option(min=1, help="snapshots per message")] = None,
) -> None:
    """Publish generated books whose best bid and ask follow the synthetic ticks' path."""
    from pipeline.symbols import SymbolError, normalize_symbol
    from producers.synthetic_book import run_synthetic_books

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        names = [normalize_symbol(s) for s in symbols.split(",") if s.strip()] or list(
            settings.symbols)
    except SymbolError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols") from None
    _ensure_topics(settings)
    _refused_at_start(settings, names, "snapshots")
    report = run_synthetic_books(settings, names, rate=rate,
                                 duration_s=synthetic_span(duration, count),
                                 count=count, seed=seed, paced=not max_speed,
                                 frame_size=frame_size, live_time=not max_speed, levels=levels)
    console.print(f"published {report.snapshots} snapshots in {report.messages} messages in "
                  f"{report.seconds:.1f} s")
    _refused_in_summary(report.refused, "snapshots")


@produce_app.command("sentiment-replay")
def produce_sentiment_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=(
        "positioning CSV: symbol,ts_ms,provider,long_pct,short_pct,total_traders,confidence"))],
    speed: Annotated[str, typer.Option(help="max, realtime or <N>x")] = "max",
    frame_size: Annotated[int | None, typer.Option(min=1, help="observations per message")
                          ] = None,
) -> None:
    """Publish recorded positioning observations (CSV) in file order, framed per symbol."""
    from producers.csv_ticks import count_symbols
    from producers.replay import parse_speed
    from producers.sentiment_replay import CsvHeaderError, replay_sentiment

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        factor = parse_speed(speed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--speed") from None
    _ensure_topics(settings)
    _refused_at_start(settings, count_symbols(file), "observations")
    try:
        report = replay_sentiment(settings, file, speed=factor, frame_size=frame_size)
    except CsvHeaderError as exc:
        err_console.print(f"[red]fxstream:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"replayed {report.observations} observations in {report.messages} "
                  f"messages from {report.lines} lines in {report.seconds:.1f} s; "
                  f"{report.rejected} rejected to {settings.topics.dead_letter}")
    _refused_in_summary(report.refused, "observations")


@produce_app.command("sentiment-synthetic")
def produce_sentiment_synthetic(
    ctx: typer.Context,
    symbols: Annotated[str, typer.Option(help="comma-separated; default: the settings' list")] = "",
    interval: Annotated[float, typer.Option(min=0.001, help="seconds between a provider's "
                                                            "observations of a symbol")] = 30,
    providers: Annotated[str, typer.Option(help="comma-separated provider names")] = "synthetic",
    duration: Annotated[float, typer.Option(min=0, help="seconds; 0 = until interrupted")] = 0,
    count: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same feed")] = 0,
    max_speed: Annotated[bool, typer.Option("--max-speed", help="do not pace to event time")
                         ] = False,
) -> None:
    """Publish a generated positioning feed (mean-reverting long_pct with crowding episodes)."""
    from pipeline.core.ticks import valid_provider
    from pipeline.symbols import SymbolError, normalize_symbol
    from producers.synthetic_sentiment import run_synthetic_sentiment

    settings = settings_of(ctx)
    setup_logging(settings, "producer")
    try:
        names = [normalize_symbol(s) for s in symbols.split(",") if s.strip()] or list(
            settings.symbols)
    except SymbolError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols") from None
    provider_names = [p.strip() for p in providers.split(",") if p.strip()]
    if not provider_names or not all(valid_provider(p) for p in provider_names):
        raise typer.BadParameter(f"{providers!r}: 1 to 64 characters each, no control "
                                 "characters", param_hint="--providers")
    _ensure_topics(settings)
    _refused_at_start(settings, names, "observations")
    report = run_synthetic_sentiment(settings, names, interval_s=interval,
                                     duration_s=duration or None, count=count, seed=seed,
                                     paced=not max_speed, live_time=not max_speed,
                                     providers=provider_names)
    console.print(f"published {report.observations} observations in {report.messages} "
                  f"messages in {report.seconds:.1f} s")
    _refused_in_summary(report.refused, "observations")


@produce_app.command("ctrader")
def produce_ctrader(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option(min=0, help="seconds; 0 = until interrupted")] = 0,
) -> None:
    """Stream spots (ticks) and depth (DOM snapshots) from the cTrader Open API.

    Credentials: CTRADER_CLIENT_ID, CTRADER_CLIENT_SECRET, CTRADER_ACCESS_TOKEN and
    CTRADER_REFRESH_TOKEN in the environment, or FXSTREAM_CTRADER_SECRETS_FILE."""
    from producers.ctrader.credentials import CredentialsError, load_credentials
    from producers.ctrader.run import CtraderFatal, run_ctrader
    from producers.kafka_io import DeliveryError

    settings = settings_of(ctx)
    redactor = setup_logging(settings, "producer")
    try:
        credentials = load_credentials(settings.ctrader_secrets_file)
    except CredentialsError as exc:
        err_console.print(f"[red]fxstream:[/red] {redactor(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    redactor.watch(credentials.secrets)  # refreshed tokens included
    _ensure_topics(settings)
    try:
        report = run_ctrader(settings, credentials, duration_s=duration or None)
    except (CtraderFatal, DeliveryError) as exc:
        err_console.print(f"[red]fxstream:[/red] {redactor(str(exc))}", highlight=False)
        raise typer.Exit(3) from None
    console.print(f"published {report.ticks} ticks and {report.snapshots} DOM snapshots in "
                  f"{report.seconds:.1f} s over {report.connections} connections "
                  f"({report.refreshes} token refreshes)")


@app.command("ctrader-sim")
def ctrader_sim(
    ctx: typer.Context,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="certificate, credentials.env, endpoint.env, sent.csv; "
                      "default <state dir>/ctrader-sim")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 = any free port")] = 5035,
    symbols: Annotated[str, typer.Option(help="streamed symbols; default: the settings'")] = "",
    rate: Annotated[float, typer.Option(min=0.001, help="ticks per second, all symbols")] = 200,
    seed: Annotated[int, typer.Option(help="same seed, same ticks")] = 0,
    historic: Annotated[bool, typer.Option(
        "--historic", help="event time from 2024-01-08 instead of the wall clock")] = False,
    count: Annotated[int | None, typer.Option(min=1, help="stop streaming after N ticks")] = None,
    token_ttl: Annotated[float, typer.Option(min=0.1, help="access token lifetime, s")] = 3600,
    depth: Annotated[bool, typer.Option(help="stream depth quotes")] = True,
    drop_after: Annotated[list[int] | None, typer.Option(
        help="close every connection after N spot events in all (repeatable)")] = None,
    slow_accepts: Annotated[int, typer.Option(min=0, help="first N connections wait "
                                              "--accept-delay before the handshake")] = 0,
    accept_delay: Annotated[float, typer.Option(min=0, help="seconds")] = 0,
    fail: Annotated[list[str] | None, typer.Option(
        help="MESSAGE=CODE[:N]: answer the first N (1) such requests with that error "
             "code (repeatable)")] = None,
    max_requests_per_s: Annotated[int, typer.Option(min=1)] = 50,
    max_history_requests_per_s: Annotated[int | None, typer.Option(
        min=1, help="refuse more historical requests a second (Spotware: 5)")] = None,
    tick_history_from: Annotated[str | None, typer.Option(
        help="no tick data before this instant (UTC date or time, or epoch ms)")] = None,
) -> None:
    """A local cTrader Open API server (TLS, auth with expiring tokens, symbols, spots,
    depth, history) driven by the synthetic generator. SIGUSR1 drops every connection."""
    from pipeline.gaps import parse_instant
    from pipeline.symbols import SymbolError, normalize_symbol
    from simulators.ctrader.server import SimConfig, run_simulator

    settings = settings_of(ctx)
    setup_logging(settings, "ctrader-sim")
    try:
        names = tuple(normalize_symbol(s) for s in symbols.split(",") if s.strip()) or tuple(
            settings.symbols)
    except SymbolError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols") from None
    failures: dict[str, tuple[str, int]] = {}
    for item in fail or []:
        name, _, rest = item.partition("=")
        code, _, times = rest.partition(":")
        if not name or not code or (times and not times.isdigit()):
            raise typer.BadParameter(f"{item!r} is not MESSAGE=CODE[:N]", param_hint="--fail")
        failures[name.strip()] = (code.strip(), int(times or 1))
    run_simulator(SimConfig(
        directory=(directory or settings.state_dir / "ctrader-sim").resolve(), host=host,
        port=port, symbols=names, rate=rate, seed=seed, live_time=not historic, count=count,
        token_ttl_s=token_ttl, depth=depth, drop_after=tuple(drop_after or ()),
        slow_accepts=slow_accepts, accept_delay_s=accept_delay, fail=failures,
        max_requests_per_s=max_requests_per_s,
        max_history_requests_per_s=max_history_requests_per_s,
        tick_history_from_ms=parse_instant(tick_history_from) if tick_history_from else 0))


def _refused_at_start(settings: Settings, symbols: list[str] | dict[str, int], what: str
                      ) -> None:
    """Say, before anything is published, which symbols the worker will refuse:
    ``symbols`` are the names a generator will produce, or a file's counts per symbol."""
    from pipeline.symbols import not_accepted, refusal_note, refused_counts

    refused = (refused_counts(symbols, settings.symbols) if isinstance(symbols, dict)
               else not_accepted(symbols, settings.symbols))
    if refused:
        err_console.print(f"[yellow]fxstream:[/yellow] {refusal_note(refused, what)}",
                          highlight=False)


def _refused_in_summary(refused: dict[str, int], what: str) -> None:
    from pipeline.symbols import refusal_note

    if refused:
        console.print(refusal_note(refused, what), highlight=False)


def _ensure_topics(settings: Settings) -> None:
    from pipeline.topics import create_topics

    create_topics(settings.require_connections())


# --- worker, sink, status ------------------------------------------------------------------------


MetricsPortOption = Annotated[int | None, typer.Option(
    min=0, max=65535, help="port of /metrics, /healthz and /readyz (0: none; default "
    "FXSTREAM_METRICS_PORT, else 9464 for the worker, 9465 for the sink)")]


def with_metrics_port(settings: Settings, port: int | None) -> Settings:
    return settings if port is None else settings.model_copy(update={"metrics_port": port})


@app.command("worker")
def worker(ctx: typer.Context, metrics_port: MetricsPortOption = None) -> None:
    """Run the Faust worker (candle agent). Scale out by starting more with the same settings."""
    from pipeline.runtime.run import run_worker

    settings = with_metrics_port(settings_of(ctx).require_connections(), metrics_port)
    setup_logging(settings, "worker")
    run_worker(settings)


@app.command("sink")
def sink(
    ctx: typer.Context,
    table: Annotated[str, typer.Option(
        help="comma-separated tables to write: market_data_candles, dom_metrics, "
             "market_depth, sentiment_metrics, sentiment_data, or all")
    ] = "market_data_candles",
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run the PostgreSQL sinks of the chosen tables (candles by default), several on
    threads of one process. Scale out by starting more."""
    from consumers.sinks import parse_tables, run_sinks

    try:
        tables = parse_tables(table)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--table") from None
    settings = with_metrics_port(settings_of(ctx).require_connections(), metrics_port)
    setup_logging(settings, "sink")
    for name, stats in run_sinks(settings, tables).items():
        prefix = "sink" if len(tables) == 1 else f"{name} sink"
        console.print(f"{prefix} stopped: {stats.rows} rows in {stats.batches} batches")


@app.command("status")
def status(ctx: typer.Context) -> None:
    """The worker and sink processes of this state directory and what they wait for,
    what they counted and their per-partition lag (from their /metrics; from Kafka for
    a group no running process reports), and the newest bar per symbol."""
    from datetime import UTC, datetime

    from confluent_kafka import KafkaException

    from pipeline.monitor import group_lag, newest_bars
    from pipeline.observability.scrape import endpoints, lag_rows, scrape_all, throughput
    from pipeline.process_status import read_statuses

    settings = settings_of(ctx).require_connections()
    statuses = read_statuses(settings.state_dir)
    scrapes = scrape_all(endpoints(statuses))
    procs = Table(title=f"processes ({settings.state_dir / 'status'})")
    for col in ("service", "pid", "state", "waiting for", "since (UTC)", "detail"):
        procs.add_column(col)
    for rec in statuses:
        since = datetime.fromtimestamp(rec.get("at_ms", 0) / 1000, UTC).strftime("%H:%M:%S")
        procs.add_row(rec.get("service", "?"), str(rec.get("pid", "")), rec["state"],
                      rec.get("waiting_for", ""), since, redact(str(rec.get("error", "")))[:80])
    console.print(procs)
    _print_throughput([row for url, samples in scrapes.items()
                       for row in throughput(url, samples)])
    from_metrics = lag_rows(scrapes.values())
    if from_metrics:
        table = Table(title="lag per partition (the processes' /metrics)")
        for col in ("group", "topic", "partition", "lag"):
            table.add_column(col, justify="right" if col in ("partition", "lag") else "left")
        for r in from_metrics:
            table.add_row(r.group, r.topic, str(r.partition), str(r.lag))
        console.print(table)
    reported = {(r.group, r.topic) for r in from_metrics}
    for group, topic, always in _status_groups(settings):
        if (group, topic) in reported:
            continue  # shown above
        try:
            lags = group_lag(settings, group, topic)
        except KafkaException as exc:
            err_console.print(f"[red]Kafka at {settings.kafka_bootstrap} did not answer:[/red] "
                              f"{redact(str(exc.args[0]))}", highlight=False)
            break
        if not always and not any(row.committed for row in lags):
            continue  # a stream nothing has consumed yet (e.g. no DOM producer runs)
        table = Table(title=f"group {group} on {topic}")
        for col in ("partition", "committed", "end", "lag"):
            table.add_column(col, justify="right")
        for row in lags:
            table.add_row(str(row.partition), str(row.committed), str(row.end), str(row.lag))
        console.print(table)
    bars = Table(title="newest bar per symbol (1m)")
    for col in ("symbol", "open time (UTC)", "open", "high", "low", "close", "ticks",
                "complete"):
        bars.add_column(col)
    try:
        newest = newest_bars(settings)
    except Exception as exc:  # psycopg's errors: unreachable, or no schema yet
        err_console.print(f"[red]PostgreSQL did not answer:[/red] "
                          f"{redact(' '.join(str(exc).split()))}",
                          highlight=False)
        return
    for b in newest:
        bars.add_row(b["symbol"], b["opened"], *(f"{b[k]:.5f}" for k in
                     ("open", "high", "low", "close")), str(b["tick_volume"]), str(b["complete"]))
    console.print(bars)


def _print_throughput(rows: list[Throughput]) -> None:
    """What each agent and table counted since its process started (pipeline.observability)."""
    if not rows:
        return
    table = Table(title="counted since start (the processes' /metrics)")
    for col in ("process", "agent or table", "records in", "records or rows out",
                "dead letters"):
        table.add_column(col, justify="left" if col in ("process", "agent or table") else
                          "right")
    for r in rows:
        table.add_row(f"{r.kind} {r.url.removeprefix('http://')}", r.name, f"{r.records_in:,}",
                      f"{r.records_out:,}", f"{r.dead_letters:,}")
    console.print(table)


def _status_groups(settings: Settings) -> list[tuple[str, str, bool]]:
    """(group, topic, shown even before it commits): the worker group on each source
    topic, and each table's sink group on its topic."""
    from consumers.sinks import SINKS, sink_settings

    topics = settings.topics
    out = [(settings.worker_group, topics.ticks, True),
           (settings.worker_group, topics.dom, False),
           (settings.worker_group, topics.sentiment, False)]
    for table, (sink_spec, _) in SINKS.items():
        out.append((sink_settings(table, settings).sink_group,
                    getattr(settings.topics, sink_spec.topic), table == "market_data_candles"))
    return out


@app.command("bench")
def bench(
    ctx: typer.Context,
    ticks: Annotated[int, typer.Option(min=1000, help="synthetic ticks")] = 1_000_000,
    symbols: Annotated[int, typer.Option(min=1, help="symbols")] = 28,
    frame_size: Annotated[int, typer.Option(min=1, help="ticks per message")] = 500,
    seed: Annotated[int, typer.Option(help="generator seed")] = 1,
    skip: Annotated[str, typer.Option(
        help="comma-separated steps to leave out: core (produce, bare consumer, agent, sink, "
             "end to end), dom, latency, ceiling (the latency step with the fold on a plain "
             "librdkafka loop: no Faust, no changelog), quix, oldstyle, scale, failover, "
             "sentiment")] = "",
    only: Annotated[str, typer.Option(
        help="comma-separated steps to run, the others left out (same names as --skip)")] = "",
    latency_runs: Annotated[int, typer.Option(min=1, help="latency runs, each on fresh "
                                                         "topics and database")] = 5,
    latency_seconds: Annotated[float, typer.Option(min=1, help="seconds per latency run")] = 30,
    latency_rate: Annotated[float, typer.Option(min=1, help="latency: ticks/s")] = 5000,
    scale_ticks: Annotated[int, typer.Option(
        min=1000, help="ticks per scale run, produced while the workers run")] = 500_000,
    backlog_ticks: Annotated[int, typer.Option(
        min=1000, help="scale: the backlog that 1, 2 and 4 workers drain")] = 2_000_000,
    failover_timeouts: Annotated[str, typer.Option(
        help="failover: comma-separated session timeouts (s), one run each; the broker's "
             "group.min.session.timeout.ms is the floor")] = "10,6",
    failover_rate: Annotated[float, typer.Option(min=1, help="failover: ticks/s")] = 5000,
    failover_settle: Annotated[float, typer.Option(
        min=1, help="failover: seconds of steady load before the kill")] = 8,
) -> None:
    """Measure fxstream beside its ceilings and peers on the running stack (`fxstream stack
    up` first); prints one JSON document, appends it to bench/results.jsonl and draws
    bench/chart.png."""
    import orjson

    from bench.chart import draw
    from bench.harness import STEPS, broker_min_session_timeout_s, run_all

    def names(value: str, option: str) -> frozenset[str]:
        out = frozenset(x.strip() for x in value.split(",") if x.strip())
        if out - set(STEPS):
            raise typer.BadParameter(f"unknown steps {', '.join(sorted(out - set(STEPS)))}; "
                                     f"the steps are {', '.join(STEPS)}", param_hint=option)
        return out

    left_out = names(skip, "--skip")
    if only:
        left_out |= frozenset(STEPS) - names(only, "--only")
    try:
        timeouts = tuple(float(x) for x in failover_timeouts.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(failover_timeouts, param_hint="--failover-timeouts") from None
    settings = settings_of(ctx).require_connections()
    if "failover" not in left_out:
        floor = broker_min_session_timeout_s(settings)
        if any(t < floor for t in timeouts):
            raise typer.BadParameter(f"{failover_timeouts}: the broker's group.min.session."
                                     f"timeout.ms is {floor:g} s", param_hint="--failover-timeouts")
    setup_logging(settings.model_copy(update={"log_level": "WARNING"}), "bench")
    workdir = (settings.state_dir / "bench").resolve()
    result = run_all(settings, ticks=ticks, symbol_count=symbols, frame_size=frame_size,
                     seed=seed, workdir=workdir, log=lambda m: err_console.print(m),
                     latency_rate=latency_rate, latency_s=latency_seconds,
                     latency_runs=latency_runs, scale_ticks=scale_ticks,
                     backlog_ticks=backlog_ticks,
                     failover_rate=failover_rate, failover_timeouts=timeouts,
                     failover_settle_s=failover_settle, skip=left_out)
    chart = draw(result)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    err_console.print(f"chart: {chart}")


@app.command("demo")
def demo(
    ctx: typer.Context,
    rate: Annotated[float, typer.Option(min=1, help="synthetic ticks per second")] = 2000,
    symbols: Annotated[int, typer.Option(min=1, max=30, help="how many symbols")] = 8,
    duration: Annotated[float, typer.Option(min=0, help="seconds; 0 = until Ctrl-C")] = 0,
    source: Annotated[str, typer.Option(
        help="synthetic, or ctrader-sim: the cTrader producer reading the local simulator")
    ] = "synthetic",
) -> None:
    """The main job on the embedded stack: synthetic ticks -> worker -> sink -> PostgreSQL,
    with a live view of forming and closed bars, until interrupted."""
    from pipeline.demo import run_demo

    if source not in ("synthetic", "ctrader-sim"):
        raise typer.BadParameter(f"{source!r} is not synthetic or ctrader-sim",
                                 param_hint="--source")
    stack_up(ctx)
    settings = settings_of(ctx).require_connections()
    setup_logging(settings, "demo")
    run_demo(settings, rate=rate, symbol_count=symbols, console=console, duration_s=duration,
             source=source)


# --- gaps and backfill --------------------------------------------------------------------------

SymbolsOption = Annotated[str | None, typer.Option(
    "--symbols", help="comma-separated; default: the configured symbols")]
FromOption = Annotated[str, typer.Option(
    "--from", help="UTC: 2024-03-04, 2024-03-04T10:30, or epoch ms (an offset may be given)")]
ToOption = Annotated[str | None, typer.Option("--to", help="like --from; default: now")]


@app.command("gaps")
def gaps(
    ctx: typer.Context, from_: FromOption, to: ToOption = None, symbols: SymbolsOption = None,
    timeframe: Annotated[str, typer.Option(help="bar timeframe to check")] = "1m",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Missing bars in PostgreSQL, as ranges, outside the FX weekend and the holidays."""
    from pipeline.gaps_cli import show_gaps

    show_gaps(settings_of(ctx).require_connections(), symbols, timeframe, from_, to, as_json,
              console)


@app.command("backfill")
def backfill(
    ctx: typer.Context, from_: FromOption, to: ToOption = None, symbols: SymbolsOption = None,
    gaps_only: Annotated[bool, typer.Option(
        "--gaps-only", help="only the gaps `fxstream gaps` finds, for every timeframe")] = False,
    timeframes: Annotated[str | None, typer.Option(
        help="comma-separated; default: the configured timeframes")] = None,
) -> None:
    """Fill bars from cTrader history (tick data, else M1 trendbars), resumably.

    Credentials as for `fxstream produce ctrader`."""
    from pipeline.gaps_cli import run_backfill_command

    redactor = setup_logging(settings_of(ctx), "backfill")
    code = run_backfill_command(settings_of(ctx).require_connections(), symbols, from_, to,
                                gaps_only, timeframes, console, err_console, redactor)
    if code:
        raise typer.Exit(code)


def main() -> None:
    from pipeline.db.migrate import DatabaseError

    try:
        app()
    except (SettingsError, StackError, DatabaseError, ConnectionError) as exc:
        err_console.print(f"[red]fxstream:[/red] {redact(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        # Python's own handler would print the traceback as it is; error texts of
        # libraries may hold a connection string.
        import traceback

        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)


if __name__ == "__main__":
    main()
