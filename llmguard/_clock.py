"""The one clock every guard reads and sleeps through.

Tests swap it for `llmguard.testing.FakeClock`, which makes every wait
instant and every duration exact.
"""

from __future__ import annotations

import asyncio
import threading
import time


# The longest duration a guard counts: 1e9 s (~31 years). A longer ttl or
# lease is kept this long (Redis refuses expiries past 64-bit milliseconds).
MAX_SECONDS = 1e9
# The longest wait a guard makes: MAX_SECONDS, or half of what `threading`
# can wait where that is less (Windows: ~24 days). Python's runtime refuses
# longer waits (`threading`, `time.sleep` and socket timeouts all stop at
# ~9.2e9 s on Linux), so a longer limit waits this long; the margin keeps a
# deadline computed from it waitable after float rounding.
MAX_WAIT = min(MAX_SECONDS, threading.TIMEOUT_MAX / 2)


class Clock:
    """Real time: `time.monotonic`, `time.time`, `time.sleep`, `asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (for deadlines and durations)."""
        return time.monotonic()

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for calendar windows, HTTP dates)."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block the thread for *seconds* (at most `MAX_WAIT`)."""
        if seconds > 0:
            time.sleep(min(seconds, MAX_WAIT))

    async def asleep(self, seconds: float) -> None:
        """Suspend the task for *seconds*."""
        await asyncio.sleep(max(seconds, 0.0))


SYSTEM_CLOCK = Clock()

# Read through `get_clock()`; replaced by `llmguard.testing`.
_active: Clock = SYSTEM_CLOCK

# The hot path reads time through this module attribute (``_clock.now()``):
# a direct reference to the active clock's monotonic function costs a third
# of going through `get_clock()` on every call.
now = time.monotonic
# The same for wall-clock time (calendar windows).
wall = time.time


def get_clock() -> Clock:
    """The clock guards use now."""
    return _active


def set_clock(clock: Clock) -> Clock:
    """Make *clock* the one guards use; returns the previous one."""
    global _active, now, wall  # noqa: PLW0603 - one process-wide clock is the point
    previous, _active = _active, clock
    now = time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic
    wall = time.time if clock is SYSTEM_CLOCK else clock.time
    return previous
