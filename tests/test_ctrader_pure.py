"""cTrader producer, pure parts: wire framing, decoding, prices, ticks, books, throttling,
account and symbol choice, credentials, pacing, and the simulator's history paging."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from producers.ctrader.book import DepthBook, SnapshotThrottle, depth_event_quotes
from producers.ctrader.connection import RateLimiter
from producers.ctrader.credentials import (
    CredentialsError,
    Secret,
    load_credentials,
    store_tokens,
)
from producers.ctrader.mapping import (
    Account,
    AccountChoiceError,
    SpotState,
    SymbolInfo,
    choose_account,
    decode_tick_data,
    decode_trendbar,
    describe_error,
    encode_tick_data,
    match_symbols,
    spot_event_to_tick,
    spot_to_tick,
    to_price,
    to_size,
)
from producers.ctrader.messages import (
    FrameError,
    FrameReader,
    common,
    decode,
    encode,
    oa,
    payload_name,
)
from producers.ctrader.run import EventHandler, backoff_s
from producers.ctrader.session import Session
from simulators.ctrader import history

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
EURUSD = SymbolInfo(1, "EURUSD", "EUR/USD", 5)
USDJPY = SymbolInfo(2, "USDJPY", "USD/JPY", 3)

# ---------------------------------------------------------------- framing and decoding


def test_encode_then_decode_keeps_type_payload_and_id() -> None:
    req = oa.ProtoOAApplicationAuthReq(clientId="a", clientSecret="b")
    data = encode(req, "fx7")
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    got = decode(data[4:])
    assert got.name == "ProtoOAApplicationAuthReq" and got.kind == 2100
    assert got.client_msg_id == "fx7"
    assert got.message.clientId == "a" and got.message.clientSecret == "b"
    assert decode(encode(common.ProtoHeartbeatEvent())[4:]).client_msg_id is None


def test_frame_reader_reassembles_any_chunking() -> None:
    events = [oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=i, bid=100_000 + i,
                                  timestamp=1_700_000_000_000 + i) for i in range(50)]
    stream = b"".join(encode(e) for e in events)
    for chunk in (1, 3, 7, 64, len(stream)):
        reader = FrameReader()
        bodies: list[bytes] = []
        for i in range(0, len(stream), chunk):
            bodies.extend(reader.feed(stream[i:i + chunk]))
        assert [decode(b).message.symbolId for b in bodies] == list(range(50))
        assert reader.buffered == 0


def test_frame_reader_refuses_an_absurd_length() -> None:
    with pytest.raises(FrameError):
        FrameReader().feed((2**31).to_bytes(4, "big") + b"x")


def test_unknown_payload_type_decodes_without_a_message() -> None:
    body = common.ProtoMessage(payloadType=60000, payload=b"").SerializeToString()
    got = decode(body)
    assert got.message is None and got.kind == 60000
    assert payload_name(60000) == "payload type 60000"
    with pytest.raises(FrameError):
        decode(b"\xff\xff\xff")


# ---------------------------------------------------------------- prices and ticks


@pytest.mark.parametrize(("raw", "digits", "price"), [
    (108512, 5, 1.08512), (15549412, 3, 155.494), (240012345, 2, 2400.12),
    (108510, 4, 1.0851), (1, 5, 0.00001),
])
def test_prices_are_wire_units_over_100000_rounded_to_digits(raw: int, digits: int,
                                                             price: float) -> None:
    assert to_price(raw, digits) == price


def test_sizes_are_cents() -> None:
    assert to_size(150_000_00) == 150_000.0


def test_absent_side_keeps_its_last_known_value() -> None:
    state = SpotState()
    first = spot_to_tick(EURUSD, state, 108512, None, 1000)
    assert first == {"symbol": "EUR/USD", "ts_ms": 1000, "provider": "ctrader", "bid": 1.08512}
    second = spot_to_tick(EURUSD, state, None, 108520, 1001)
    assert second is not None and (second["bid"], second["ask"]) == (1.08512, 1.0852)
    third = spot_to_tick(EURUSD, state, 108515, None, 1002)
    assert third is not None and (third["bid"], third["ask"]) == (1.08515, 1.0852)
    assert spot_to_tick(EURUSD, state, None, None, 1003) is None  # trendbar-only event


def test_spot_event_uses_the_server_timestamp_else_the_clock() -> None:
    state = SpotState()
    with_ts = oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=2, bid=15549412,
                                  ask=15550100, timestamp=1_704_672_000_123)
    tick = spot_event_to_tick(USDJPY, state, with_ts, now_ms=5)
    assert tick == {"symbol": "USD/JPY", "ts_ms": 1_704_672_000_123, "provider": "ctrader",
                    "bid": 155.494, "ask": 155.501}
    without = oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=2, ask=15550200)
    tick = spot_event_to_tick(USDJPY, state, without, now_ms=77)
    assert tick is not None and tick["ts_ms"] == 77 and tick["bid"] == 155.494


def test_tick_passes_the_tick_schema() -> None:
    validate = fastjsonschema.compile(json.loads((SCHEMAS / "tick.v1.json").read_text()))
    validate(spot_to_tick(EURUSD, SpotState(), 108512, 108520, 1_704_672_000_000))


# ---------------------------------------------------------------- accounts and symbols

ACCOUNTS = [Account(30, True), Account(12, False), Account(11, False), Account(31, True)]


def test_account_choice_follows_environment_then_id() -> None:
    assert choose_account(ACCOUNTS, "demo", None).account_id == 11
    assert choose_account(list(reversed(ACCOUNTS)), "demo", None).account_id == 11
    assert choose_account(ACCOUNTS, "live", None).account_id == 30
    assert choose_account(ACCOUNTS, "demo", 12).account_id == 12
    assert choose_account(ACCOUNTS, "live", 31).account_id == 31


@pytest.mark.parametrize(("accounts", "env", "wanted", "words"), [
    (ACCOUNTS, "demo", 30, "live account"),
    (ACCOUNTS, "demo", 99, "not among"),
    ([Account(1, False)], "live", None, "no live account"),
])
def test_account_choice_errors_say_why(accounts: list[Account], env: str, wanted: int | None,
                                       words: str) -> None:
    with pytest.raises(AccountChoiceError, match=words):
        choose_account(accounts, env, wanted)


def test_broker_names_map_to_canonical_symbols() -> None:
    listed = [(5, "EURUSD", True), (9, "XAUUSD", True), (3, "GBP/USD", True),
              (8, "USDJPY", False), (2, "EUR_USD", True), (4, "GER40", True), (6, "?!", True)]
    match = match_symbols(listed, ["EUR/USD", "XAU/USD", "GBP/USD", "USD/JPY", "GER40",
                                   "ZZZ/USD"])
    assert match.found == {"EUR/USD": (2, "EUR_USD"), "XAU/USD": (9, "XAUUSD"),
                           "GBP/USD": (3, "GBP/USD"), "GER40": (4, "GER40")}
    assert match.missing == ["USD/JPY", "ZZZ/USD"]  # disabled, not listed


def test_error_lines_carry_the_code() -> None:
    line = describe_error("ProtoOAErrorRes", "CH_CLIENT_AUTH_FAILURE", "bad secret", 7)
    assert line == "ProtoOAErrorRes errorCode=CH_CLIENT_AUTH_FAILURE account=7 " \
                   "description='bad secret'"


# ---------------------------------------------------------------- history decoding


def test_tick_data_deltas_round_trip() -> None:
    newest_first = [(1000, 108520), (990, 108500), (990, 108510), (900, 108400)]
    coded = encode_tick_data(newest_first)
    assert coded == [(1000, 108520), (-10, -20), (0, 10), (-90, -110)]
    assert decode_tick_data(coded, 5) == [(900, 1.084), (990, 1.0851), (990, 1.085),
                                          (1000, 1.0852)]


def test_trendbar_prices_are_low_plus_deltas() -> None:
    bar = decode_trendbar(low=108400, delta_open=50, delta_high=120, delta_close=80,
                          utc_minutes=28_411_200, volume=42, digits=5)
    assert (bar.ts_ms, bar.open, bar.high, bar.low, bar.close, bar.volume) == (
        1_704_672_000_000, 1.0845, 1.0852, 1.084, 1.0848, 42)


def test_simulated_tick_history_pages_without_gap_or_overlap() -> None:
    start = 1_704_672_000_000
    end = start + 3 * 3_600_000
    everything, more = history.tick_page("EUR/USD", False, start, end, 3, page=10**9)
    assert not more and len(everything) > 5000
    paged: list[tuple[int, int]] = []
    to = end
    while True:
        page, more = history.tick_page("EUR/USD", False, start, to, 3, page=997)
        assert len(page) <= 997
        paged.extend(page)
        if not more:
            break
        to = page[-1][0]
    assert paged == everything
    assert [t for t, _ in paged] == sorted((t for t, _ in paged), reverse=True)


@pytest.mark.parametrize(("fn", "args"), [
    (history.tick_page, ("EUR/USD", False, 10, 10, 0)),
    (history.tick_page, ("EUR/USD", False, 0, history.TICK_SPAN_MAX_MS + 1, 0)),
    (history.trendbars, ("EUR/USD", "M1", 0, 36 * history.DAY_MS, None, 0, 5)),
    (history.trendbars, ("EUR/USD", "M7", 0, 60_000, None, 0, 5)),
])
def test_simulated_history_refuses_bad_spans(fn: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(history.BoundaryError):
        fn(*args)


def test_simulated_trendbars_are_the_newest_of_the_range_oldest_first() -> None:
    to = 1_704_672_000_000
    bars = history.trendbars("EUR/USD", "H1", to - 30 * history.DAY_MS, to, 24, 1, 5)
    assert len(bars) == 24
    assert [b[0] for b in bars] == [to - (24 - i) * 3_600_000 for i in range(24)]
    for _, low, open_, high, close, volume in bars:
        assert low <= min(open_, close) <= max(open_, close) <= high and volume > 0


# ---------------------------------------------------------------- depth book


def quote(qid: int, size: int, bid: int | None = None, ask: int | None = None
          ) -> tuple[int, int, int | None, int | None]:
    return (qid, size, bid, ask)


def test_book_keeps_quotes_by_id_and_sums_levels() -> None:
    book = DepthBook(5)
    book.apply([quote(1, 100_00, bid=108500), quote(2, 50_00, bid=108500),
                quote(3, 70_00, bid=108490), quote(4, 80_00, ask=108520),
                quote(5, 90_00, ask=108530)], [])
    assert book.levels(10) == ([[1.085, 150.0], [1.0849, 70.0]],
                               [[1.0852, 80.0], [1.0853, 90.0]])
    book.apply([quote(6, 10_00, ask=108510)], [1, 4])
    assert book.levels(1) == ([[1.085, 50.0]], [[1.0851, 10.0]])
    book.apply([quote(2, 20_00, ask=108540)], [])  # an id that changes side moves
    assert book.levels(10)[0] == [[1.0849, 70.0]]
    book.apply([], [999])  # an unknown id is no error
    book.clear()
    assert len(book) == 0 and book.levels(5) == ([], [])


def test_delete_and_re_add_of_one_id_in_one_event_keeps_it() -> None:
    book = DepthBook(5)
    book.apply([quote(1, 100, bid=108500)], [])
    book.apply([quote(1, 200, bid=108501)], [1])
    assert book.levels(5)[0] == [[1.08501, 2.0]]


def test_snapshot_passes_the_dom_schema() -> None:
    newest = sorted(SCHEMAS.glob("dom_snapshot.v*.json"))[-1]
    validate = fastjsonschema.compile(json.loads(newest.read_text()))
    event = oa.ProtoOADepthEvent(ctidTraderAccountId=1, symbolId=1)
    event.newQuotes.add(id=1, size=100_000_00, bid=108500)
    event.newQuotes.add(id=2, size=200_000_00, ask=108510)
    book = DepthBook(5)
    book.apply(*depth_event_quotes(event))
    snap = book.snapshot("EUR/USD", 1_704_672_000_000, 10)
    validate(snap)
    assert snap == {"symbol": "EUR/USD", "ts_ms": 1_704_672_000_000, "provider": "ctrader",
                    "bids": [[1.085, 100_000.0]], "asks": [[1.0851, 200_000.0]]}


def test_throttle_holds_changes_back_and_sends_the_last_one() -> None:
    throttle = SnapshotThrottle(250)
    assert throttle.changed("EUR/USD", 0)
    assert not throttle.changed("EUR/USD", 100)
    assert throttle.changed("USD/JPY", 100)
    assert throttle.due(200) == []
    assert throttle.due(250) == ["EUR/USD"]
    assert throttle.due(1000) == []  # sent: nothing held any more
    assert throttle.changed("EUR/USD", 1000)
    throttle.forget("EUR/USD")
    assert throttle.changed("EUR/USD", 1001)


# ---------------------------------------------------------------- events to outputs


class ListOutput:
    def __init__(self) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []

    def tick(self, symbol: str, tick: dict[str, Any]) -> None:
        self.ticks.append(tick)

    def snapshot(self, symbol: str, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)

    def poll(self) -> None:
        pass

    def flush(self) -> None:
        pass


def handler_with(clock: list[int]) -> tuple[EventHandler, ListOutput]:
    creds = load_credentials(None, env={"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "s",
                                        "CTRADER_ACCESS_TOKEN": "t"})
    session = Session(creds, "demo", None, ["EUR/USD"], depth=True)
    session.symbols = {1: EURUSD}
    out = ListOutput()
    return EventHandler(session, out, 5, 250, clock_ms=lambda: clock[0]), out


def received(message: Any) -> Any:
    return decode(encode(message)[4:])


def test_events_become_ticks_and_throttled_snapshots() -> None:
    clock = [1000]
    handler, out = handler_with(clock)
    invalidated: list[bool] = []
    handler.on_token_invalidated = lambda: invalidated.append(True)
    handler(received(oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1, bid=108500,
                                         ask=108510, timestamp=5)))
    handler(received(oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=99, bid=1)))
    handler(received(oa.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1, ask=108512,
                                         timestamp=6)))
    assert [(t["ts_ms"], t["bid"], t["ask"]) for t in out.ticks] == [
        (5, 1.085, 1.0851), (6, 1.085, 1.08512)]
    for i in range(3):
        depth = oa.ProtoOADepthEvent(ctidTraderAccountId=1, symbolId=1)
        depth.newQuotes.add(id=i, size=100, bid=108500 - i)
        handler(received(depth))
        clock[0] += 100
    assert len(out.snapshots) == 1
    handler.flush_due()
    assert len(out.snapshots) == 2 and len(out.snapshots[-1]["bids"]) == 3
    handler(received(oa.ProtoOAAccountsTokenInvalidatedEvent(ctidTraderAccountIds=[1])))
    handler(received(oa.ProtoOAErrorRes(errorCode="OA_AUTH_TOKEN_EXPIRED")))
    handler(received(common.ProtoHeartbeatEvent()))
    assert invalidated == [True, True]


# ---------------------------------------------------------------- credentials


def test_credentials_come_from_env_over_file(tmp_path: Path) -> None:
    secrets = tmp_path / "ctrader.env"
    secrets.write_text("# cTrader\nCTRADER_CLIENT_ID=file-id\nexport CTRADER_CLIENT_SECRET="
                       "'file-secret'\nCTRADER_ACCESS_TOKEN=file-access\n"
                       "CTRADER_REFRESH_TOKEN=file-refresh\nOTHER=x\n")
    creds = load_credentials(secrets, env={"CTRADER_CLIENT_ID": "env-id"})
    assert creds.client_id.reveal() == "env-id"
    assert creds.client_secret.reveal() == "file-secret"
    assert creds.source == secrets
    assert "file-secret" not in repr(creds) and "file-secret" not in str(creds.client_secret)
    assert creds.scrub("echo file-access and file-secret") == "echo *** and ***"


def test_missing_credentials_name_keys_not_values(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as err:
        load_credentials(None, env={"CTRADER_CLIENT_SECRET": "s3cr3t-value"})
    assert "CTRADER_CLIENT_ID" in str(err.value) and "s3cr3t-value" not in str(err.value)
    with pytest.raises(CredentialsError, match="cannot be read"):
        load_credentials(tmp_path / "absent.env", env={})


def test_refreshed_tokens_are_written_back_privately(tmp_path: Path) -> None:
    secrets = tmp_path / "ctrader.env"
    secrets.write_text("CTRADER_CLIENT_ID=i\nCTRADER_CLIENT_SECRET=s\n"
                       "CTRADER_ACCESS_TOKEN=old\nCTRADER_REFRESH_TOKEN=oldr\n# note\n")
    creds = load_credentials(secrets, env={})
    assert store_tokens(creds, "new", "newr")
    assert secrets.read_text() == ("CTRADER_CLIENT_ID=i\nCTRADER_CLIENT_SECRET=s\n"
                                   "CTRADER_ACCESS_TOKEN=new\nCTRADER_REFRESH_TOKEN=newr\n"
                                   "# note\n")
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
    assert creds.access_token == Secret("new")
    from_env = load_credentials(None, env={"CTRADER_CLIENT_ID": "i", "CTRADER_CLIENT_SECRET":
                                           "s", "CTRADER_ACCESS_TOKEN": "a"})
    assert not store_tokens(from_env, "n", "r") and from_env.refresh_token.reveal() == "r"


# ---------------------------------------------------------------- pacing


def test_rate_limiter_holds_the_average_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(10, burst=2, clock=lambda: now[0])
    waits = []
    for _ in range(12):
        wait = limiter.reserve()
        waits.append(wait)
        now[0] += wait
    assert waits[:2] == [0.0, 0.0]
    assert now[0] == pytest.approx(1.0)  # 12 requests: a burst of 2, then 10 a second


def test_backoff_grows_to_its_cap() -> None:
    import random

    rng = random.Random(1)
    pauses = [backoff_s(i, 30, rng) for i in range(10)]
    assert 0.4 <= pauses[0] <= 0.6 and all(p <= 36 for p in pauses)
    assert pauses[-1] >= 24


def test_log_lines_never_show_a_credential(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from producers.ctrader.credentials import ScrubSecrets

    creds = load_credentials(None, env={"CTRADER_CLIENT_ID": "client-1234",
                                        "CTRADER_CLIENT_SECRET": "secret-5678",
                                        "CTRADER_ACCESS_TOKEN": "token-9012"})
    logger = logging.getLogger("fxstream.ctrader.scrub-test")
    logger.addFilter(ScrubSecrets(creds))
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("server said: %s and %s", "bad token-9012", "secret-5678!")
    assert caplog.messages == ["server said: bad *** and ***!"]


def test_ctrader_settings_come_from_fxstream_variables(tmp_path: Path) -> None:
    from pipeline.settings import SettingsError, load_settings

    settings = load_settings(env={
        "FXSTREAM_STATE_DIR": str(tmp_path), "FXSTREAM_CTRADER_ENVIRONMENT": "live",
        "FXSTREAM_CTRADER_ACCOUNT_ID": "2001", "FXSTREAM_CTRADER_PORT": "5036",
        "FXSTREAM_CTRADER_SECRETS_FILE": str(tmp_path / "c.env"),
        "FXSTREAM_CTRADER_DEPTH": "false", "FXSTREAM_CTRADER_DEPTH_THROTTLE_MS": "0"})
    assert (settings.ctrader_environment, settings.ctrader_account_id,
            settings.ctrader_port, settings.ctrader_depth,
            settings.ctrader_depth_throttle_ms) == ("live", 2001, 5036, False, 0)
    assert settings.ctrader_secrets_file == tmp_path / "c.env"
    assert settings.ctrader_requests_per_s < 50 and settings.ctrader_history_requests_per_s < 5
    with pytest.raises(SettingsError, match="ctrader_environment"):
        load_settings(env={"FXSTREAM_STATE_DIR": str(tmp_path),
                           "FXSTREAM_CTRADER_ENVIRONMENT": "paper"})
