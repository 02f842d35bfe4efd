"""A local cTrader Open API server: `fxstream ctrader-sim`.

It speaks the protocol the producer speaks (TLS with a certificate it generates,
length-prefixed ProtoMessages, Spotware's message definitions) and plays a broker:

- ``certs``: the self-signed certificate;
- ``market``: the instruments it lists (broker names, ids, digits) and its depth ladders;
- ``history``: trendbars and tick data with their paging and span limits;
- ``server``: the connections (auth with expiring tokens, subscriptions, request limits,
  injected faults) and the live stream driven by the synthetic generator
  (``producers/synthetic.py``), with a record of every spot it sent.
"""
