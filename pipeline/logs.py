"""Logging for every fxstream process, configured in one place.

One handler on the root logger, to stderr, in the format the settings ask for
(``log_format``): ``human`` lines, or ``json`` lines with ``time``, ``level``,
``logger``, ``message``, ``service`` and, when the log call passes them in ``extra``,
``partition`` and ``symbol``. Every record goes through a redacting filter on that
handler (pipeline.redact), whichever logger wrote it: fxstream's, Faust's, aiokafka's,
Alembic's. The worker tells Faust not to install its own handlers
(pipeline.runtime.run), so its lines follow the same format.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.redact import Redactor, url_secrets
from pipeline.settings import Settings

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes a log call may set through ``extra`` that the JSON lines carry.
CONTEXT_FIELDS = ("partition", "symbol")
# Libraries whose INFO lines say nothing a user acts on ("Context impl PostgresqlImpl"):
# shown from WARNING unless the log level is DEBUG.
QUIET_BELOW_WARNING = ("alembic",)


class RedactingFilter(logging.Filter):
    """Masks secrets in the message, its arguments and the traceback of every record."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self.redactor(text)
        if clean != text or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


def _iso_utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def known_secrets(settings: Settings) -> list[str]:
    """The secrets the settings carry: the database password, when the URL has one."""
    return url_secrets(settings.database_url)


def setup_logging(settings: Settings, service: str = "fxstream", secrets: Iterable[str] = ()
                  ) -> Redactor:
    """Configure the root logger for this process; returns the redactor its filter uses,
    to which a command adds secrets it learns later (cTrader credentials)."""
    redactor = Redactor([*known_secrets(settings), *secrets])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if settings.log_format == "json"
                         else logging.Formatter(HUMAN_FORMAT))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in QUIET_BELOW_WARNING:
        logging.getLogger(name).setLevel(
            logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    return redactor
