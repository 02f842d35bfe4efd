"""No secret in anything a whole run prints or writes.

One run on its own embedded stack (PostgreSQL with its generated password): stack up,
migrate, stack status, a replay with a bad row that holds the password, the worker and
the sink (JSON logs), `fxstream status`, the cTrader producer against the simulator with
tokens that expire and are refreshed, and the failures: a wrong database password, a
database that does not answer (a sink waiting for it, shown by `fxstream status`), a
wrong cTrader client secret, a settings error. Then every byte the processes printed,
every file under the run's directories and every dead letter is searched for the
secrets: the database password, a wrong one, the simulator's client secret and every
access and refresh token it issued, and a wrong client secret. Only the files whose
job is to hold them may: the connection file, the password file and the cTrader
secrets file, each mode 0600.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.process_status import read_statuses
from pipeline.settings import read_connection_file
from pipeline.stack.process import free_port
from tests.conftest import wait_for
from tests.stack_fixtures import _free_pair
from tests.test_stack import needs_local_servers

pytestmark = [pytest.mark.integration, needs_local_servers]

FXSTREAM = str(Path(sys.executable).with_name("fxstream"))
WRONG_DB_PASSWORD = "Wr0ng-db-pw-" + uuid.uuid4().hex[:12]
WRONG_CTRADER_SECRET = "Wr0ng-ct-secret-" + uuid.uuid4().hex[:12]


class Run:
    """Every fxstream process of the run, with what each printed kept in files."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.out = root / "out"
        self.out.mkdir(parents=True)
        self.env = env
        self.background: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.count = 0

    def _log(self, name: str) -> Path:
        self.count += 1
        return self.out / f"{self.count:02d}-{name}.txt"

    def cli(self, *args: str, timeout_s: float = 300, **env: str
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([FXSTREAM, *args], capture_output=True, text=True,
                                timeout=timeout_s, env={**self.env, **env})
        self._log("-".join(args[:2])).write_text(
            f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n"
            f"{result.stderr}")
        return result

    def start(self, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        path = self._log("-".join(args[:2]))
        handle = open(path, "wb")  # noqa: SIM115 - open for the life of the process
        proc = subprocess.Popen([FXSTREAM, *args], stdout=handle, stderr=subprocess.STDOUT,
                                env={**self.env, **env}, start_new_session=True)
        self.background.append((proc, handle))
        return proc, path

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        return proc.returncode

    def stop_all(self) -> None:
        for proc, handle in self.background:
            self.stop(proc)
            handle.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ticks_csv(path: Path, password: str) -> None:
    start = 1_704_067_200_000
    lines = ["symbol,ts_ms,bid,ask,volume"]
    for i in range(300):  # EUR/USD over two and a half minutes: bars close
        lines.append(f"EURUSD,{start + i * 500},{1.1 + i * 1e-5:.5f},{1.1002 + i * 1e-5:.5f},1")
    lines += [f"US30,{start + 1000 + i},37000.5,37001.5,1" for i in range(5)]
    # A bad row that shows a connection string: its dead letter must not.
    lines.append(f"postgresql://postgres:{password}@127.0.0.1/fxstream,{start},1,2,3")
    path.write_text("\n".join(lines) + "\n")


def _dead_letters(bootstrap: str, topic: str) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[str] = []
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(ends):
            msg = wait_for(lambda: consumer.poll(1.0), 30, "the dead letters")
            assert msg.error() is None, msg.error()
            out.append((msg.key() or b"").decode(errors="replace") + " "
                       + msg.value().decode(errors="replace"))
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        return out
    finally:
        consumer.close()


def _files(root: Path) -> list[Path]:
    out = []
    for folder, _, names in os.walk(root):  # symlinks (the shared Kafka jars) not followed
        out += [Path(folder) / n for n in names if not (Path(folder) / n).is_symlink()]
    return out


def test_no_planted_secret_in_anything_a_whole_run_prints_or_writes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shared_jars = Path(os.environ.get("FXSTREAM_TEST_JARS", Path.cwd() / ".fxstream/kafka-jars"))
    if shared_jars.is_dir():
        (state / "kafka-jars").symlink_to(shared_jars.resolve(), target_is_directory=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FXSTREAM_", "CTRADER_")) and k not in ("KAFKA_BOOTSTRAP",
                                                                        "DATABASE_URL")}
    env.update({"FXSTREAM_STATE_DIR": str(state), "FXSTREAM_KAFKA_PORT": str(_free_pair()),
                "FXSTREAM_POSTGRES_PORT": str(free_port()), "FXSTREAM_LOG_LEVEL": "DEBUG",
                "FXSTREAM_SESSION_TIMEOUT_S": "6", "COLUMNS": "200"})
    run = Run(tmp_path, env)
    sim_dir = tmp_path / "sim"
    issued: set[str] = set()
    try:
        up = run.cli("stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        password = (state / "postgres" / "password").read_text().strip()
        connection = read_connection_file(state / "connection.env")
        assert f":{password}@" in connection["DATABASE_URL"]
        assert _mode(state / "connection.env") == 0o600
        assert _mode(state / "postgres" / "password") == 0o600
        url, bootstrap = connection["DATABASE_URL"], connection["KAFKA_BOOTSTRAP"]

        assert run.cli("db", "migrate").returncode == 0
        status = run.cli("stack", "status")
        assert status.returncode == 0 and "PostgreSQL 15." in status.stdout, status.stderr

        ticks = tmp_path / "ticks.csv"
        _ticks_csv(ticks, password)
        replay = run.cli("produce", "replay", str(ticks), "--no-progress")
        assert replay.returncode == 0, replay.stderr
        assert "5 ticks of US30 (5) will be refused" in replay.stderr
        assert "5 ticks of US30 (5) will be refused" in replay.stdout  # and in the summary

        worker, worker_log = run.start("worker", FXSTREAM_LOG_FORMAT="json")
        sink, sink_log = run.start("sink", FXSTREAM_LOG_FORMAT="json")

        def candles() -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM market_data_candles").fetchone()
            return row[0] if row else 0

        wait_for(candles, 120, "candles from the replay in PostgreSQL")
        shown = run.cli("status")
        assert shown.returncode == 0 and "EUR/USD" in shown.stdout, shown.stderr

        # The failures. A wrong password:
        wrong = run.cli("db", "migrate", KAFKA_BOOTSTRAP=bootstrap,
                        DATABASE_URL=url.replace(password, WRONG_DB_PASSWORD))
        assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr, (
            wrong.stdout + wrong.stderr)
        # A database that does not answer, the right password in its URL:
        pg_port = env["FXSTREAM_POSTGRES_PORT"]
        dead_url = url.replace(f"127.0.0.1:{pg_port}/", f"127.0.0.1:{free_port()}/")
        assert password in dead_url and dead_url != url
        waiting, _ = run.start("sink", KAFKA_BOOTSTRAP=bootstrap, DATABASE_URL=dead_url,
                               FXSTREAM_SINK_GROUP="secrets-waiting")
        wait_for(lambda: any(r.get("pid") == waiting.pid and r["state"] == "waiting"
                             for r in read_statuses(state)), 60,
                 "the sink to wait for PostgreSQL")
        during = run.cli("status", KAFKA_BOOTSTRAP=bootstrap, DATABASE_URL=dead_url)
        assert "waiting" in during.stdout and "did not answer" in during.stderr, (
            during.stdout + during.stderr)
        run.stop(waiting)
        # A settings error whose input holds the password:
        bad = run.cli("status", DATABASE_URL=url.replace("postgresql://", "mysql://"))
        assert bad.returncode == 2 and "database_url" in bad.stderr, bad.stderr

        # cTrader: a run with tokens that expire every 3 s, then a wrong client secret.
        sim, _ = run.start("ctrader-sim", "--dir", str(sim_dir), "--port", "0", "--historic",
                           "--rate", "200", "--token-ttl", "3", "--symbols", "EURUSD,USDJPY")
        wait_for(lambda: (sim_dir / "endpoint.env").exists() or sim.poll() is not None, 60,
                 "the simulator to listen")
        sim_env = dict(line.split("=", 1) for line in
                       (sim_dir / "endpoint.env").read_text().split())
        secrets_file = sim_dir / "credentials.env"
        issued |= {line.split("=", 1)[1] for line in secrets_file.read_text().splitlines()
                   if not line.startswith("CTRADER_CLIENT_ID=")}
        good = run.cli("produce", "ctrader", "--duration", "8", **sim_env)
        assert good.returncode == 0, good.stdout + good.stderr
        refreshes = re.search(r"\((\d+) token refreshes\)", good.stdout)
        assert refreshes and int(refreshes.group(1)) > 0, good.stdout
        issued |= {line.split("=", 1)[1] for line in secrets_file.read_text().splitlines()
                   if not line.startswith("CTRADER_CLIENT_ID=")}
        assert _mode(secrets_file) == 0o600
        refused = run.cli("produce", "ctrader", "--duration", "30", **sim_env,
                          CTRADER_CLIENT_SECRET=WRONG_CTRADER_SECRET)
        assert refused.returncode == 3 and "CH_CLIENT_AUTH_FAILURE" in refused.stderr, (
            refused.stdout + refused.stderr)
        run.stop(sim)

        assert run.stop(sink) == 0 and run.stop(worker) == 0
        json_lines = [orjson.loads(line) for log in (worker_log, sink_log)
                      for line in log.read_text().splitlines() if line.startswith("{")]
        assert {line["service"] for line in json_lines} == {"worker", "sink"}
        assert any(line["logger"].startswith("faust") for line in json_lines)
        dead_letters = _dead_letters(bootstrap, "fx.dead-letter")
    finally:
        run.stop_all()
        down = run.cli("stack", "down")
    assert down.returncode == 0, down.stderr

    reasons = {orjson.loads(d.split(" ", 1)[1])["reason"] for d in dead_letters}
    assert {"bad_row", "unknown_symbol"} <= reasons, reasons
    planted = {"database password": password, "wrong database password": WRONG_DB_PASSWORD,
               "wrong cTrader secret": WRONG_CTRADER_SECRET,
               **{f"cTrader secret or token {i}": v for i, v in enumerate(sorted(issued))}}
    assert len(issued) >= 5  # the client secret, two tokens, and at least one refreshed pair
    holders = {state / "postgres" / "password", secrets_file}  # connection.env: gone at down
    assert not (state / "connection.env").exists()
    leaks = []
    for path in _files(tmp_path):
        if path in holders or path == tmp_path / "ticks.csv":
            continue
        data = path.read_bytes()
        leaks += [f"{name} in {path.relative_to(tmp_path)}" for name, value in planted.items()
                  if value.encode() in data]
    leaks += [f"{name} in a dead letter" for name, value in planted.items()
              for d in dead_letters if value in d]
    assert not leaks, "\n".join(leaks)
