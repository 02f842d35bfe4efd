"""Producers: cTrader, CSV replay and synthetic ticks, framed per symbol."""
