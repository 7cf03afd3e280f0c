"""The `Budget` itself: its limits, windows, keys and ledgers, and the ``with`` scope.

A `Budget` is what ``lg.budget(...)`` returns: a decorator (each function it
decorates gets a `llmguard._budget` guard) and a context manager. This module
holds what belongs to the budget rather than to one call: its configuration
(checked here, naming the bad argument), where its ledgers are (one bucket
per key and window), its policy for a call's worst case (`Budget._request`:
reserve it or refuse), and the refusals and alerts it raises.

Windows
=======
``per="minute" | "hour" | "day"`` windows are **calendar-aligned** in UTC
(a day runs 00:00 to 24:00 UTC), not sliding. Budgets are billing
quantities, and a calendar window is one counter that starts empty at a
known instant, matches the provider's bill and answers "what did tenant X
spend on 2026-03-14" exactly; alerts fire once per window; and in Redis it
is one hash that expires with its window. A sliding window would need a log
of every charge and would make "the spend" a moving figure. The price is
the boundary: up to twice the limit can be spent in a short span around
midnight (the end of one window and the start of the next). If that
matters, add a `ratelimit` (tokens per minute) to smooth it. A call is
charged to the window in which it was reserved. ``per=None`` is one window
for ever; ``per="call"`` keeps no ledger and caps each call's worst case.

Scopes and keys
===============
``key=`` is a string, or a callable of the call's arguments by name
(defaults applied) returning the key (user, tenant, API key): each key has
its own ledger. Take the arguments it does not need with ``**_``
(``key=lambda user, **_: user``): a key (or ``estimate=``) that could never
bind the decorated function's arguments is a `TypeError` naming it at
decoration; a scope's meets its functions only when they are called, and a
call it cannot bind is then a `TypeError` naming ``budget(key=...)``. ``with lg.budget(...) as b:`` (or ``async with``) applies a
budget to every budget-guarded call inside it, in this thread or task and
the tasks it starts; scopes nest and all of them apply, together with the
decorator's own limit, and one reservation holds in all of them or none.
A guarded *generator function* reserves when its iteration starts, against
the scopes active there: a generator made inside a ``with`` block and
iterated after it is not held by that block.
A bare ``@lg.budget`` adds no limit of its own: the function just obeys the
active scopes. Put the guard on the function that sends the request: a
budget-guarded function calling another one reserves and charges at both
levels (and twice, if it returns the inner call's response object). ``b.spent``, ``b.reserved`` and ``b.remaining`` read a
budget's current window (in dollars when it has ``usd=``, else tokens);
`budget_spend` reads any key and window, for reports.

Alerts
======
Crossing each ``alert_at`` fraction of a limit (by real spend) fires once per
window per key, across every process sharing the store: ``on_alert`` gets a
`BudgetAlert`, structlog gets a warning ``llmguard.budget.alert`` and the
call's span an event. Refusals emit ``llmguard.budget.exceeded``.

Stores
======
The in-memory store is the default (one per budget). ``store="redis://..."``
(or a redis-py client, or a `RedisBudgetStore`) shares the budget between
processes and machines: reserve and settle are one Lua script each, one
round trip. Give a shared budget a ``name=`` that is the same everywhere
(the default is the function's module and qualified name). Reservations are
leases of ``reservation_ttl`` seconds, so a process that dies holding one
does not pin the budget. When the store cannot be reached,
``on_store_error="fail_closed"`` (the default) refuses calls with
`BudgetExceeded` (``__cause__`` is the store's error);
``"fail_open"`` lets them through unchecked and emits
``llmguard.budget.store_error``. A settlement that cannot reach the store
never raises into your code; it emits the same event with the amounts
(``lost_usd``, ``lost_tokens``) and ``queued``: a `RedisBudgetStore` keeps
it and applies it on its next successful round trip, so the reservation is
released and the call charged once Redis is back (exactly once: see
`llmguard.stores.budget`), not when its lease expires; so is the charge of
a call ``"fail_open"`` let through unreserved, and the correction of an
abandoned sync attempt's charge.
Streams settle in their finish hook, which is synchronous, so an async
stream on a Redis store settles with one blocking round trip.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from . import _check, _clock, _events
from ._budget_estimate import Estimate, why
from ._call import Call
from ._context import Refused, enter_scope, exit_scope
from ._record import CallRecord
from ._runner import Guard
from ._warn import warn
from .errors import BudgetExceeded
from .stores import resolve_store
from .stores.budget import PICO, BucketSpec, BudgetStore, Line, MemoryBudgetStore, RedisBudgetStore


if TYPE_CHECKING:
    from ._binder import Binder


Per = Literal["call", "minute", "hour", "day"]

_PERIODS: Final[dict[str | None, float | None]] = {
    None: None,
    "call": None,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
}
_MAX_USD: Final = 9_000_000  # pico-dollars in a signed 64-bit counter: $9.2M
# Token limits and output caps: thousands of worst-case reservations still fit
# a signed 64-bit counter (Redis's HINCRBY).
_MAX_TOKENS: Final = 10**15
_SPECS_KEPT: Final = 4096  # keys whose bucket terms a budget remembers (then it starts again)

# The `with lg.budget(...)` scopes active in this context, outermost first.
SCOPES: ContextVar[tuple[Budget, ...]] = ContextVar("llmguard_budget_scopes", default=())


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget's spend crossed one of its ``alert_at`` thresholds."""

    budget: str
    key: str | None
    unit: str  # "usd" or "tokens"
    threshold: float  # the fraction crossed, e.g. 0.8
    limit: float
    spent: float
    window_start: float | None  # epoch seconds; None for per=None
    window_end: float | None
    function: str | None  # the guarded function whose settlement crossed it


@dataclass(frozen=True, slots=True)
class BudgetSpend:
    """One budget's ledger for one key and window, for reports.

    ``usd`` is a float for convenience; ``exact_usd`` is the ledger itself
    (a whole number of pico-dollars), equal to the sum of the calls' costs.
    ``remaining_*`` is what is left to reserve: limit - spent - reserved.
    """

    budget: str
    key: str | None
    per: str | None
    window_start: float | None
    window_end: float | None
    usd: float
    exact_usd: Decimal
    tokens: int
    reserved_usd: float
    reserved_tokens: int
    usd_limit: float | None
    tokens_limit: int | None
    calls: int
    estimated_calls: int

    @property
    def remaining_usd(self) -> float | None:
        """Dollars left to reserve (None without a USD limit)."""
        if self.usd_limit is None:
            return None
        return max(self.usd_limit - self.usd - self.reserved_usd, 0.0)

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left to reserve (None without a token limit)."""
        if self.tokens_limit is None:
            return None
        return max(self.tokens_limit - self.tokens - self.reserved_tokens, 0)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace(":", "%3A")


def _positive(
    name: str, value: Any, *, integer: bool = False, maximum: float | None = None, kind: str = "", optional: bool = True
) -> None:
    """``budget(name=...)``: None (if *optional*), or a finite number (an int if *integer*) > 0, at most *maximum*."""
    _check.number("budget", name, value, integer=integer, kind=kind, optional=optional)
    if maximum is not None and value is not None and value > maximum:
        counts = "tokens" if integer else "pico-dollars"
        msg = f"budget({name}=...) must be <= {maximum:,} (the ledger counts {counts} in 64 bits), got {value!r}"
        raise ValueError(msg)


def _check_callable(name: str, value: object, *, allow_str: bool = False) -> None:
    if value is None or callable(value) or (allow_str and isinstance(value, str)):
        return
    what = "a string or a callable of the call's arguments" if allow_str else "callable"
    msg = f"budget({name}=...) must be {what}, got {value!r}"
    raise ValueError(msg)


def _check_name(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        msg = f"budget({name}=...) must be a non-empty string, got {value!r}"
        raise ValueError(msg)


def _validate(**config: Any) -> tuple[float, ...]:
    """Check `Budget`'s arguments, naming the bad one; the sorted alert fractions."""
    _positive("usd", config["usd"], maximum=_MAX_USD)
    _positive("tokens", config["tokens"], integer=True, maximum=_MAX_TOKENS)
    _positive("max_call_usd", config["max_call_usd"], maximum=_MAX_USD)
    _positive("max_output", config["max_output"], integer=True, maximum=_MAX_TOKENS)
    _positive("reservation_ttl", config["reservation_ttl"], kind="a number of seconds", optional=False)
    per = config["per"]
    if per not in _PERIODS:
        msg = f"budget(per=...) must be None, 'call', 'minute', 'hour' or 'day', got {per!r}"
        raise ValueError(msg)
    _check_callable("key", config["key"], allow_str=True)
    _check_callable("on_alert", config["on_alert"])
    _check_callable("on_refused", config["on_refused"])
    _check_callable("estimate", config["estimate"])
    _check_name("model", config["model"])
    _check_name("name", config["name"])
    on_store_error = config["on_store_error"]
    if on_store_error not in ("fail_closed", "fail_open"):
        msg = f"budget(on_store_error=...) must be 'fail_closed' or 'fail_open', got {on_store_error!r}"
        raise ValueError(msg)
    unknown = config["unknown_cost"]
    if isinstance(unknown, str) and unknown not in ("reject", "allow"):
        msg = f"budget(unknown_cost=...) must be 'reject', 'allow' or a USD amount > 0, got {unknown!r}"
        raise ValueError(msg)
    if not isinstance(unknown, str):
        _positive(
            "unknown_cost", unknown, maximum=_MAX_USD, kind="'reject', 'allow' or a USD amount", optional=False
        )
    alert_at = config["alert_at"]
    if isinstance(alert_at, (str, bytes)) or not isinstance(alert_at, Iterable):
        msg = f"budget(alert_at=...) must be fractions of the limit, e.g. (0.5, 0.8, 1.0), got {alert_at!r}"
        raise TypeError(msg)
    fractions = tuple(alert_at)
    for a in fractions:
        try:
            _check.number("budget", "alert_at", a)
        except (TypeError, ValueError) as exc:
            msg = f"budget(alert_at=...) fractions must be > 0 (finite numbers), got {alert_at!r}"
            raise type(exc)(msg) from None
    return tuple(sorted({float(a) for a in fractions}))


def _resolve_store(store: Any) -> BudgetStore | None:
    return resolve_store("budget", store, BudgetStore, RedisBudgetStore)


class Budget(Guard):
    """A token and/or USD budget: a decorator and a context manager.

    Build it with `budget`; see the module documentation for what it does.
    """

    name: ClassVar[str] = "budget"

    def __init__(
        self,
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
    ) -> None:
        alerts = _validate(
            usd=usd,
            tokens=tokens,
            per=per,
            key=key,
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
        self.has_limits = usd is not None or tokens is not None or max_call_usd is not None
        if not self.has_limits:
            given = [
                n
                for n, v in (
                    ("per", per),
                    ("key", key),
                    ("store", store),
                    ("on_alert", on_alert),
                    ("on_refused", on_refused),
                    ("name", name),
                )
                if v is not None
            ]
            if given:
                msg = f"budget({given[0]}=...) needs a limit: pass usd=... or tokens=... (or max_call_usd=...)"
                raise ValueError(msg)
        if per == "call" and (key is not None or store is not None or on_alert is not None):
            which = "key" if key is not None else "store" if store is not None else "on_alert"
            msg = f"budget({which}=...) has no effect with per='call', which keeps no ledger"
            raise ValueError(msg)
        self.usd = usd
        self.tokens = tokens
        self.per = per
        self.key = key
        self.alert_at = alerts if per != "call" else ()
        self.on_alert = on_alert
        self.on_refused = on_refused
        self.unknown_cost = unknown_cost
        self.max_call_usd = max_call_usd
        self.model = model
        self.max_output = max_output
        self.estimate = estimate
        self.on_store_error = on_store_error
        # A lease past what a store can count in milliseconds is ~31 years (`_clock.MAX_SECONDS`).
        self.reservation_ttl = min(float(reservation_ttl), _clock.MAX_SECONDS)
        self.label = name
        # Created now, not on first use: two threads racing to create it
        # would each get a ledger of their own.
        self._store = _resolve_store(store) or MemoryBudgetStore()
        self._period = _PERIODS[per]
        self._retention = max(self._period or 0.0, self.reservation_ttl)
        self._per_call = per == "call"
        self._usd_limit = None if usd is None else round(Decimal(str(usd)) * PICO)
        self._max_call = None if max_call_usd is None else round(Decimal(str(max_call_usd)) * PICO)
        self._fixed_unknown = (
            None
            if isinstance(unknown_cost, str)
            else math.ceil(Decimal(str(unknown_cost)) * PICO)
        )
        self._usd_alerts = (
            ()
            if self._usd_limit is None
            else tuple(math.ceil(Decimal(str(a)) * self._usd_limit) for a in self.alert_at)
        )
        self._tokens_alerts = (
            () if tokens is None else tuple(math.ceil(Decimal(str(a)) * tokens) for a in self.alert_at)
        )
        # Each key's bucket in the window it was last used in: (window start, its terms).
        self._specs: dict[str | None, tuple[float | None, BucketSpec]] = {}
        self._enc_label: str | None = None if name is None else _escape(name)

    # -- configuration -----------------------------------------------------

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.settings().items() if v is not None]
        return f"budget({', '.join(parts)})"

    def settings(self) -> dict[str, Any]:
        """The budget's configuration, for `describe`."""
        return {
            "usd": self.usd,
            "tokens": self.tokens,
            "per": self.per,
            "key": self.key if isinstance(self.key, str) or self.key is None else "<callable>",
            "name": self.label,
            "store": type(self._store).__name__,
            "alert_at": self.alert_at,
            "unknown_cost": self.unknown_cost,
            "max_call_usd": self.max_call_usd,
            "model": self.model,
            "max_output": self.max_output,
            "estimate": None if self.estimate is None else "<callable>",
            "on_store_error": self.on_store_error,
        }

    @property
    def store(self) -> BudgetStore:
        """The store holding this budget's ledgers."""
        return self._store

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Guard:  # noqa: ARG002
        """The per-function guard (it remembers the function's outputs and model)."""
        from ._budget import _FunctionBudget  # noqa: PLC0415 - the guard's module imports this one

        if self.label is None:
            module = getattr(fn, "__module__", None) or "?"
            qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "fn"
            self.label = f"{module}.{qualname}"
            self._enc_label = _escape(self.label)
        return _FunctionBudget(self, fn, binder)

    # -- ledgers -----------------------------------------------------------

    def _scope_name(self, key: str | None) -> str:
        label = self.label or "budget"
        text = label if key is None else f"{label}[{key}]"
        return text if self.per is None else f"{text}/{self.per}"

    def _window(self, now: float) -> tuple[float | None, float | None]:
        period = self._period
        if period is None:
            return None, None
        start = (now // period) * period
        return start, start + period

    def _bucket(self, key: str | None, start: float | None) -> str:
        if self._enc_label is None:
            # A scope that never decorated anything: unique to this object.
            self.label = self.label or f"scope-{id(self):x}"
            self._enc_label = _escape(self.label)
        window = "all" if start is None else str(int(start))
        return f"{self._enc_label}:{'' if key is None else _escape(key)}:{window}"

    def _line(self, key: str | None, now: float, usd: int, tokens: int) -> tuple[Line, float | None]:
        """The `Line` asking *usd* / *tokens* of *key*'s bucket in the window of *now*, and the window's start."""
        period = self._period
        start = None if period is None else (now // period) * period
        known = self._specs.get(key)
        if known is None or known[0] != start:
            known = self._spec(key, start)
        spec = known[1]  # `BucketSpec.line`, inlined
        ttl = None if spec.expires is None else spec.expires - now
        line = Line(spec.bucket, usd, tokens, spec.usd_limit, spec.tokens_limit, ttl, spec.usd_alerts, spec.tokens_alerts)
        return line, start

    def _spec(self, key: str | None, start: float | None) -> tuple[float | None, BucketSpec]:
        """The terms of *key*'s bucket in the window from *start*, remembered for the next calls of that key."""
        expires = None if start is None or self._period is None else start + self._period + self._retention
        spec = BucketSpec(
            self._bucket(key, start), self._usd_limit, self.tokens, expires, self._usd_alerts, self._tokens_alerts
        )
        specs = self._specs
        if len(specs) >= _SPECS_KEPT:
            specs.clear()
        specs[key] = known = (start, spec)
        return known

    def spend(self, key: str | None = None, at: float | None = None) -> BudgetSpend:
        """The ledger of *key* in the window containing *at* (epoch seconds; default now).

        *key* defaults to the budget's own ``key=`` when that is a string.
        Raises `llmguard.stores.budget.BudgetStoreError` if the store cannot
        be read.
        """
        if self._per_call:
            msg = "a budget with per='call' keeps no ledger to read"
            raise ValueError(msg)
        now = _clock.get_clock().time()
        when = now if at is None else at
        start, end = self._window(when)
        if key is None:
            key = self._fixed_key()
        key = None if key is None or key == "" else str(key)
        ledger = self.store.ledger(self._bucket(key, start), now)
        return BudgetSpend(
            budget=self.label or "",
            key=key,
            per=self.per,
            window_start=start,
            window_end=end,
            usd=ledger.usd / PICO,
            exact_usd=Decimal(ledger.usd) / PICO,
            tokens=ledger.tokens,
            reserved_usd=ledger.reserved_usd / PICO,
            reserved_tokens=ledger.reserved_tokens,
            usd_limit=self.usd,
            tokens_limit=self.tokens,
            calls=ledger.calls,
            estimated_calls=ledger.estimated_calls,
        )

    def _fixed_key(self) -> str | None:
        return self.key if isinstance(self.key, str) and self.key else None

    @property
    def spent(self) -> float:
        """Spent in the current window (dollars with ``usd=``, else tokens)."""
        s = self.spend()
        return s.usd if self.usd is not None else s.tokens

    @property
    def reserved(self) -> float:
        """Held by calls in flight (dollars with ``usd=``, else tokens)."""
        s = self.spend()
        return s.reserved_usd if self.usd is not None else s.reserved_tokens

    @property
    def remaining(self) -> float:
        """Left to reserve in the current window (dollars with ``usd=``, else tokens)."""
        s = self.spend()
        if self.usd is not None:
            return s.remaining_usd or 0.0
        return s.remaining_tokens or 0

    # -- the context manager -----------------------------------------------

    def _check_scope(self) -> None:
        if self.usd is None and self.tokens is None and self.max_call_usd is None:
            msg = "a `with lg.budget(...)` scope needs usd=... or tokens=..."
            raise ValueError(msg)
        if self.label is None and isinstance(self._store, RedisBudgetStore):
            msg = "budget(name=...) is required for a `with` scope on a shared (Redis) store, so every process finds the same ledger"
            raise ValueError(msg)

    def __enter__(self) -> Budget:
        self._check_scope()
        enter_scope(SCOPES, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        exit_scope(SCOPES, self)
        exc = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(exc, Refused):  # an SDK request refused at the wire (`llmguard._wire_budget`)
            raise exc.error

    async def __aenter__(self) -> Budget:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    # -- per-call decisions --------------------------------------------------

    def _request(self, est: Estimate, key: str | None, call: Call) -> tuple[int, int]:
        """What this budget reserves for *est*: (pico-dollars, tokens), or a refusal (for *call*)."""
        input_tokens, output_tokens, _, usd, usd_in = est
        needs_usd = self._usd_limit is not None or self._max_call is not None
        if usd is None and needs_usd:
            fixed = self._fixed_unknown
            if fixed is not None:
                usd = max(fixed, usd_in)
            elif self.unknown_cost == "allow":
                usd = usd_in
            else:
                raise self._refuse(
                    call,
                    key,
                    "unknown_cost",
                    "usd",
                    self._usd_limit or self._max_call or 0,
                    None,
                    None,
                    None,
                    f"cannot bound the cost of this call ({why(est)})",
                )
        tokens = None if output_tokens is None else input_tokens + output_tokens
        if tokens is None:
            if self.tokens is not None and self.unknown_cost == "reject":
                raise self._refuse(
                    call,
                    key,
                    "unknown_cost",
                    "tokens",
                    self.tokens,
                    None,
                    None,
                    None,
                    f"cannot bound the tokens of this call ({why(est)})",
                )
            tokens = input_tokens
        usd_p = usd or 0
        if self._max_call is not None and usd_p > self._max_call:
            raise self._refuse(
                call, key, "max_call_usd", "usd", self._max_call, 0, 0, usd_p,
                "its worst case exceeds max_call_usd",
            )
        if self._per_call:
            if self._usd_limit is not None and usd_p > self._usd_limit:
                raise self._refuse(
                    call, key, "per_call", "usd", self._usd_limit, 0, 0, usd_p,
                    "its worst case exceeds the per-call limit",
                )
            if self.tokens is not None and tokens > self.tokens:
                raise self._refuse(
                    call, key, "per_call", "tokens", self.tokens, 0, 0, tokens,
                    "its worst case exceeds the per-call limit",
                )
        return usd_p, tokens

    def _refuse(
        self,
        call: Call,
        key: str | None,
        reason: str,
        unit: str,
        limit: int,
        spent: int | None,
        reserved: int | None,
        requested: int | None,
        why: str,
    ) -> BudgetExceeded:
        scale = PICO if unit == "usd" else 1
        limit_f = limit / scale
        spent_f = 0.0 if spent is None else spent / scale
        reserved_f = 0.0 if reserved is None else reserved / scale
        requested_f = math.inf if requested is None else requested / scale
        scope = self._scope_name(key)

        def amount(x: float) -> str:
            if math.isinf(x):
                return "unknown"
            return f"${x:.6f}" if unit == "usd" else f"{x:.0f} tokens"

        if reason == "limit":
            detail = (
                f"{amount(requested_f)} does not fit: {amount(spent_f)} spent and "
                f"{amount(reserved_f)} reserved of {amount(limit_f)}"
            )
        elif reason == "unknown_cost":
            detail = (
                f"{why}; unknown_cost='reject'. Pass max_output=, a max_tokens argument, model= "
                "or estimate=, or set unknown_cost='allow' or a USD amount"
            )
        elif reason == "store_error":
            detail = why
        else:
            detail = f"{why}: {amount(requested_f)} > {amount(limit_f)}"
        message = f"budget {scope!r}: refused before sending; {detail}"
        record = call.record
        record.budget_decision = "refused"
        _events.emit(
            _events.BUDGET_EXCEEDED,
            record,
            level="warning",
            budget=self.label,
            key=key,
            unit=unit,
            reason=reason,
            limit=limit_f,
            spent=spent_f,
            reserved=reserved_f,
            requested=requested_f,
        )
        refused = BudgetExceeded(
            message,
            scope=scope,
            limit=limit_f,
            spent=spent_f,
            reserved=reserved_f,
            requested=requested_f,
            unit=unit,
        )
        if self.on_refused is not None:
            try:
                self.on_refused(refused)
            except Exception as exc:  # noqa: BLE001 - the refusal stands; a callback bug must not replace it
                warn(f"llmguard: budget on_refused callback failed: {exc!r}", RuntimeWarning)
        return refused

    def _alert(self, record: CallRecord, key: str | None, start: float | None, unit: str, level: int, spent: int) -> None:
        threshold = self.alert_at[level]
        if unit == "usd":
            limit: float = self.usd or 0.0
            spent_f: float = spent / PICO
        else:
            limit = self.tokens or 0
            spent_f = spent
        end = None if start is None or self._period is None else start + self._period
        _events.emit(
            _events.BUDGET_ALERT,
            record,
            level="warning",
            budget=self.label,
            key=key,
            unit=unit,
            threshold=threshold,
            limit=limit,
            spent=spent_f,
            window_start=start,
        )
        if self.on_alert is not None:
            alert = BudgetAlert(self.label or "", key, unit, threshold, limit, spent_f, start, end, record.function)
            try:
                self.on_alert(alert)
            except Exception as exc:  # noqa: BLE001 - the call is done and billed; a callback bug must not lose its result
                warn(f"llmguard: budget on_alert callback failed: {exc!r}", RuntimeWarning)
