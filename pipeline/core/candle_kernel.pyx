# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The candle fold's per-tick loop for a frame of ``TickRecord``, compiled.

`pipeline.core.candles.fold` hands a frame here when every item is a ``TickRecord``
(decoded and bounded by msgspec); `scan_records` returns what the fold's own loop
would have built from it (the partial bars per bucket, the newest time, the last
quote and provider, the counts and the order flow) or None for any frame it does
not take whole: an item of another type, another symbol, a tick past the future
limit or late, a provider not seen valid before, a previous quote that is not
(int, float, float). The fold then runs its own loop over the frame from the
start, so this kernel never decides anything the plain loop would decide
differently (tests/test_candle_kernel.py holds the two together).

Why compiled: the plain loop costs about 0.4 s per million ticks, most of the
worker's time. Here a tick's fields are read from the record's slots (the offsets
its member descriptors give) and the bar arithmetic is C doubles and 64-bit
integers, which compute exactly what Python's floats and ints do for values
within the bounds of pipeline.core.ticks: (bid + ask) / 2, comparisons, and the
volume summed in arrival order.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    bint PyFloat_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    double PyFloat_AS_DOUBLE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1


cdef Py_ssize_t _offset(object record, str name) except -1:
    descriptor = record.__dict__[name]
    if type(descriptor).__name__ != "member_descriptor":
        raise TypeError(f"{record.__name__}.{name} is not a slot")
    return (<PyMemberDescrObject*><void*>descriptor).d_member.offset


cdef inline PyObject* _slot(object obj, Py_ssize_t offset):
    """A record's slot, borrowed (NULL when unset: the plain loop would raise, so the
    kernel declines)."""
    return (<PyObject**>((<char*>(<PyObject*>obj)) + offset))[0]


cdef class RecordLayout:
    """Where a record type keeps its fields; made once per type."""
    cdef readonly object record
    cdef Py_ssize_t symbol, ts_ms, bid, ask, volume, provider

    def __init__(self, object record):
        self.record = record
        self.symbol = _offset(record, "symbol")
        self.ts_ms = _offset(record, "ts_ms")
        self.bid = _offset(record, "bid")
        self.ask = _offset(record, "ask")
        self.volume = _offset(record, "volume")
        self.provider = _offset(record, "provider")


cdef int64_t MAX_INT = 4611686018427387904  # 2**62: the bounds below keep sums inside


cdef inline list _partial(int64_t bucket, double o, double h, double l, double c,
                          int64_t n, double vol, int64_t ots, int64_t cts):
    return [bucket, o, h, l, c, n, vol, ots, cts]


def scan_records(RecordLayout layout, list ticks, object symbol, object newest_ok,
                 object ok_provider, object prev, object max_ts, object lateness,
                 object bucket_ms, bint orderflow, object prev_price, object valid_provider):
    """The fold's loop over a frame of records; see the module. Returns None, or
    (partials, max_ts, prev, provider, accepted, duplicates, flow)."""
    cdef object record = layout.record
    cdef Py_ssize_t i = 0
    cdef PyObject* slot
    cdef object raw, tick_symbol, tick_provider, value
    cdef object provider = None
    cdef int64_t ts, c_newest, c_lateness, c_bucket_ms, c_max = 0, bucket
    cdef double bid, ask, vol, price
    cdef bint has_max = False, has_prev = False, has_price = False
    cdef int64_t prev_ts = 0
    cdef double prev_bid = 0.0, prev_ask = 0.0, last_price = 0.0
    cdef Py_ssize_t accepted = 0, duplicates = 0
    cdef int overflow = 0
    # the partial bar of the current bucket
    cdef bint has_part = False
    cdef int64_t p_bucket = 0, p_n = 0, p_ots = 0, p_cts = 0
    cdef double p_o = 0.0, p_h = 0.0, p_l = 0.0, p_c = 0.0, p_vol = 0.0
    cdef list partials = []
    # the order flow of the current minute
    cdef dict flow = {} if orderflow else None
    cdef int64_t flow_from = 0, flow_to = 0, minute
    cdef list up_down = None
    cdef int64_t ups = 0, downs = 0

    if type(symbol) is not str:
        return None
    if type(newest_ok) is not int or type(lateness) is not int or type(bucket_ms) is not int:
        return None
    if not (0 <= newest_ok < MAX_INT and 0 <= lateness < MAX_INT and 0 < bucket_ms < MAX_INT):
        return None
    c_newest, c_lateness, c_bucket_ms = newest_ok, lateness, bucket_ms
    if max_ts is not None:
        if type(max_ts) is not int or not (0 <= max_ts < MAX_INT):
            return None
        c_max, has_max = max_ts, True
    if prev is not None:
        if (type(prev) is not tuple or len(prev) != 3 or type(prev[0]) is not int
                or not PyFloat_CheckExact(prev[1]) or not PyFloat_CheckExact(prev[2])
                or not (-MAX_INT < prev[0] < MAX_INT)):
            return None
        prev_ts, prev_bid, prev_ask, has_prev = prev[0], prev[1], prev[2], True
    if prev_price is not None:
        if not PyFloat_CheckExact(prev_price):
            return None
        last_price, has_price = PyFloat_AS_DOUBLE(prev_price), True

    # The length is read each time round, as Python's own loop does: valid_provider is
    # Python code and could change the list.
    while i < len(ticks):
        raw = ticks[i]
        i += 1
        if type(raw) is not record:
            return None
        slot = _slot(raw, layout.symbol)
        if slot is NULL or not PyUnicode_CheckExact(<object>slot):
            return None
        tick_symbol = <object>slot
        if not (<str>tick_symbol == <str>symbol):
            return None
        slot = _slot(raw, layout.ts_ms)
        if slot is NULL or not PyLong_CheckExact(<object>slot):
            return None
        value = <object>slot
        ts = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow or ts < 0 or ts > c_newest:
            return None  # future (or not a time): the plain loop says which
        slot = _slot(raw, layout.provider)
        if slot is NULL:
            return None
        tick_provider = <object>slot
        if tick_provider is not None and tick_provider is not ok_provider:
            if not PyUnicode_CheckExact(tick_provider):
                return None
            if not (ok_provider is not None and <str>tick_provider == <str>ok_provider):
                if not valid_provider(tick_provider):
                    return None
                ok_provider = tick_provider
        slot = _slot(raw, layout.bid)
        if slot is NULL or not PyFloat_CheckExact(<object>slot):
            return None
        bid = PyFloat_AS_DOUBLE(<object>slot)
        slot = _slot(raw, layout.ask)
        if slot is NULL or not PyFloat_CheckExact(<object>slot):
            return None
        ask = PyFloat_AS_DOUBLE(<object>slot)
        slot = _slot(raw, layout.volume)
        if slot is NULL or not PyFloat_CheckExact(<object>slot):
            return None
        vol = PyFloat_AS_DOUBLE(<object>slot)

        if has_prev and prev_ts == ts and prev_bid == bid and prev_ask == ask:
            duplicates += 1
            continue
        if has_max and ts < c_max - c_lateness:
            return None  # late: a reject, which the plain loop words
        prev_ts, prev_bid, prev_ask, has_prev = ts, bid, ask, True
        accepted += 1
        if not has_max or ts > c_max:
            c_max, has_max = ts, True
        if tick_provider is not None:
            provider = tick_provider
        price = (bid + ask) / 2
        if orderflow:
            if has_price and price != last_price:
                if not (flow_from <= ts < flow_to):
                    if up_down is not None:
                        up_down[0] += ups
                        up_down[1] += downs
                    ups = downs = 0
                    minute = ts - ts % 60_000
                    flow_from, flow_to = minute, minute + 60_000
                    up_down = flow.get(minute)
                    if up_down is None:
                        up_down = [0, 0]
                        flow[minute] = up_down
                if price < last_price:
                    downs += 1
                else:
                    ups += 1
            last_price, has_price = price, True
        bucket = ts - ts % c_bucket_ms
        if not has_part or bucket != p_bucket:
            if has_part:
                partials.append(_partial(p_bucket, p_o, p_h, p_l, p_c, p_n, p_vol, p_ots,
                                         p_cts))
            has_part = True
            p_bucket, p_o, p_h, p_l, p_c, p_n = bucket, price, price, price, price, 1
            p_vol, p_ots, p_cts = vol + 0.0, ts, ts
            continue
        if price > p_h:
            p_h = price
        elif price < p_l:
            p_l = price
        if ts < p_ots:
            p_o, p_ots = price, ts
        if ts >= p_cts:
            p_c, p_cts = price, ts
        p_n += 1
        p_vol += vol

    if has_part:
        partials.append(_partial(p_bucket, p_o, p_h, p_l, p_c, p_n, p_vol, p_ots, p_cts))
    if up_down is not None:
        up_down[0] += ups
        up_down[1] += downs
    return (partials, c_max if has_max else None,
            (prev_ts, prev_bid, prev_ask) if has_prev else None,
            provider, accepted, duplicates, flow)
