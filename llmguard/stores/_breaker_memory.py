"""`MemoryBreakerStore`: the circuits of one process, in its memory (the default store)."""

from __future__ import annotations

import itertools
import threading

from typing import Any

from .. import _clock
from ._breaker_base import (
    CLOSED,
    FAULT,
    HALF_OPEN,
    NEUTRAL,
    OK,
    OPEN,
    PROBE_LEASE,
    BreakerStore,
    Cell,
    Probe,
    Rules,
    Transition,
    refused,
)


class _MemoryCell(Cell):
    """One circuit in memory. One lock, held for a few assignments, never while user code runs.

    A closed circuit admits a call without taking the lock (reading two
    attributes), and a success on a closed circuit with nothing to reset
    takes it neither: the success path is two attribute reads each way.
    """

    sync_ok = True

    __slots__ = ("_ids", "_lock", "_probes", "_ring", "cons", "current", "gen", "level", "name", "rules", "until")

    def __init__(self, name: str, rules: Rules) -> None:
        self.name = name
        self.rules = rules
        self._lock = threading.Lock()
        self.current = CLOSED
        self.gen = 0  # the closed period's number: a ticket of an earlier one is stale
        self.cons = 0  # consecutive faults
        self.until = 0.0  # open until (monotonic)
        self.level = 0  # failed probes in a row: the cooldown doubles with each
        self._probes: dict[str, float] = {}  # probe id -> lease end
        self._ids = map(str, itertools.count(1))
        # The ratio window: per slot (a tenth of the window), [slot index, calls, faults].
        self._ring: list[list[int]] | None = [[-1, 0, 0] for _ in range(10)] if rules.ratio is not None else None

    def admit(self) -> object:
        """The closed circuit's generation, a `Probe`, or `CircuitOpen`."""
        if self.current is CLOSED:
            return self.gen
        now = _clock.now()
        with self._lock:
            if self.current is CLOSED:
                return self.gen
            first = False
            if self.current is OPEN:
                if now < self.until:
                    raise refused(self.name, OPEN, self.until - now)
                self.current = HALF_OPEN
                self._probes.clear()
                first = True
            probes = self._probes
            if len(probes) >= self.rules.probes:
                for pid in [p for p, end in probes.items() if end <= now]:
                    del probes[pid]  # a probe that never reported
                if len(probes) >= self.rules.probes:
                    raise refused(self.name, HALF_OPEN, 0.0)
            pid = next(self._ids)
            probes[pid] = now + PROBE_LEASE
            return Probe(pid, self.gen, first)

    def ok(self, ticket: object) -> Transition | None:
        """`record` of a success: nothing to do (no lock) on a closed circuit with no count to reset."""
        if ticket.__class__ is int and self.current is CLOSED and not self.cons and self._ring is None:
            return None
        return self.record(ticket, OK, 0.0, "")

    def record(self, ticket: object, verdict: int, seconds: float, reason: str) -> Transition | None:
        """Apply one outcome (see `Cell.record`)."""
        now = _clock.now()
        rules = self.rules
        with self._lock:
            if isinstance(ticket, Probe):
                if ticket.gen != self.gen or self.current is not HALF_OPEN or self._probes.pop(ticket.id, None) is None:
                    return None  # stale: the circuit closed or reopened since
                if verdict == NEUTRAL:
                    return None  # its slot is free for another probe
                if verdict == OK:
                    return self._close()
                if verdict == FAULT:
                    self.level += 1
                    return self._open(now, rules.open_time(self.level), "probe failed")
                return self._open(now, seconds, reason)
            if ticket != self.gen or self.current is not CLOSED or verdict == NEUTRAL:
                return None
            if verdict == OK:
                self.cons = 0
                if self._ring is not None:
                    self._count(now, 0)
                return None
            if verdict != FAULT:
                return self._open(now, seconds, reason)
            self.cons += 1
            if rules.failures is not None and self.cons >= rules.failures:
                return self._open(now, rules.open_time(self.level), f"{self.cons} consecutive failures ({reason})")
            if self._ring is not None:
                calls, faults = self._count(now, 1)
                assert rules.ratio is not None  # noqa: S101 - a ring exists only with a ratio
                if calls >= rules.min_calls and faults >= rules.ratio * calls:
                    why = f"{faults} of {calls} calls failed in {rules.window:g}s ({reason})"
                    return self._open(now, rules.open_time(self.level), why)
            return None

    def _count(self, now: float, fault: int) -> tuple[int, int]:
        # Under the lock: one call (a fault or not) in the current slot; after a
        # fault, the window's totals (a success opens nothing: (0, 0), unsummed).
        ring = self._ring
        assert ring is not None  # noqa: S101
        index = int(now // self.rules.slot)
        slot = ring[index % 10]
        if slot[0] != index:
            slot[0], slot[1], slot[2] = index, 0, 0
        slot[1] += 1
        if not fault:
            return 0, 0
        slot[2] += 1
        calls = faults = 0
        for i, c, f in ring:
            if index - 10 < i <= index:
                calls += c
                faults += f
        return calls, faults

    def _open(self, now: float, seconds: float, reason: str) -> Transition:
        self.current = OPEN
        self.until = now + seconds
        self.cons = 0
        self._probes.clear()
        return Transition(OPEN, seconds, reason)

    def _close(self) -> Transition:
        self.current = CLOSED
        self.gen += 1
        self.level = 0
        self.cons = 0
        self._probes.clear()
        if self._ring is not None:
            for slot in self._ring:
                slot[0] = -1
        return Transition(CLOSED)

    def state(self) -> str:
        """The state now (open past its cooldown reads half-open: the next call is a probe)."""
        current = self.current
        if current is OPEN and _clock.now() >= self.until:
            return HALF_OPEN
        return current


class MemoryBreakerStore(BreakerStore):
    """Circuits in this process's memory (the default store).

    Thread- and asyncio-safe; a circuit's lock is held for a few
    assignments and never while user code runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[str, _MemoryCell] = {}

    def __repr__(self) -> str:
        return f"MemoryBreakerStore(circuits={len(self._cells)})"

    def cell(self, name: str, rules: Rules, *, shared: bool = True) -> _MemoryCell:
        """The circuit *name* (created on first use); a private one of that name when not *shared*."""
        if not shared:
            return _MemoryCell(name, rules)
        with self._lock:
            found = self._cells.get(name)
            if found is None:
                found = self._cells[name] = _MemoryCell(name, rules)
            elif found.rules != rules:
                msg = f"breaker(name=...) {name!r} is already a circuit with other settings ({_settings(found.rules)})"
                raise ValueError(msg)
            return found


def _settings(rules: Rules) -> str:
    fields: dict[str, Any] = rules._asdict()
    return ", ".join(f"{k}={v!r}" for k, v in fields.items())
