"""cTrader credentials: from the environment or a secrets file, never from settings.

The settings object is written to YAML files and logs; credentials are not settings.
They come from ``CTRADER_CLIENT_ID``, ``CTRADER_CLIENT_SECRET``, ``CTRADER_ACCESS_TOKEN``
and ``CTRADER_REFRESH_TOKEN`` in the environment, or from the secrets file the settings
name (``FXSTREAM_CTRADER_SECRETS_FILE``: ``KEY=VALUE`` lines with those keys); the
environment wins per key. Values are held in ``Secret``, whose repr and str hide them.

A refresh token works once. When the access token is refreshed, the new pair is written
back to the secrets file (mode 0600, replaced atomically), so the next start uses it;
when the credentials came from the environment it is kept in memory only, and the log
says so (without the token).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.private_files import write_private
from pipeline.redact import redact

KEYS = ("CTRADER_CLIENT_ID", "CTRADER_CLIENT_SECRET", "CTRADER_ACCESS_TOKEN",
        "CTRADER_REFRESH_TOKEN")
REQUIRED = KEYS[:3]


class CredentialsError(ValueError):
    """Credentials missing or unreadable; the message names keys and files, never values."""


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass
class Credentials:
    client_id: Secret
    client_secret: Secret
    access_token: Secret
    refresh_token: Secret
    source: Path | None  # the secrets file, when the tokens came from one

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing text that might echo one."""
        return [s.reveal() for s in (self.client_id, self.client_secret, self.access_token,
                                     self.refresh_token) if s]

    def scrub(self, text: str) -> str:
        return redact(text, self.secrets())


def read_secrets_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CredentialsError(f"secrets file {str(path)!r} cannot be read: "
                               f"{exc.strerror or type(exc).__name__}") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if key in KEYS:
            out[key] = value.strip().strip("'\"")
    return out


def load_credentials(secrets_file: Path | None, env: Mapping[str, str] | None = None
                     ) -> Credentials:
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    if secrets_file is not None:
        values.update(read_secrets_file(secrets_file))
    from_env = {k: env[k].strip() for k in KEYS if env.get(k, "").strip()}
    values.update(from_env)
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        where = f"the environment or the secrets file {str(secrets_file)!r}" if secrets_file \
            else "the environment (or set FXSTREAM_CTRADER_SECRETS_FILE to a secrets file)"
        raise CredentialsError(f"cTrader credentials missing: {', '.join(missing)} not set in "
                               f"{where}")
    tokens_from_file = secrets_file is not None and not (
        {"CTRADER_ACCESS_TOKEN", "CTRADER_REFRESH_TOKEN"} & from_env.keys())
    return Credentials(Secret(values["CTRADER_CLIENT_ID"]),
                       Secret(values["CTRADER_CLIENT_SECRET"]),
                       Secret(values["CTRADER_ACCESS_TOKEN"]),
                       Secret(values.get("CTRADER_REFRESH_TOKEN", "")),
                       secrets_file if tokens_from_file else None)


def store_tokens(credentials: Credentials, access_token: str, refresh_token: str) -> bool:
    """Take a refreshed token pair; write it back to the secrets file when the tokens came
    from one. Returns whether it was written."""
    credentials.access_token = Secret(access_token)
    credentials.refresh_token = Secret(refresh_token)
    path = credentials.source
    if path is None:
        return False
    lines = path.read_text().splitlines() if path.exists() else []
    wanted = {"CTRADER_ACCESS_TOKEN": access_token, "CTRADER_REFRESH_TOKEN": refresh_token}
    out: list[str] = []
    for line in lines:
        key = line.partition("=")[0].strip().removeprefix("export ").strip()
        if key in wanted:
            out.append(f"{key}={wanted.pop(key)}")
        else:
            out.append(line)
    out.extend(f"{k}={v}" for k, v in wanted.items())
    write_private(path, "\n".join(out) + "\n")
    return True


class ScrubSecrets(logging.Filter):
    """Replaces any credential that a log line would show (a server echoing a token back,
    say) with ``***``."""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self.credentials = credentials

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self.credentials.scrub(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True
