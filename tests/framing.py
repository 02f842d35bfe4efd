"""Messages as the producers' coalescing makes them, for the fold tests: per-key frames
of consecutive items, of random sizes, in arrival order per key."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def random_frames(items: list[Any], key_of: Callable[[Any], str | None], seed: int,
                  max_frame: int) -> list[tuple[str, list[Any]]]:
    """Each item joins its key's open frame, which closes at a random size up to
    ``max_frame``; items whose key is None are left out (the producers refuse them)."""
    rng = random.Random(seed)
    out: list[tuple[str, list[Any]]] = []
    open_frames: dict[str, list[Any]] = {}
    for item in items:
        key = key_of(item)
        if key is None:
            continue
        frame = open_frames.setdefault(key, [])
        frame.append(item)
        if len(frame) >= rng.randint(1, max_frame):
            out.append((key, frame))
            del open_frames[key]
    out.extend(open_frames.items())
    return out
