"""`budget`: reserve the worst case before each call, settle with the real usage after.

::

    @lg.budget(usd=5.0, per="day", key=lambda user, **_: user)
    def ask(q: str, user: str, model: str = "claude-sonnet-4-6"): ...

    with lg.budget(usd=0.50) as b:      # every budget-guarded call inside
        agent.run()
    print(b.spent, b.remaining)

How a call is checked
=====================
Before each real attempt (in the canonical order, below `retry` and
`fallback`, every retry and every fallback passes through it) the guard
**reserves** the call's worst case in every budget that
applies, atomically against what is already spent *plus what others have
reserved*: ``spent + reserved + worst_case <= limit``. If that does not fit in
any of them, `BudgetExceeded` is raised before the request leaves, so nothing
is billed; the refusal says which budget, its limit, the spend, the other
reservations and what was asked. After the call the reservation is replaced
by what the call really cost (``settle``); a failed call (429, 5xx,
connection error) costs what the provider reported for it, which is nothing
when no response came back; an attempt whose request left but that reported
no usage (see `llmguard._budget_ledger`) costs an estimate of it, never zero and never its
worst case; and a stream ends up costing what it really consumed, however it
ended. So under any concurrency the real spend never exceeds the limit by
more than the calls that used *more* than their worst case (possible only
when the input estimate was low).

How the worst case is estimated from the call's arguments, and priced, is
in `llmguard._budget_estimate`; how a call is charged when it ends, in
`llmguard._budget_ledger`; windows, keys, ``with`` scopes,
alerts and stores, in `llmguard._budget_scope`.

When no output cap or no price can be found, ``unknown_cost=`` decides:
``"reject"`` (the default) refuses the call, saying what is missing;
``"allow"`` reserves only what is known (the input) and lets it through;
a number reserves that many dollars in place of the unknown worst case. A
cost is never taken to be zero: with ``"allow"``, a call to a model that
has *no price at all* reserves and is charged no dollars, so a ``usd=``
limit does not hold it back (its tokens are counted against ``tokens=``,
and each such call emits ``llmguard.budget.unpriced``); give such models a
price with `llmguard.set_price`, or use a fixed amount.

The guard
=========
`_FunctionBudget` is a `Budget` on one function, a `Guard`. In `enter`: `_plan` finds
the budgets that apply (the function's own and the active scopes), asks
each for its reservation of the call's worst case (`Budget._request`,
which may refuse) and builds one `Ticket`; `_budget_ledger.reserve` holds
it in every store at once. The inside runs. In `leave` or `fail`:
`_budget_ledger.settle` charges what it used (a stream: when it finishes).
The record is read only when the charge needs it (`Call.plain_usage`
reads plain results without it).
"""

from __future__ import annotations

import inspect

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, overload

from . import _budget_ledger as ledger
from . import _clock
from ._binder import Binder
from ._budget_estimate import Estimator, mismatch_error, names_read, not_bound, signature_mismatch
from ._budget_ledger import Group, Ticket
from ._budget_scope import SCOPES, Budget, BudgetAlert, BudgetSpend, Per
from ._call import Call
from ._record import Outcome
from ._runner import Guard, layers_of
from ._stream import _StreamBase
from .errors import BudgetExceeded


__all__ = ["Budget", "BudgetAlert", "BudgetSpend", "budget", "budget_spend"]

P = ParamSpec("P")
R = TypeVar("R")
_ABSENT: Any = object()  # an argument the call does not have


class _FunctionBudget(Guard):
    """A `Budget` on one function: its estimator, and the per-call flow (see the module docs)."""

    name: ClassVar[str] = "budget"

    def __init__(self, budget: Budget, fn: Callable[..., Any], binder: Binder) -> None:
        self.budget = budget
        self.function = fn
        self.estimator = Estimator(budget, binder)
        self._own = (budget,) if budget.has_limits else ()  # the budgets of a call in no scope
        self._arguments = binder.arguments  # a call's arguments by name, for key= callables (`Call.arguments`)
        self._arg = binder.arg
        # The parameters the budget's own key= reads, when it may be given those alone (`names_read`).
        self._key_names = None if budget.key is None or isinstance(budget.key, str) else names_read(budget.key, binder)
        self.estimator.check_boundable(fn)
        params = list(binder.signature.parameters.values()) if binder.signature else []
        if params:
            self._check_callables(fn, params, binder.first)

    def _check_callables(self, fn: Callable[..., Any], params: list[inspect.Parameter], first: str | None) -> None:
        """Refuse, at decoration, a ``key=`` or ``estimate=`` that cannot take *fn*'s arguments.

        Both are called with the call's arguments by name (`Call.arguments`); one
        that could never bind would fail every call. Scopes' (``with
        lg.budget(key=...)``) meet their functions only on a call: checked then
        (`call_with_arguments`).
        """
        for option in ("key", "estimate"):
            f = getattr(self.budget, option)
            if f is None or isinstance(f, str):
                continue
            if (reason := signature_mismatch(f, params, first)) is not None:
                raise mismatch_error(option, f, getattr(fn, "__qualname__", repr(fn)), reason)

    def settings(self) -> dict[str, Any]:
        """The budget's configuration, for `describe`."""
        return self.budget.settings()

    # -- one call ------------------------------------------------------------------

    def _plan(self, call: Call) -> Ticket | None:  # noqa: PLR0912 - on every call: no helper calls for keys
        """Estimate, apply each budget's policy, build the lines; None if no budget applies."""
        scopes = SCOPES.get()
        budgets: tuple[Budget, ...] | list[Budget]
        if scopes:
            own = self.budget
            budgets = [own] if own.has_limits else []
            for scope in scopes:
                if scope not in budgets:
                    budgets.append(scope)
            if not budgets:
                return None
        elif self._own:
            budgets = self._own
        else:
            return None
        est = self.estimator.estimate(call, scopes)
        now = _clock.get_clock().time()
        arguments: dict[str, Any] | None = None  # the call's arguments by name, for every key= callable
        groups: list[Group] = []
        for b in budgets:
            key = b.key
            if key is not None and not isinstance(key, str):
                names = self._key_names if b is self.budget else None
                if names is not None:  # the function's own key=, given only what it reads (`names_read`)
                    given: dict[str, Any] = {}
                    for name in names:
                        value = self._arg(call.instance, call.args, call.kwargs, name, _ABSENT)
                        if value is not _ABSENT:
                            given[name] = value
                else:
                    if arguments is None:
                        arguments = self._arguments(call.instance, call.args, call.kwargs)  # `Call.arguments`
                    given = arguments
                try:  # `call_with_arguments`, inlined
                    key = key(**given)
                except TypeError as exc:
                    error = not_bound("key", key, given, call)
                    if error is None:
                        raise
                    raise error from exc
                key = None if key is None or key == "" else str(key)
            elif not key:
                key = None
            usd, tokens = b._request(est, key, call)
            if b._per_call:
                continue
            line, start = b._line(key, now, usd, tokens)
            store = b._store
            for group in groups:
                if group.store is store:
                    group.add(line, b, key, start)
                    break
            else:
                groups.append(Group(store, line, b, key, start))
        rid = groups[0].store.new_id() if groups else ""
        return Ticket(call, groups, est[2], rid, now, call.attempt_count())

    def _settle(self, ticket: Ticket) -> None:
        """Settle *ticket* (once), then remember the outputs and model if this function's estimates read them."""
        if ledger.settle(ticket) and self.estimator.history:
            self.estimator.observe(ticket)

    async def _asettle(self, ticket: Ticket) -> None:
        """`_settle` for a call on an event loop."""
        if await ledger.asettle(ticket) and self.estimator.history:
            self.estimator.observe(ticket)

    def _watch(self, ticket: Ticket, result: _StreamBase) -> _StreamBase:
        settle = self._settle

        def hook(outcome: Outcome, exc: BaseException | None) -> None:  # noqa: ARG001
            settle(ticket)

        # A stream dropped before anything read it finishes when it is collected
        # (`_StreamBase.__del__`), an unread one at its input estimate. No
        # weakref.finalize here: its arguments (the ticket, its record) would keep
        # anything that reaches the stream alive for ever.
        result.on_finish(hook)
        return result

    # -- the hooks (`aenter`/`aleave`/`afail`: the same, awaiting a store that does I/O) --

    def enter(self, call: Call) -> Ticket | None:
        """Reserve the call's worst case in every budget that applies (or refuse): the ticket, or None."""
        ticket = self._plan(call)
        if ticket is not None and ticket.groups:
            ledger.reserve(ticket)
        return ticket

    async def aenter(self, call: Call) -> Ticket | None:
        """`enter` for a call on an event loop."""
        ticket = self._plan(call)
        if ticket is not None and ticket.groups:
            await ledger.areserve(ticket)
        return ticket

    def leave(self, call: Call, ticket: Ticket | None, result: Any) -> Any:  # noqa: ARG002
        """Settle with what the call used; a stream when it finishes."""
        if ticket is None:
            return result
        if isinstance(result, _StreamBase):
            return self._watch(ticket, result)
        if ledger.settle(ticket) and self.estimator.history:  # `_settle`
            self.estimator.observe(ticket)
        return result

    async def aleave(self, call: Call, ticket: Ticket | None, result: Any) -> Any:  # noqa: ARG002
        """`leave` for a call on an event loop."""
        if ticket is None:
            return result
        if isinstance(result, _StreamBase):
            return self._watch(ticket, result)
        await self._asettle(ticket)
        return result

    def fail(self, call: Call, ticket: Ticket | None, exc: BaseException) -> None:  # noqa: ARG002
        """Settle with what the failed call used (what the provider reported, or an estimate); the error goes on."""
        if ticket is not None:
            self._settle(ticket)

    async def afail(self, call: Call, ticket: Ticket | None, exc: BaseException) -> None:  # noqa: ARG002
        """`fail` for a call on an event loop."""
        if ticket is not None:
            await self._asettle(ticket)


@overload
def budget(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def budget(
    *,
    usd: float | None = None,
    tokens: int | None = None,
    per: Per | None = None,
    key: str | Callable[..., Any] | None = None,
    store: Any = None,
    alert_at: Iterable[float] = (0.5, 0.8, 1.0),
    on_alert: Callable[[BudgetAlert], Any] | None = None,
    on_refused: Callable[[BudgetExceeded], Any] | None = None,
    unknown_cost: Literal["reject", "allow"] | float = "reject",
    max_call_usd: float | None = None,
    model: str | None = None,
    max_output: int | None = None,
    estimate: Callable[..., Any] | None = None,
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
    name: str | None = None,
    reservation_ttl: float = 600.0,
) -> Budget: ...


def budget(
    fn: Callable[P, R] | None = None,
    /,
    *,
    usd: float | None = None,
    tokens: int | None = None,
    per: Per | None = None,
    key: str | Callable[..., Any] | None = None,
    store: Any = None,
    alert_at: Iterable[float] = (0.5, 0.8, 1.0),
    on_alert: Callable[[BudgetAlert], Any] | None = None,
    on_refused: Callable[[BudgetExceeded], Any] | None = None,
    unknown_cost: Literal["reject", "allow"] | float = "reject",
    max_call_usd: float | None = None,
    model: str | None = None,
    max_output: int | None = None,
    estimate: Callable[..., Any] | None = None,
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
    name: str | None = None,
    reservation_ttl: float = 600.0,
) -> Callable[P, R] | Budget:
    """A token and/or USD budget, as a decorator or a ``with`` scope.

    *usd* / *tokens*: the limit per window (tokens count input plus
    output). *per*: ``"minute"``, ``"hour"``, ``"day"`` (calendar-aligned,
    UTC), ``None`` (for ever) or ``"call"`` (each call's worst case).
    *key*: a string or a callable of the call's arguments by name giving
    the ledger's key. *store*: a `BudgetStore`, a ``redis://`` URL or a
    redis-py client (default: in memory). *alert_at* / *on_alert*: spend
    fractions that fire alerts once per window and key. *on_refused*: called
    with each `BudgetExceeded` before it is raised (a refusal can come before
    any alert fires: a worst case refused at 72 % spent), so the app learns
    who was refused. *unknown_cost*:
    ``"reject"``, ``"allow"`` or a USD amount to reserve when the worst case
    cannot be computed. *max_call_usd*: refuse any call whose worst case
    costs more. *model*, *max_output*, *estimate*: inputs to the worst case
    (see the module docs). *on_store_error*: ``"fail_closed"`` or
    ``"fail_open"``. *name*: the ledger's name (the same in every process
    sharing a store). *reservation_ttl*: seconds a reservation holds before
    it expires on its own.

    ``@lg.budget`` bare adds no limit: the function obeys the active
    ``with lg.budget(...)`` scopes.
    """
    b = Budget(
        usd=usd,
        tokens=tokens,
        per=per,
        key=key,
        store=store,
        alert_at=alert_at,
        on_alert=on_alert,
        on_refused=on_refused,
        unknown_cost=unknown_cost,
        max_call_usd=max_call_usd,
        model=model,
        max_output=max_output,
        estimate=estimate,
        on_store_error=on_store_error,
        name=name,
        reservation_ttl=reservation_ttl,
    )
    if fn is None:
        return b
    return b(fn)


def budget_spend(target: Any, key: str | None = None, at: float | None = None) -> BudgetSpend:
    """Spend of a budget for *key* in the window containing *at* (default now).

    *target* is a `Budget` or a function decorated with one (the outermost
    budget on it is read). For reports::

        lg.budget_spend(ask, key="alice").usd
        lg.budget_spend(ask, key="alice", at=time.time() - 86400)  # yesterday
    """
    if isinstance(target, Budget):
        return target.spend(key, at)
    for layer in layers_of(target):
        if isinstance(layer, _FunctionBudget):
            return layer.budget.spend(key, at)
    msg = f"budget_spend(target=...) must be a budget or a function guarded by one, got {target!r}"
    raise TypeError(msg)
