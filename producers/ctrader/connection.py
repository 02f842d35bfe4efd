"""One TLS connection to an Open API server: framed messages, paced requests, heartbeats.

Requests carry a clientMsgId and are answered by a message with the same id (the reply or
a ProtoOAErrorRes / ProtoErrorRes, raised as ``OpenApiError``). Everything else (spot and
depth events, server heartbeats, errors without an id) goes to the event handler, in the
order the server sent it, from the one reader task.

Spotware limits each connection to 50 requests a second, 5 for historical data; requests
wait for a slot of a token bucket (``RateLimiter``) set below those limits by the settings.
A heartbeat goes out whenever nothing was sent for ``heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from producers.ctrader.mapping import describe_error
from producers.ctrader.messages import FrameError, FrameReader, Received, common, decode, encode

log = logging.getLogger("fxstream.ctrader")

ERROR_KINDS = ("ProtoOAErrorRes", "ProtoErrorRes")
HISTORY_REQUESTS = frozenset({"ProtoOAGetTrendbarsReq", "ProtoOAGetTickDataReq"})


class OpenApiError(Exception):
    """The server answered a request with an error response."""

    def __init__(self, kind: str, code: str, description: str = "",
                 account_id: int | None = None, maintenance_end_ms: int | None = None) -> None:
        self.kind = kind
        self.code = code
        self.description = description
        self.account_id = account_id
        super().__init__(describe_error(kind, code, description, account_id,
                                        maintenance_end_ms))

    @classmethod
    def from_message(cls, received: Received) -> OpenApiError:
        msg = received.message
        return cls(received.name, msg.errorCode,
                   msg.description if msg.HasField("description") else "",
                   getattr(msg, "ctidTraderAccountId", None) or None,
                   msg.maintenanceEndTimestamp if msg.HasField("maintenanceEndTimestamp")
                   else None)


class RateLimiter:
    """A token bucket: ``per_s`` requests a second on average, bursts of at most ``burst``."""

    def __init__(self, per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.burst = max(1.0, burst if burst is not None else per_s / 5)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one slot; returns how many seconds the caller must wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_s)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_s

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given (the simulator's certificate)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[Received], None], *, requests_per_s: float,
                 history_requests_per_s: float, heartbeat_s: float, timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._limit = RateLimiter(requests_per_s)
        self._history_limit = RateLimiter(history_requests_per_s, burst=1)
        self._heartbeat_s = heartbeat_s
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Received]] = {}
        self._last_send = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._tasks = [asyncio.create_task(self._read_loop(), name="ctrader-reader"),
                       asyncio.create_task(self._heartbeat_loop(), name="ctrader-heartbeat")]

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext,
                   on_event: Callable[[Received], None], *, requests_per_s: float,
                   history_requests_per_s: float, heartbeat_s: float,
                   timeout_s: float) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host,
                                    limit=1 << 20), timeout_s)
        return cls(reader, writer, on_event, requests_per_s=requests_per_s,
                   history_requests_per_s=history_requests_per_s, heartbeat_s=heartbeat_s,
                   timeout_s=timeout_s)

    async def request(self, message: Any, timeout_s: float | None = None) -> Any:
        """Send ``message`` and return its reply's payload, or raise OpenApiError."""
        name = type(message).__name__
        await (self._history_limit if name in HISTORY_REQUESTS else self._limit).acquire()
        if self.closed.is_set():
            raise ConnectionError(f"connection closed before {name}: {self.close_reason}")
        msg_id = f"fx{next(self._ids)}"
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self._send(encode(message, msg_id))
            received = await asyncio.wait_for(future, timeout_s or self._timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no answer to {name} within "
                                  f"{timeout_s or self._timeout_s:.0f} s") from None
        finally:
            self._pending.pop(msg_id, None)
        if received.name in ERROR_KINDS:
            raise OpenApiError.from_message(received)
        return received.message

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        self._last_send = time.monotonic()
        await self._writer.drain()

    async def _heartbeat_loop(self) -> None:
        beat = encode(common.ProtoHeartbeatEvent())
        with contextlib.suppress(ConnectionError, OSError):
            while not self.closed.is_set():
                idle = time.monotonic() - self._last_send
                if idle >= self._heartbeat_s:
                    await self._send(beat)
                    idle = 0.0
                await asyncio.sleep(max(0.05, self._heartbeat_s - idle))

    async def _read_loop(self) -> None:
        frames = FrameReader()
        reason = "closed by the server"
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for body in frames.feed(data):
                    self._dispatch(decode(body))
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except FrameError as exc:
            reason = f"bad data from the server: {exc}"
        except Exception as exc:  # an event handler failed: stop this connection, say why
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("handling a message failed")
        finally:
            self._finish(reason)

    def _dispatch(self, received: Received) -> None:
        future = self._pending.get(received.client_msg_id or "")
        if future is not None and not future.done():
            future.set_result(received)
            return
        self._on_event(received)

    def _finish(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {reason}"))
        with contextlib.suppress(Exception):
            self._writer.close()

    async def close(self) -> None:
        self._finish("closed by fxstream")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 2)
