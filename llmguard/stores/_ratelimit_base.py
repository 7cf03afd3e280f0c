"""`RateLimitStore`: the interface of `ratelimit`'s stores, and what they share.

A store keeps one number per *cell* (one limit of one key of one limiter:
``"<limiter>:<key>:rpm"`` or ``...:tpm``): its **theoretical arrival time**
(TAT) in the GCRA sense, the instant by which everything admitted so far has
been paid for at the limit's rate. Admitting a request that costs *c*
seconds of a cell (one request is ``60 / rpm`` seconds, a token ``60 / tpm``)
is, atomically over every cell the request touches::

    admit = max(now, tat of each cell)          # the caller's turn
    wait  = admit - now                         # known before anyone sleeps
    if wait > max_wait: refuse, change nothing
    tat   = max(tat, admit) + c, for each cell

So callers are admitted in the order they asked (each is given its turn on
arrival: FIFO by construction), every caller knows its wait at once (a wait
over ``max_wait`` is refused then, not after sleeping), and nobody polls: a
caller sleeps exactly until its turn, holding no lock. A correction
(`RateLimitStore.adjust`: the request used fewer or more tokens than
reserved, or gave its turn back) moves the cell's TAT by the difference:
tokens given back go to the callers that ask after it; callers already
waiting keep the turn they were given (the rate still holds: shifting the
reservations behind the corrected one earlier by the same amount would be a
valid schedule, and they start no earlier than that). `RateLimitStore.push`
holds a cell until a given time (a 429, or a provider's headers saying a
limit is exhausted until its reset).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple


class Grant(NamedTuple):
    """What `RateLimitStore.acquire` decided: admitted or not, the wait, and the cell that set it.

    *which* is the index of the cell whose TAT is the caller's turn (-1:
    none was ahead, the caller goes now). When *admitted* is False nothing
    was reserved and *wait* is the wait it would have needed.
    """

    admitted: bool
    wait: float
    which: int


class RateLimitStore:
    """Where a `ratelimit` keeps the TAT of its cells (see the module docs).

    Costs and waits are seconds. Every method is atomic over the cells it is
    given. The ``a``-prefixed methods are the same for callers on an event
    loop; a store without I/O inherits them (they run the sync ones).
    """

    sync_ok: ClassVar[bool] = False
    """True when the sync methods never block (async callers may use them)."""

    def acquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        """Reserve ``(cell, cost)`` for each of *cells* at the caller's turn, unless that is over *max_wait* away."""
        raise NotImplementedError

    def adjust(self, cells: list[tuple[str, float]]) -> None:
        """Move each cell's TAT by its seconds (negative: give back)."""
        raise NotImplementedError

    def push(self, cells: list[str], pause: float) -> None:
        """Admit nobody on *cells* for *pause* seconds from now (the TAT becomes at least now + pause)."""
        raise NotImplementedError

    def ahead(self, cell: str) -> float:
        """Seconds until *cell*'s TAT (0 when idle): the wait of a caller asking now, for reports and tests."""
        raise NotImplementedError

    async def aacquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        """`acquire` on an event loop."""
        return self.acquire(cells, max_wait)

    async def aadjust(self, cells: list[tuple[str, float]]) -> None:
        """`adjust` on an event loop."""
        self.adjust(cells)

    async def apush(self, cells: list[str], pause: float) -> None:
        """`push` on an event loop."""
        self.push(cells, pause)
