"""The main job: synthetic ticks -> worker -> sink -> PostgreSQL, watched live.

The worker and the sink run as their own processes (as they would be deployed);
the synthetic producer runs in a thread of this one; a rich view shows the
forming and the last closed 1m bar of every symbol, read back from PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from pipeline.demo_dom import newest_dom, start_books
from pipeline.demo_sentiment import newest_sentiment, start_positioning
from pipeline.monitor import total_lag
from pipeline.observability.metrics import WORKER_METRICS_PORT
from pipeline.private_files import write_private
from pipeline.settings import Settings, settings_yaml


def _spawn(settings: Settings, command: str, log_dir: Path, *args: str, name: str | None = None
           ) -> tuple[subprocess.Popen[bytes], Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "demo-settings.yaml"
    write_private(config, settings_yaml(settings))
    log = log_dir / f"{name or command}.log"
    exe = Path(sys.executable).with_name("fxstream")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    with open(log, "ab") as handle:
        proc = subprocess.Popen([*cmd, "--config", str(config), command, *args], stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stack_still_running(settings: Settings) -> str | None:
    """What to tell the user when the demo stops: the embedded Kafka and PostgreSQL it
    started keep running (and keep their data) until `fxstream stack down`."""
    if settings.external_stack:
        return None
    state_dir = settings.state_dir
    if state_dir == Settings.model_fields["state_dir"].default:
        command = "`fxstream stack down` (or `make stack-down`)"
    else:
        command = f"`FXSTREAM_STATE_DIR={state_dir} fxstream stack down`"
    return (f"Kafka and PostgreSQL are still running (their data stays in {state_dir}); "
            f"stop them with {command}.")


def demo_metrics_ports(settings: Settings) -> tuple[int, int, int, int]:
    """The metrics ports of the demo's worker and its candle, DOM and sentiment sinks:
    9464 to 9467, or from FXSTREAM_METRICS_PORT on; all 0 (none) when it is 0."""
    base = WORKER_METRICS_PORT if settings.metrics_port is None else settings.metrics_port
    if base == 0:
        return (0, 0, 0, 0)
    return (base, base + 1, base + 2, base + 3)


def live_lag(settings: Settings, pids: set[int]) -> tuple[int | str, int | str]:
    """The worker's lag on the ticks and the candle sink's on the candles: from the
    /metrics of the processes ``pids`` (found in their status files), else from Kafka."""
    from pipeline.observability.scrape import endpoints, lag_rows, scrape_all
    from pipeline.observability.scrape import total_lag as reported_lag
    from pipeline.process_status import read_statuses

    running = [r for r in read_statuses(settings.state_dir) if r.get("pid") in pids]
    rows = lag_rows(scrape_all(endpoints(running), timeout_s=1.0).values())
    out: list[int | str] = []
    for group, topic in ((settings.worker_group, settings.topics.ticks),
                         (settings.sink_group, settings.topics.candles)):
        lag = reported_lag(rows, group, topic)
        if lag is None:
            try:
                lag = total_lag(settings, group, topic)
            except Exception:  # Kafka did not answer either
                out.append("?")
                continue
        out.append(lag)
    return out[0], out[1]


def _bars(settings: Settings, symbols: list[str]) -> dict[str, dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    out: dict[str, dict[str, Any]] = {s: {} for s in symbols}
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3,
                             row_factory=dict_row) as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (symbol, complete) symbol, complete, ts_utc, open, high, "
                "low, close, tick_volume FROM market_data_candles WHERE timeframe = '1m' "
                "AND symbol = ANY(%s) ORDER BY symbol, complete, ts_utc DESC", (symbols,)
            ).fetchall()
    except psycopg.Error:
        return out
    for row in rows:
        out[row["symbol"]]["closed" if row["complete"] else "forming"] = row
    return out


def _view(settings: Settings, symbols: list[str], produced: int, started: float,
          lag: tuple[int | str, int | str], sentiment: dict[str, str] | None = None,
          dom: dict[str, tuple[str, str, str]] | None = None) -> Group:
    table = Table(title="fxstream: 1m bars per symbol, read back from PostgreSQL")
    for col in ("symbol", "forming bar (UTC)", "O", "H", "L", "C", "ticks", "last closed bar",
                "C", "ticks"):
        table.add_column(col, justify="right" if col not in ("symbol",) else "left")
    if dom is not None:
        for col in ("spread", "imbalance", "microprice"):
            table.add_column(col, justify="right")
    if sentiment is not None:
        table.add_column("sentiment: long % (5 min mean) per provider")
    for symbol, bars in _bars(settings, symbols).items():
        forming, closed = bars.get("forming"), bars.get("closed")
        row = [symbol]
        if forming:
            row += [_hhmm(forming["ts_utc"]), *(f"{forming[k]:.5g}" for k in
                    ("open", "high", "low", "close")), str(forming["tick_volume"])]
        else:
            row += ["-"] * 6
        if closed:
            row += [_hhmm(closed["ts_utc"]), f"{closed['close']:.5g}", str(closed["tick_volume"])]
        else:
            row += ["-"] * 3
        if dom is not None:
            row += dom.get(symbol, ("-", "-", "-"))
        if sentiment is not None:
            row.append(sentiment.get(symbol, "-"))
        table.add_row(*row)
    elapsed = time.monotonic() - started
    footer = Table.grid(padding=(0, 3))
    footer.add_row(f"ticks produced: {produced:,} ({produced / max(elapsed, 1e-9):,.0f}/s)",
                   f"worker lag: {lag[0]} messages", f"sink lag: {lag[1]} messages",
                   "Ctrl-C to stop")
    return Group(table, footer)


def _hhmm(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%H:%M")


def run_demo(settings: Settings, rate: float, symbol_count: int, console: Console,
             duration_s: float = 0.0, source: str = "synthetic") -> int:
    """Run until interrupted (or for duration_s); returns the number of ticks produced.

    source: ``synthetic`` (the generator in this process) or ``ctrader-sim`` (the cTrader
    producer reading the local simulator, which the same generator drives)."""
    from pipeline.db.migrate import migrate
    from producers.synthetic_run import run_synthetic

    symbols = list(settings.symbols[:symbol_count])
    migrate(settings)
    log_dir = settings.state_dir / "logs"
    ports = [str(p) for p in demo_metrics_ports(settings)]
    worker, worker_log = _spawn(settings, "worker", log_dir, "--metrics-port", ports[0])
    sink, sink_log = _spawn(settings, "sink", log_dir, "--metrics-port", ports[1])
    dom_sink, dom_log = _spawn(settings, "sink", log_dir, "--table", "dom_metrics,market_depth",
                               "--metrics-port", ports[2], name="dom-sink")
    sentiment_sink, sentiment_log = _spawn(settings, "sink", log_dir, "--table",
                                           "sentiment_metrics,sentiment_data",
                                           "--metrics-port", ports[3], name="sentiment-sink")
    console.print(f"worker log: {worker_log}\nsink log: {sink_log}\n"
                  f"sentiment sink log: {sentiment_log}")

    sim = None
    if source == "ctrader-sim":
        from simulators.ctrader.launch import start_simulator

        sim, sim_settings, sim_log = start_simulator(settings, symbols, rate, log_dir)
        console.print(f"cTrader simulator log: {sim_log}")

    stop = threading.Event()
    produced = [0]

    def produce() -> None:
        if sim is not None:
            from producers.ctrader.credentials import load_credentials
            from producers.ctrader.run import run_ctrader

            run_ctrader(sim_settings, load_credentials(sim_settings.ctrader_secrets_file, {}),
                        should_stop=stop.is_set, on_progress=lambda r: produced.__setitem__(
                            0, r.ticks))
            return
        run_synthetic(settings, symbols, rate=rate, duration_s=None, paced=True,
                      live_time=True, should_stop=stop.is_set,
                      on_progress=lambda n: produced.__setitem__(0, n))

    thread = threading.Thread(target=produce, name="synthetic-producer", daemon=True)
    thread.start()
    positioning = start_positioning(settings, symbols, stop.is_set)
    # the cTrader producer publishes the simulator's depth itself
    books = start_books(settings, symbols, rate, 0, stop.is_set) if sim is None else None
    started = time.monotonic()
    interrupted = False
    try:
        with Live(console=console, refresh_per_second=2, screen=False) as live:
            while not duration_s or time.monotonic() - started < duration_s:
                for name, proc, log in (("worker", worker, worker_log),
                                        ("sink", sink, sink_log),
                                        ("DOM sink", dom_sink, dom_log),
                                        ("sentiment sink", sentiment_sink, sentiment_log)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"the {name} exited ({proc.returncode}); see {log}")
                lag = live_lag(settings, {worker.pid, sink.pid})
                live.update(_view(settings, symbols, produced[0], started, lag,
                                  newest_sentiment(settings, symbols),
                                  newest_dom(settings, symbols)))
                time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        thread.join(30)
        positioning.join(30)
        if books is not None:
            books.join(30)
        if sim is not None:
            os.killpg(sim.pid, signal.SIGTERM)
            sim.wait(30)
        for proc in (worker, sink, dom_sink, sentiment_sink):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, sink, dom_sink, sentiment_sink):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        console.print(f"stopped{' on Ctrl-C' if interrupted else ''}: worker and sink shut "
                      "down cleanly" if worker.returncode == 0 and sink.returncode == 0
                      and dom_sink.returncode == 0 and sentiment_sink.returncode == 0 else
                      f"stopped: worker exit {worker.returncode}, sink exit {sink.returncode}, "
                      f"DOM sink exit {dom_sink.returncode}, "
                      f"sentiment sink exit {sentiment_sink.returncode}")
        note = stack_still_running(settings)
        if note:
            console.print(note, highlight=False)
    return produced[0]
