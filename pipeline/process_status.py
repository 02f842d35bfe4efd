"""What each worker and sink process is doing, as a small JSON file per process.

Processes write ``<state dir>/status/<service>-<pid>.json`` when their state
changes (waiting for Kafka or PostgreSQL, running, stopped); `fxstream status`
reads them, so a process that waits for a service is visible without its log.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.redact import redact
from pipeline.stack.process import pid_alive


def status_file(state_dir: Path, service: str, pid: int | None = None) -> Path:
    return Path(state_dir) / "status" / f"{service}-{pid or os.getpid()}.json"


def write_status(state_dir: Path, service: str, state: str, **extra: Any) -> None:
    """Record this process's state; never fails the caller (the file is informational).
    Text values (an error's message) are redacted: `fxstream status` shows them."""
    extra = {k: redact(v) if isinstance(v, str) else v for k, v in extra.items()}
    path = status_file(state_dir, service)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"service": service, "pid": os.getpid(), "state": state,
                                      "at_ms": int(time.time() * 1000), **extra}))
        tmp.replace(path)


def read_statuses(state_dir: Path) -> list[dict[str, Any]]:
    """Every process status under the state directory; a process no longer alive is
    reported as 'exited' unless it said 'stopped'."""
    out = []
    for path in sorted((Path(state_dir) / "status").glob("*.json")):
        try:
            record = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if record.get("state") != "stopped" and not _alive(record.get("pid")):
            record["state"] = "exited"
        out.append(record)
    return out


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and pid > 0 and pid_alive(pid)

