"""`MemoryRateLimitStore`: the rate limits of one process, in its memory (the default store)."""

from __future__ import annotations

import threading

from .. import _clock
from ._ratelimit_base import Grant, RateLimitStore


_SWEEP_EVERY = 60.0  # seconds between sweeps of idle cells
_GO = Grant(True, 0.0, -1)  # admitted at once


class MemoryRateLimitStore(RateLimitStore):
    """The TATs of one process's limits, on llmguard's monotonic clock (so a fake clock drives them).

    Thread- and asyncio-safe: one lock, held for a few dictionary operations,
    never while anyone waits. A cell whose TAT has passed is idle (the same as
    absent) and is swept at most once a minute.
    """

    sync_ok = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"MemoryRateLimitStore(cells={len(self._tat)})"

    def acquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        """See `RateLimitStore.acquire`."""
        now = _clock.now()
        with self._lock:
            tats = self._tat
            if now >= self._next_sweep:
                self._sweep(now)
            if len(cells) == 1:  # one limit: the common case, without the loops
                name, cost = cells[0]
                tat = tats.get(name)
                if tat is None or tat <= now:
                    tats[name] = now + cost
                    return _GO
                wait = tat - now
                if wait > max_wait:
                    return Grant(False, wait, 0)
                tats[name] = tat + cost
                return Grant(True, wait, 0)
            admit, which = now, -1
            for i, (name, _) in enumerate(cells):
                tat = tats.get(name, now)
                if tat > admit:
                    admit, which = tat, i
            wait = admit - now
            if wait > max_wait:
                return Grant(False, wait, which)
            for name, cost in cells:
                tats[name] = max(tats.get(name, admit), admit) + cost
        return Grant(True, wait, which)

    def adjust(self, cells: list[tuple[str, float]]) -> None:
        """See `RateLimitStore.adjust`."""
        with self._lock:
            tats = self._tat
            for name, seconds in cells:
                tat = tats.get(name)
                if tat is not None:
                    tats[name] = tat + seconds

    def push(self, cells: list[str], pause: float) -> None:
        """See `RateLimitStore.push`."""
        until = _clock.now() + pause
        with self._lock:
            for name in cells:
                self._tat[name] = max(self._tat.get(name, until), until)

    def ahead(self, cell: str) -> float:
        """See `RateLimitStore.ahead`."""
        with self._lock:
            tat = self._tat.get(cell)
        return 0.0 if tat is None else max(tat - _clock.now(), 0.0)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY
        for name in [n for n, tat in self._tat.items() if tat <= now]:
            del self._tat[name]
