"""The cTrader producer's protocol code against the simulator, in one process, without
Kafka: auth, token expiry, wrong credentials, request limits, injected errors, a slow
handshake, history paging, and a stream with a dropped connection compared with what the
simulator sent."""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings
from producers.ctrader import history as ct_history
from producers.ctrader.connection import Connection, OpenApiError, client_ssl_context
from producers.ctrader.credentials import Credentials, Secret, load_credentials
from producers.ctrader.messages import Received, model, oa
from producers.ctrader.run import run_ctrader_async
from producers.ctrader.session import CtraderFatal, Session
from simulators.ctrader import history
from simulators.ctrader.server import SimConfig, Simulator
from tests.test_ctrader_pure import ListOutput

SYMBOLS = ("EUR/USD", "USD/JPY", "XAU/USD")


async def until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def with_sim(config: SimConfig, body: Callable[[Simulator, int], Awaitable[None]]) -> None:
    async def main() -> None:
        sim = Simulator(config)
        port = await sim.start()
        stop = asyncio.Event()
        task = asyncio.create_task(sim.run(stop))
        try:
            await body(sim, port)
        finally:
            stop.set()
            await task

    asyncio.run(main())


def sim_config(tmp_path: Path, **kw: Any) -> SimConfig:
    values: dict[str, Any] = {"directory": tmp_path / "sim", "port": 0, "symbols": SYMBOLS,
                              "rate": 400.0, "live_time": False}
    values.update(kw)
    (tmp_path / "sim").mkdir(exist_ok=True)
    return SimConfig(**values)


def creds(sim_dir: Path) -> Credentials:
    return load_credentials(sim_dir / "credentials.env", env={})


async def connect(port: int, sim_dir: Path, on_event: Callable[[Received], None] = lambda r: None,
                  per_s: float = 45.0, timeout_s: float = 10.0) -> Connection:
    return await Connection.open("127.0.0.1", port, client_ssl_context(sim_dir / "cert.pem"),
                                 on_event, requests_per_s=per_s, history_requests_per_s=per_s,
                                 heartbeat_s=5.0, timeout_s=timeout_s)


def test_wrong_application_secret_is_fatal_and_says_which_setting(tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        c = creds(sim.config.directory)
        c.client_secret = Secret("not-the-secret-123")
        conn = await connect(port, sim.config.directory)
        try:
            with pytest.raises(CtraderFatal) as err:
                await Session(c, "demo", None, SYMBOLS, True).start(conn)
        finally:
            await conn.close()
        text = str(err.value)
        assert "CH_CLIENT_AUTH_FAILURE" in text and "CTRADER_CLIENT_SECRET" in text
        assert all(secret not in text for secret in c.secrets())

    with_sim(sim_config(tmp_path), body)


def test_expired_access_token_is_refreshed_and_written_back(tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        sim_dir = sim.config.directory
        c = creds(sim_dir)
        old = c.access_token.reveal()
        await until(lambda: sim.tokens.state(old) == "expired", 10, "the token to expire")
        conn = await connect(port, sim_dir)
        session = Session(c, "demo", 1002, SYMBOLS, True)
        try:
            await session.start(conn)
        finally:
            await conn.close()
        assert session.refreshes >= 1 and session.account is not None
        assert session.account.account_id == 1002
        assert c.access_token.reveal() != old
        assert f"CTRADER_ACCESS_TOKEN={c.access_token.reveal()}" in (
            sim_dir / "credentials.env").read_text()
        # A refresh token works once.
        spent = load_credentials(sim_dir / "credentials.env", env={})
        spent.refresh_token = Secret("used-up-token")
        conn = await connect(port, sim_dir)
        try:
            with pytest.raises(CtraderFatal, match="refused the refresh token"):
                await Session(spent, "demo", None, SYMBOLS, True).refresh(conn)
        finally:
            await conn.close()

    with_sim(sim_config(tmp_path, token_ttl_s=0.5), body)


def test_live_environment_picks_the_live_account(tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        conn = await connect(port, sim.config.directory)
        session = Session(creds(sim.config.directory), "live", None, SYMBOLS, False)
        try:
            await session.start(conn)
        finally:
            await conn.close()
        assert session.account is not None and session.account.account_id == 2001
        assert {i.symbol: i.digits for i in session.symbols.values()} == {
            "EUR/USD": 5, "USD/JPY": 3, "XAU/USD": 2}

    with_sim(sim_config(tmp_path), body)


def test_requests_above_the_server_limit_are_refused_and_the_limiter_avoids_it(
        tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        c = creds(sim.config.directory)
        auth = oa.ProtoOAApplicationAuthReq(clientId=c.client_id.reveal(),
                                            clientSecret=c.client_secret.reveal())
        fast = await connect(port, sim.config.directory, per_s=1000)
        codes = []
        for _ in range(8):
            try:
                await fast.request(auth)
                codes.append("ok")
            except OpenApiError as exc:
                codes.append(exc.code)
        await fast.close()
        assert "REQUEST_FREQUENCY_EXCEEDED" in codes
        paced = await connect(port, sim.config.directory, per_s=4)
        await paced.request(auth)
        for _ in range(6):
            with pytest.raises(OpenApiError, match="CH_CLIENT_ALREADY_AUTHENTICATED"):
                await paced.request(auth)
        await paced.close()

    with_sim(sim_config(tmp_path, max_requests_per_s=5), body)


def test_injected_errors_are_logged_with_their_codes_and_retried_when_busy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(sim: Simulator, port: int) -> None:
        conn = await connect(port, sim.config.directory)
        session = Session(creds(sim.config.directory), "demo", None,
                          (*SYMBOLS, "ZZZ/USD"), True)
        try:
            await session.start(conn)
        finally:
            await conn.close()
        assert len(session.symbols) == 3

    caplog.set_level(logging.INFO, logger="fxstream.ctrader")
    with_sim(sim_config(tmp_path, fail={
        "ProtoOASubscribeDepthQuotesReq": ("INVALID_REQUEST", 1),
        "ProtoOASymbolsListReq": ("REQUEST_FREQUENCY_EXCEEDED", 1)}), body)
    text = caplog.text
    assert "subscribing to depth quotes refused: ProtoOAErrorRes errorCode=INVALID_REQUEST" in text
    assert "errorCode=REQUEST_FREQUENCY_EXCEEDED" in text
    assert "offers no symbol ZZZ/USD" in text


def test_a_slow_handshake_times_out_and_the_next_connection_works(tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        with pytest.raises(TimeoutError):
            await connect(port, sim.config.directory, timeout_s=0.3)
        conn = await connect(port, sim.config.directory, timeout_s=5)
        await Session(creds(sim.config.directory), "demo", None, SYMBOLS, False).start(conn)
        await conn.close()

    with_sim(sim_config(tmp_path, slow_accepts=1, accept_delay_s=1.5), body)


def test_history_pages_through_the_protocol(tmp_path: Path) -> None:
    async def body(sim: Simulator, port: int) -> None:
        conn = await connect(port, sim.config.directory, per_s=20)
        session = Session(creds(sim.config.directory), "demo", None, SYMBOLS, False)
        await session.start(conn)
        assert session.account is not None
        account = session.account.account_id
        info = next(i for i in session.symbols.values() if i.symbol == "EUR/USD")
        start, end = 1_704_672_000_000, 1_704_672_000_000 + 2 * 3_600_000
        requests = []
        original = conn.request

        async def counting(message: Any, timeout_s: float | None = None) -> Any:
            requests.append(type(message).__name__)
            return await original(message, timeout_s)

        conn.request = counting  # type: ignore[method-assign]
        ticks = await ct_history.tick_data(conn, account, info, "bid", start, end)
        expected, _ = history.tick_page("EUR/USD", False, start, end, 0, page=10**9)
        assert requests.count("ProtoOAGetTickDataReq") >= 2
        assert ticks == [(ts, raw / 100_000) for ts, raw in reversed(expected)]
        bars = await ct_history.trendbars(conn, account, info, "M5", start, end, count=10)
        assert [b.ts_ms for b in bars] == [end - (10 - i) * 300_000 for i in range(10)]
        assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high
                   for b in bars)
        with pytest.raises(OpenApiError, match="INCORRECT_BOUNDARIES"):
            await conn.request(oa.ProtoOAGetTickDataReq(
                ctidTraderAccountId=account, symbolId=info.symbol_id, type=model.ASK,
                fromTimestamp=0, toTimestamp=end))
        await conn.close()

    with_sim(sim_config(tmp_path), body)


def test_stream_with_a_dropped_connection_and_token_expiry_equals_what_was_sent(
        tmp_path: Path) -> None:
    out = ListOutput()

    async def body(sim: Simulator, port: int) -> None:
        settings = Settings(symbols=SYMBOLS, ctrader_host="127.0.0.1", ctrader_port=port,
                            ctrader_ca_file=sim.config.directory / "cert.pem",
                            ctrader_depth_throttle_ms=100)
        stop = asyncio.Event()
        run = asyncio.create_task(run_ctrader_async(
            settings, creds(sim.config.directory), out, stop))
        await until(lambda: (sim.config.directory / "done").exists() and
                    len(out.ticks) >= sim.spots_sent, 60, "every tick to arrive")
        stop.set()
        report = await run
        assert report.connections >= 3 and report.refreshes >= 1

    config = sim_config(tmp_path, count=3000, rate=1500.0, drop_after=(700, 1900),
                        token_ttl_s=1.0)
    with_sim(config, body)
    with open(config.directory / "sent.csv") as handle:
        sent = [(r["symbol"], int(r["ts_ms"]), float(r["bid"]), float(r["ask"]))
                for r in csv.DictReader(handle)]
    assert [(t["symbol"], t["ts_ms"], t["bid"], t["ask"]) for t in out.ticks] == sent
    assert len(sent) > 1900 and out.snapshots
    for snap in out.snapshots:
        bids, asks = [p for p, _ in snap["bids"]], [p for p, _ in snap["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert len(bids) == len(asks) == 5
