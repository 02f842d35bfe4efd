"""Peers run in virtualenvs of their own so their pins cannot clash with fxstream's."""
