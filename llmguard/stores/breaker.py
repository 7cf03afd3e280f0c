"""Where `breaker` keeps its circuits: in memory (default) or in Redis (shared).

A *circuit* is the state of one breaker: closed, open (until a time) or
half-open (with the probes it let through), the count of consecutive
faults, the ratio window, and how many probes in a row failed (each doubles
the next cooldown, up to the cap). A store does two things per call, each
atomically:

* ``admit`` — let the call through (a closed circuit: a ticket naming the
  closed period; an open one past its cooldown turns half-open and the call
  is its probe), or refuse it with `llmguard.CircuitOpen`. A half-open
  circuit lets exactly ``probes`` calls through at once, whoever asks;
* ``record`` — apply the call's outcome, as the breaker judged it (ok, the
  provider's fault, neutral, or "open for this long"), and say which state
  change it made. A ticket from before the circuit last opened changes
  nothing: a slow call that fails after the circuit opened is not counted
  against its next closed period.

`MemoryBreakerStore` serves one process (threads and asyncio alike; a
circuit's lock is held for a few assignments, never while user code runs;
a closed circuit admits, and records a success, without taking it).
`RedisBreakerStore` serves many processes and machines: each decision is
one Lua script, one round trip, atomic on the server, under keys that
expire on the server.
"""

from __future__ import annotations

from ._breaker_base import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE_LEASE,
    BreakerStore,
    Cell,
    Probe,
    Rules,
    Transition,
)
from ._breaker_memory import MemoryBreakerStore
from ._breaker_redis import RedisBreakerStore


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "PROBE_LEASE",
    "BreakerStore",
    "Cell",
    "MemoryBreakerStore",
    "Probe",
    "RedisBreakerStore",
    "Rules",
    "Transition",
]
