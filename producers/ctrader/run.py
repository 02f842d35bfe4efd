"""`fxstream produce ctrader`: the run loop and what events become.

Spot events become ticks on the tick topic and depth events become book snapshots on
the DOM topic, both through the framing publisher every fxstream producer uses. A lost
connection is opened again after a growing pause (0.5 s doubling up to the configured
maximum, with jitter), and everything is subscribed again; the last known bid and ask
of each symbol survive it, the depth books start afresh (the server sends them anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.settings import Settings
from pipeline.topics import wait_for_leaders
from producers.ctrader.book import DepthBook, SnapshotThrottle, depth_event_quotes
from producers.ctrader.connection import Connection, OpenApiError, client_ssl_context
from producers.ctrader.credentials import Credentials, ScrubSecrets
from producers.ctrader.mapping import SpotState, describe_error, spot_event_to_tick
from producers.ctrader.messages import Received
from producers.ctrader.session import CtraderFatal, Session

log = logging.getLogger("fxstream.ctrader")

HOSTS = {"demo": "demo.ctraderapi.com", "live": "live.ctraderapi.com"}


class Output(Protocol):
    """Where ticks and snapshots go: Kafka in production (``KafkaOutput``)."""

    def tick(self, symbol: str, tick: dict[str, Any]) -> None: ...
    def snapshot(self, symbol: str, snapshot: dict[str, Any]) -> None: ...
    def poll(self) -> None: ...
    def flush(self) -> None: ...


class KafkaOutput:
    """Ticks and DOM snapshots through one Kafka producer, each framed per symbol."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        from producers.kafka_io import TickPublisher, producer_config

        producer = Producer(producer_config(settings))
        self.ticks = TickPublisher(settings, producer=producer)
        self.dom = TickPublisher(settings, producer=producer, topic=settings.topics.dom)
        self._producer = producer
        self._settings = settings

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every partition of both topics has a leader: the stream starts only
        when all of them take writes."""
        wait_for_leaders(self._settings, (self.ticks.topic, self.dom.topic), timeout_s)

    def tick(self, symbol: str, tick: dict[str, Any]) -> None:
        self.ticks.publish(symbol, tick)

    def snapshot(self, symbol: str, snapshot: dict[str, Any]) -> None:
        self.dom.publish(symbol, snapshot)

    def poll(self) -> None:
        self.ticks.tick()
        self.dom.tick()

    def flush(self) -> None:
        self.dom.flush()
        self.ticks.flush()


@dataclass
class CtraderReport:
    ticks: int = 0
    snapshots: int = 0
    connections: int = 0
    refreshes: int = 0
    seconds: float = 0.0


class EventHandler:
    """Turns server events into ticks and snapshots (no I/O of its own but the output)."""

    def __init__(self, session: Session, output: Output, depth_levels: int,
                 throttle_ms: float, clock_ms: Callable[[], int] = lambda: int(
                     time.time() * 1000)) -> None:
        self.session = session
        self.output = output
        self.depth_levels = depth_levels
        self.throttle = SnapshotThrottle(throttle_ms)
        self.clock_ms = clock_ms
        self.spots: dict[int, SpotState] = {}
        self.books: dict[int, DepthBook] = {}
        self.report = CtraderReport()
        self.on_token_invalidated: Callable[[], None] = lambda: None

    def reset_books(self) -> None:
        self.books.clear()
        for info in self.session.symbols.values():
            self.throttle.forget(info.symbol)

    def __call__(self, received: Received) -> None:
        name, msg = received.name, received.message
        if name == "ProtoOASpotEvent":
            info = self.session.symbols.get(msg.symbolId)
            if info is None:
                return
            tick = spot_event_to_tick(info, self.spots.setdefault(msg.symbolId, SpotState()),
                                      msg, self.clock_ms())
            if tick is not None:
                self.output.tick(info.symbol, tick)
                self.report.ticks += 1
        elif name == "ProtoOADepthEvent":
            info = self.session.symbols.get(msg.symbolId)
            if info is None:
                return
            book = self.books.get(msg.symbolId)
            if book is None:
                book = self.books[msg.symbolId] = DepthBook(info.digits)
            book.apply(*depth_event_quotes(msg))
            now = self.clock_ms()
            if self.throttle.changed(info.symbol, now):
                self._send_snapshot(msg.symbolId, now)
        elif name == "ProtoHeartbeatEvent":
            pass
        elif name in ("ProtoOAErrorRes", "ProtoErrorRes"):
            log.error("server error: %s", OpenApiError.from_message(received))
            if msg.errorCode in ("OA_AUTH_TOKEN_EXPIRED", "CH_ACCESS_TOKEN_INVALID"):
                self.on_token_invalidated()
        elif name == "ProtoOAAccountsTokenInvalidatedEvent":
            log.warning("the server invalidated the access token of accounts %s (%s)",
                        list(msg.ctidTraderAccountIds), msg.reason or "no reason given")
            self.on_token_invalidated()
        elif name == "ProtoOAClientDisconnectEvent":
            log.warning("the server is closing the connection: %s", msg.reason or "no reason")
        elif name == "ProtoOAAccountDisconnectEvent":
            log.warning("the server logged account %d out", msg.ctidTraderAccountId)
            self.on_token_invalidated()
        else:
            log.debug("ignored %s", name)

    def flush_due(self) -> None:
        """Snapshots held back by the throttle whose interval has passed."""
        now = self.clock_ms()
        by_name = {i.symbol: sid for sid, i in self.session.symbols.items()}
        for symbol in self.throttle.due(now):
            sid = by_name.get(symbol)
            if sid is not None and sid in self.books:
                self._send_snapshot(sid, now)

    def _send_snapshot(self, symbol_id: int, now_ms: int) -> None:
        info = self.session.symbols[symbol_id]
        snap = self.books[symbol_id].snapshot(info.symbol, now_ms, self.depth_levels)
        self.output.snapshot(info.symbol, snap)
        self.report.snapshots += 1


def backoff_s(attempt: int, max_s: float, rng: random.Random) -> float:
    """0.5 s doubling per failed attempt, at most ``max_s``, with +-20 % jitter."""
    base = min(max_s, 0.5 * 2 ** min(attempt, 30))
    return base * rng.uniform(0.8, 1.2)


async def run_ctrader_async(settings: Settings, credentials: Credentials, output: Output,
                            stop: asyncio.Event, duration_s: float | None = None,
                            on_progress: Callable[[CtraderReport], None] | None = None
                            ) -> CtraderReport:
    session = Session(credentials, settings.ctrader_environment, settings.ctrader_account_id,
                      settings.symbols, settings.ctrader_depth)
    handler = EventHandler(session, output, settings.ctrader_depth_levels,
                           settings.ctrader_depth_throttle_ms)
    session.before_subscribe = handler.reset_books
    host = settings.ctrader_host or HOSTS[settings.ctrader_environment]
    context = client_ssl_context(settings.ctrader_ca_file)
    rng = random.Random()
    started = time.monotonic()
    scrub = ScrubSecrets(credentials)
    log.addFilter(scrub)
    if duration_s:
        asyncio.get_running_loop().call_later(duration_s, stop.set)
    pump = asyncio.create_task(_pump(output, handler, stop, on_progress,
                                     max(0.005, settings.frame_linger_ms / 2000)))
    failures = 0
    try:
        while not stop.is_set():
            conn: Connection | None = None
            reauth: list[asyncio.Task[None]] = []
            try:
                conn = await Connection.open(
                    host, settings.ctrader_port, context, handler,
                    requests_per_s=settings.ctrader_requests_per_s,
                    history_requests_per_s=settings.ctrader_history_requests_per_s,
                    heartbeat_s=settings.ctrader_heartbeat_s,
                    timeout_s=settings.ctrader_timeout_s)
                handler.report.connections += 1
                log.info("connected to %s:%d", host, settings.ctrader_port)
                fatal: list[CtraderFatal] = []
                handler.on_token_invalidated = lambda c=conn, r=reauth, f=fatal: (
                    _schedule_reauth(session, c, r, f))
                if not await _unless_stopped(session.start(conn), stop):
                    break
                failures = 0
                await _wait_either(stop, conn.closed)
                if fatal:
                    raise fatal[0]
                if not stop.is_set():
                    log.warning("connection lost: %s", conn.close_reason)
            except CtraderFatal:
                raise
            except (OSError, ConnectionError, TimeoutError, OpenApiError) as exc:
                log.warning("cTrader connection failed: %s",
                            credentials.scrub(f"{type(exc).__name__}: {exc}"))
            finally:
                handler.report.refreshes = session.refreshes
                for task in reauth:
                    task.cancel()
                if conn is not None:
                    await conn.close()
                handler.reset_books()
            if stop.is_set():
                break
            failures += 1
            pause = backoff_s(failures - 1, settings.ctrader_reconnect_max_s, rng)
            log.info("reconnecting in %.1f s", pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
    finally:
        stop.set()
        try:
            await pump
            output.flush()
        finally:
            log.removeFilter(scrub)
        handler.report.seconds = time.monotonic() - started
    return handler.report


def _schedule_reauth(session: Session, conn: Connection, tasks: list[asyncio.Task[None]],
                     fatal: list[CtraderFatal]) -> None:
    """Refresh and re-authorise in the background; events keep being read meanwhile."""
    if any(not t.done() for t in tasks):
        return

    async def reauth() -> None:
        try:
            await session.reauthorise(conn)
        except CtraderFatal as exc:
            fatal.append(exc)
            await conn.close()
        except (OpenApiError, ConnectionError, OSError) as exc:
            log.warning("re-authorising after token expiry failed (%s); reconnecting", exc)
            await conn.close()

    tasks.append(asyncio.create_task(reauth(), name="ctrader-reauth"))


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); True when it finished."""
    task = asyncio.create_task(work)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # its exception, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


async def _wait_either(a: asyncio.Event, b: asyncio.Event) -> None:
    tasks = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()


async def _pump(output: Output, handler: EventHandler, stop: asyncio.Event,
                on_progress: Callable[[CtraderReport], None] | None, every_s: float) -> None:
    """Send frames whose linger passed and held-back snapshots; serve Kafka callbacks.
    A delivery failure stops the producer (it is raised from the run's end)."""
    try:
        while not stop.is_set():
            handler.flush_due()
            output.poll()
            if on_progress is not None:
                on_progress(handler.report)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
        handler.flush_due()
    except BaseException:
        stop.set()
        raise


def run_ctrader(settings: Settings, credentials: Credentials, duration_s: float | None = None,
                should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[CtraderReport], None] | None = None,
                output: Output | None = None) -> CtraderReport:
    """Run until SIGTERM/SIGINT (in the main thread), ``should_stop()`` or ``duration_s``."""

    async def main() -> CtraderReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        watcher = None
        if should_stop is not None:
            async def watch() -> None:
                while not stop.is_set():
                    if should_stop():
                        stop.set()
                    await asyncio.sleep(0.1)
            watcher = asyncio.create_task(watch())
        try:
            out = output
            if out is None:
                kafka = KafkaOutput(settings)
                await asyncio.get_running_loop().run_in_executor(None, kafka.wait_ready)
                out = kafka
            return await run_ctrader_async(settings, credentials, out, stop, duration_s,
                                           on_progress)
        finally:
            if watcher is not None:
                watcher.cancel()

    return asyncio.run(main())


__all__ = ["CtraderFatal", "CtraderReport", "EventHandler", "KafkaOutput", "describe_error",
           "run_ctrader"]
