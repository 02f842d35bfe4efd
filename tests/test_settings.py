from pathlib import Path

import pytest

from pipeline.settings import Settings, SettingsError, load_settings


def test_defaults_are_valid() -> None:
    s = load_settings(env={}, state_dir="/nonexistent-state")
    assert s.partitions == 6
    assert s.timeframes == ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
    assert "EUR/USD" in s.symbols
    assert s.lateness_ms == 300_000
    assert not s.external_stack


def test_yaml_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "fx.yaml"
    cfg.write_text("partitions: 12\nsymbols: [eurusd, 'usd-jpy']\nlateness_ms: 1000\n"
                   "topics: {ticks: my.ticks}\n")
    s = load_settings(cfg, env={"FXSTREAM_LATENESS_MS": "2000",
                                "FXSTREAM_STATE_DIR": str(tmp_path)})
    assert s.partitions == 12
    assert s.symbols == ("EUR/USD", "USD/JPY")
    assert s.lateness_ms == 2000
    assert s.topics.ticks == "my.ticks"
    assert s.topics.candles == "fx.candles"


def test_connection_forms() -> None:
    s = load_settings(env={"KAFKA_BOOTSTRAP": "a:9092, b:9093",
                           "DATABASE_URL": "postgresql://u:p@db:5432/fx"})
    assert s.kafka_bootstrap == "a:9092,b:9093"
    assert s.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/fx"
    assert s.external_stack


def test_connection_file_fills_in_missing_connections(tmp_path: Path) -> None:
    (tmp_path / "connection.env").write_text(
        "KAFKA_BOOTSTRAP=127.0.0.1:1\nDATABASE_URL=postgresql://x@127.0.0.1:2/fx\n")
    s = load_settings(env={"FXSTREAM_STATE_DIR": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:1"
    assert not s.external_stack
    s2 = load_settings(env={"FXSTREAM_STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "k:1",
                            "DATABASE_URL": "postgresql://y@h/db"})
    assert s2.kafka_bootstrap == "k:1"
    assert s2.external_stack


@pytest.mark.parametrize(
    ("env", "field", "fragment"),
    [
        ({"KAFKA_BOOTSTRAP": "localhost"}, "kafka_bootstrap", "host:port"),
        ({"KAFKA_BOOTSTRAP": "h:99999"}, "kafka_bootstrap", "host:port"),
        ({"DATABASE_URL": "mysql://x/y"}, "database_url", "libpq"),
        ({"FXSTREAM_PARTITIONS": "zero"}, "partitions", "integer"),
        ({"FXSTREAM_PARTITIONS": "0"}, "partitions", "greater than"),
        ({"FXSTREAM_TIMEFRAMES": "1m,7m"}, "timeframes", "divide a day"),
        ({"FXSTREAM_TIMEFRAMES": "1m,1x"}, "timeframes", "form"),
        ({"FXSTREAM_SYMBOLS": "EURUSD,\x01bad"}, "symbols", "control"),
        ({"FXSTREAM_LATENESS_MS": "-5"}, "lateness_ms", "greater than"),
        ({"FXSTREAM_STORE": "redis"}, "store", "memory"),
        ({"FXSTREAM_EVENT_LOOP": "trio"}, "event_loop", "uvloop"),
        ({"FXSTREAM_WORKER_COMPRESSION": "brotli"}, "worker_compression", "lz4"),
        ({"FXSTREAM_WORKER_LINGER_MS": "-1"}, "worker_linger_ms", "greater than"),
        ({"FXSTREAM_KAFKA_PORT": "15432"}, "settings", "must all differ"),
    ],
)
def test_bad_settings_name_the_field(env: dict[str, str], field: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env=env)
    message = str(info.value)
    assert f"'{field}'" in message
    assert fragment in message


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "fx.yaml"
    cfg.write_text("partitons: 3\n")
    with pytest.raises(SettingsError, match="'partitons'"):
        load_settings(cfg, env={})


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, env={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(listy, env={})


def test_bad_topic_name() -> None:
    with pytest.raises(SettingsError, match=r"topics\.ticks"):
        load_settings(env={}, topics={"ticks": "bad topic!"})


def test_require_connections_explains_what_to_do(tmp_path: Path) -> None:
    s = load_settings(env={"FXSTREAM_STATE_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="fxstream stack up"):
        s.require_connections()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(("env", "linger_ms", "compression"),
                         [({}, 20, "lz4"),
                          ({"FXSTREAM_WORKER_LINGER_MS": "7",
                            "FXSTREAM_WORKER_COMPRESSION": "none"}, 7, None)])
def test_the_worker_producer_follows_the_settings(tmp_path: Path, env: dict[str, str],
                                                  linger_ms: int,
                                                  compression: str | None) -> None:
    from pipeline.runtime.app import build_app

    settings = load_settings(env={"KAFKA_BOOTSTRAP": "localhost:9092",
                                  "DATABASE_URL": "postgresql://fx@localhost/fx", **env},
                             state_dir=str(tmp_path))
    app = build_app(settings)
    assert app.conf.producer_linger == linger_ms / 1000
    assert app.conf.producer_compression_type == compression
