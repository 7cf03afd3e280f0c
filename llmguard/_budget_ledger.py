"""The life of a reservation: reserve it, settle it with what the call used, correct it.

The charge is the usage on the call record's attempts made through this
guard (rounded to the pico-dollar, so a ledger is the exact sum of its
calls' costs): input (cache reads and writes at their own rates), output and
reasoning tokens, priced by `llmguard.prices.cost_of`. A stream settles when
it finishes in any way (exhaustion, error, ``close``, ``with`` exit,
cancellation, garbage collection): with the usage the provider reported, or,
when it ended without one, the usage estimated from the text seen, flagged
``estimated`` (never zero). A generator function whose body never ran sent
nothing and is charged nothing. A response whose model has no price keeps
its USD reservation as its charge and emits ``llmguard.budget.unpriced``.

An attempt whose request *left* but that reported no usage is charged the
input estimated from the call's arguments (the best-guess reading of the
same count the reservation read as a worst case, ``ceil(bytes / 4)``; at
least 1 token) plus the output estimated from any text it showed, flagged
``estimated``. Without seeing
the HTTP exchange, "left" means: an ``async def`` attempt cancelled once
the function had started (a caller's cancel, an async `timeout`); a stream
whose request was sent but that ended before a chunk was read (closed,
dropped, cancelled); a sync attempt still running when the budget
settles (a worker its `timeout` abandoned, with the budget outside the
timeout as in the README); and an attempt whose SDK timed out *reading*
the response (its ``APITimeoutError`` raised from an HTTP read timeout: its
own ``timeout=``, ``lg.remaining()`` included). Such an attempt may in fact have been cancelled
before its request went out (then it is over-charged by that estimate), and
the server may have generated output nobody saw (then it is under-charged
by that output). The abandoned sync worker is followed: when it returns, its
real usage replaces the estimate (the difference is added to the ledger,
not counted as another call; a stream it returns is closed unread and stays
at the estimate).
`used` is that rule, read from the call record; `reserve` / `settle` apply a
`Ticket` (one call's reservation: its lines, grouped by store) to the
stores, `correct` applies what an abandoned attempt used once it ends.
"""

from __future__ import annotations

import contextlib
import threading

from typing import TYPE_CHECKING, Any, Final

from . import _clock, _estimate, _events, prices, providers
from ._record import Attempt, CallRecord, ErrorKind, Outcome, Usage
from .stores.budget import PICO, BudgetStore, BudgetStoreError, Crossing, Line, Refusal


if TYPE_CHECKING:
    from ._budget_scope import Budget
    from ._call import Call
    from .errors import BudgetExceeded


_PENDING: Final = Outcome.PENDING
_CANCELLED: Final = Outcome.CANCELLED
_UNREAD_ENDS: Final = frozenset({Outcome.CLOSED, Outcome.ABANDONED, Outcome.CANCELLED})
# The kinds of an attempt's error that may be a read timeout the function raised
# as its own error: one with a kind of its own (a 429...) answered for itself,
# whatever its implicit context (the caller's own timed-out request, say).
_TIMED_OUT_KINDS: Final = frozenset({ErrorKind.TIMEOUT, ErrorKind.UNKNOWN})

# What `used` returns: (usd, tokens, estimated, unpriced, running).
Used = tuple[int, int, bool, bool, bool]


class Group:
    """The lines of one call in one store, and the budget/key/window of each.

    ``owners[i]`` is ``(budget, key, window start)`` of ``lines[i]``; the
    `budgets`, `keys` and `starts` views are for the paths that refuse,
    alert or report a store error (none runs on an ordinary call).
    """

    # Not __slots__: one is built on every call, and class-level defaults with
    # a short __init__ build fastest (as `Call`). Two lists, not four.
    reserved = False

    def __init__(self, store: BudgetStore, line: Line, budget: Budget, key: str | None, start: float | None) -> None:
        self.store = store
        self.lease = budget.reservation_ttl  # the first budget's, for the whole group
        self.lines = [line]
        self.owners = [(budget, key, start)]

    def add(self, line: Line, budget: Budget, key: str | None, start: float | None) -> None:
        """Another budget's line in the same store."""
        self.lines.append(line)
        self.owners.append((budget, key, start))

    @property
    def budgets(self) -> list[Budget]:
        """The budget of each line."""
        return [owner[0] for owner in self.owners]

    @property
    def keys(self) -> list[str | None]:
        """The key of each line."""
        return [owner[1] for owner in self.owners]

    @property
    def starts(self) -> list[float | None]:
        """The window start of each line."""
        return [owner[2] for owner in self.owners]


class Ticket:
    """One call's reservation, until it settles (and, for an attempt still running then, until it ends)."""

    # Not __slots__ (see `Group`).
    n1: int | None = None  # attempts from here on are later calls' (fixed when it settles)
    settled = False
    unchecked = False  # a store let it through unreserved (on_store_error="fail_open")
    running = False  # an attempt had not ended when it settled (see `follow`)
    # (usage, model, provider) of its attempts when it was charged from their plain results
    # without building the record (`Call.plain_usage`); None when it read the record.
    plain: list[tuple[Usage | None, str | None, str | None]] | None = None

    def __init__(self, call: Call, groups: list[Group], model: str | None, rid: str, now: float, n0: int) -> None:
        self.call = call  # its record is read only when needed (see `Call.record`)
        self.groups = groups
        self.model = model
        self.rid = rid
        self.now = now  # wall time the reservation was made (its window)
        self.n0 = n0  # attempts made before this call's, which are not ours

    @property
    def record(self) -> CallRecord:
        """The call's record (built now if nobody had read it)."""
        return self.call.record


# -- the charging rule ------------------------------------------------------------


def left_unmeasured(att: Attempt, outcome: Outcome) -> bool:
    """Whether *att* reported no usage although its request is taken to have left.

    "Left" is what can be observed without the HTTP exchange: an attempt
    still running (a sync worker its timeout abandoned), one cancelled while
    it ran (an ``async def`` whose task was cancelled once the function had
    started), a stream whose request was sent but that ended before a
    chunk was read (closed, dropped, cancelled), and one whose SDK timed out
    reading the response (`providers.response_timed_out`: its own timeout,
    ``timeout=lg.remaining()`` included, whatever error the function turned
    it into -- the request left either way). A failure the provider answered
    (429, 5xx) or a connection that never got a response is not.
    *outcome* is ``att.outcome`` as the caller read it, before the usage
    (see `used`).
    """
    return (
        outcome is _PENDING
        or outcome is _CANCELLED
        or (att.sent and att.chunks == 0 and outcome in _UNREAD_ENDS)
        or (att.error_kind in _TIMED_OUT_KINDS and providers.response_timed_out(att.error))
    )


def sent_input(call: Call) -> int:
    """The input tokens an attempt that reported nothing is charged: `Call.estimated_input_tokens`, never 0."""
    return max(call.estimated_input_tokens(), 1)


def used(record: CallRecord, n0: int, model: str | None, call: Call, n1: int | None = None) -> Used:
    """What attempts *n0* to *n1* used: (usd, tokens, estimated, unpriced, running).

    The one rule every settlement and correction charges by: an attempt's
    reported usage (for a stream that ended early, the estimate it
    recorded: the input confirmed or estimated plus the output seen); for
    an attempt that reported none although its request left
    (`left_unmeasured`), its input estimated from the call's arguments
    plus the output estimated from the text it showed, flagged
    estimated. *running* says an attempt had not ended yet (a sync worker
    its timeout abandoned): `follow` settles it again when it does.
    """
    usd = 0
    tokens = 0
    estimated = False
    unpriced = False
    running = False
    sent_in: int | None = None
    for att in record.attempts[n0:n1]:
        # The outcome first: a worker sets the usage (and cost) before the
        # outcome, so one that ends after this read is seen running (and
        # followed), never as ended without usage (charged 0, not followed).
        outcome = att.outcome
        usage = att.usage
        cost = att.cost_usd
        if outcome is _PENDING:
            running = True  # usage it reported so far may grow: followed either way
        if usage is None:
            if not left_unmeasured(att, outcome):
                continue
            if sent_in is None:
                sent_in = sent_input(call)
            usage = Usage(sent_in, _estimate.text_tokens(att.text), estimated=True)
            cost = None
        tokens += usage.input_tokens + usage.output_tokens
        if usage.estimated:
            estimated = True
        if cost is None:
            cost = prices.cost_of(usage, att.response_model or att.model or model, att.provider)
            if cost is None and model:
                cost = prices.cost_of(usage, model)
        if cost is None:
            unpriced = True
        else:
            usd += round(cost * PICO)
    if unpriced:
        _events.emit(_events.BUDGET_UNPRICED, record, level="warning", model=record.model, tokens=tokens)
    return usd, tokens, estimated, unpriced, running


def _plain_used(plain: list[tuple[Usage | None, str | None, str | None]], call: Call, model: str | None) -> Used | None:
    """`used` for attempts that all returned a plain result (`Call.plain_usage`), read without the record.

    The same figures `used` reads from the record (an attempt's cost is
    what the record prices it at, `_facts._price`: its response's model,
    else the one asked for); None when one of them is unpriced (`used`
    then reports it).
    """
    usd = 0
    tokens = 0
    estimated = False
    for usage, named, provider in plain:
        if usage is None:
            continue  # it ended without usage and its request is not taken to have left: nothing
        asked = named or call.request_model()
        cost = prices.cost_of(usage, asked, provider)
        if cost is None:
            cost = prices.cost_of(usage, asked or model, provider)
            if cost is None and model:
                cost = prices.cost_of(usage, model)
            if cost is None:
                return None
        usd += round(cost * PICO)
        tokens += usage.input_tokens + usage.output_tokens
        if usage.estimated:
            estimated = True
    return usd, tokens, estimated, False, False


def charge(usage: Used, usd_held: int, tokens_held: int) -> tuple[int, int]:  # noqa: ARG001
    """What a reservation of *usd_held* / *tokens_held* is charged for *usage* (see `used`).

    The usage, except that an unpriced one keeps its dollar reservation
    (a cost is never taken to be zero). `_begin_settling` applies the same
    rule inline.
    """
    usd, tokens, _, unpriced, _ = usage
    return (max(usd, usd_held) if unpriced else usd), tokens


# -- reserving ----------------------------------------------------------------------


def _refused(ticket: Ticket, group: Group, refusal: Refusal) -> BudgetExceeded:
    b, key, _ = group.owners[refusal.index]
    return b._refuse(
        ticket.call,
        key,
        "limit",
        refusal.unit,
        refusal.limit,
        refusal.spent,
        refusal.reserved,
        refusal.requested,
        "",
    )


def _store_failed(ticket: Ticket, group: Group, exc: BudgetStoreError, stage: str) -> BudgetExceeded | None:
    """Apply on_store_error for *group*; a BudgetExceeded to raise, or None to go on."""
    closed = [b for b in group.budgets if b.on_store_error == "fail_closed"]
    _events.emit(
        _events.BUDGET_STORE_ERROR,
        ticket.record,
        level="error",
        stage=stage,
        budgets=",".join(b.label or "" for b in group.budgets),
        error=str(exc),
        policy="fail_closed" if closed else "fail_open",
    )
    if not closed:
        ticket.unchecked = True
        ticket.record.budget_decision = "unchecked"
        return None
    b = closed[0]
    i = group.budgets.index(b)
    line = group.lines[i]
    return b._refuse(
        ticket.call,
        group.keys[i],
        "store_error",
        "usd" if line.usd_limit is not None else "tokens",
        line.usd_limit if line.usd_limit is not None else (line.tokens_limit or 0),
        None,
        None,
        line.usd if line.usd_limit is not None else line.tokens,
        f"the budget store is unavailable ({exc.__cause__ or exc}) and on_store_error='fail_closed'",
    )


def _refuse(ticket: Ticket, n: int, group: Group, refusal: Refusal) -> BudgetExceeded:
    """Group *n* refused: release the groups before it; the error to raise."""
    release(ticket, n)
    return _refused(ticket, group, refusal)


def _not_reserved(ticket: Ticket, n: int, group: Group, exc: BaseException) -> None:
    """Group *n* raised *exc* while reserving: go on unchecked (``fail_open``), or raise.

    A store error is `BudgetExceeded` under ``fail_closed`` (the groups
    before released); anything else (a cancel, an interrupt) releases the
    group and those before, and is raised as it is.
    """
    if not isinstance(exc, BudgetStoreError):
        _interrupted(ticket, n, group)
        raise exc
    err = _store_failed(ticket, group, exc, "reserve")
    if err is not None:
        release(ticket, n)
        raise err from exc.__cause__


def _decided(ticket: Ticket) -> None:
    """Note "reserved" on the record, unless a guard decided otherwise already.

    A refusal or "unchecked" is written on the record itself (building
    it): a call whose record was never built was decided by nobody else.
    """
    call = ticket.call
    if not call.recorded:
        call.note(budget_decision="reserved")
    elif call.record.budget_decision is None:
        call.record.budget_decision = "reserved"


# `reserve` and `areserve` differ only in the store's call.


def reserve(ticket: Ticket) -> None:
    """Hold the ticket's lines in every store, all or none; raise `BudgetExceeded` if they do not fit."""
    for n, group in enumerate(ticket.groups):
        try:
            refusal = group.store.reserve(ticket.rid, group.lines, ticket.now, group.lease)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _not_reserved unless fail_open
            _not_reserved(ticket, n, group, exc)
            continue
        if refusal is not None:
            raise _refuse(ticket, n, group, refusal)
        group.reserved = True
    if not ticket.unchecked:
        _decided(ticket)


async def areserve(ticket: Ticket) -> None:
    """`reserve` for async callers (a store that may block is awaited)."""
    for n, group in enumerate(ticket.groups):
        store, lease = group.store, group.lease
        try:
            if store.sync_ok:
                refusal = store.reserve(ticket.rid, group.lines, ticket.now, lease)
            else:
                refusal = await store.areserve(ticket.rid, group.lines, ticket.now, lease)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _not_reserved unless fail_open
            _not_reserved(ticket, n, group, exc)
            continue
        if refusal is not None:
            raise _refuse(ticket, n, group, refusal)
        group.reserved = True
    if not ticket.unchecked:
        _decided(ticket)


def _interrupted(ticket: Ticket, n: int, group: Group) -> None:
    """Cancelled (or interrupted) while group *n* was reserving: release it and those before.

    The store may have made the reservation before the cancel reached
    us; releasing an id it does not hold changes nothing. Synchronous,
    as a stream's settlement is: a cancelled task cannot await.
    """
    group.reserved = True
    release(ticket, n + 1)


def release(ticket: Ticket, upto: int) -> None:
    """Give back the reservations already made in the groups before *upto*."""
    for group in ticket.groups[:upto]:
        if not group.reserved:
            continue
        for line in group.lines:
            line.charge_usd = line.charge_tokens = 0
        with contextlib.suppress(BudgetStoreError):  # else the lease expires on its own
            group.store.settle(ticket.rid, group.lines, ticket.now, count=False, estimated=False)


# -- settling -------------------------------------------------------------------------


def _begin_settling(ticket: Ticket) -> bool | None:
    """Mark *ticket* settled and set each line's charge from its attempts (`used`).

    Whether the charge is estimated; None if it was settled already.
    ``ticket.running`` says an attempt had not ended (see `follow`).
    """
    if ticket.settled:
        return None
    ticket.settled = True
    call = ticket.call
    n0 = ticket.n0
    plain = call.plain_usage(n0)
    usage = None
    if plain is not None:
        ticket.n1 = n0 + len(plain)
        usage = _plain_used(plain, call, ticket.model)
        if usage is not None:
            ticket.plain = plain
    if usage is None:
        ticket.n1 = call.attempt_count()
        usage = used(call.record, n0, ticket.model, call, ticket.n1)
    usd, tokens, estimated, unpriced, running = usage
    for group in ticket.groups:
        for line in group.lines:  # `charge`, inlined: every call passes here
            line.charge_usd = max(usd, line.usd) if unpriced else usd
            line.charge_tokens = tokens
    ticket.running = running
    return estimated


def _settled(ticket: Ticket, group: Group, crossings: list[Crossing] | BudgetStoreError) -> None:
    """Group *group* settled crossing alert thresholds, or could not (reported, never raised)."""
    if isinstance(crossings, BudgetStoreError):
        _settle_failed(ticket, group, crossings)
    else:
        _alerts(ticket, group, crossings)


# `settle` and `asettle` differ only in the store's call.


def settle(ticket: Ticket) -> bool:
    """Replace the ticket's reservations by what its call used; False if it was settled already."""
    estimated = _begin_settling(ticket)
    if estimated is None:
        return False
    for group in ticket.groups:
        store = group.store
        try:
            if group.reserved:
                crossings: Any = store.settle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
            else:  # on_store_error="fail_open" let it through unreserved
                crossings = store.charge(group.lines, ticket.now, count=True, estimated=estimated)
        except BudgetStoreError as exc:
            crossings = exc
        if crossings:
            _settled(ticket, group, crossings)
    if ticket.running:
        follow(ticket)
    return True


async def asettle(ticket: Ticket) -> bool:
    """`settle` for async callers (a store that may block is awaited)."""
    estimated = _begin_settling(ticket)
    if estimated is None:
        return False
    for group in ticket.groups:
        store = group.store
        try:
            if not group.reserved:  # on_store_error="fail_open" let it through unreserved
                crossings: Any = store.charge(group.lines, ticket.now, count=True, estimated=estimated)
            elif store.sync_ok:
                crossings = store.settle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
            else:
                crossings = await store.asettle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
        except BudgetStoreError as exc:
            crossings = exc
        if crossings:
            _settled(ticket, group, crossings)
    if ticket.running:
        follow(ticket)
    return True


def follow(ticket: Ticket) -> None:
    """Settled while an attempt still ran (a sync worker abandoned at its deadline): correct it when that ends.

    The worker's real usage (or, for a stream it returned, what its
    closing records) replaces the estimate it was charged; the
    difference is added to the ledger as it is, not counted as a call.
    Registered before looking again, so an attempt that ended in between
    is corrected now (a correction that finds nothing new changes nothing).
    """
    lock = threading.Lock()  # this ticket's corrections, one at a time
    ticket.record.on_background_end(lambda: correct(ticket, lock))
    attempts = ticket.record.attempts[ticket.n0 : ticket.n1]
    if not any(att.outcome is _PENDING for att in attempts):
        correct(ticket, lock)


def correct(ticket: Ticket, lock: threading.Lock) -> None:
    """Charge the difference between what *ticket*'s attempts used now and what it was charged.

    Runs each time an abandoned attempt of the call ends, so it must be
    idempotent: a difference the store kept through an outage (it applies
    it once it is back) counts as charged, and is not charged again.
    *lock* is the ticket's own, held across the store's round trip: it
    keeps two corrections of one ticket from charging one difference
    twice, and stalls no other call's (a lock for all would, for a whole
    Redis timeout).
    """
    with lock:
        usage = used(ticket.record, ticket.n0, ticket.model, ticket.call, ticket.n1)
        now = _clock.get_clock().time()
        for group in ticket.groups:
            changes: list[Line] = []
            for line in group.lines:
                usd, tokens = charge(usage, line.usd, line.tokens)
                ttl = None if line.ttl is None else max(line.ttl - (now - ticket.now), 1.0)
                change = Line(
                    line.bucket, 0, 0, line.usd_limit, line.tokens_limit, ttl, line.usd_alerts, line.tokens_alerts
                )
                change.charge_usd, change.charge_tokens = usd - line.charge_usd, tokens - line.charge_tokens
                changes.append(change)
            if not any(c.charge_usd or c.charge_tokens for c in changes):
                continue
            try:
                crossings = group.store.charge(changes, now, count=False, estimated=False)
            except BudgetStoreError as exc:
                _settle_failed(ticket, group, exc, changes)
                if not exc.queued:
                    continue  # lost: the next correction of this ticket tries the difference again
                crossings = []  # kept by the store, applied once it is back: charged as far as we go
            for line, change in zip(group.lines, changes, strict=True):
                line.charge_usd += change.charge_usd
                line.charge_tokens += change.charge_tokens
            if crossings:
                _alerts(ticket, group, crossings)


def _settle_failed(ticket: Ticket, group: Group, exc: BudgetStoreError, lines: list[Line] | None = None) -> None:
    line = (lines or group.lines)[0]
    _events.emit(
        _events.BUDGET_STORE_ERROR,
        ticket.record,
        level="error",
        stage="settle",
        budgets=",".join(b.label or "" for b in group.budgets),
        error=str(exc),
        lost_usd=line.charge_usd / PICO,
        lost_tokens=line.charge_tokens,
        queued=exc.queued,
    )


def _alerts(ticket: Ticket, group: Group, crossings: list[Crossing]) -> None:
    for crossing in crossings:
        b, key, start = group.owners[crossing.index]
        for level in crossing.crossed:
            b._alert(ticket.record, key, start, crossing.unit, level, crossing.spent)
