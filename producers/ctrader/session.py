"""The Open API conversation of one connection: authorisation, symbols, subscriptions.

Order: application auth (client id and secret), the account list of the access token,
the account whose isLive matches the configured environment (and whose id is the
configured one, when given), account auth, the symbols list (ids and broker names),
the symbols' digits (ProtoOASymbolByIdReq), then spot (with timestamps) and depth
subscriptions. An access token the server calls expired or invalid is refreshed with the
refresh token once, and the step is tried again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from producers.ctrader.connection import Connection, OpenApiError
from producers.ctrader.credentials import Credentials, store_tokens
from producers.ctrader.mapping import (
    Account,
    AccountChoiceError,
    SymbolInfo,
    choose_account,
    match_symbols,
)
from producers.ctrader.messages import oa

log = logging.getLogger("fxstream.ctrader")

TOKEN_ERRORS = frozenset({"OA_AUTH_TOKEN_EXPIRED", "CH_ACCESS_TOKEN_INVALID"})
BUSY_ERRORS = frozenset({"REQUEST_FREQUENCY_EXCEEDED"})
SYMBOL_BATCH = 100  # symbol ids per ProtoOASymbolByIdReq
T = TypeVar("T")


class CtraderFatal(RuntimeError):
    """Retrying cannot help (refused credentials, no fitting account, no symbol): the
    producer stops with this message, which never holds a secret."""


class Session:
    """Carries what outlives a connection: credentials, the chosen account, the symbols."""

    def __init__(self, credentials: Credentials, environment: str, account_id: int | None,
                 symbols: Sequence[str], depth: bool) -> None:
        self.credentials = credentials
        self.environment = environment
        self.wanted_account = account_id
        self.wanted_symbols = list(symbols)
        self.depth = depth
        self.account: Account | None = None
        self.symbols: dict[int, SymbolInfo] = {}  # broker symbol id -> info
        self.refreshes = 0
        # Called before every (re)subscription: the server then sends the books afresh.
        self.before_subscribe: Callable[[], None] = lambda: None
        self._refresh_lock = asyncio.Lock()

    async def start(self, conn: Connection) -> None:
        """Everything from application auth to the subscriptions, on a new connection."""
        await self.authorise(conn)
        await self.subscribe(conn)

    async def authorise(self, conn: Connection) -> None:
        """Application and account auth and the symbols, without subscribing (what
        historical requests need)."""
        await self._application_auth(conn)
        if self.account is None:
            accounts = await self._with_token(conn, self._account_list)
            try:
                self.account = choose_account(accounts, self.environment, self.wanted_account)
            except AccountChoiceError as exc:
                raise CtraderFatal(str(exc)) from None
            log.info("using %s account %d", self.environment, self.account.account_id)
        await self._with_token(conn, self._account_auth)
        if not self.symbols:
            await self._load_symbols(conn)

    async def reauthorise(self, conn: Connection) -> None:
        """After the server invalidated the access token: refresh, account auth, subscribe."""
        await self.refresh(conn)
        await self._with_token(conn, self._account_auth)
        await self.subscribe(conn)

    async def subscribe(self, conn: Connection) -> None:
        assert self.account is not None
        ids = sorted(self.symbols)
        account = self.account.account_id
        self.before_subscribe()
        await self._subscribe(conn, oa.ProtoOASubscribeSpotsReq(
            ctidTraderAccountId=account, symbolId=ids, subscribeToSpotTimestamp=True), "spots")
        if self.depth:
            await self._subscribe(conn, oa.ProtoOASubscribeDepthQuotesReq(
                ctidTraderAccountId=account, symbolId=ids), "depth quotes")
        log.info("subscribed to spots%s of %d symbols", " and depth" if self.depth else "",
                 len(ids))

    async def _subscribe(self, conn: Connection, request: Any, what: str) -> None:
        try:
            await self._retry_busy(lambda: conn.request(request))
        except OpenApiError as exc:
            if exc.code == "ALREADY_SUBSCRIBED":
                log.info("%s: already subscribed (%s)", what, exc)
                return
            if exc.code in TOKEN_ERRORS:
                raise
            # The stream goes on without these: say so with the server's code.
            log.error("subscribing to %s refused: %s", what, exc)

    async def refresh(self, conn: Connection) -> None:
        """Trade the refresh token for a new access token (and a new refresh token)."""
        async with self._refresh_lock:
            if not self.credentials.refresh_token:
                raise CtraderFatal("the access token expired and no CTRADER_REFRESH_TOKEN is "
                                   "set to refresh it")
            try:
                res = await conn.request(oa.ProtoOARefreshTokenReq(
                    refreshToken=self.credentials.refresh_token.reveal()))
            except OpenApiError as exc:
                raise CtraderFatal(f"cTrader refused the refresh token ({exc.code}): get new "
                                   "tokens for the application") from None
            written = store_tokens(self.credentials, res.accessToken, res.refreshToken)
            self.refreshes += 1
            log.info("access token refreshed (valid for %d s); the new tokens are %s",
                     res.expiresIn, f"written to {self.credentials.source}" if written
                     else "kept in memory only (they came from the environment)")

    async def _with_token(self, conn: Connection, step: Callable[[Connection], Awaitable[T]]
                          ) -> T:
        try:
            return await self._retry_busy(lambda: step(conn))
        except OpenApiError as exc:
            if exc.code not in TOKEN_ERRORS:
                raise
            log.info("access token not accepted (%s): refreshing it", exc.code)
        await self.refresh(conn)
        try:
            return await self._retry_busy(lambda: step(conn))
        except OpenApiError as exc:
            if exc.code in TOKEN_ERRORS:
                raise CtraderFatal(f"cTrader refused the refreshed access token ({exc.code})"
                                   ) from None
            raise

    @staticmethod
    async def _retry_busy(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
        """Try again after a pause when the server says requests came too fast."""
        for attempt in range(attempts):
            try:
                return await call()
            except OpenApiError as exc:
                if exc.code not in BUSY_ERRORS or attempt == attempts - 1:
                    raise
                log.warning("%s; waiting %.1f s", exc, 0.5 * 2 ** attempt)
                await asyncio.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def _application_auth(self, conn: Connection) -> None:
        creds = self.credentials
        try:
            await self._retry_busy(lambda: conn.request(oa.ProtoOAApplicationAuthReq(
                clientId=creds.client_id.reveal(), clientSecret=creds.client_secret.reveal())))
        except OpenApiError as exc:
            if exc.code in ("CH_CLIENT_AUTH_FAILURE", "CH_OA_CLIENT_NOT_FOUND",
                            "CH_CLIENT_NOT_AUTHENTICATED", "INVALID_REQUEST"):
                raise CtraderFatal(f"cTrader refused the application credentials ({exc.code}):"
                                   " check CTRADER_CLIENT_ID and CTRADER_CLIENT_SECRET") from None
            if exc.code != "CH_CLIENT_ALREADY_AUTHENTICATED":
                raise

    async def _account_list(self, conn: Connection) -> list[Account]:
        res = await conn.request(oa.ProtoOAGetAccountListByAccessTokenReq(
            accessToken=self.credentials.access_token.reveal()))
        return [Account(a.ctidTraderAccountId, bool(a.isLive),
                        a.traderLogin if a.HasField("traderLogin") else None)
                for a in res.ctidTraderAccount]

    async def _account_auth(self, conn: Connection) -> None:
        assert self.account is not None
        try:
            await conn.request(oa.ProtoOAAccountAuthReq(
                ctidTraderAccountId=self.account.account_id,
                accessToken=self.credentials.access_token.reveal()))
        except OpenApiError as exc:
            if exc.code == "ALREADY_LOGGED_IN":
                return
            if exc.code in ("CH_CTID_TRADER_ACCOUNT_NOT_FOUND", "ACCOUNT_NOT_AUTHORIZED"):
                raise CtraderFatal(f"cTrader refused account {self.account.account_id} "
                                   f"({exc.code})") from None
            raise

    async def _load_symbols(self, conn: Connection) -> None:
        assert self.account is not None
        account = self.account.account_id
        res = await self._retry_busy(lambda: conn.request(
            oa.ProtoOASymbolsListReq(ctidTraderAccountId=account)))
        match = match_symbols(((s.symbolId, s.symbolName, s.enabled if s.HasField("enabled")
                                else True) for s in res.symbol), self.wanted_symbols)
        for symbol in match.missing:
            log.warning("account %d offers no symbol %s: it is left out", account, symbol)
        if not match.found:
            raise CtraderFatal(f"account {account} offers none of the configured symbols "
                               f"({', '.join(self.wanted_symbols)})")
        names = {sid: (canonical, broker) for canonical, (sid, broker) in match.found.items()}
        ids = sorted(names)
        for start in range(0, len(ids), SYMBOL_BATCH):
            chunk = ids[start:start + SYMBOL_BATCH]
            detail = await self._retry_busy(lambda c=chunk: conn.request(  # type: ignore[misc]
                oa.ProtoOASymbolByIdReq(ctidTraderAccountId=account, symbolId=c)))
            for s in detail.symbol:
                canonical, broker = names[s.symbolId]
                self.symbols[s.symbolId] = SymbolInfo(s.symbolId, broker, canonical, s.digits)
        lost = set(ids) - set(self.symbols)
        for sid in sorted(lost):
            log.warning("no details (digits) for symbol %s (id %d): it is left out",
                        names[sid][0], sid)
        if not self.symbols:
            raise CtraderFatal(f"account {account} gave no details for any configured symbol")
        log.info("symbols: %s", ", ".join(f"{i.symbol}={i.broker_name}#{i.symbol_id}/"
                                          f"{i.digits}d" for i in self.symbols.values()))
