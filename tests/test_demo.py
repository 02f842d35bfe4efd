"""The README's main job, run for a short while against the test stack."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.pipeline_helpers import FXSTREAM
from tests.stack_fixtures import RealStack

pytestmark = pytest.mark.integration


def test_demo_runs_the_live_pipeline_and_stops_cleanly(stack: RealStack, tmp_path: Path) -> None:
    url = stack.new_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FXSTREAM_")}
    env.update({"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "DATABASE_URL": url,
                "FXSTREAM_STATE_DIR": str(tmp_path / "state"), "FXSTREAM_WORKER_GROUP": "demo-w",
                "FXSTREAM_SINK_GROUP": "demo-s", "FXSTREAM_SESSION_TIMEOUT_S": "6",
                "COLUMNS": "160"})
    result = subprocess.run([FXSTREAM, "demo", "--duration", "25", "--symbols", "3", "--rate",
                             "600"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "worker and sink shut down cleanly" in result.stdout
    assert "EUR/USD" in result.stdout
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT symbol, sum(tick_volume) FROM market_data_candles "
                            "WHERE timeframe = '1m' GROUP BY symbol ORDER BY symbol").fetchall()
    assert [r[0] for r in rows] == ["EUR/USD", "GBP/USD", "USD/JPY"]
    assert all(r[1] > 0 for r in rows)
    with psycopg.connect(url) as conn:
        dom = conn.execute("SELECT symbol, sum(updates), min(spread_min), max(microprice) "
                           "FROM dom_metrics WHERE timeframe = '1m' GROUP BY symbol "
                           "ORDER BY symbol").fetchall()
    # the live view's DOM columns come from these rows; synthetic books always have both
    # sides, so spread and microprice are never null
    assert [r[0] for r in dom] == ["EUR/USD", "GBP/USD", "USD/JPY"]
    assert all(r[1] > 0 and r[2] is not None and r[2] > 0 and r[3] is not None for r in dom), dom
    assert "microprice" in result.stdout
