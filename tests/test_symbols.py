import pytest

from pipeline.symbols import SymbolError, base_and_quote, normalize_symbol


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("EUR/USD", "EUR/USD"),
        ("EURUSD", "EUR/USD"),
        ("eur/usd", "EUR/USD"),
        ("EUR-USD", "EUR/USD"),
        ("EUR_USD", "EUR/USD"),
        ("eur usd", "EUR/USD"),
        ("  usdjpy ", "USD/JPY"),
        ("XAUUSD", "XAU/USD"),
        ("xau/usd", "XAU/USD"),
        ("US30", "US30"),
        ("ger40", "GER40"),
        ("BRK.B", "BRK.B"),
        ("BTCUSDT", "BTCUSDT"),
    ],
)
def test_normalization_table(raw: str, canonical: str) -> None:
    assert normalize_symbol(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("EUR\x00USD", "control"),
        ("EUR/USD\n", "control"),
        ("X" * 33, "longer than 32"),
        ("EUR/US", "neither"),
        ("EUR/USD/JPY", "neither"),
        ("???", "neither"),
        ("EU R", "neither"),
    ],
)
def test_garbage_is_rejected_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(SymbolError, match=why):
        normalize_symbol(raw)


def test_non_string_is_rejected() -> None:
    with pytest.raises(SymbolError, match="string"):
        normalize_symbol(42)  # type: ignore[arg-type]


def test_base_and_quote() -> None:
    assert base_and_quote("eurusd") == ("EUR", "USD")
    with pytest.raises(SymbolError):
        base_and_quote("US30")
