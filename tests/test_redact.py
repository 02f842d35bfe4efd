"""Redaction, the log formats, the producers' symbol notes and the demo's parting note,
without servers."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from pipeline.core.deadletters import dead_letter
from pipeline.demo import stack_still_running
from pipeline.logs import JsonFormatter, RedactingFilter, setup_logging
from pipeline.process_status import read_statuses, write_status
from pipeline.redact import Redactor, redact, url_secrets
from pipeline.settings import Settings, SettingsError, load_settings, settings_yaml
from pipeline.symbols import count_refused, not_accepted, refusal_note, refused_counts
from producers.ctrader.credentials import Credentials, Secret

SECRET = "Pl4nted-s3cret-xyz"


@pytest.mark.parametrize("text", [
    f"PostgreSQL at postgresql://postgres:{SECRET}@127.0.0.1:5432/fx is unreachable",
    f"postgres://:{SECRET}@db/fx",
    f"host=db port=5432 password={SECRET} user=fx",
    f"host=db password='{SECRET}' user=fx",
    f"postgresql://fx@db/fx?sslmode=require&password={SECRET}",
    f"CTRADER_CLIENT_SECRET={SECRET}\nCTRADER_ACCESS_TOKEN=x",
    f'clientSecret: "{SECRET}"',
    f'{{"refreshToken": "{SECRET}", "n": 1}}',
    f"got {{'database_url': 'postgresql://u:{SECRET}@h/db', 'kafka_port': 1}}",
])
def test_patterns_mask_secrets_nobody_declared(text: str) -> None:
    clean = redact(text)
    assert SECRET not in clean
    assert "***" in clean


@pytest.mark.parametrize("text", [
    "OA_AUTH_TOKEN_EXPIRED: access token expired",
    'password authentication failed for user "postgres"',
    "published 5 ticks (2 token refreshes)",
    "postgresql://postgres@127.0.0.1:5432/fxstream",
    "kafka://127.0.0.1:9092",
])
def test_ordinary_text_stays(text: str) -> None:
    assert redact(text) == text


def test_known_values_are_masked_wherever_they_appear_also_percent_encoded() -> None:
    secret = "a/b c+d=e"
    text = f"server said: bad token {secret}; url part a%2Fb%20c%2Bd%3De"
    assert redact(text, [secret]) == "server said: bad token ***; url part ***"
    assert redact("abc", ["abc"]) == "abc"  # too short to mask without garbling text


def test_url_secrets() -> None:
    assert url_secrets(f"postgresql://u:{SECRET}@h/db") == [SECRET, SECRET]
    assert url_secrets("postgresql://u:a%40b@h/db") == ["a%40b", "a@b"]
    assert url_secrets(f"host=h password={SECRET}") == [SECRET]
    assert url_secrets("postgresql://u@h/db") == []


def test_redactor_follows_refreshed_credentials() -> None:
    creds = Credentials(Secret("client-id-1"), Secret("client-secret-1"),
                        Secret("access-token-1"), Secret("refresh-token-1"), None)
    redactor = Redactor(["db-password-1"])
    redactor.watch(creds.secrets)
    creds.access_token = Secret("access-token-2")
    text = "db-password-1 client-secret-1 access-token-2 refresh-token-1"
    assert redactor(text) == "*** *** *** ***"
    assert creds.scrub("token access-token-2 seen") == "token *** seen"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("fxstream.sink", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_service_partition_and_symbol_and_are_redacted() -> None:
    record = _record("waiting for %s", f"postgresql://u:{SECRET}@h/db", partition=3,
                     symbol="EUR/USD")
    assert RedactingFilter(Redactor()).filter(record)
    line = orjson.loads(JsonFormatter("sink").format(record))
    assert line["service"] == "sink" and line["logger"] == "fxstream.sink"
    assert line["level"] == "WARNING" and line["partition"] == 3
    assert line["symbol"] == "EUR/USD"
    assert line["message"] == "waiting for postgresql://u:***@h/db"
    assert line["time"].endswith("Z")
    plain = orjson.loads(JsonFormatter("worker").format(_record("no context")))
    assert "partition" not in plain and "symbol" not in plain


def test_tracebacks_are_redacted_too() -> None:
    try:
        raise ConnectionError(f"connect to postgresql://u:{SECRET}@h/db failed")
    except ConnectionError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    RedactingFilter(Redactor()).filter(record)
    assert SECRET not in logging.Formatter().format(record)
    assert SECRET not in JsonFormatter("worker").format(record)


def test_setup_logging_formats_every_logger_and_masks_the_database_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"postgresql://u:{SECRET}@h/db", log_format="json")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging(settings, "producer")
        # A third-party logger, with the password in a shape no pattern knows.
        logging.getLogger("aiokafka.conn").warning("echo %s", SECRET)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "echo ***" and line["service"] == "producer"


def test_settings_errors_never_echo_a_password(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"mysql://u:{SECRET}@h/db", "FXSTREAM_STATE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError) as exc:
        load_settings(env=env)
    assert "database_url" in str(exc.value) and SECRET not in str(exc.value)
    env = {"DATABASE_URL": f"postgresql://u:{SECRET}@h/db", "FXSTREAM_KAFKA_PORT": "20000",
           "FXSTREAM_POSTGRES_PORT": "20000", "FXSTREAM_STATE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError) as exc:  # a model-wide error echoes every value
        load_settings(env=env)
    assert "kafka_port" in str(exc.value) and SECRET not in str(exc.value)
    assert load_settings(env={"FXSTREAM_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings(env={"FXSTREAM_LOG_FORMAT": "xml"})


def test_child_settings_leave_the_embedded_password_in_the_connection_file() -> None:
    embedded = Settings(database_url=f"postgresql://u:{SECRET}@h/db", kafka_bootstrap="h:1")
    assert SECRET not in settings_yaml(embedded)
    external = embedded.model_copy(update={"external_stack": True})
    assert SECRET in settings_yaml(external)  # the user's own, passed on as given


def test_dead_letters_and_status_files_are_redacted(tmp_path: Path) -> None:
    record = dead_letter(reason="bad_row", detail=f"line 2: password={SECRET}", stage="producer",
                         topic="file:x.csv", partition=0, offset=2, index=None,
                         payload=f"postgresql://u:{SECRET}@h/db,1,2", symbol=None, now_ms=1)
    assert SECRET not in orjson.dumps(record).decode()
    write_status(tmp_path, "sink", "waiting", waiting_for="PostgreSQL",
                 error=f"connection to postgresql://u:{SECRET}@h/db failed")
    files = list((tmp_path / "status").iterdir())
    assert files and all(SECRET not in f.read_text() for f in files)
    assert "***" in read_statuses(tmp_path)[0]["error"]


def test_refusal_notes_count_symbols_and_name_the_setting() -> None:
    accepted = Settings().symbols
    counts = {"EUR/USD": 5, "US30": 3, "GER40": 7}
    refused = refused_counts(counts, accepted)
    assert refused == {"US30": 3, "GER40": 7}
    note = refusal_note(refused, "ticks")
    assert note.startswith("10 ticks of GER40 (7), US30 (3) will be refused")
    assert "unknown_symbol" in note and "FXSTREAM_SYMBOLS" in note
    assert not_accepted(["EUR/USD", "US30", "US30"], accepted) == ["US30"]
    assert refusal_note(["US30"], "ticks").startswith("the ticks of US30 will be refused")
    seen: dict[str, int] = {}
    for symbol in ("EUR/USD", "US30", "US30"):
        count_refused(seen, symbol, frozenset(accepted))
    assert seen == {"US30": 2}


def test_the_demo_says_the_embedded_stack_still_runs_and_how_to_stop_it(tmp_path: Path) -> None:
    note = stack_still_running(Settings())
    assert note is not None
    assert "Kafka and PostgreSQL are still running" in note
    assert "`fxstream stack down`" in note and "make stack-down" in note
    other = stack_still_running(Settings(state_dir=tmp_path))
    assert other is not None and f"`FXSTREAM_STATE_DIR={tmp_path} fxstream stack down`" in other
    assert "make stack-down" not in other  # the Makefile knows the default directory only
    assert stack_still_running(Settings(external_stack=True)) is None  # not the demo's to stop
