"""The breaker store's interface: the rules a circuit follows, its tickets, and what a store is asked.

See `llmguard.stores.breaker` for what a store guarantees.
"""

from __future__ import annotations

import abc
import math

from typing import ClassVar, Final, NamedTuple

from ..errors import CircuitOpen


# A circuit's states (also what `Circuit.state` answers).
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# What one outcome means for the circuit (`llmguard._breaker.judge` decides):
OK: Final = 0  # the provider answered (a success, or an error that was the request's fault)
FAULT: Final = 1  # the provider's fault: 5xx, 529, a timeout, a lost connection
NEUTRAL: Final = 2  # says nothing of the provider: a cancellation, an unknown error
OPEN_FOR: Final = 3  # open for the seconds given, at once: a 429 with a wait, an exhausted quota

# How long a probe holds its half-open slot if it never reports (its process
# died): then the slot is free for another probe.
PROBE_LEASE: Final = 600.0


class Rules(NamedTuple):
    """A circuit's configuration, checked by `llmguard._breaker` (see `breaker` for each)."""

    failures: int | None
    ratio: float | None
    window: float
    min_calls: int
    cooldown: float
    max_cooldown: float
    probes: int

    def open_time(self, level: int) -> float:
        """Seconds the circuit opens for after *level* failed probes in a row: doubled each time, capped."""
        return min(self.cooldown * 2.0 ** min(level, 64), self.max_cooldown)

    @property
    def slot(self) -> float:
        """The ratio window is counted in tenths: seconds per slot."""
        return self.window / 10.0


class Probe:
    """The ticket of a call the half-open circuit let through as a probe.

    ``first`` is True for the caller whose admission turned the circuit
    half-open (the one that emits ``llmguard.breaker.half_opened``).
    """

    __slots__ = ("first", "gen", "id")

    def __init__(self, id: str, gen: int, first: bool) -> None:  # noqa: A002 - the probe's id
        self.id = id
        self.gen = gen
        self.first = first

    def __repr__(self) -> str:
        return f"Probe(id={self.id!r}, gen={self.gen}, first={self.first})"


class Transition(NamedTuple):
    """A state change a `record` made: to ``OPEN`` (for *seconds*, because of *reason*) or ``CLOSED``."""

    to: str
    seconds: float = 0.0
    reason: str = ""


def refused(name: str, state: str, retry_after: float) -> CircuitOpen:
    """The `CircuitOpen` a circuit raises when it will not let a call through."""
    retry_after = max(0.0, retry_after) if math.isfinite(retry_after) else 0.0
    if state == OPEN:
        why = f"circuit {name!r} is open: the call was not made (it half-opens in {retry_after:.1f}s)"
    else:
        why = f"circuit {name!r} is half-open and its probe is still out: the call was not made"
    return CircuitOpen(why, target=name, retry_after=retry_after)


class Cell(abc.ABC):
    """One circuit's state in a store: what `Circuit` calls.

    ``admit()`` returns a ticket (the closed circuit's generation, an
    ``int``, or a `Probe`) or raises `CircuitOpen`; ``record(ticket,
    verdict, seconds, reason)`` applies one outcome (*verdict* is `OK`,
    `FAULT`, `NEUTRAL` or `OPEN_FOR` with *seconds*) and returns the
    `Transition` it made, if any. A ticket of an earlier generation (a call
    let through before the circuit last opened) changes nothing.
    """

    sync_ok: ClassVar[bool] = False
    """True when the sync methods never block (async callers use them directly)."""

    name: str
    rules: Rules

    @abc.abstractmethod
    def admit(self) -> object:
        """A ticket for one call, or `CircuitOpen`."""

    @abc.abstractmethod
    def record(self, ticket: object, verdict: int, seconds: float, reason: str) -> Transition | None:
        """Apply one call's outcome."""

    @abc.abstractmethod
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open past its cooldown reads half-open)."""

    def ok(self, ticket: object) -> Transition | None:
        """`record` of a success (a store may make it cheaper)."""
        return self.record(ticket, OK, 0.0, "")

    async def aadmit(self) -> object:
        """`admit` for a caller on an event loop."""
        return self.admit()

    async def arecord(self, ticket: object, verdict: int, seconds: float, reason: str) -> Transition | None:
        """`record` for a caller on an event loop."""
        return self.record(ticket, verdict, seconds, reason)

    async def astate(self) -> str:
        """`state` for a caller on an event loop."""
        return self.state()


class BreakerStore(abc.ABC):
    """Where circuits keep their state: `MemoryBreakerStore` or `RedisBreakerStore`."""

    @abc.abstractmethod
    def cell(self, name: str, rules: Rules, *, shared: bool = True) -> Cell:
        """The circuit *name* with *rules*; not *shared*: a circuit of its own, whatever its name.

        Two shared cells of one name in one store are one circuit; asking for
        a name already used with other rules is a `ValueError` (a store
        another process shares cannot check that: give each set of rules its
        own name).
        """
