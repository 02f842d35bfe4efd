"""Run the Alembic migrations to head, safely from several processes at once."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pipeline.redact import redact, url_secrets
from pipeline.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every fxstream process.
_ADVISORY_LOCK_KEY = 0x66787374  # "fxst"


class DatabaseError(RuntimeError):
    """PostgreSQL refused or is unreachable; the message says which and where."""


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def migrate(settings: Settings) -> tuple[str | None, str]:
    """Upgrade to head; returns (revision before, revision after). Idempotent."""
    engine = sa.create_engine(settings.require_connections().sqlalchemy_url,
                              connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                cfg = _config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                conn.commit()
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            redact(f"PostgreSQL at {settings.database_url} is unreachable: {exc.orig}",
                   url_secrets(settings.database_url))
        ) from None
    finally:
        engine.dispose()
    return before, after or head_revision()
