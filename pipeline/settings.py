"""One typed settings object for every fxstream process.

Built once, from (lowest to highest precedence) the defaults below, an optional
YAML file (``FXSTREAM_CONFIG`` or ``--config``), the connection file that
``fxstream stack up`` writes, and environment variables. It is then passed down;
nothing reads the environment behind its back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.timeframes import parse_timeframe
from pipeline.redact import redact
from pipeline.symbols import SymbolError, normalize_symbol

DEFAULT_SYMBOLS: tuple[str, ...] = (
    # The 28 crosses of the eight majors, plus gold and silver.
    "EUR/USD", "GBP/USD", "USD/JPY", "USD/CHF", "AUD/USD", "USD/CAD", "NZD/USD",
    "EUR/GBP", "EUR/JPY", "EUR/CHF", "EUR/AUD", "EUR/CAD", "EUR/NZD",
    "GBP/JPY", "GBP/CHF", "GBP/AUD", "GBP/CAD", "GBP/NZD",
    "AUD/JPY", "AUD/CHF", "AUD/CAD", "AUD/NZD",
    "NZD/JPY", "NZD/CHF", "NZD/CAD", "CAD/JPY", "CAD/CHF", "CHF/JPY",
    "XAU/USD", "XAG/USD",
)  # fmt: skip

# Environment variables that map onto settings fields. Connection settings use
# the names users already write; everything else is prefixed FXSTREAM_.
ENV_FIELDS: dict[str, str] = {
    "KAFKA_BOOTSTRAP": "kafka_bootstrap",
    "DATABASE_URL": "database_url",
    "FXSTREAM_STATE_DIR": "state_dir",
    "FXSTREAM_SYMBOLS": "symbols",
    "FXSTREAM_TIMEFRAMES": "timeframes",
    "FXSTREAM_PARTITIONS": "partitions",
    "FXSTREAM_REPLICATION_FACTOR": "replication_factor",
    "FXSTREAM_LATENESS_MS": "lateness_ms",
    "FXSTREAM_CLOSE_GRACE_MS": "close_grace_ms",
    "FXSTREAM_FUTURE_TOLERANCE_MS": "future_tolerance_ms",
    "FXSTREAM_DAY_START_MINUTES": "day_start_minutes",
    "FXSTREAM_FRAME_SIZE": "frame_size",
    "FXSTREAM_FRAME_LINGER_MS": "frame_linger_ms",
    "FXSTREAM_SINK_BATCH_SIZE": "sink_batch_size",
    "FXSTREAM_SINK_BATCH_TIMEOUT_MS": "sink_batch_timeout_ms",
    "FXSTREAM_STORE": "store",
    "FXSTREAM_EVENT_LOOP": "event_loop",
    "FXSTREAM_WORKER_LINGER_MS": "worker_linger_ms",
    "FXSTREAM_WORKER_COMPRESSION": "worker_compression",
    "FXSTREAM_WORKER_RUN_MS": "worker_run_ms",
    "FXSTREAM_WORKER_RUN_MESSAGES": "worker_run_messages",
    "FXSTREAM_WORKER_GROUP": "worker_group",
    "FXSTREAM_SINK_GROUP": "sink_group",
    "FXSTREAM_SESSION_TIMEOUT_S": "session_timeout_s",
    "FXSTREAM_WORKER_FETCH_WAIT_MS": "worker_fetch_wait_ms",
    "FXSTREAM_WORKER_FETCH": "worker_fetch",
    "FXSTREAM_MAX_STATE_BYTES": "max_state_bytes",
    "FXSTREAM_OUTPUT_ACK_TIMEOUT_S": "output_ack_timeout_s",
    "FXSTREAM_KAFKA_PORT": "kafka_port",
    "FXSTREAM_POSTGRES_PORT": "postgres_port",
    "FXSTREAM_LOG_LEVEL": "log_level",
    "FXSTREAM_METRICS_HOST": "metrics_host",
    "FXSTREAM_METRICS_PORT": "metrics_port",
    "FXSTREAM_HEALTH_STALE_S": "health_stale_s",
    "FXSTREAM_LOG_FORMAT": "log_format",
    "FXSTREAM_CTRADER_ENVIRONMENT": "ctrader_environment",
    "FXSTREAM_CTRADER_HOST": "ctrader_host",
    "FXSTREAM_CTRADER_PORT": "ctrader_port",
    "FXSTREAM_CTRADER_ACCOUNT_ID": "ctrader_account_id",
    "FXSTREAM_CTRADER_SECRETS_FILE": "ctrader_secrets_file",
    "FXSTREAM_CTRADER_CA_FILE": "ctrader_ca_file",
    "FXSTREAM_CTRADER_REQUESTS_PER_S": "ctrader_requests_per_s",
    "FXSTREAM_CTRADER_HISTORY_REQUESTS_PER_S": "ctrader_history_requests_per_s",
    "FXSTREAM_CTRADER_HEARTBEAT_S": "ctrader_heartbeat_s",
    "FXSTREAM_CTRADER_TIMEOUT_S": "ctrader_timeout_s",
    "FXSTREAM_CTRADER_RECONNECT_MAX_S": "ctrader_reconnect_max_s",
    "FXSTREAM_CTRADER_DEPTH": "ctrader_depth",
    "FXSTREAM_CTRADER_DEPTH_LEVELS": "ctrader_depth_levels",
    "FXSTREAM_CTRADER_DEPTH_THROTTLE_MS": "ctrader_depth_throttle_ms",
    "FXSTREAM_DOM_TIMEFRAMES": "dom_timeframes",
    "FXSTREAM_DOM_DEPTH_LEVELS": "dom_depth_levels",
    "FXSTREAM_DOM_MAX_LEVELS": "dom_max_levels",
    "FXSTREAM_DOM_SAMPLE_MS": "dom_sample_ms",
    "FXSTREAM_DOM_LATENESS_MS": "dom_lateness_ms",
    "FXSTREAM_SENTIMENT_LATENESS_MS": "sentiment_lateness_ms",
    "FXSTREAM_SENTIMENT_SUM_TOLERANCE": "sentiment_sum_tolerance",
    "FXSTREAM_SENTIMENT_CONTRARIAN_HIGH": "sentiment_contrarian_high",
    "FXSTREAM_SENTIMENT_CONTRARIAN_LOW": "sentiment_contrarian_low",
    "FXSTREAM_SENTIMENT_BULLISH_ABOVE": "sentiment_bullish_above",
    "FXSTREAM_SENTIMENT_BEARISH_BELOW": "sentiment_bearish_below",
    "FXSTREAM_SENTIMENT_ORDERFLOW": "sentiment_orderflow",
    "FXSTREAM_SENTIMENT_ORDERBOOK": "sentiment_orderbook",
    "FXSTREAM_MARKET_HOLIDAYS": "market_holidays",
    "FXSTREAM_BACKFILL_CHUNK_MINUTES": "backfill_chunk_minutes",
}

LIST_FIELDS = {"symbols", "timeframes", "dom_timeframes", "market_holidays"}


class SettingsError(ValueError):
    """Bad configuration; the message names the field and what is wrong with it."""


class Topics(BaseModel):
    """Kafka topic names. Every topic is keyed by the canonical symbol."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticks: str = "fx.ticks"
    dom: str = "fx.dom"
    sentiment: str = "fx.sentiment"
    candles: str = "fx.candles"
    dom_metrics: str = "fx.dom-metrics"
    sentiment_metrics: str = "fx.sentiment-metrics"
    dead_letter: str = "fx.dead-letter"

    def all(self) -> list[str]:
        return [
            self.ticks, self.dom, self.sentiment, self.candles,
            self.dom_metrics, self.sentiment_metrics, self.dead_letter,
        ]  # fmt: skip

    @field_validator("*")
    @classmethod
    def _legal_topic_name(cls, value: str) -> str:
        if not value or len(value) > 200:
            raise ValueError("a topic name must have 1 to 200 characters")
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        bad = sorted(set(value) - allowed)
        if bad:
            raise ValueError(f"characters {bad!r} are not allowed in a Kafka topic name")
        return value


class Settings(BaseModel):
    """Everything an fxstream process can be told. Defaults suit the embedded stack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Connections. Empty means: use the embedded stack's connection file.
    kafka_bootstrap: str = ""
    database_url: str = ""
    state_dir: Path = Path(".fxstream")
    kafka_port: int = Field(19092, ge=1024, le=65535)
    postgres_port: int = Field(15432, ge=1024, le=65535)

    # What is processed.
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    timeframes: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
    topics: Topics = Topics()
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=10)

    # Event time.
    lateness_ms: int = Field(5 * 60_000, ge=0, description="allowed lateness behind newest tick")
    close_grace_ms: int = Field(2_000, ge=0, description="wall-clock grace before closing a bar")
    future_tolerance_ms: int = Field(60_000, ge=0,
                                     description="how far a tick may be ahead of the wall clock")
    day_start_minutes: int = Field(0, ge=0, lt=1440, description="UTC minute of the daily roll")

    # Batching.
    frame_size: int = Field(500, ge=1, le=100_000)
    frame_linger_ms: int = Field(20, ge=0, le=60_000)
    sink_batch_size: int = Field(5_000, ge=1, le=1_000_000)  # messages per batch
    sink_batch_timeout_ms: int = Field(200, ge=1, le=60_000)

    # DOM metrics (pipeline.core.dom): bars of book metrics, and sampled snapshots.
    dom_timeframes: tuple[str, ...] = ("1s", "1m")
    dom_depth_levels: int = Field(20, ge=1, le=1_000,
                                  description="N of bid/ask depth and depth_imbalance")
    dom_max_levels: int = Field(100, ge=1, le=10_000,
                                description="more levels on a side are refused")
    dom_sample_ms: int = Field(1_000, ge=1, le=86_400_000,
                               description="market_depth keeps the last snapshot per period")
    # The DOM state holds every snapshot time within the lateness (for the time-weighted
    # imbalance), so it gets a shorter default than the candles' 5 minutes: at 50
    # snapshots/s a symbol carries about 25 KB of state with 10 s, 0.7 MB with 5 minutes,
    # near Kafka's 1 MB record limit. None: the candles' lateness_ms.
    dom_lateness_ms: int | None = Field(10_000, ge=0)

    # Sentiment (pipeline.core.sentiment): positioning observations to metrics over time.
    sentiment_lateness_ms: int | None = Field(None, ge=0, description="None: lateness_ms")
    sentiment_sum_tolerance: float = Field(1.0, ge=0, le=100,
                                           description="how far long + short may be from 100")
    sentiment_contrarian_high: float = Field(70.0, ge=0, le=100,
                                             description="long_pct above: contrarian signal -1")
    sentiment_contrarian_low: float = Field(30.0, ge=0, le=100,
                                            description="long_pct below: contrarian signal +1")
    sentiment_bullish_above: float = Field(60.0, ge=0, le=100,
                                           description="long_pct above: label bullish")
    sentiment_bearish_below: float = Field(40.0, ge=0, le=100,
                                           description="long_pct below: label bearish")
    sentiment_orderflow: bool = Field(True, description="the candle agent sends each minute's "
                                                        "up/down-tick share as provider orderflow")
    sentiment_orderbook: bool = Field(True, description="the DOM agent sends each minute's "
                                                        "bid share of top-N depth as provider "
                                                        "orderbook")

    # Worker.
    store: Literal["memory", "rocksdb"] = "memory"
    # The worker's asyncio event loop: uvloop applies about 1.2 times the messages per
    # second of asyncio's own loop (Faust's per-message cost is mostly event-loop work).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # The worker's producer (its outputs and changelog records): how long a batch waits
    # for more records, and its compression. Each produce request costs the worker's loop
    # a fixed share, a small batch per partition of each topic: 20 ms applies about 1.3
    # times the messages per second of 5 ms on a backlog, for at most 20 ms more between
    # a message and its outputs (a message's dead letters go out at once: the agent
    # waits for them). lz4 costs the worker a few per cent of its time and saves
    # Kafka's disk and network; "none" when the worker's CPU is what is short.
    worker_linger_ms: int = Field(20, ge=0, le=1_000)
    worker_compression: Literal["lz4", "none", "zstd", "gzip", "snappy"] = "lz4"
    # How long, and for how many messages at most, the worker keeps what it applied in
    # memory before it writes the states (pipeline.runtime.worker): one changelog record
    # per key the run touched, not one per message. Outputs go out with each message
    # regardless; a longer run writes fewer records and commits later, and a crash
    # re-applies more. 0 writes every message's state on its own.
    worker_run_ms: int = Field(100, ge=0, le=10_000)
    worker_run_messages: int = Field(1_000, ge=1, le=100_000)
    worker_group: str = "fxstream-worker"
    sink_group: str = "fxstream-sink"
    session_timeout_s: float = Field(10.0, ge=3, le=300)
    # How long the broker may hold a worker's fetch when a partition has no new data;
    # Faust's own 1.5 s can hold busy partitions back after any stall, and every such
    # hold adds to the latency of the busy ones; an idle worker then fetches 50 times/s.
    worker_fetch_wait_ms: int = Field(20, ge=1, le=5_000)
    # Who fetches the source partitions a worker holds: Faust's consumer ("faust"), or a
    # librdkafka consumer of the runtime's while Faust keeps the group, the tables and
    # the commits ("librdkafka", pipeline.runtime.fetcher): less of the interpreter per
    # message, so a shorter latency tail at a live rate.
    worker_fetch: Literal["librdkafka", "faust"] = "librdkafka"
    # Largest record the worker writes (Kafka's default limit is 1 MB): a message that would
    # make a key's state larger is dead-lettered (state_too_large); a message's outputs
    # larger than this go out as several frames.
    max_state_bytes: int = Field(900_000, ge=256, le=100_000_000)
    # Longest the worker waits for Kafka to acknowledge what it published: states keep
    # what unacknowledged messages sent (so that recovery can re-send it), and grow
    # while nothing is acknowledged; past this the worker stops (exit 70) and a restart
    # waits for Kafka, then re-sends.
    output_ack_timeout_s: float = Field(120.0, ge=5, le=3_600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Prometheus metrics, /healthz and /readyz (pipeline.observability) on one port per
    # process. None: 9464 for the worker, 9465 for the sink; 0: none served.
    metrics_host: str = Field("127.0.0.1", min_length=1)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    health_stale_s: float = Field(30.0, gt=0, le=3600,
                                  description="/healthz fails when a loop has not beaten "
                                              "for this long")
    # human: "time LEVEL logger: message" lines; json: one JSON object per line (time, level,
    # logger, message, service, and partition and symbol when a line is about one).
    log_format: Literal["human", "json"] = "human"

    # cTrader Open API producer. Credentials are not settings: they come from the
    # environment or the secrets file named here (producers/ctrader/credentials.py).
    ctrader_environment: Literal["demo", "live"] = "demo"
    ctrader_host: str = Field("", description="empty: Spotware's host of the environment")
    ctrader_port: int = Field(5035, ge=1, le=65535)
    ctrader_account_id: int | None = Field(None, ge=1, description="ctidTraderAccountId")
    ctrader_secrets_file: Path | None = None
    ctrader_ca_file: Path | None = Field(None, description="extra CA to trust (the simulator)")
    # Spotware allows 50 requests/s per connection, 5/s for historical data.
    ctrader_requests_per_s: float = Field(45.0, gt=0, le=1000)
    ctrader_history_requests_per_s: float = Field(4.5, gt=0, le=1000)
    ctrader_heartbeat_s: float = Field(5.0, gt=0, le=60)  # Spotware: at least every 10 s
    ctrader_timeout_s: float = Field(20.0, gt=0, le=600)
    ctrader_reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    ctrader_depth: bool = True
    ctrader_depth_levels: int = Field(10, ge=1, le=100,
                                      description="levels per side in a published snapshot")
    ctrader_depth_throttle_ms: int = Field(250, ge=0, le=60_000,
                                           description="least time between two snapshots "
                                                       "of one symbol")

    # Gap detection and backfill (pipeline/gaps.py, producers/ctrader/backfill.py).
    # Trading days (New York dates; day D runs from D-1 17:00 to D 17:00 New York time)
    # on which the FX market is closed, besides the weekend.
    market_holidays: tuple[date, ...] = ()
    backfill_chunk_minutes: int = Field(1440, ge=1, le=7 * 1440,
                                        description="history fetched and written per step")

    # True when the connections came from the environment or the YAML file, not from
    # the embedded stack's connection file: commands then start nothing themselves.
    external_stack: bool = False

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_form(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{part.strip()!r} is not host:port; write KAFKA_BOOTSTRAP as "
                    "host:port[,host:port]"
                )
        return ",".join(p.strip() for p in value.split(","))

    @field_validator("database_url")
    @classmethod
    def _libpq_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        scheme = urlsplit(value).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"scheme {scheme!r} is not a libpq URL; write DATABASE_URL as "
                "postgresql://user@host:port/dbname"
            )
        return value

    @field_validator("symbols", mode="before")
    @classmethod
    def _canonical_symbols(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [s for s in value.split(",") if s.strip()]
        out: list[str] = []
        for raw in value:
            try:
                sym = normalize_symbol(str(raw))
            except SymbolError as exc:
                raise ValueError(str(exc)) from None
            if sym not in out:
                out.append(sym)
        if not out:
            raise ValueError("at least one symbol is needed")
        return tuple(out)

    @field_validator("timeframes", mode="before")
    @classmethod
    def _known_timeframes(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        names = [str(v) for v in value]
        if not names:
            raise ValueError("at least one timeframe is needed")
        for name in names:
            if parse_timeframe(name).ms < 60_000:  # raises ValueError naming a bad one
                raise ValueError(f"candle timeframe {name!r} is shorter than a minute")
        if len(set(names)) != len(names):
            raise ValueError("timeframes repeat")
        return tuple(sorted(names, key=lambda n: parse_timeframe(n).ms))

    @field_validator("dom_timeframes", mode="before")
    @classmethod
    def _known_dom_timeframes(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        names = [str(v) for v in value]
        if not names:
            raise ValueError("at least one DOM timeframe is needed")
        for name in names:
            parse_timeframe(name)  # raises ValueError naming the bad one
        if len(set(names)) != len(names):
            raise ValueError("DOM timeframes repeat")
        return tuple(sorted(names, key=lambda n: parse_timeframe(n).ms))

    @field_validator("market_holidays", mode="before")
    @classmethod
    def _holiday_dates(cls, value: Any) -> tuple[date, ...]:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        out: set[date] = set()
        for raw in value or ():
            if isinstance(raw, date):
                out.add(raw)
                continue
            try:
                out.add(date.fromisoformat(str(raw).strip()))
            except ValueError:
                raise ValueError(f"holiday {raw!r} is not a date YYYY-MM-DD") from None
        return tuple(sorted(out))

    @model_validator(mode="after")
    def _sentiment_thresholds_ordered(self) -> Settings:
        if self.sentiment_contrarian_low > self.sentiment_contrarian_high:
            raise ValueError("sentiment_contrarian_low must not be above "
                             "sentiment_contrarian_high")
        if self.sentiment_bearish_below > self.sentiment_bullish_above:
            raise ValueError("sentiment_bearish_below must not be above "
                             "sentiment_bullish_above")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.kafka_port in (self.postgres_port, self.postgres_port + 1) or (
            self.kafka_port + 1 == self.postgres_port
        ):
            raise ValueError(
                "kafka_port, kafka_port+1 (controller) and postgres_port must all differ"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL in the form SQLAlchemy wants for psycopg 3."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @property
    def connection_file(self) -> Path:
        return self.state_dir / "connection.env"

    def require_connections(self) -> Settings:
        """Fail with a clear message when neither env nor a running stack gives them."""
        missing = [
            name for name, v in (("KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                                 ("DATABASE_URL", self.database_url)) if not v
        ]  # fmt: skip
        if missing:
            raise SettingsError(
                f"{' and '.join(missing)} not set and no running embedded stack found in "
                f"{self.state_dir}: run `fxstream stack up`, or set the variables to use an "
                "external Kafka and PostgreSQL"
            )
        return self


def read_connection_file(path: Path) -> dict[str, str]:
    """Parse the KEY=VALUE file that `fxstream stack up` writes."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _format_error(exc: ValidationError, source: str) -> SettingsError:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = redact(err["msg"].removeprefix("Value error, "))
        # The input is echoed so the user sees what was read, never with its secrets.
        lines.append(f"setting {field!r}: {msg} (got {redact(repr(err.get('input')))})")
    return SettingsError(f"bad settings from {source}:\n  " + "\n  ".join(lines))


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults < YAML file < connection file < environment < overrides."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    sources: list[str] = []

    config_file = config_file or env.get("FXSTREAM_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {str(path)!r} must hold a mapping of settings")
        values.update(loaded)
        sources.append(str(path))

    for var, field in ENV_FIELDS.items():
        if env.get(var, "").strip():
            values[field] = env[var]
            sources.append(var)
    values.update({k: v for k, v in overrides.items() if v is not None})

    # The embedded stack's connection file fills in what env and YAML left empty.
    values["external_stack"] = bool(values.get("kafka_bootstrap") and values.get("database_url"))
    state_dir = Path(values.get("state_dir") or Settings.model_fields["state_dir"].default)
    conn = read_connection_file(state_dir / "connection.env")
    for var in ("KAFKA_BOOTSTRAP", "DATABASE_URL"):
        field = ENV_FIELDS[var]
        if not values.get(field) and conn.get(var):
            values[field] = conn[var]

    try:
        return Settings(**values)
    except ValidationError as exc:
        raise _format_error(exc, ", ".join(sources) or "defaults") from None


def settings_yaml(settings: Settings) -> str:
    """The settings as a YAML file for a child process (``--config``). The embedded
    stack's connections are left out, the child reads them from the connection file, so
    the database password is kept in that file only; write the YAML with
    pipeline.private_files.write_private all the same."""
    exclude = {"external_stack"} if settings.external_stack else {
        "external_stack", "kafka_bootstrap", "database_url"}
    return yaml.safe_dump(settings.model_dump(mode="json", exclude=exclude))
