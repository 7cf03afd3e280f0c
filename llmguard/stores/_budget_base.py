"""The budget store's interface: what a store is asked, and the values it answers with.

See `llmguard.stores.budget` for what a store guarantees.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass
from typing import ClassVar, Final


PICO: Final = 10**12
"""Pico-dollars per dollar: the store's unit of money."""


class BudgetStoreError(Exception):
    """The store could not be reached or answered nonsense (``__cause__`` says why).

    ``queued`` is True when the failed operation was a settlement the store
    kept to apply once it is reachable again (`RedisBudgetStore`).
    """

    queued: bool = False


class Line:
    """One bucket a call must fit in, with what it asks of it.

    Built by the `budget` guard for each call: ``usd``/``tokens`` are what
    it reserves; ``charge_usd``/``charge_tokens`` what it settles with. Limits
    are None when the budget has none in that unit. ``ttl`` is how long the
    bucket must be kept from now (None: forever). ``usd_alerts`` and
    ``tokens_alerts`` are the ascending spend levels whose crossing is
    reported by `BudgetStore.settle`.
    """

    __slots__ = (
        "bucket",
        "charge_tokens",
        "charge_usd",
        "tokens",
        "tokens_alerts",
        "tokens_limit",
        "ttl",
        "usd",
        "usd_alerts",
        "usd_limit",
    )

    def __init__(
        self,
        bucket: str,
        usd: int,
        tokens: int,
        usd_limit: int | None,
        tokens_limit: int | None,
        ttl: float | None,
        usd_alerts: tuple[int, ...] = (),
        tokens_alerts: tuple[int, ...] = (),
    ) -> None:
        self.bucket = bucket
        self.usd = usd
        self.tokens = tokens
        self.usd_limit = usd_limit
        self.tokens_limit = tokens_limit
        self.ttl = ttl
        self.usd_alerts = usd_alerts
        self.tokens_alerts = tokens_alerts
        self.charge_usd = 0
        self.charge_tokens = 0

    def __repr__(self) -> str:
        return (
            f"Line(bucket={self.bucket!r}, usd={self.usd}, tokens={self.tokens}, "
            f"usd_limit={self.usd_limit}, tokens_limit={self.tokens_limit})"
        )


class BucketSpec:
    """A bucket and its terms: a `Line` without a call's amounts.

    The `budget` guard builds one per key and window and passes it, with
    each call's amounts, to `BudgetStore.hold` and `BudgetStore.release`
    (the one-line case, which is every call of a lone budget). ``expires``
    is when the bucket may be dropped (epoch seconds; None: never), where a
    `Line` says ``ttl`` from now.
    """

    __slots__ = ("bucket", "expires", "tokens_alerts", "tokens_limit", "usd_alerts", "usd_limit")

    def __init__(
        self,
        bucket: str,
        usd_limit: int | None,
        tokens_limit: int | None,
        expires: float | None,
        usd_alerts: tuple[int, ...] = (),
        tokens_alerts: tuple[int, ...] = (),
    ) -> None:
        self.bucket = bucket
        self.usd_limit = usd_limit
        self.tokens_limit = tokens_limit
        self.expires = expires
        self.usd_alerts = usd_alerts
        self.tokens_alerts = tokens_alerts

    def line(self, usd: int, tokens: int, now: float) -> Line:
        """The `Line` asking *usd* / *tokens* of this bucket at *now*."""
        ttl = None if self.expires is None else self.expires - now
        return Line(self.bucket, usd, tokens, self.usd_limit, self.tokens_limit, ttl, self.usd_alerts, self.tokens_alerts)

    def __repr__(self) -> str:
        return f"BucketSpec(bucket={self.bucket!r}, usd_limit={self.usd_limit}, tokens_limit={self.tokens_limit})"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation did not fit: the first line and unit that refused."""

    index: int  # into the lines passed to reserve
    unit: str  # "usd" (pico-dollars) or "tokens"
    limit: int
    spent: int
    reserved: int
    requested: int


@dataclass(frozen=True, slots=True)
class Crossing:
    """Alert thresholds a settlement just crossed in one line and unit."""

    index: int  # into the lines passed to settle
    unit: str  # "usd" or "tokens"
    crossed: tuple[int, ...]  # indexes into that line's alerts, ascending
    spent: int  # the spend after the settlement


@dataclass(frozen=True, slots=True)
class Ledger:
    """One bucket as it stands (money in pico-dollars)."""

    usd: int = 0
    tokens: int = 0
    reserved_usd: int = 0
    reserved_tokens: int = 0
    calls: int = 0
    estimated_calls: int = 0


class BudgetStore(abc.ABC):
    """The interface every budget store implements (see the module docs).

    ``now`` is wall-clock seconds from the guard's clock (so tests on a fake
    clock see leases expire on it); ``lease`` is seconds.
    """

    sync_ok: ClassVar[bool] = False
    """True when the sync methods never block (async callers may use them)."""

    @abc.abstractmethod
    def new_id(self) -> str:
        """A reservation id unique among every user of this store."""

    @abc.abstractmethod
    def reserve(self, rid: str, lines: list[Line], now: float, lease: float) -> Refusal | None:
        """Hold each line's ``usd``/``tokens`` in its bucket, all or none."""

    @abc.abstractmethod
    def settle(
        self, rid: str, lines: list[Line], now: float, *, count: bool, estimated: bool
    ) -> list[Crossing]:
        """Release reservation *rid* and add each line's charge to its bucket."""

    def hold(self, spec: BucketSpec, usd: int, tokens: int, now: float, lease: float) -> str | Refusal:
        """`reserve` the one line ``spec.line(usd, tokens, now)`` under a new id.

        Returns the reservation id, or the `Refusal`. With `release`, the
        path of a call that touches one bucket (override both for speed).
        """
        rid = self.new_id()
        refusal = self.reserve(rid, [spec.line(usd, tokens, now)], now, lease)
        return rid if refusal is None else refusal

    def release(
        self,
        rid: str,
        spec: BucketSpec,
        usd: int,
        tokens: int,
        charge_usd: int,
        charge_tokens: int,
        now: float,
        estimated: bool,
    ) -> list[Crossing] | None:
        """`settle` (counted) of a `hold`: give back *usd* / *tokens*, charge *charge_usd* / *charge_tokens*.

        Returns the alert crossings, None or empty when there are none.
        """
        line = spec.line(usd, tokens, now)
        line.charge_usd = charge_usd
        line.charge_tokens = charge_tokens
        return self.settle(rid, [line], now, count=True, estimated=estimated)

    def charge(self, lines: list[Line], now: float, *, count: bool, estimated: bool) -> list[Crossing]:
        """Add each line's charge to its bucket without a reservation (its ``usd``/``tokens`` are ignored).

        For a call that reserved nothing (``on_store_error="fail_open"``
        when the store was down) and for a later correction of a charge.
        The default settles a new id, which holds nothing.
        """
        return self.settle(self.new_id(), lines, now, count=count, estimated=estimated)

    @abc.abstractmethod
    def ledger(self, bucket: str, now: float) -> Ledger:
        """Read *bucket* (expired reservations dropped first)."""

    async def areserve(
        self, rid: str, lines: list[Line], now: float, lease: float
    ) -> Refusal | None:
        """`reserve` for async callers."""
        return self.reserve(rid, lines, now, lease)

    async def asettle(
        self, rid: str, lines: list[Line], now: float, *, count: bool, estimated: bool
    ) -> list[Crossing]:
        """`settle` for async callers."""
        return self.settle(rid, lines, now, count=count, estimated=estimated)

    async def aledger(self, bucket: str, now: float) -> Ledger:
        """`ledger` for async callers."""
        return self.ledger(bucket, now)
