"""The `fxstream` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.stack import EmbeddedStack, StackError, server_versions

app = typer.Typer(help="fxstream: FX ticks in, candles out, through Kafka and PostgreSQL.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
stack_app = typer.Typer(help="The embedded stack: a real Kafka broker and PostgreSQL server.",
                        no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="PostgreSQL schema.", no_args_is_help=True)
produce_app = typer.Typer(help="Publish ticks to the raw tick topic.", no_args_is_help=True)
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


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    table.add_row("PostgreSQL", _redact(settings.database_url), versions.postgres)
    console.print(table)


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


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

    before, after = migrate(settings_of(ctx))
    if before == after:
        console.print(f"database schema already at {after}")
    else:
        console.print(f"database schema: {before or 'empty'} -> {after}")


@app.command("demo")
def demo(ctx: typer.Context) -> None:
    """Bring the embedded stack up, create topics, migrate, and show it healthy."""
    stack_up(ctx)
    stack_status(ctx)


def main() -> None:
    from pipeline.db.migrate import DatabaseError

    try:
        app()
    except (SettingsError, StackError, DatabaseError, ConnectionError) as exc:
        err_console.print(f"[red]fxstream:[/red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
