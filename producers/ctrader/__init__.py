"""The cTrader Open API producer: spot events become ticks, depth events become book snapshots.

Layout (functional core, imperative shell):

- ``messages``: Spotware's compiled message definitions, the payload-type table, and the
  wire framing (4-byte big-endian length, then a ProtoMessage);
- ``mapping``: pure conversions (prices, spot events to ticks, account and symbol choice,
  error descriptions, history decoding);
- ``book``: the pure per-symbol depth book and the per-symbol snapshot throttle;
- ``credentials``: client id, secret and tokens from the environment or a secrets file;
- ``connection``: the asyncio TLS connection (request pacing, heartbeats, replies);
- ``session``: the conversation of a connection (auth, token refresh, symbols,
  subscriptions);
- ``run``: events to ticks and snapshots, reconnects, publishing to Kafka;
- ``history``: paged tick data and trendbars, for backfill.
"""
