"""The embedded stack: a real Kafka broker and a real PostgreSQL server, started by fxstream.

``up`` writes the connection settings to ``<state_dir>/connection.env`` (mode 0600:
DATABASE_URL carries PostgreSQL's password), where every other fxstream command finds
them. When KAFKA_BOOTSTRAP and DATABASE_URL are set in the environment, commands use
those servers and start nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.private_files import write_private
from pipeline.redact import redact, url_secrets
from pipeline.stack.kafka import EmbeddedKafka, describe_broker_version
from pipeline.stack.postgres import EmbeddedPostgres
from pipeline.stack.process import StackError

__all__ = ["EmbeddedStack", "ServerVersions", "StackError", "server_versions"]


@dataclass(frozen=True)
class ServerVersions:
    kafka: str
    postgres: str


@dataclass(frozen=True)
class EmbeddedStack:
    state_dir: Path
    kafka_port: int
    postgres_port: int

    @property
    def kafka(self) -> EmbeddedKafka:
        return EmbeddedKafka(self.state_dir, self.kafka_port)

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.state_dir, self.postgres_port)

    @property
    def connection_file(self) -> Path:
        return self.state_dir / "connection.env"

    def up(self) -> dict[str, bool]:
        """Start both servers (each only if not already running) and write the connection file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        gitignore = self.state_dir / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*\n")
        started = {"postgres": self.postgres.start()}
        try:
            started["kafka"] = self.kafka.start()
        except Exception:
            if started["postgres"]:
                self.postgres.stop()
            raise
        # DATABASE_URL carries PostgreSQL's password: mode 0600.
        write_private(self.connection_file,
                      "# written by `fxstream stack up`; removed by `fxstream stack down`\n"
                      f"KAFKA_BOOTSTRAP={self.kafka.bootstrap}\n"
                      f"DATABASE_URL={self.postgres.url}\n")
        return started

    def down(self) -> dict[str, bool]:
        stopped = {"kafka": self.kafka.stop(), "postgres": self.postgres.stop()}
        self.connection_file.unlink(missing_ok=True)
        return stopped

    def running(self) -> dict[str, bool]:
        return {"kafka": self.kafka.pid() is not None and self.kafka.healthy(),
                "postgres": self.postgres.running()}


def server_versions(kafka_bootstrap: str, database_url: str, state_dir: Path) -> ServerVersions:
    """The versions as the servers themselves report them (admin API; SQL)."""
    import psycopg

    kafka_version = describe_broker_version(EmbeddedKafka(state_dir, 0), kafka_bootstrap)
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        raise StackError(redact(f"PostgreSQL at {database_url} did not answer: {exc}",
                                url_secrets(database_url))) from None
    postgres = f"PostgreSQL {row[0]}" if row else "unknown"
    return ServerVersions(kafka=kafka_version, postgres=postgres)
