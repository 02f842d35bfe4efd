"""Keeps the garbage collector's full collections short in the long-running processes.

A full (generation 2) collection walks every tracked object. In the worker and the
sink nearly all of them are made at start-up (modules, the Faust app, the clients)
and live until the process ends, so each full collection spent 50-100 ms walking
them: a pause of the whole event loop, and of every tick behind it. Frozen, they
are no longer walked; what the processes make later (state is held as bytes, which
the collector does not track) is still collected as before.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("fxstream.gc")


def freeze_startup_objects() -> int:
    """Collect once, then move every surviving object out of the collector's reach.

    Call it when start-up is over, before the processing loop; returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d start-up objects out of the garbage collector's full collections",
              frozen)
    return frozen
