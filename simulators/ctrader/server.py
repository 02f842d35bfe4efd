"""The simulated Open API server: connections, auth, subscriptions, the live stream.

Auth: the application credentials and the first token pair are made at start and written
to ``<dir>/credentials.env`` (the producer's secrets file); an access token expires
``token_ttl_s`` after it was issued: the server then sends
ProtoOAAccountsTokenInvalidatedEvent to the connections whose accounts it authorised,
drops their subscriptions, and answers requests carrying it with OA_AUTH_TOKEN_EXPIRED.
A refresh token works once. Three accounts: demo 1001 and 1002, live 2001.

The stream: one synthetic generator for the streamed symbols, paced at ``rate``; it runs
only while some connection is subscribed, so a test sees every generated tick unless a
connection is down. Every spot event sent is appended to ``<dir>/sent.csv`` (the tick
CSV format of ``fxstream produce replay``) after it was written to the connection, so with
one client the file is exactly what the client received. A spot event carries only the
sides that changed since the last one on that connection (both on the first); on
subscription the current quote is sent at once, as cTrader does.

Faults for tests: ``drop_after`` (close every connection, cleanly, after so many spot
events in all; SIGUSR1 does the same at any time), ``slow_accepts`` connections wait
``accept_delay_s`` before the TLS handshake, ``fail`` answers the first N requests of a
type with a given error code, and more than ``max_requests_per_s`` requests in a second
on one connection are answered with REQUEST_FREQUENCY_EXCEEDED, as are more than
``max_history_requests_per_s`` historical requests when that is set. Tick data older than
``tick_history_from_ms`` is not kept (a broker's tick history has a horizon; trendbars
reach further).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.ctrader.mapping import encode_tick_data, to_price
from producers.ctrader.messages import FrameError, FrameReader, common, decode, encode, model, oa
from producers.synthetic import SyntheticTicks
from simulators.ctrader import history
from simulators.ctrader.certs import make_certificate
from simulators.ctrader.market import Instrument, depth_levels, instruments

HISTORY_REQUESTS = frozenset({"ProtoOAGetTickDataReq", "ProtoOAGetTrendbarsReq"})

log = logging.getLogger("fxstream.ctrader-sim")

ACCOUNTS = ((1001, False, 7001), (1002, False, 7002), (2001, True, 9001))


@dataclass
class SimConfig:
    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    symbols: tuple[str, ...] = ("EUR/USD", "GBP/USD", "USD/JPY")
    rate: float = 200.0
    seed: int = 0
    live_time: bool = True
    count: int | None = None  # stop generating after this many ticks
    token_ttl_s: float = 3600.0
    depth: bool = True
    depth_levels: int = 5
    depth_interval_ms: int = 200
    drop_after: tuple[int, ...] = ()
    slow_accepts: int = 0
    accept_delay_s: float = 0.0
    fail: dict[str, tuple[str, int]] = field(default_factory=dict)
    max_requests_per_s: int = 50
    max_history_requests_per_s: int | None = None  # Spotware's is 5; None: not enforced
    tick_history_from_ms: int = 0  # no tick data before this (trendbars still served)
    heartbeat_s: float = 10.0
    idle_timeout_s: float = 30.0


@dataclass
class Tokens:
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    refresh: set[str] = field(default_factory=set)

    def issue(self, ttl_s: float) -> tuple[str, str]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = time.monotonic() + ttl_s
        self.refresh.add(refresh)
        return access, refresh

    def state(self, token: str) -> str:
        """'valid', 'expired' or 'invalid'."""
        expiry = self.access.get(token)
        if expiry is None:
            return "invalid"
        return "valid" if time.monotonic() < expiry else "expired"


class SimClient:
    """The server's side of one connection."""

    def __init__(self, number: int, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.writer = writer
        self.app_authorised = False
        self.accounts: dict[int, str] = {}  # account id -> access token it was authorised with
        self.spots: set[int] = set()
        self.spot_timestamps = False
        self.depth: set[int] = set()
        self.last_sent: dict[int, tuple[int, int]] = {}
        self.quote_ids: dict[int, list[int]] = {}
        self.requests: deque[float] = deque()
        self.history_requests: deque[float] = deque()
        self.closed = False
        self.last_receive = time.monotonic()

    def send(self, message: Any, client_msg_id: str | None = None) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        self.writer.write(encode(message, client_msg_id))
        return True

    async def drain(self) -> None:
        if not self.closed:
            try:
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.closed = True


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.instruments = instruments(tuple(config.symbols))
        self.by_id = {i.symbol_id: i for i in self.instruments}
        self.by_symbol = {i.symbol: i for i in self.instruments}
        self.tokens = Tokens()
        self.client_id = "fxsim-" + secrets.token_hex(6)
        self.client_secret = secrets.token_urlsafe(24)
        self.clients: list[SimClient] = []
        self.connections = 0
        self.spots_sent = 0
        self.generated = 0
        self.failures_left = {k: v[1] for k, v in config.fail.items()}
        self.last_quote: dict[int, tuple[int, int, int]] = {}  # symbol id -> ts, bid, ask
        self._drops = sorted(config.drop_after)
        self._subscribed = asyncio.Event()
        self._record = open(config.directory / "sent.csv", "w", buffering=1 << 16)  # noqa: SIM115
        self._record.write("symbol,ts_ms,bid,ask,volume\n")
        self._server: asyncio.AbstractServer | None = None
        self._ssl: ssl.SSLContext | None = None
        self._expired_notified: set[str] = set()

    # --- start-up -------------------------------------------------------------------------

    async def start(self) -> int:
        cfg = self.config
        cert, key = make_certificate(cfg.directory, (cfg.host, "localhost"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._ssl = context
        self._server = await asyncio.start_server(self._accept, cfg.host, cfg.port)
        port = self._server.sockets[0].getsockname()[1]
        access, refresh = self.tokens.issue(cfg.token_ttl_s)
        self._write_credentials(access, refresh, port, cert)
        log.info("listening on %s:%d; credentials in %s", cfg.host, port,
                 cfg.directory / "credentials.env")
        return port

    def _write_credentials(self, access: str, refresh: str, port: int, cert: Path) -> None:
        path = self.config.directory / "credentials.env"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"CTRADER_CLIENT_ID={self.client_id}\n"
                         f"CTRADER_CLIENT_SECRET={self.client_secret}\n"
                         f"CTRADER_ACCESS_TOKEN={access}\nCTRADER_REFRESH_TOKEN={refresh}\n")
        os.replace(tmp, path)
        (self.config.directory / "endpoint.env").write_text(
            f"FXSTREAM_CTRADER_HOST={self.config.host}\nFXSTREAM_CTRADER_PORT={port}\n"
            f"FXSTREAM_CTRADER_CA_FILE={cert}\n"
            f"FXSTREAM_CTRADER_SECRETS_FILE={path}\n")

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._market(stop)), asyncio.create_task(self._clock(stop))]
        await stop.wait()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._server is not None:
            self._server.close()
        for c in list(self.clients):
            await self._close(c)
        self._record.close()

    def drop_all(self, why: str) -> None:
        """Close every connection after what was written to it has been sent."""
        log.warning("dropping %d connections (%s)", len(self.clients), why)
        dropping, self.clients = self.clients, []
        if not self._any_subscribed():
            self._subscribed.clear()
        for c in dropping:
            asyncio.get_running_loop().create_task(self._close(c))

    # --- connections ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        if number <= self.config.slow_accepts:
            log.info("connection %d: holding the handshake for %.1f s", number,
                     self.config.accept_delay_s)
            await asyncio.sleep(self.config.accept_delay_s)
        try:
            await writer.start_tls(self._ssl)  # type: ignore[arg-type]
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            log.info("connection %d: TLS handshake failed: %s", number, exc)
            writer.close()
            return
        client = SimClient(number, writer)
        self.clients.append(client)
        log.info("connection %d open", number)
        frames = FrameReader()
        try:
            while not client.closed:
                data = await reader.read(1 << 16)
                if not data:
                    break
                client.last_receive = time.monotonic()
                for body in frames.feed(data):
                    self._handle(client, body)
                await client.drain()
        except (ConnectionError, OSError, ssl.SSLError, FrameError) as exc:
            log.info("connection %d: %s", number, exc)
        finally:
            await self._close(client)

    async def _close(self, client: SimClient) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if not self._any_subscribed():
            self._subscribed.clear()
        if client.closed:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.writer.drain(), 5)
        client.closed = True
        with contextlib.suppress(Exception):
            client.writer.close()
            await asyncio.wait_for(client.writer.wait_closed(), 5)
        log.info("connection %d closed", client.number)

    def _any_subscribed(self) -> bool:
        return any(c.spots and not c.closed for c in self.clients)

    # --- requests -----------------------------------------------------------------------------

    def _error(self, client: SimClient, msg_id: str | None, code: str, description: str,
               account: int | None = None) -> None:
        res = oa.ProtoOAErrorRes(errorCode=code, description=description)
        if account:
            res.ctidTraderAccountId = account
        client.send(res, msg_id)

    def _handle(self, client: SimClient, body: bytes) -> None:
        received = decode(body)
        name, msg, msg_id = received.name, received.message, received.client_msg_id
        if name == "ProtoHeartbeatEvent":
            return
        if msg is None:
            client.send(common.ProtoErrorRes(errorCode="UNSUPPORTED_MESSAGE",
                                             description=f"payload type {received.kind}"),
                        msg_id)
            return
        now = time.monotonic()
        client.requests.append(now)
        while client.requests and now - client.requests[0] > 1.0:
            client.requests.popleft()
        if len(client.requests) > self.config.max_requests_per_s:
            self._error(client, msg_id, "REQUEST_FREQUENCY_EXCEEDED",
                        f"more than {self.config.max_requests_per_s} requests a second")
            return
        history_limit = self.config.max_history_requests_per_s
        if history_limit is not None and name in HISTORY_REQUESTS:
            client.history_requests.append(now)
            while client.history_requests and now - client.history_requests[0] > 1.0:
                client.history_requests.popleft()
            if len(client.history_requests) > history_limit:
                log.warning("connection %d: more than %d historical requests a second",
                            client.number, history_limit)
                self._error(client, msg_id, "REQUEST_FREQUENCY_EXCEEDED",
                            f"more than {history_limit} historical requests a second")
                return
        if self.failures_left.get(name, 0) > 0:
            self.failures_left[name] -= 1
            code = self.config.fail[name][0]
            self._error(client, msg_id, code, f"injected failure of {name}")
            return
        handler = getattr(self, f"_on_{name}", None)
        if handler is None:
            client.send(common.ProtoErrorRes(errorCode="UNSUPPORTED_MESSAGE",
                                             description=f"{name} is not simulated"), msg_id)
            return
        handler(client, msg, msg_id)

    def _on_ProtoOAApplicationAuthReq(self, client: SimClient, msg: Any, msg_id: str | None
                                      ) -> None:
        if client.app_authorised:
            self._error(client, msg_id, "CH_CLIENT_ALREADY_AUTHENTICATED", "already")
        elif (secrets.compare_digest(msg.clientId, self.client_id)
              and secrets.compare_digest(msg.clientSecret, self.client_secret)):
            client.app_authorised = True
            client.send(oa.ProtoOAApplicationAuthRes(), msg_id)
        else:
            self._error(client, msg_id, "CH_CLIENT_AUTH_FAILURE",
                        "clientId or clientSecret is incorrect")

    def _token_ok(self, client: SimClient, msg_id: str | None, token: str) -> bool:
        if not client.app_authorised:
            self._error(client, msg_id, "CH_CLIENT_NOT_AUTHENTICATED",
                        "authorise the application first")
            return False
        state = self.tokens.state(token)
        if state == "expired":
            self._error(client, msg_id, "OA_AUTH_TOKEN_EXPIRED", "access token expired")
        elif state == "invalid":
            self._error(client, msg_id, "CH_ACCESS_TOKEN_INVALID", "access token invalid")
        return state == "valid"

    def _on_ProtoOAGetAccountListByAccessTokenReq(self, client: SimClient, msg: Any,
                                                  msg_id: str | None) -> None:
        if not self._token_ok(client, msg_id, msg.accessToken):
            return
        res = oa.ProtoOAGetAccountListByAccessTokenRes(accessToken=msg.accessToken)
        for account, live, login in ACCOUNTS:
            res.ctidTraderAccount.add(ctidTraderAccountId=account, isLive=live,
                                      traderLogin=login)
        client.send(res, msg_id)

    def _on_ProtoOAAccountAuthReq(self, client: SimClient, msg: Any, msg_id: str | None
                                  ) -> None:
        if not self._token_ok(client, msg_id, msg.accessToken):
            return
        if msg.ctidTraderAccountId not in {a for a, _, _ in ACCOUNTS}:
            self._error(client, msg_id, "CH_CTID_TRADER_ACCOUNT_NOT_FOUND",
                        f"no account {msg.ctidTraderAccountId}")
            return
        client.accounts[msg.ctidTraderAccountId] = msg.accessToken
        client.send(oa.ProtoOAAccountAuthRes(ctidTraderAccountId=msg.ctidTraderAccountId),
                    msg_id)

    def _on_ProtoOARefreshTokenReq(self, client: SimClient, msg: Any, msg_id: str | None
                                   ) -> None:
        if msg.refreshToken not in self.tokens.refresh:
            self._error(client, msg_id, "CH_ACCESS_TOKEN_INVALID", "refresh token invalid")
            return
        self.tokens.refresh.discard(msg.refreshToken)
        access, refresh = self.tokens.issue(self.config.token_ttl_s)
        client.send(oa.ProtoOARefreshTokenRes(accessToken=access, tokenType="bearer",
                                              expiresIn=int(self.config.token_ttl_s),
                                              refreshToken=refresh), msg_id)

    def _account_ok(self, client: SimClient, msg_id: str | None, account: int) -> bool:
        token = client.accounts.get(account)
        if token is None:
            self._error(client, msg_id, "ACCOUNT_NOT_AUTHORIZED",
                        f"account {account} is not authorised", account)
            return False
        if self.tokens.state(token) != "valid":
            self._error(client, msg_id, "OA_AUTH_TOKEN_EXPIRED", "access token expired",
                        account)
            return False
        return True

    def _on_ProtoOASymbolsListReq(self, client: SimClient, msg: Any, msg_id: str | None
                                  ) -> None:
        if not self._account_ok(client, msg_id, msg.ctidTraderAccountId):
            return
        res = oa.ProtoOASymbolsListRes(ctidTraderAccountId=msg.ctidTraderAccountId)
        for i in self.instruments:
            res.symbol.add(symbolId=i.symbol_id, symbolName=i.broker_name, enabled=True)
        client.send(res, msg_id)

    def _on_ProtoOASymbolByIdReq(self, client: SimClient, msg: Any, msg_id: str | None
                                 ) -> None:
        if not self._account_ok(client, msg_id, msg.ctidTraderAccountId):
            return
        unknown = [s for s in msg.symbolId if s not in self.by_id]
        if unknown:
            self._error(client, msg_id, "SYMBOL_NOT_FOUND", f"symbol ids {unknown}",
                        msg.ctidTraderAccountId)
            return
        res = oa.ProtoOASymbolByIdRes(ctidTraderAccountId=msg.ctidTraderAccountId)
        for sid in msg.symbolId:
            i = self.by_id[sid]
            res.symbol.add(symbolId=sid, digits=i.digits, pipPosition=max(0, i.digits - 1))
        client.send(res, msg_id)

    def _on_ProtoOASubscribeSpotsReq(self, client: SimClient, msg: Any, msg_id: str | None
                                     ) -> None:
        account = msg.ctidTraderAccountId
        if not self._account_ok(client, msg_id, account):
            return
        ids = list(msg.symbolId)
        if any(s not in self.by_id for s in ids):
            self._error(client, msg_id, "SYMBOL_NOT_FOUND", "unknown symbol id", account)
            return
        if any(s in client.spots for s in ids):
            self._error(client, msg_id, "ALREADY_SUBSCRIBED", "already subscribed", account)
            return
        client.send(oa.ProtoOASubscribeSpotsRes(ctidTraderAccountId=account), msg_id)
        client.spots.update(ids)
        client.spot_timestamps = msg.subscribeToSpotTimestamp
        self._subscribed.set()
        for sid in ids:  # the current quote, at once
            if sid in self.last_quote:
                self._send_spot(client, account, sid, *self.last_quote[sid])
        self._record.flush()

    def _on_ProtoOASubscribeDepthQuotesReq(self, client: SimClient, msg: Any,
                                           msg_id: str | None) -> None:
        account = msg.ctidTraderAccountId
        if not self._account_ok(client, msg_id, account):
            return
        ids = list(msg.symbolId)
        if any(s not in self.by_id for s in ids):
            self._error(client, msg_id, "SYMBOL_NOT_FOUND", "unknown symbol id", account)
            return
        client.send(oa.ProtoOASubscribeDepthQuotesRes(ctidTraderAccountId=account), msg_id)
        client.depth.update(ids)

    def _on_ProtoOAGetTickDataReq(self, client: SimClient, msg: Any, msg_id: str | None
                                  ) -> None:
        account = msg.ctidTraderAccountId
        if not self._account_ok(client, msg_id, account):
            return
        inst = self.by_id.get(msg.symbolId)
        if inst is None:
            self._error(client, msg_id, "SYMBOL_NOT_FOUND", "unknown symbol id", account)
            return
        try:
            ticks, more = history.tick_page(inst.symbol, msg.type == model.ASK,
                                            msg.fromTimestamp, msg.toTimestamp,
                                            self.config.seed)
        except history.BoundaryError as exc:
            self._error(client, msg_id, "INCORRECT_BOUNDARIES", str(exc), account)
            return
        if ticks and ticks[-1][0] < self.config.tick_history_from_ms:
            # The broker keeps no tick data that old: what it has of the range, no more.
            ticks = [t for t in ticks if t[0] >= self.config.tick_history_from_ms]
            more = False
        log.info("connection %d: tick data of %s %s [%d, %d): %d ticks", client.number,
                 inst.symbol, "ask" if msg.type == model.ASK else "bid", msg.fromTimestamp,
                 msg.toTimestamp, len(ticks))
        res = oa.ProtoOAGetTickDataRes(ctidTraderAccountId=account, hasMore=more)
        for ts, tick in encode_tick_data(ticks):
            res.tickData.add(timestamp=ts, tick=tick)
        client.send(res, msg_id)

    def _on_ProtoOAGetTrendbarsReq(self, client: SimClient, msg: Any, msg_id: str | None
                                   ) -> None:
        account = msg.ctidTraderAccountId
        if not self._account_ok(client, msg_id, account):
            return
        inst = self.by_id.get(msg.symbolId)
        if inst is None:
            self._error(client, msg_id, "SYMBOL_NOT_FOUND", "unknown symbol id", account)
            return
        period = model.ProtoOATrendbarPeriod.Name(msg.period)
        try:
            bars = history.trendbars(inst.symbol, period, msg.fromTimestamp, msg.toTimestamp,
                                     msg.count if msg.HasField("count") else None,
                                     self.config.seed, inst.digits)
        except history.BoundaryError as exc:
            self._error(client, msg_id, "INCORRECT_BOUNDARIES", str(exc), account)
            return
        res = oa.ProtoOAGetTrendbarsRes(ctidTraderAccountId=account, period=msg.period,
                                        timestamp=msg.toTimestamp, symbolId=msg.symbolId)
        for start, low, open_raw, high, close_raw, volume in bars:
            res.trendbar.add(volume=volume, period=msg.period, low=low,
                             deltaOpen=open_raw - low, deltaHigh=high - low,
                             deltaClose=close_raw - low,
                             utcTimestampInMinutes=start // 60_000)
        client.send(res, msg_id)

    # --- the stream -----------------------------------------------------------------------------

    def _send_spot(self, client: SimClient, account: int, symbol_id: int, ts: int, bid: int,
                   ask: int) -> None:
        event = oa.ProtoOASpotEvent(ctidTraderAccountId=account, symbolId=symbol_id)
        last = client.last_sent.get(symbol_id)
        bid_changed = last is None or last[0] != bid
        ask_changed = last is None or last[1] != ask
        if not bid_changed and not ask_changed:  # a spot event always carries a price
            bid_changed = ask_changed = True
        if bid_changed:
            event.bid = bid
        if ask_changed:
            event.ask = ask
        if client.spot_timestamps:
            event.timestamp = ts
        if not client.send(event):
            return
        client.last_sent[symbol_id] = (bid, ask)
        inst = self.by_id[symbol_id]
        self._record.write(f"{inst.symbol},{ts},{to_price(bid, inst.digits)!r},"
                           f"{to_price(ask, inst.digits)!r},\n")
        self.spots_sent += 1

    def _stream(self) -> Iterator[dict[str, Any]]:
        start = int(time.time() * 1000) if self.config.live_time else None
        gen = SyntheticTicks(list(self.config.symbols), rate=self.config.rate,
                             seed=self.config.seed, start_ms=start, provider="ctrader-sim")
        while True:
            yield from gen.ticks(duration_s=60.0)

    async def _market(self, stop: asyncio.Event) -> None:
        cfg = self.config
        ticks = self._stream()
        pending = next(ticks)
        offset = 0  # event time added for the time nobody was subscribed (live time)
        last_depth: dict[int, float] = {}
        salt = 0
        while not stop.is_set():
            if not self._subscribed.is_set():
                paused = time.monotonic()
                await self._subscribed.wait()
                if cfg.live_time:
                    offset += int((time.monotonic() - paused) * 1000)
            wall0, ts0 = time.monotonic(), pending["ts_ms"]
            while self._subscribed.is_set() and not stop.is_set():
                horizon = ts0 + (time.monotonic() - wall0) * 1000
                touched: set[SimClient] = set()
                while pending["ts_ms"] <= horizon:
                    if cfg.count is not None and self.generated >= cfg.count:
                        break
                    inst = self.by_symbol[pending["symbol"]]
                    bid = round(pending["bid"] * 100_000)
                    ask = round(pending["ask"] * 100_000)
                    ts = pending["ts_ms"] + offset
                    self.last_quote[inst.symbol_id] = (ts, bid, ask)
                    self.generated += 1
                    for client in self.clients:
                        account = next(iter(client.accounts), None)
                        if account is not None and inst.symbol_id in client.spots:
                            self._send_spot(client, account, inst.symbol_id, ts, bid, ask)
                            touched.add(client)
                    now = time.monotonic()
                    if cfg.depth and now - last_depth.get(inst.symbol_id, 0) >= (
                            cfg.depth_interval_ms / 1000):
                        last_depth[inst.symbol_id] = now
                        salt += 1
                        self._send_depth(inst, bid, ask, salt, touched)
                    pending = next(ticks)
                    if self._drops and self.spots_sent >= self._drops[0]:
                        self._drops.pop(0)
                        self._record.flush()
                        for client in touched:
                            await client.drain()
                        self.drop_all(f"{self.spots_sent} spot events sent")
                        break
                self._record.flush()
                for client in touched:
                    await client.drain()
                if cfg.count is not None and self.generated >= cfg.count:
                    (cfg.directory / "done").write_text(f"{self.spots_sent}\n")
                    log.info("generated %d ticks, sent %d spot events: done", self.generated,
                             self.spots_sent)
                    await stop.wait()
                    return
                await asyncio.sleep(0.01)

    def _send_depth(self, inst: Instrument, bid: int, ask: int, salt: int,
                    touched: set[SimClient]) -> None:
        levels = depth_levels(bid, ask, inst.digits, self.config.depth_levels, salt)
        for client in self.clients:
            if inst.symbol_id not in client.depth or not client.accounts:
                continue
            account = next(iter(client.accounts))
            event = oa.ProtoOADepthEvent(ctidTraderAccountId=account, symbolId=inst.symbol_id)
            event.deletedQuotes.extend(client.quote_ids.get(inst.symbol_id, []))
            ids = []
            for k, (price, size, is_bid) in enumerate(levels):
                quote_id = salt * 1000 + k
                ids.append(quote_id)
                if is_bid:
                    event.newQuotes.add(id=quote_id, size=size, bid=price)
                else:
                    event.newQuotes.add(id=quote_id, size=size, ask=price)
            client.quote_ids[inst.symbol_id] = ids
            client.send(event)
            touched.add(client)

    async def _clock(self, stop: asyncio.Event) -> None:
        """Heartbeats, idle connections, and access tokens running out."""
        last_beat = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.2)
            now = time.monotonic()
            beat = now - last_beat >= self.config.heartbeat_s
            if beat:
                last_beat = now
            for client in list(self.clients):
                if now - client.last_receive > self.config.idle_timeout_s:
                    log.info("connection %d idle for %.0f s: closing", client.number,
                             self.config.idle_timeout_s)
                    await self._close(client)
                    continue
                if beat:
                    client.send(common.ProtoHeartbeatEvent())
                expired = [a for a, t in client.accounts.items()
                           if self.tokens.state(t) != "valid"]
                if expired:
                    for a in expired:
                        del client.accounts[a]
                    client.spots.clear()
                    client.depth.clear()
                    client.quote_ids.clear()
                    client.last_sent.clear()
                    client.send(oa.ProtoOAAccountsTokenInvalidatedEvent(
                        ctidTraderAccountIds=expired, reason="access token expired"))
                    log.info("connection %d: token of accounts %s expired", client.number,
                             expired)
                await client.drain()
            if not self._any_subscribed():
                self._subscribed.clear()


def run_simulator(config: SimConfig) -> None:
    """Serve until SIGTERM or SIGINT; SIGUSR1 drops every connection."""

    async def main() -> None:
        config.directory.mkdir(parents=True, exist_ok=True)
        for name in ("done",):
            (config.directory / name).unlink(missing_ok=True)
        sim = Simulator(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, sim.drop_all, "SIGUSR1")
        await sim.start()  # writes endpoint.env last: the signals work once it exists
        await sim.run(stop)
        log.info("stopped: %d connections, %d ticks generated, %d spot events sent",
                 sim.connections, sim.generated, sim.spots_sent)

    asyncio.run(main())
