"""`MemoryBudgetStore`: the ledgers of one process, in its memory (the default store)."""

from __future__ import annotations

import itertools
import threading

from typing import Any

from ._budget_base import BudgetStore, Crossing, Ledger, Line, Refusal


def _crossed(alerts: tuple[int, ...], old: int, spent: int) -> int:
    """How many of *alerts* (ascending) *spent* has reached, never below *old*."""
    level = old
    while level < len(alerts) and spent >= alerts[level]:
        level += 1
    return level


# A bucket's slots, in a plain list (cheaper than an object on the hot path):
# spent usd/tokens, reserved usd/tokens, calls, estimated calls, alert levels
# reached in usd/tokens, expiry. `hold` and `release` index them by number
# (a constant index is cheaper than a global); keep the order.
_SU, _ST, _RU, _RT, _N, _E, _AU, _AT, _EXP = range(9)


class MemoryBudgetStore(BudgetStore):
    """Ledgers in this process's memory (the default store).

    Thread- and asyncio-safe: one lock, held for a few dictionary operations
    and never while user code runs. Expired leases are dropped only when a
    request would not fit otherwise (a live process settles its own calls;
    leases matter for calls that never finish), and buckets of past windows
    are swept once their ``ttl`` has passed, at most once a minute.
    """

    sync_ok = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, list[Any]] = {}
        # Reservations by id: (lease end, then bucket, usd, tokens of each line).
        self._held: dict[str, tuple[Any, ...]] = {}
        self._ids = map(str, itertools.count(1))  # one call per id, not next() and str()
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"MemoryBudgetStore(buckets={len(self._buckets)}, held={len(self._held)})"

    def new_id(self) -> str:
        """A reservation id unique in this store."""
        return next(self._ids)

    def _bucket(self, name: str, expires: float | None, now: float) -> list[Any]:
        # Under the lock: bucket *name*, created if need be, kept at least until *expires*.
        b = self._buckets.get(name)
        if b is None:
            if now >= self._next_sweep:
                self._sweep(now)
            b = [0, 0, 0, 0, 0, 0, 0, 0, None]
            self._buckets[name] = b
        if expires is not None and (b[_EXP] is None or expires > b[_EXP]):
            b[_EXP] = expires
        return b

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 60.0
        dead = [n for n, b in self._buckets.items() if b[_EXP] is not None and b[_EXP] <= now]
        for n in dead:
            del self._buckets[n]

    def _drop_expired(self, now: float) -> bool:
        expired = [rid for rid, held in self._held.items() if held[0] <= now]
        for rid in expired:
            held = self._held.pop(rid)
            for i in range(1, len(held), 3):
                b = self._buckets.get(held[i])
                if b is not None:
                    b[_RU] -= held[i + 1]
                    b[_RT] -= held[i + 2]
        return bool(expired)

    def _refusal(self, lines: list[Line], now: float) -> Refusal | None:
        for i, line in enumerate(lines):
            b = self._bucket(line.bucket, None if line.ttl is None else now + line.ttl, now)
            limit = line.usd_limit
            if limit is not None and (b[_SU] + b[_RU] + line.usd > limit or b[_SU] >= limit):
                return Refusal(i, "usd", limit, b[_SU], b[_RU], line.usd)
            limit = line.tokens_limit
            if limit is not None and (b[_ST] + b[_RT] + line.tokens > limit or b[_ST] >= limit):
                return Refusal(i, "tokens", limit, b[_ST], b[_RT], line.tokens)
        return None

    def reserve(self, rid: str, lines: list[Line], now: float, lease: float) -> Refusal | None:
        """Hold each line's request in its bucket, all or none."""
        # Every guarded call's path: locals and constant indexes (see _SU...),
        # one lock hold; the refusal worked out again (`_refusal`) only when
        # something does not fit.
        lock = self._lock
        lock.acquire()  # acquire/try/finally: cheaper than `with`
        try:
            buckets = self._buckets
            for line in lines:
                ttl = line.ttl
                found = buckets.get(line.bucket)
                if found is None:
                    found = self._bucket(line.bucket, None if ttl is None else now + ttl, now)
                elif ttl is not None and (found[8] is None or now + ttl > found[8]):
                    found[8] = now + ttl  # kept at least as long as this line asks (`_bucket`)
                b: list[Any] = found
                limit = line.usd_limit
                if (limit is not None and (b[0] + b[2] + line.usd > limit or b[0] >= limit)) or (
                    (limit := line.tokens_limit) is not None and (b[1] + b[3] + line.tokens > limit or b[1] >= limit)
                ):
                    refusal = self._refusal(lines, now)
                    if refusal is not None and self._drop_expired(now):
                        refusal = self._refusal(lines, now)
                    if refusal is not None:
                        return refusal
                    break
            if len(lines) == 1:  # every call of a lone budget: `b` and `line` are its
                usd, tokens = line.usd, line.tokens
                b[2] += usd
                b[3] += tokens
                self._held[rid] = (now + lease, line.bucket, usd, tokens)
            else:
                held: list[Any] = [now + lease]
                for line in lines:
                    b = buckets[line.bucket]
                    b[2] += line.usd
                    b[3] += line.tokens
                    held += (line.bucket, line.usd, line.tokens)
                self._held[rid] = tuple(held)
        finally:
            lock.release()
        return None

    def settle(
        self, rid: str, lines: list[Line], now: float, *, count: bool, estimated: bool
    ) -> list[Crossing]:
        """Release *rid* (if its lease still holds) and add each line's charge."""
        crossings: list[Crossing] = []
        lock = self._lock
        lock.acquire()
        try:
            held = self._held.pop(rid, None) is not None
            buckets = self._buckets
            for i, line in enumerate(lines):
                b = buckets.get(line.bucket)
                if b is None:  # swept, or its lease long gone
                    b = self._bucket(line.bucket, None if line.ttl is None else now + line.ttl, now)
                if held:
                    b[2] -= line.usd
                    b[3] -= line.tokens
                su = b[0] = b[0] + line.charge_usd
                st = b[1] = b[1] + line.charge_tokens
                if count:
                    b[4] += 1
                    if estimated:
                        b[5] += 1
                usd_alerts, tokens_alerts = line.usd_alerts, line.tokens_alerts
                if (b[6] < len(usd_alerts) and su >= usd_alerts[b[6]]) or (
                    b[7] < len(tokens_alerts) and st >= tokens_alerts[b[7]]
                ):
                    crossings += self._crossings(i, usd_alerts, tokens_alerts, b, su, st) or ()
        finally:
            lock.release()
        return crossings

    @staticmethod
    def _crossings(
        i: int, usd_alerts: tuple[int, ...], tokens_alerts: tuple[int, ...], b: list[Any], su: int, st: int
    ) -> list[Crossing] | None:
        # Under the lock: the alert levels line *i* has just reached in bucket *b*.
        crossings: list[Crossing] | None = None
        old = b[_AU]
        if old < len(usd_alerts) and su >= usd_alerts[old]:
            b[_AU] = _crossed(usd_alerts, old, su)
            crossings = [Crossing(i, "usd", tuple(range(old, b[_AU])), su)]
        old = b[_AT]
        if old < len(tokens_alerts) and st >= tokens_alerts[old]:
            b[_AT] = _crossed(tokens_alerts, old, st)
            crossings = [*(crossings or ()), Crossing(i, "tokens", tuple(range(old, b[_AT])), st)]
        return crossings

    def ledger(self, bucket: str, now: float) -> Ledger:
        """Read *bucket*; an unknown bucket reads as empty."""
        with self._lock:
            self._drop_expired(now)
            b = self._buckets.get(bucket)
            if b is None:
                return Ledger()
            return Ledger(b[_SU], b[_ST], b[_RU], b[_RT], b[_N], b[_E])
