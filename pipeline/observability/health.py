"""/metrics, /healthz and /readyz of a worker or sink process, on one port.

- /healthz: 200 while every loop of the process has beaten within the stale limit
  (the worker's event loop, each sink's poll loop), else 503 naming the stale one;
- /readyz: 200 when every readiness check passes (the worker: partitions assigned
  and its tables recovered; the sink: partitions assigned and PostgreSQL
  reachable), else 503 with the reasons, one a line.

The server runs on a thread of its own (prometheus-client's threading WSGI
server), so it answers, and says "stale", while the loop it watches is stuck.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from pipeline.observability.metrics import CommonMetrics

log = logging.getLogger("fxstream.health")

# None when ready, else why not (one line).
ReadinessCheck = Callable[[], str | None]


class Heartbeat:
    """When a loop last showed it runs (monotonic seconds)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last


@dataclass
class Health:
    """The process's loops and readiness checks, as the endpoints answer them."""

    stale_after_s: float
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    checks: list[ReadinessCheck] = field(default_factory=list)

    def heartbeat(self, name: str) -> Heartbeat:
        """The heartbeat of the loop ``name``, created at its first use."""
        return self.heartbeats.setdefault(name, Heartbeat())

    def oldest_beat_s(self) -> float:
        return max((hb.age() for hb in self.heartbeats.values()), default=0.0)

    def liveness(self) -> list[str]:
        """The loops that have not beaten within the stale limit (empty: alive)."""
        return [f"{name}: no heartbeat for {hb.age():.1f} s (stale after "
                f"{self.stale_after_s:g} s)" for name, hb in self.heartbeats.items()
                if hb.age() > self.stale_after_s]

    def readiness(self) -> list[str]:
        """Why the process is not ready (empty: ready)."""
        reasons = []
        for check in self.checks:
            try:
                reason = check()
            except Exception as exc:  # a check must never take the endpoint down
                reason = f"readiness check failed: {exc}"
            if reason:
                reasons.append(reason)
        return reasons

    def bind(self, common: CommonMetrics) -> None:
        """Expose both answers as gauges, computed when scraped."""
        common.ready.set_function(lambda: 0.0 if self.readiness() else 1.0)
        common.heartbeat_age.set_function(self.oldest_beat_s)


def keep_beating(loop: asyncio.AbstractEventLoop, heartbeat: Heartbeat,
                 interval_s: float = 1.0) -> None:
    """Beat ``heartbeat`` from ``loop`` every ``interval_s`` while the loop runs: a loop
    blocked by a long synchronous call stops beating."""

    def tick() -> None:
        heartbeat.beat()
        loop.call_later(interval_s, tick)

    loop.call_soon(tick)


def wsgi_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/healthz", "/readyz"):
            problems = health.liveness() if path == "/healthz" else health.readiness()
            status = "503 Service Unavailable" if problems else "200 OK"
            body = ("\n".join(problems) if problems else "ok") + "\n"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Cache-Control", "no-store")])
            return [body.encode()]
        if path in ("/", "/metrics"):
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"/metrics, /healthz or /readyz\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


@dataclass
class EndpointServer:
    """The running HTTP server; ``url`` is what a scraper or `fxstream status` reads."""

    server: ThreadingWSGIServer
    thread: threading.Thread
    url: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, health: Health, host: str, port: int, service: str
          ) -> EndpointServer | None:
    """Serve the endpoints on host:port (an IPv4 address or a name) from a daemon thread.
    Port 0 serves nothing.

    A port in use (another fxstream process on this host with the same port) is
    logged as an error and the process runs on without endpoints: metrics are
    worth less than the pipeline."""
    if port == 0:
        log.info("%s: metrics and health endpoints disabled (metrics port 0)", service)
        return None
    try:
        server = make_server(host, port, wsgi_app(registry, health), ThreadingWSGIServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        log.error("%s: cannot serve metrics and health on %s:%d (%s); running without them. "
                  "Give each process on this host its own port (--metrics-port or "
                  "FXSTREAM_METRICS_PORT; 0 disables)", service, host, port, exc)
        return None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    url = f"http://{host}:{server.server_port}"
    log.info("%s: metrics on %s/metrics, health on %s/healthz and %s/readyz", service, url,
             url, url)
    return EndpointServer(server, thread, url)
