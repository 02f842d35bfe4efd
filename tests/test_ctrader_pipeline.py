"""cTrader end to end on the real broker and database: the simulator -> `fxstream produce
ctrader` -> Kafka -> worker -> sink -> PostgreSQL, with DOM snapshots on the DOM topic.

The simulator records every spot event it sent (``sent.csv``, the replay CSV format), so
the reference candles are computed from exactly what the producer was given: a tick lost
or doubled anywhere (at a dropped connection, a token refresh, a slow handshake) shows as
a difference."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fastjsonschema
import pytest

from pipeline.settings import Settings
from simulators.ctrader.launch import settings_for
from tests.conftest import wait_for
from tests.pipeline_helpers import Proc, read_topic, run_cli
from tests.reference_candles import reference_from_csv
from tests.stack_fixtures import RealStack
from tests.test_candles_pipeline import TFS, wait_for_reference

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
STREAMED = ("EUR/USD", "USD/JPY", "XAU/USD", "GBP/USD")


def ctrader_settings(make_settings: Callable[..., Settings], **kw: object) -> Settings:
    values: dict[str, object] = {
        "symbols": STREAMED, "timeframes": TFS, "partitions": 4, "lateness_ms": 300_000,
        "session_timeout_s": 6.0, "log_level": "INFO", "ctrader_depth_throttle_ms": 100,
        "ctrader_reconnect_max_s": 2.0}
    values.update(kw)
    return make_settings(**values)


def start_sim(settings: Settings, tmp_path: Path, *args: str) -> tuple[Proc, Settings, Path]:
    sim_dir = tmp_path / "sim"
    proc = Proc(settings, ["ctrader-sim", "--dir", str(sim_dir), "--port", "0", "--historic",
                           "--symbols", ",".join(STREAMED), *args], tmp_path / "sim.log")
    wait_for(lambda: (sim_dir / "endpoint.env").exists() or not proc.alive(), 60,
             "the simulator to listen")
    assert proc.alive(), proc.tail()
    return proc, settings_for(settings, sim_dir), sim_dir


def sent_rows(sim_dir: Path) -> int:
    with open(sim_dir / "sent.csv") as handle:
        return sum(1 for _ in handle) - 1


def check_outputs(settings: Settings, sim_dir: Path, procs: list[Proc],
                  producer: Proc) -> None:
    """Candles equal the reference of what was sent, the tick topic holds each sent tick
    once, and the DOM topic holds valid snapshots of the streamed symbols."""
    ref = reference_from_csv(str(sim_dir / "sent.csv"), timeframes=TFS, lateness_ms=300_000,
                             known_symbols=set(settings.symbols))
    assert not ref.dead_letters
    wait_for_reference(settings, ref, procs)
    # Every resubscription (after a token expiry) re-sends the current quote, which the
    # candles count once; stop the producer before counting what the topic holds.
    assert producer.stop() == 0, producer.tail()
    ticks = Counter((t["symbol"], t["ts_ms"], t["bid"], t["ask"])
                    for _, v in read_topic(settings, settings.topics.ticks)
                    for t in (v if isinstance(v, list) else [v]))
    with open(sim_dir / "sent.csv") as handle:
        sent = Counter((r["symbol"], int(r["ts_ms"]), float(r["bid"]), float(r["ask"]))
                       for r in csv.DictReader(handle))
    assert ticks == sent, (sorted((sent - ticks).elements())[:10],
                           sorted((ticks - sent).elements())[:10])
    schema = sorted(SCHEMAS.glob("dom_snapshot.v*.json"))[-1]
    validate = fastjsonschema.compile(json.loads(schema.read_text()))
    snapshots = read_topic(settings, settings.topics.dom)
    assert snapshots
    seen = set()
    for key, frame in snapshots:
        for snap in frame if isinstance(frame, list) else [frame]:
            validate(snap)
            assert key.decode() == snap["symbol"] and snap["bids"] and snap["asks"]
            seen.add(snap["symbol"])
    assert seen == set(STREAMED)


def test_candles_exact_through_dropped_connections_and_token_expiry(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    base = ctrader_settings(make_settings)
    sim, settings, sim_dir = start_sim(base, tmp_path, "--rate", "1500", "--count", "15000",
                                       "--drop-after", "3000", "--drop-after", "7000",
                                       "--token-ttl", "3")
    producer = Proc(settings, ["produce", "ctrader"], tmp_path / "producer.log")
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    procs = [sim, producer, worker, sink]
    try:
        wait_for(lambda: sent_rows(sim_dir) > 10_000, 120, "10,000 spot events sent")
        os.kill(sim.popen.pid, signal.SIGUSR1)  # and one more drop, from outside
        wait_for(lambda: (sim_dir / "done").exists(), 120, "the simulator to finish")
        check_outputs(settings, sim_dir, procs, producer)
        log = producer.log.read_text()
        assert log.count("connection lost") >= 3, producer.tail()
        assert "access token refreshed" in log
        secrets = (sim_dir / "credentials.env").read_text()
        assert all(line.split("=", 1)[1] not in log for line in secrets.splitlines())
    finally:
        assert producer.stop() == 0, producer.tail()
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()
        sim.stop()


def test_unknown_symbol_error_responses_a_slow_handshake_and_a_paused_broker(
        make_settings: Callable[..., Settings], tmp_path: Path, stack: RealStack) -> None:
    base = ctrader_settings(make_settings, symbols=(*STREAMED, "ZZZ/USD"),
                            ctrader_timeout_s=1.5)
    sim, settings, sim_dir = start_sim(
        base, tmp_path, "--rate", "1000", "--count", "6000", "--slow-accepts", "1",
        "--accept-delay", "4", "--fail", "ProtoOASubscribeDepthQuotesReq=INVALID_REQUEST",
        "--fail", "ProtoOASymbolByIdReq=REQUEST_FREQUENCY_EXCEEDED:2",
        "--fail", "ProtoOAAccountAuthReq=CH_SERVER_NOT_REACHABLE", "--drop-after", "2500")
    producer = Proc(settings, ["produce", "ctrader"], tmp_path / "producer.log")
    worker = Proc(settings, ["worker"], tmp_path / "worker.log")
    sink = Proc(settings, ["sink"], tmp_path / "sink.log")
    procs = [sim, producer, worker, sink]
    try:
        if stack.control is not None:
            # Kafka stops answering for a while: the producer keeps reading the stream and
            # its Kafka client delivers what it holds once the broker is back.
            wait_for(lambda: sent_rows(sim_dir) > 3500, 120, "3,500 spot events sent")
            with stack.kafka_paused():
                wait_for(lambda: sent_rows(sim_dir) > 5000, 60,
                         "spot events to flow while Kafka is paused")
        wait_for(lambda: (sim_dir / "done").exists(), 120, "the simulator to finish")
        check_outputs(settings, sim_dir, procs, producer)
        log = producer.log.read_text()
        assert "offers no symbol ZZZ/USD" in log
        assert "no answer" in log or "TimeoutError" in log, producer.tail()
        assert "errorCode=CH_SERVER_NOT_REACHABLE" in log
        assert "errorCode=REQUEST_FREQUENCY_EXCEEDED" in log
        assert "subscribing to depth quotes refused: ProtoOAErrorRes errorCode=" \
               "INVALID_REQUEST" in log
    finally:
        assert producer.stop() == 0, producer.tail()
        assert sink.stop() == 0, sink.tail()
        assert worker.stop() == 0, worker.tail()
        sim.stop()


def test_wrong_or_missing_credentials_stop_with_a_clear_error_and_no_secret(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    base = ctrader_settings(make_settings)
    sim, settings, sim_dir = start_sim(base, tmp_path, "--rate", "100")
    try:
        real = (sim_dir / "credentials.env").read_text()
        wrong = tmp_path / "wrong.env"
        wrong.write_text("\n".join(
            "CTRADER_CLIENT_SECRET=wrong-secret-7f3a9c" if line.startswith(
                "CTRADER_CLIENT_SECRET=") else line for line in real.splitlines()) + "\n")
        result = run_cli(settings.model_copy(update={"ctrader_secrets_file": wrong}),
                         ["produce", "ctrader", "--duration", "60"], tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 3, output
        assert "CH_CLIENT_AUTH_FAILURE" in output and "CTRADER_CLIENT_SECRET" in output
        values = [line.split("=", 1)[1] for line in wrong.read_text().splitlines() +
                  real.splitlines()]
        assert all(v not in output for v in values), output
        assert "Traceback" not in output

        empty = tmp_path / "empty.env"
        empty.write_text("CTRADER_CLIENT_SECRET=only-a-secret-91c2\n")
        result = run_cli(settings.model_copy(update={"ctrader_secrets_file": empty}),
                         ["produce", "ctrader"], tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "CTRADER_CLIENT_ID" in output and "only-a-secret-91c2" not in output
    finally:
        sim.stop()


def test_demo_runs_from_the_simulator(stack: RealStack, tmp_path: Path) -> None:
    import subprocess

    import psycopg

    from tests.pipeline_helpers import FXSTREAM

    url = stack.new_database()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FXSTREAM_", "CTRADER_"))}
    env.update({"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "DATABASE_URL": url,
                "FXSTREAM_STATE_DIR": str(tmp_path / "state"), "FXSTREAM_WORKER_GROUP": "ctd-w",
                "FXSTREAM_SINK_GROUP": "ctd-s", "FXSTREAM_SESSION_TIMEOUT_S": "6",
                "COLUMNS": "160"})
    result = subprocess.run([FXSTREAM, "demo", "--source", "ctrader-sim", "--duration", "25",
                             "--symbols", "3", "--rate", "300"], capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "worker and sink shut down cleanly" in result.stdout
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT symbol, sum(tick_volume) FROM market_data_candles "
                            "WHERE timeframe = '1m' GROUP BY symbol ORDER BY symbol").fetchall()
    assert [r[0] for r in rows] == ["EUR/USD", "GBP/USD", "USD/JPY"]
    assert all(r[1] > 0 for r in rows)
    sim_log = (tmp_path / "state" / "logs" / "ctrader-sim.log").read_text()
    assert "connection 1 open" in sim_log
