"""The same job in Quix Streams: 1m OHLC candles per symbol with its tumbling windows.

Runs in its own virtualenv (see bench/peers/venvs.py); imports nothing of fxstream.
Prints one JSON line: ticks processed, seconds from the first to the last, ticks/s.

    python quix_candles.py BOOTSTRAP TOPIC EXPECTED_TICKS STATE_DIR [--framed]
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import timedelta

from quixstreams import Application


def main() -> None:
    bootstrap, topic_name, expected, state_dir = sys.argv[1:5]
    framed = "--framed" in sys.argv
    expected_ticks = int(expected)
    app = Application(broker_address=bootstrap, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING")

    def tick_time(value: object, headers: object, timestamp: int, timestamp_type: object) -> int:
        # A frame's message carries its first tick's time; exploded ticks get their own below.
        first = value[0] if isinstance(value, list) else value
        return int(first["ts_ms"])

    topic = app.topic(topic_name, value_deserializer="json", key_deserializer="string",
                      timestamp_extractor=tick_time)
    sdf = app.dataframe(topic)
    if framed:
        sdf = sdf.apply(lambda frame: frame, expand=True)
        sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(value["ts_ms"]))

    counter = {"n": 0, "first": 0.0, "last": 0.0}

    def mid(tick: dict) -> float:
        now = time.monotonic()
        if counter["n"] == 0:
            counter["first"] = now
        counter["n"] += 1
        counter["last"] = now
        if counter["n"] >= expected_ticks:
            app.stop()
        bid, ask = tick.get("bid"), tick.get("ask")
        return (bid + ask) / 2 if bid is not None and ask is not None else (bid or ask)

    sdf = sdf.apply(mid)

    def init(price: float) -> dict:
        return {"open": price, "high": price, "low": price, "close": price, "ticks": 1}

    def reduce(bar: dict, price: float) -> dict:
        bar["high"] = max(bar["high"], price)
        bar["low"] = min(bar["low"], price)
        bar["close"] = price
        bar["ticks"] += 1
        return bar

    sdf.tumbling_window(timedelta(minutes=1)).reduce(reducer=reduce, initializer=init).current()
    app.run()
    seconds = counter["last"] - counter["first"]
    print(json.dumps({"ticks": counter["n"], "seconds": seconds,
                      "ticks_per_s": counter["n"] / seconds if seconds else None}))


if __name__ == "__main__":
    main()
