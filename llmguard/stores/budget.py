"""Where `budget` keeps its ledgers: in memory (default) or in Redis (shared).

A *bucket* is the ledger of one window of one key of one budget (the
`budget` guard names it: ``"<budget>:<key>:<window start>"``). It holds five
integers: money spent, tokens spent, money reserved, tokens reserved, and how
many calls settled (and how many of those on estimated usage). Money is
counted in integer **pico-dollars** (10⁻¹² USD, `PICO` per dollar): every
per-token price providers publish is a whole number of pico-dollars, so a
ledger is the exact sum of the charges, with no float drift however many
threads or processes add to it; 64-bit counters hold up to $9.2M per
bucket.

A store does three things, each atomically over every bucket one call
touches:

* `BudgetStore.reserve` — check that the request fits in every bucket
  (``spent + reserved + requested <= limit``, and nothing fits once
  ``spent >= limit``), then hold it in all of them, or in none;
* `BudgetStore.settle` — replace a reservation with what the call really
  cost, and say which alert thresholds the spend has just crossed (each
  crossing is reported once per bucket, to exactly one caller); settling
  one reservation twice charges it once (`RedisBudgetStore`: a retried or
  replayed settlement is skipped);
* `BudgetStore.ledger` — read a bucket (for reports and ``b.spent``).

`BudgetStore.hold` and `BudgetStore.release` are `reserve` and `settle` for
a call that touches one bucket (every call of a lone budget): they take the
bucket's `BucketSpec` and the call's amounts instead of a `Line`, and a store
may override them with a faster path.

A reservation is a *lease*: it expires ``lease`` seconds after it was made,
so a process that dies holding one does not pin the budget forever. A call
that settles after its lease ran out still has its real cost charged; only
the (already released) hold is not released twice.

A settlement that cannot reach Redis raises `BudgetStoreError` (the guard
reports it) and is kept, in a bounded queue of ``pending_settlements``, to
be applied on the next successful round trip of the same store (any
reserve, settle or ledger read), so a reservation made before an outage is
released, and its call charged, once the server is back, not when its lease
expires; a charge without a reservation (`BudgetStore.charge`: a call
``fail_open`` let through while Redis was down) is kept the same way.
Applying one twice is harmless: Redis settles a reservation once (a second
settlement of it, say one whose first try ran but whose reply was lost, is
skipped; one that comes after its lease expired and was purged still
charges, once, for up to a day) and remembers each charge's id. Alert
thresholds a kept settlement crosses are reported by the next ordinary
settlement of that bucket. The queue lives in the process: a process that
exits with settlements pending leaves them to the leases. A kept settlement
waits only while Redis cannot be reached (a connection error or a timeout);
one Redis refuses (a script error, ``WRONGTYPE``: it would fail every time) is
dropped, with a ``llmguard.budget.store_error`` event (``stage="replay"``),
and counted in ``dropped_settlements``, and the replay goes on.

A reserve whose reply is lost after it left (a socket timeout, the server
stopped or the connection dropped after the script ran) raises
`BudgetStoreError` too, though Redis may hold the reservation: a release of
it (a settlement charging nothing, applied only if the lease is there) is
kept in the same queue, so the hold is given back on the next successful
round trip, not when its lease expires, and the call (``fail_open``:
charged without a reservation) is charged once. A reserve that never left
(no connection could be made) keeps nothing. A reserve run twice under one
id (a client that resent it, as redis-py's own retries do) holds once.

`MemoryBudgetStore` serves one process (threads and asyncio alike: its lock
is held for a few dictionary operations, never while user code runs).
`RedisBudgetStore` serves many processes and machines: every operation is one
Lua script, so one round trip, atomic on the server.
"""

from __future__ import annotations

from ._budget_base import (
    PICO,
    BucketSpec,
    BudgetStore,
    BudgetStoreError,
    Crossing,
    Ledger,
    Line,
    Refusal,
)
from ._budget_memory import MemoryBudgetStore
from ._budget_redis import RedisBudgetStore


__all__ = [
    "PICO",
    "BucketSpec",
    "BudgetStore",
    "BudgetStoreError",
    "Crossing",
    "Ledger",
    "Line",
    "MemoryBudgetStore",
    "RedisBudgetStore",
    "Refusal",
]
