"""Process status files: what `fxstream status` lists."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from pipeline.process_status import read_statuses, status_file, write_status


def test_status_of_a_live_and_of_a_vanished_process(tmp_path: Path) -> None:
    write_status(tmp_path, "worker", "waiting", waiting_for="Kafka")
    dead = 2**22 + 12345  # above any pid_max
    status_file(tmp_path, "candle-sink", pid=dead).write_bytes(
        orjson.dumps({"service": "candle-sink", "pid": dead, "state": "running"}))
    (tmp_path / "status" / "torn.json").write_text('{"service": ')  # a half-written file
    got = {r["service"]: r for r in read_statuses(tmp_path)}
    assert set(got) == {"worker", "candle-sink"}
    assert (got["worker"]["state"], got["worker"]["waiting_for"]) == ("waiting", "Kafka")
    assert got["worker"]["pid"] == os.getpid()
    assert got["candle-sink"]["state"] == "exited"
