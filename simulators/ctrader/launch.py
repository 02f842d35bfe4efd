"""Starting the simulator as its own process, and pointing a producer's settings at it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pipeline.private_files import write_private
from pipeline.settings import Settings, settings_yaml


def read_endpoint(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of the simulator's ``endpoint.env``."""
    return dict(line.split("=", 1) for line in path.read_text().split())


def settings_for(settings: Settings, sim_dir: Path) -> Settings:
    """``settings`` with the producer pointed at the simulator writing into ``sim_dir``."""
    values = read_endpoint(sim_dir / "endpoint.env")
    return settings.model_copy(update={
        "ctrader_host": values["FXSTREAM_CTRADER_HOST"],
        "ctrader_port": int(values["FXSTREAM_CTRADER_PORT"]),
        "ctrader_ca_file": Path(values["FXSTREAM_CTRADER_CA_FILE"]),
        "ctrader_secrets_file": Path(values["FXSTREAM_CTRADER_SECRETS_FILE"]),
        "ctrader_environment": "demo"})


def start_simulator(settings: Settings, symbols: list[str], rate: float, log_dir: Path,
                    timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], Settings, Path]:
    """`fxstream ctrader-sim` on a free port, in its own session; returns the process, the
    settings that point the producer at it, and its log."""
    sim_dir = (settings.state_dir / "ctrader-sim").resolve()
    sim_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    endpoint = sim_dir / "endpoint.env"
    endpoint.unlink(missing_ok=True)
    config = log_dir / "ctrader-sim-settings.yaml"
    write_private(config, settings_yaml(settings))
    log = log_dir / "ctrader-sim.log"
    exe = Path(sys.executable).with_name("fxstream")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    with open(log, "ab") as handle:
        proc = subprocess.Popen([*cmd, "--config", str(config), "ctrader-sim", "--dir",
                                 str(sim_dir), "--port", "0", "--symbols", ",".join(symbols),
                                 "--rate", str(rate)], stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError(f"the cTrader simulator did not start; see {log}")
        time.sleep(0.1)
    return proc, settings_for(settings, sim_dir), log
