"""Per-symbol frame coalescing.

Ticks are grouped into frames: lists of ticks of ONE symbol, in arrival order.
A frame goes out when it holds ``frame_size`` ticks, or once its first tick has
waited ``linger_ms``, so a quiet symbol is never held back for long.

``now_ms`` is expected to be nondecreasing across calls (a monotonic clock).
"""

from __future__ import annotations

from collections import deque

Frame = tuple[str, list]


class FrameCoalescer:
    """Collects ticks per symbol and hands out ready frames.

    Open buffers are also queued in the order they were started, together with
    the time of their first tick. A buffer that leaves by size stays in that
    queue as a stale entry (recognised because the symbol's current buffer is a
    different list) and is skipped later, so ``add`` never scans other symbols.
    """

    __slots__ = ("_buffers", "_frame_size", "_linger_ms", "_order", "_pending")

    def __init__(self, frame_size: int = 500, linger_ms: int = 20) -> None:
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        self._frame_size = frame_size
        self._linger_ms = linger_ms
        self._buffers: dict[str, list] = {}
        self._order: deque[tuple[float, str, list]] = deque()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Number of ticks buffered and not yet handed out."""
        return self._pending

    def add(self, symbol: str, tick: object, now_ms: float) -> list[Frame]:
        """Buffer ``tick``; returns ``[(symbol, frame)]`` if that filled the frame, else []."""
        buf = self._buffers.get(symbol)
        if buf is None:
            if self._frame_size == 1:
                return [(symbol, [tick])]
            buf = [tick]
            self._buffers[symbol] = buf
            self._order.append((now_ms, symbol, buf))
            self._pending += 1
            return []
        buf.append(tick)
        if len(buf) < self._frame_size:
            self._pending += 1
            return []
        del self._buffers[symbol]
        self._pending -= len(buf) - 1
        if len(self._order) > 2 * len(self._buffers) + 64:
            self._compact()
        return [(symbol, buf)]

    def due(self, now_ms: float) -> list[Frame]:
        """Frames whose first tick was added at least ``linger_ms`` before ``now_ms``."""
        order = self._order
        buffers = self._buffers
        cutoff = now_ms - self._linger_ms
        out: list[Frame] = []
        while order and order[0][0] <= cutoff:
            _, symbol, buf = order.popleft()
            if buffers.get(symbol) is buf:
                del buffers[symbol]
                self._pending -= len(buf)
                out.append((symbol, buf))
        return out

    def drain(self) -> list[Frame]:
        """Every buffered frame, in the order the frames were started; leaves nothing behind."""
        buffers = self._buffers
        out = [(symbol, buf) for _, symbol, buf in self._order if buffers.get(symbol) is buf]
        buffers.clear()
        self._order.clear()
        self._pending = 0
        return out

    def next_deadline(self) -> float | None:
        """Earliest ``now_ms`` at which ``due`` returns a frame; None when nothing is buffered."""
        order = self._order
        buffers = self._buffers
        while order:
            first_ms, symbol, buf = order[0]
            if buffers.get(symbol) is buf:
                return first_ms + self._linger_ms
            order.popleft()
        return None

    def _compact(self) -> None:
        """Drop stale queue entries so memory stays bounded when ``due`` is rarely called."""
        buffers = self._buffers
        self._order = deque(e for e in self._order if buffers.get(e[1]) is e[2])
