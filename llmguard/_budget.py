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
no usage (see Settling) costs an estimate of it, never zero and never its
worst case; and a stream ends up costing what it really consumed, however it
ended. So under any concurrency the real spend never exceeds the limit by
more than the calls that used *more* than their worst case (possible only
when the input estimate below was low).

The worst case is estimated from the function's arguments, in this order:

1. ``estimate=`` (a callable taking the call's arguments by name and
   returning ``(input_tokens, max_output_tokens)`` or a `Usage`) overrides
   everything below.
2. **SDK-shaped arguments**, when the function has them: the string content
   of ``messages``, ``system``, ``prompt``, ``input``, ``instructions``,
   ``contents`` and ``tools`` for the input; ``max_tokens``,
   ``max_output_tokens`` or ``max_completion_tokens`` (times ``n``) as the
   output cap.
3. Otherwise the input is **all** the arguments (counted as below), and
   the output cap is ``max_output=`` or else the largest output this
   function produced in its last 100 calls (at least its 99th percentile;
   remembered only for functions whose arguments can lack a cap or model).

The estimate sees only the arguments: a function that adds a long system
prompt or tool schemas of its own should say so with ``estimate=``.

Input tokens are reserved as a UTF-8 byte count divided by 3 (the worst
case of llmguard's one estimate, ``llmguard._estimate``; docs/estimates.md
gives the formula and its error measured against real tokenizers): about
1.4-1.6x the real count for English text and code, 1.0-1.3x for CJK text
on current tokenizers, low for hash-dense JSON and, on older tokenizers,
for Arabic, Hindi or Korean. What is counted: of a
chat message ``{"role": ..., "content": "<text>"}`` (those two keys
exactly; a message with more keys counts its ``str()``), its text plus 40
bytes for the role and framing (~13 tokens; OpenAI documents 3 a
message); of a list, each item by these rules (a list inside it: its
``str()``); of a string, itself; of anything else
(content blocks, tool schemas, objects), its ``str()``. Images or other base64
payloads are counted as text and so hugely overestimated; pass
``estimate=`` for those. A charge that has to be estimated (see Settling)
reads the same count as a best guess, bytes / 4. The model whose prices apply is the call's
``model`` argument, else ``model=``, else the model this function last
used. Input is priced at the higher of the input and cache-write rates
(worst case), output at the output rate, via `llmguard.prices`.

When no output cap or no price can be found, ``unknown_cost=`` decides:
``"reject"`` (the default) refuses the call, saying what is missing;
``"allow"`` reserves only what is known (the input) and lets it through;
a number reserves that many dollars in place of the unknown worst case. A
cost is never taken to be zero: with ``"allow"``, a call to a model that
has *no price at all* reserves and is charged no dollars, so a ``usd=``
limit does not hold it back (its tokens are counted against ``tokens=``,
and each such call emits ``llmguard.budget.unpriced``); give such models a
price with `llmguard.set_price`, or use a fixed amount.

Settling
========
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

import contextlib
import inspect
import math
import sys
import threading
import warnings

from collections import deque
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Final, Literal, NamedTuple, ParamSpec, TypeVar, cast, overload

from . import _check, _clock, _estimate, _events, prices, providers
from ._binder import Binder
from ._record import Attempt, CallRecord, ErrorKind, Outcome, Usage
from ._wrap import (
    _F_ARGS,
    _F_KWARGS,
    _F_LAYER,
    _F_USAGE,
    GENERAL,
    SYNC,
    Call,
    Lane,
    Layer,
    _realize,
    _StreamBase,
    layers_of,
    returned_call,
    with_reported,
)
from .errors import BudgetExceeded
from .stores import budget as _stores
from .stores import is_redis_target
from .stores.budget import (
    PICO,
    BucketSpec,
    BudgetStore,
    BudgetStoreError,
    Line,
    MemoryBudgetStore,
    RedisBudgetStore,
)


__all__ = ["Budget", "BudgetAlert", "BudgetSpend", "budget", "budget_spend"]

P = ParamSpec("P")
R = TypeVar("R")

Per = Literal["call", "minute", "hour", "day"]

_PERIODS: Final[dict[str | None, float | None]] = {
    None: None,
    "call": None,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
}
_PENDING: Final = Outcome.PENDING
_CANCELLED: Final = Outcome.CANCELLED
_UNREAD_ENDS: Final = frozenset({Outcome.CLOSED, Outcome.ABANDONED, Outcome.CANCELLED})
_MISS: Any = object()
_FLAT: Final = prices._flat  # worst-case rates per model (cleared, never replaced)
_MAX_USD: Final = 9_000_000  # pico-dollars in a signed 64-bit counter: $9.2M
# Token limits and output caps: thousands of worst-case reservations still fit
# a signed 64-bit counter (Redis's HINCRBY).
_MAX_TOKENS: Final = 10**15
_INPUT_NAMES: Final = _estimate.INPUT_NAMES
_CAP_NAMES: Final = ("max_tokens", "max_output_tokens", "max_completion_tokens")
_OBSERVED: Final = 100  # outputs remembered per function
_NEVER: Final = sys.maxsize  # the position of a parameter that is never positional


def _estimated_count(count: Any, what: str, value: Any) -> int:
    """A token count from ``estimate=``: a whole number >= 0, else a clear error naming it.

    A negative count would be a negative reservation, which lets other
    calls spend past the limit.
    """
    msg = f"budget(estimate=...) must return token counts >= 0; its {what} is {count!r} (it returned {value!r})"
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        raise TypeError(msg)
    if not math.isfinite(count) or count < 0:
        raise ValueError(msg)
    return math.ceil(count)


# The `with lg.budget(...)` scopes active in this context, outermost first.
_SCOPES: ContextVar[tuple[Budget, ...]] = ContextVar("llmguard_budget_scopes", default=())


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


def _passed_names(params: list[inspect.Parameter], first: str | None) -> tuple[frozenset[str], frozenset[str], bool]:
    """What ``key(**arguments)`` receives from a call of a function with *params* (see `_FunctionBudget._arguments`).

    (names always passed, names perhaps passed, whether other names may be
    passed too). A method's instance (*first*, the `Binder`'s rule) is left out; a
    ``**kwargs`` passes the call's extra keywords on their own names, unless
    there are also ``*args`` or positional-only parameters (then, as every
    ``*args``/``**kwargs``, under its own name).
    """
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    always = {p.name for p in params if p.kind in named}
    perhaps: set[str] = set()
    if first is not None:
        always.discard(first)
        perhaps.add(first)
    simple = not any(p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if not simple:
        always |= {p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return frozenset(always), frozenset(perhaps), simple and var_kw


def _signature_mismatch(f: Callable[..., Any], params: list[inspect.Parameter], first: str | None) -> str | None:
    """Why *f* (a ``key=`` or ``estimate=``), called with the keyword arguments of a function with *params*, cannot bind, or None.

    None too when it cannot be told (no signature).
    """
    try:
        taken = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return None
    always, perhaps, open_ended = _passed_names(params, first)
    if positional := [p.name for p in taken if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]:
        return f"it has positional-only parameters {positional}, but is called with keyword arguments only"
    by_keyword = {p.name for p in taken if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in taken) and (unexpected := sorted(always - by_keyword)):
        return f"it has no parameter for {unexpected} (add **_ to take the arguments it does not need)"
    required = {
        p.name for p in taken if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    }
    if not open_ended and (missing := sorted(required - always - perhaps)):
        return f"it needs {missing}, which the function has no parameter for"
    return None


def _mismatch_error(option: str, f: Callable[..., Any], where: str, reason: str) -> TypeError:
    shown = getattr(f, "__qualname__", None) or repr(f)
    return TypeError(
        f"budget({option}=...) cannot take the arguments of {where}: {shown} is called with the call's "
        f"arguments by name, and {reason}"
    )


def _call_with_arguments(option: str, f: Callable[..., Any], arguments: dict[str, Any], where: str) -> Any:
    """``f(**arguments)`` (a ``key=`` or ``estimate=``); a call that cannot bind is an error naming the option.

    A `TypeError` raised inside *f*, once it has bound, is its own and stays as it is.
    """
    try:
        return f(**arguments)
    except TypeError as exc:
        reason = _unbound(f, arguments)
        if reason is None:
            raise
        raise _mismatch_error(option, f, where, reason) from exc


def _unbound(f: Callable[..., Any], arguments: dict[str, Any]) -> str | None:
    """Why ``f(**arguments)`` does not bind, or None if it does (or there is no signature to tell by)."""
    try:
        inspect.signature(f).bind(**arguments)
    except TypeError as exc:
        return f"it does not bind ({exc})"
    except ValueError:
        return None
    return None


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
    if store is None or isinstance(store, BudgetStore):
        return store
    if is_redis_target(store):
        return RedisBudgetStore(store)
    shown = repr(store) if isinstance(store, str) else type(store).__name__
    msg = f"budget(store=...) must be a BudgetStore, a redis:// URL or a redis-py client, got {shown}"
    raise ValueError(msg)


class Budget(Layer):
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
                for n, v in (("per", per), ("key", key), ("store", store), ("on_alert", on_alert), ("name", name))
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
        self._bucket_cache: tuple[float | None, str] | None = None
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

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Layer:  # noqa: ARG002
        """The per-function layer (it remembers the function's outputs and model)."""
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
        if key is None:
            cached = self._bucket_cache
            if cached is not None and cached[0] == start:
                return cached[1]
        if self._enc_label is None:
            # A scope that never decorated anything: unique to this object.
            self.label = self.label or f"scope-{id(self):x}"
            self._enc_label = _escape(self.label)
        window = "all" if start is None else str(int(start))
        bucket = f"{self._enc_label}:{'' if key is None else _escape(key)}:{window}"
        if key is None:
            self._bucket_cache = (start, bucket)
        return bucket

    def _line(self, key: str | None, now: float, usd: int, tokens: int) -> tuple[Line, float | None]:
        start, end = self._window(now)
        ttl = None if end is None else end - now + self._retention
        line = Line(
            self._bucket(key, start),
            usd,
            tokens,
            self._usd_limit,
            self.tokens,
            ttl,
            self._usd_alerts,
            self._tokens_alerts,
        )
        return line, start

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
        _SCOPES.set((*_SCOPES.get(), self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        scopes = _SCOPES.get()
        for i in range(len(scopes) - 1, -1, -1):
            if scopes[i] is self:
                _SCOPES.set(scopes[:i] + scopes[i + 1 :])
                break

    async def __aenter__(self) -> Budget:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    # -- per-call decisions --------------------------------------------------

    def _request(self, est: _Estimate, key: str | None, record: CallRecord) -> tuple[int, int]:
        """What this budget reserves for *est*: (pico-dollars, tokens), or a refusal."""
        usd = est.usd
        needs_usd = self._usd_limit is not None or self._max_call is not None
        if usd is None and needs_usd:
            fixed = self._fixed_unknown
            if fixed is not None:
                usd = max(fixed, est.usd_in)
            elif self.unknown_cost == "allow":
                usd = est.usd_in
            else:
                raise self._refuse(
                    record,
                    key,
                    "unknown_cost",
                    "usd",
                    self._usd_limit or self._max_call or 0,
                    None,
                    None,
                    None,
                    f"cannot bound the cost of this call ({_why(est)})",
                )
        tokens = None if est.output_tokens is None else est.input_tokens + est.output_tokens
        if tokens is None:
            if self.tokens is not None and self.unknown_cost == "reject":
                raise self._refuse(
                    record,
                    key,
                    "unknown_cost",
                    "tokens",
                    self.tokens,
                    None,
                    None,
                    None,
                    f"cannot bound the tokens of this call ({_why(est)})",
                )
            tokens = est.input_tokens
        usd_p = usd or 0
        if self._max_call is not None and usd_p > self._max_call:
            raise self._refuse(
                record, key, "max_call_usd", "usd", self._max_call, 0, 0, usd_p,
                "its worst case exceeds max_call_usd",
            )
        if self._per_call:
            if self._usd_limit is not None and usd_p > self._usd_limit:
                raise self._refuse(
                    record, key, "per_call", "usd", self._usd_limit, 0, 0, usd_p,
                    "its worst case exceeds the per-call limit",
                )
            if self.tokens is not None and tokens > self.tokens:
                raise self._refuse(
                    record, key, "per_call", "tokens", self.tokens, 0, 0, tokens,
                    "its worst case exceeds the per-call limit",
                )
        return usd_p, tokens

    def _refuse(
        self,
        record: CallRecord,
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
        return BudgetExceeded(
            message,
            scope=scope,
            limit=limit_f,
            spent=spent_f,
            reserved=reserved_f,
            requested=requested_f,
            unit=unit,
        )

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
                warnings.warn(f"llmguard: budget on_alert callback failed: {exc!r}", RuntimeWarning, stacklevel=2)


class _Estimate(NamedTuple):
    """The worst case of one call, before any budget's policy (money in pico-dollars)."""

    input_tokens: int
    output_tokens: int | None
    model: str | None
    usd: int | None  # the worst case; None when it cannot be priced or bounded
    usd_in: int  # the input part (0 when unpriced)


def _estimated(input_tokens: int, output_tokens: int | None, model: str | None) -> _Estimate:
    """Price the worst case of *input_tokens* in and *output_tokens* out on *model*."""
    if not model:
        return _Estimate(input_tokens, output_tokens, model, None, 0)
    entry = prices._cache.get((model, None), _MISS)
    if entry is _MISS:
        entry = prices._entry(model, None)
    if entry is None:
        return _Estimate(input_tokens, output_tokens, model, None, 0)
    if entry.exact or (entry.tier_from is not None and input_tokens > entry.tier_from):
        # Tiered or unusual prices: let genai-prices do the arithmetic.
        usd_in = _worst_cost(input_tokens, 0, model)
        total = None if output_tokens is None else _worst_cost(input_tokens, output_tokens, model)
    else:
        in_rate, write_rate = entry.in_rate, entry.write_rate
        usd_in = input_tokens * (max(in_rate, write_rate)) + entry.per_call
        total = None if output_tokens is None else usd_in + output_tokens * entry.out_rate
    # Rounded, not ceiled: float error is ~1e-16 of the amount, far below a
    # pico-dollar, and ceil would turn 0.0025000000000000005 into one more.
    return _Estimate(
        input_tokens,
        output_tokens,
        model,
        None if total is None else round(total * PICO),
        0 if usd_in is None else round(usd_in * PICO),
    )


def _why(est: _Estimate) -> str:
    """Why *est* has no worst case, for the refusal message."""
    if est.output_tokens is None:
        return (
            "no output cap: no max_tokens/max_output_tokens/max_completion_tokens argument, "
            "no max_output=, and no output observed yet"
        )
    if est.model is None:
        return "no model to price it: no model argument, no model=, and no call observed yet"
    return f"no price known for model {est.model!r} (see llmguard.set_price)"


def _worst_cost(input_tokens: int, output_tokens: int, model: str | None) -> float | None:
    """The higher of *input_tokens* priced as plain input and as cache writes."""
    plain = prices.cost_of(Usage(input_tokens, output_tokens), model)
    written = prices.cost_of(Usage(input_tokens, output_tokens, cache_write_tokens=input_tokens), model)
    if plain is None or written is None:
        return None
    return max(plain, written)


class _Group:
    """The lines of one call in one store, and the budget/key/window of each."""

    __slots__ = ("budgets", "keys", "lines", "reserved", "starts", "store")

    def __init__(
        self,
        store: BudgetStore,
        lines: list[Line],
        budgets: list[Budget],
        keys: list[str | None],
        starts: list[float | None],
    ) -> None:
        self.store = store
        self.lines = lines
        self.budgets = budgets
        self.keys = keys
        self.starts = starts
        self.reserved = False


class _Ticket:
    """One call's reservation, until it settles (and, for an attempt still running then, until it ends)."""

    __slots__ = ("call", "groups", "model", "n0", "n1", "now", "record", "rid", "settled")

    def __init__(
        self,
        record: CallRecord,
        groups: list[_Group],
        model: str | None,
        rid: str,
        now: float,
        n0: int,
        call: Call,
    ) -> None:
        self.record = record
        self.groups = groups
        self.model = model
        self.rid = rid
        self.now = now  # wall time the reservation was made (its window)
        self.n0 = n0  # attempts made before this call's, which are not ours
        self.n1: int | None = None  # attempts from here on are later calls' (fixed when it settles)
        self.call = call  # for the input estimate of an attempt that reported no usage
        self.settled = False


def _left_unmeasured(att: Attempt, outcome: Outcome) -> bool:
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
    (see `_FunctionBudget._used`).
    """
    return (
        outcome is _PENDING
        or outcome is _CANCELLED
        or (att.sent and att.chunks == 0 and outcome in _UNREAD_ENDS)
        or (att.error_kind in _TIMED_OUT_KINDS and providers.response_timed_out(att.error))
    )


# The kinds of an attempt's error that may be a read timeout the function raised
# as its own error: one with a kind of its own (a 429...) answered for itself,
# whatever its implicit context (the caller's own timed-out request, say).
_TIMED_OUT_KINDS: Final = frozenset({ErrorKind.TIMEOUT, ErrorKind.UNKNOWN})


def _sent_input(call: Call) -> int:
    """The input tokens an attempt that reported nothing is charged: `Call.estimated_input_tokens`, never 0."""
    return max(call.estimated_input_tokens(), 1)


# A fast-path reservation: what `_Ticket` holds, as a plain tuple (building
# a `_Ticket` and a `_Group` on every call costs ~0.4 µs), its one line as
# its bucket's spec and amounts (a `Line` is built only if a ticket is):
# (record, n0, model, store, rid, spec, usd, tokens, key, window start, now, call).
_Fast = tuple[CallRecord, int, str, BudgetStore, str, BucketSpec, int, int, "str | None", "float | None", float, Call]
# A fast reservation made before there is a record (no `Line` yet): (the
# lane's frame or None, model, store, the reservation id or the refusal,
# the bucket's spec, usd, tokens, key, window start, now). On the lane it is
# the state handed from enter to leave as it is.
_Reserved = tuple[
    Any, str, BudgetStore, "str | _stores.Refusal", BucketSpec, int, int, "str | None", "float | None", float
]
# The same once it is known not to be a refusal: the lane's state.
_LaneState = tuple[Any, str, BudgetStore, str, BucketSpec, int, int, "str | None", "float | None", float]


class _FunctionBudget(Layer):
    """A `Budget` on one function: estimation state and the per-call flow.

    The hot path (one budget, no scopes, the memory store) is a handful of
    dict lookups, a float multiply for the worst case, and one lock hold to
    reserve and one to settle; see benchmarks/bench_budget.py.
    """

    name: ClassVar[str] = "budget"

    def __init__(self, budget: Budget, fn: Callable[..., Any], binder: Binder) -> None:
        self.budget = budget
        self.function = fn
        # The function's one argument binder (names, positions, defaults, the
        # instance rule): read at decoration into the positions the fast path
        # reads from a frame, whose arguments keep the instance.
        params = list(binder.signature.parameters.values()) if binder.signature else []
        self._var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        positional = list(binder.positional)
        bound = positional[1:] if binder.first else positional
        self._defaults = binder.defaults
        names = {p.name for p in params}

        def getter(name: str) -> tuple[str, int | None, int | None, Any]:
            return (
                name,
                positional.index(name) if name in positional else None,
                bound.index(name) if name in bound else None,
                self._defaults.get(name),
            )

        self._inputs = tuple(getter(n) for n in _INPUT_NAMES if n in names)
        # The same read from a lane's frame, whose arguments keep self: (name, position, default).
        self._frame_caps = tuple((n, positional.index(n) if n in positional else None, self._defaults.get(n)) for n in _CAP_NAMES if n in names)
        self._frame_inputs = tuple((n, positional.index(n) if n in positional else None, self._defaults.get(n)) for n in _INPUT_NAMES if n in names)
        self._frame_simple = (
            (*self._frame_caps[0], "model", *getter("model")[1:2], getter("model")[3], *self._frame_inputs[0])
            if len(self._frame_caps) == 1 and len(self._frame_inputs) == 1 and "model" in names
            and not self._var_kw and "n" not in names
            else None
        )
        self._caps = tuple(getter(n) for n in _CAP_NAMES if n in names)
        self._model_getter = getter("model") if "model" in names else None
        self._n_getter = getter("n") if "n" in names else None
        # History (outputs, model) is read only when an argument may be
        # missing: no such parameter, or one that defaults to None.
        def always(names_: tuple[str, ...]) -> bool:
            return any(
                p.name in names_ and p.default is not None and p.kind is not p.VAR_KEYWORD for p in params
            )

        self._history = not (always(_CAP_NAMES) and always(("model",)))
        self._fast = (
            budget.has_limits
            and not budget._per_call
            and budget._store.sync_ok
            and budget.estimate is None
            and (budget.key is None or isinstance(budget.key, str))
        )
        self._outs: deque[int] = deque(maxlen=_OBSERVED)
        # What `_reserve_parts` reads of the budget on every call, read once
        # (a budget's configuration does not change after it is made).
        self._consts = (
            budget._max_call,
            cast("str | None", budget.key) or None,
            budget._period,
            budget._store,
            budget.reservation_ttl,
        )
        # The bucket of the fixed key in the last window reserved in:
        # (window start, its spec); NaN equals no start.
        self._window: tuple[float | None, BucketSpec] = (math.nan, BucketSpec("", None, None, None))
        self._out_max: int | None = None
        self._last_model: str | None = None
        self._reserve_fast = self._make_reserver()
        self._check_boundable(fn)
        if params:
            self._check_callables(fn, params, binder.first)

    def _check_callables(self, fn: Callable[..., Any], params: list[inspect.Parameter], first: str | None) -> None:
        """Refuse, at decoration, a ``key=`` or ``estimate=`` that cannot take *fn*'s arguments.

        Both are called with the call's arguments by name (`_arguments`); one
        that could never bind would fail every call. Scopes' (``with
        lg.budget(key=...)``) meet their functions only on a call: checked then
        (`_call_with_arguments`).
        """
        for option in ("key", "estimate"):
            f = getattr(self.budget, option)
            if f is None or isinstance(f, str):
                continue
            if (reason := _signature_mismatch(f, params, first)) is not None:
                raise _mismatch_error(option, f, getattr(fn, "__qualname__", repr(fn)), reason)

    def _check_boundable(self, fn: Callable[..., Any]) -> None:
        """Refuse, at decoration, a budget that would refuse every call forever.

        With ``unknown_cost="reject"``, a call whose worst case cannot be
        bounded is refused; if the function offers no output cap (and no
        model to price it, for a USD limit), no call ever runs, so nothing is
        ever observed to learn from.
        """
        b = self.budget
        # A bare @lg.budget has no limit of its own: its scopes may bring estimate= and model=.
        if not b.has_limits or b.unknown_cost != "reject" or b.estimate is not None or self._var_kw:
            return
        where = getattr(fn, "__qualname__", repr(fn))
        if not self._caps and b.max_output is None:
            msg = (
                f"budget(max_output=...) is needed for {where}: it has no max_tokens-like argument, "
                "so with unknown_cost='reject' every call would be refused; pass max_output= "
                "(the output cap the function uses), estimate=, or unknown_cost="
            )
            raise ValueError(msg)
        needs_price = b.usd is not None or b.max_call_usd is not None
        if needs_price and self._model_getter is None and b.model is None:
            msg = (
                f"budget(model=...) is needed for {where}: it has no model argument to price the "
                "call by, so with unknown_cost='reject' every call would be refused; pass model=, "
                "estimate=, or unknown_cost="
            )
            raise ValueError(msg)

    def settings(self) -> dict[str, Any]:
        """The budget's configuration, for `describe`."""
        return self.budget.settings()

    # -- arguments and estimates ---------------------------------------------

    @staticmethod
    def _arguments(call: Call) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults applied (the binder's `Binder.arguments`)."""
        return call.arguments()

    @staticmethod
    def _get(call: Call, getter: tuple[str, int | None, int | None, Any]) -> Any:
        name, pos, pos_bound, default = getter
        value = call.kwargs.get(name, _MISS)
        if value is not _MISS:
            return value
        if call.instance is not None:
            pos = pos_bound
        args = call.args
        if pos is not None and pos < len(args):
            return args[pos]
        return default

    def _estimate(self, call: Call, scopes: tuple[Budget, ...]) -> _Estimate:
        own = self.budget
        estimate = own.estimate
        if estimate is None and scopes:
            estimate = next((s.estimate for s in reversed(scopes) if s.estimate), None)
        if estimate is not None:
            value = _call_with_arguments("estimate", estimate, self._arguments(call), call.function_name)
            output: int | None
            if isinstance(value, Usage):
                input_tokens, output = value.input_tokens, value.output_tokens
            else:
                try:
                    input_tokens, output = value
                except (TypeError, ValueError):
                    msg = f"budget(estimate=...) must return (input_tokens, max_output_tokens) or a Usage, got {value!r}"
                    raise TypeError(msg) from None
            return _estimated(
                _estimated_count(input_tokens, "input_tokens", value),
                None if output is None else _estimated_count(output, "max_output_tokens", value),
                self._model(call, scopes),
            )
        return _estimated(self._input_tokens(call), self._output_cap(call, scopes), self._model(call, scopes))

    def _input_tokens(self, call: Call) -> int:
        get = self._get
        parts = [v for g in self._inputs if (v := get(call, g)) is not None]
        kwargs = call.kwargs
        if self._var_kw:
            own = {g[0] for g in self._inputs}
            parts += [v for n in _INPUT_NAMES if n not in own and (v := kwargs.get(n)) is not None]
        size = sum(map(_estimate.size, parts)) if parts else _estimate.arguments_size(call.args, kwargs)
        return _estimate.reserve_tokens(size)

    def _output_cap(self, call: Call, scopes: tuple[Budget, ...]) -> int | None:
        cap: int | None = None
        for g in self._caps:
            value = self._get(call, g)
            if isinstance(value, int) and value > 0:
                cap = value
                break
        kwargs = call.kwargs
        if cap is None and self._var_kw:
            for name in _CAP_NAMES:
                value = kwargs.get(name)
                if isinstance(value, int) and value > 0:
                    cap = value
                    break
        if cap is not None:
            n = self._get(call, self._n_getter) if self._n_getter is not None else kwargs.get("n")
            if isinstance(n, int) and n > 1:
                cap *= n
            return cap
        declared = self.budget.max_output
        if declared is None and scopes:
            declared = next((s.max_output for s in reversed(scopes) if s.max_output), None)
        return declared if declared is not None else self._out_max

    def _model(self, call: Call, scopes: tuple[Budget, ...]) -> str | None:
        getter = self._model_getter
        model = self._get(call, getter) if getter is not None else call.kwargs.get("model")
        if isinstance(model, str) and model:
            return model
        model = self.budget.model
        if model is None and scopes:
            model = next((s.model for s in reversed(scopes) if s.model), None)
        return model or self._last_model

    def _observe(self, record: CallRecord, n0: int) -> None:
        """Remember this call's outputs and model, for later estimates."""
        for att in record.attempts[n0:]:
            self._observe_usage(att.usage, att.model or att.response_model)

    def _observe_usage(self, usage: Usage | None, model: str | None) -> None:
        if usage is not None and not usage.estimated:
            out = usage.output_tokens
            outs = self._outs
            evicted = outs[0] if len(outs) == _OBSERVED else None
            outs.append(out)
            top = self._out_max
            if top is None or out >= top:
                self._out_max = out
            elif evicted == top:
                self._out_max = max(outs)
        if model:
            self._last_model = model

    # -- reserving -------------------------------------------------------------

    def _key(self, b: Budget, call: Call, arguments: list[dict[str, Any]]) -> str | None:
        spec = b.key
        if spec is None or isinstance(spec, str):
            return spec or None
        if not arguments:
            arguments.append(self._arguments(call))
        value = _call_with_arguments("key", spec, arguments[0], call.function_name)
        return None if value is None or value == "" else str(value)

    def _plan(self, call: Call) -> _Ticket | None:
        """Estimate, apply each budget's policy, build the lines; None if no budget applies."""
        own = self.budget
        scopes = _SCOPES.get()
        if scopes:
            budgets = [own] if own.has_limits else []
            for scope in scopes:
                if scope not in budgets:
                    budgets.append(scope)
            if not budgets:
                return None
        elif own.has_limits:
            budgets = [own]
        else:
            return None
        record = call.record
        est = self._estimate(call, scopes)
        now = _clock.get_clock().time()
        arguments: list[dict[str, Any]] = []
        groups: list[_Group] = []
        for b in budgets:
            key = self._key(b, call, arguments)
            usd, tokens = b._request(est, key, record)
            if b._per_call:
                continue
            line, start = b._line(key, now, usd, tokens)
            store = b._store
            for group in groups:
                if group.store is store:
                    group.lines.append(line)
                    group.budgets.append(b)
                    group.keys.append(key)
                    group.starts.append(start)
                    break
            else:
                groups.append(_Group(store, [line], [b], [key], [start]))
        rid = groups[0].store.new_id() if groups else ""
        return _Ticket(record, groups, est.model, rid, now, len(record.attempts), call)

    def _refused(self, ticket: _Ticket, group: _Group, refusal: _stores.Refusal) -> BudgetExceeded:
        b = group.budgets[refusal.index]
        return b._refuse(
            ticket.record,
            group.keys[refusal.index],
            "limit",
            refusal.unit,
            refusal.limit,
            refusal.spent,
            refusal.reserved,
            refusal.requested,
            "",
        )

    def _store_failed(self, ticket: _Ticket, group: _Group, exc: BudgetStoreError, stage: str) -> BudgetExceeded | None:
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
            ticket.record.budget_decision = "unchecked"
            return None
        b = closed[0]
        i = group.budgets.index(b)
        line = group.lines[i]
        return b._refuse(
            ticket.record,
            group.keys[i],
            "store_error",
            "usd" if line.usd_limit is not None else "tokens",
            line.usd_limit if line.usd_limit is not None else (line.tokens_limit or 0),
            None,
            None,
            line.usd if line.usd_limit is not None else line.tokens,
            f"the budget store is unavailable ({exc.__cause__ or exc}) and on_store_error='fail_closed'",
        )

    def _reserved(self, ticket: _Ticket, n: int, group: _Group, refusal: _stores.Refusal | None) -> None:
        if refusal is not None:
            self._release(ticket, n)
            raise self._refused(ticket, group, refusal)
        group.reserved = True

    def _reserve(self, ticket: _Ticket) -> None:
        for n, group in enumerate(ticket.groups):
            try:
                refusal = group.store.reserve(ticket.rid, group.lines, ticket.now, group.budgets[0].reservation_ttl)
            except BudgetStoreError as exc:
                err = self._store_failed(ticket, group, exc, "reserve")
                if err is None:
                    continue
                self._release(ticket, n)
                raise err from exc.__cause__
            except BaseException:
                self._interrupted(ticket, n, group)
                raise
            self._reserved(ticket, n, group, refusal)
        if ticket.record.budget_decision is None:
            ticket.record.budget_decision = "reserved"

    async def _areserve(self, ticket: _Ticket) -> None:
        for n, group in enumerate(ticket.groups):
            store = group.store
            ttl = group.budgets[0].reservation_ttl
            try:
                if store.sync_ok:
                    refusal = store.reserve(ticket.rid, group.lines, ticket.now, ttl)
                else:
                    refusal = await store.areserve(ticket.rid, group.lines, ticket.now, ttl)
            except BudgetStoreError as exc:
                err = self._store_failed(ticket, group, exc, "reserve")
                if err is None:
                    continue
                self._release(ticket, n)
                raise err from exc.__cause__
            except BaseException:
                self._interrupted(ticket, n, group)
                raise
            self._reserved(ticket, n, group, refusal)
        if ticket.record.budget_decision is None:
            ticket.record.budget_decision = "reserved"

    def _interrupted(self, ticket: _Ticket, n: int, group: _Group) -> None:
        """Cancelled (or interrupted) while group *n* was reserving: release it and those before.

        The store may have made the reservation before the cancel reached
        us; releasing an id it does not hold changes nothing. Synchronous,
        as a stream's settlement is: a cancelled task cannot await.
        """
        group.reserved = True
        self._release(ticket, n + 1)

    def _release(self, ticket: _Ticket, upto: int) -> None:
        """Give back the reservations already made in the groups before *upto*."""
        for group in ticket.groups[:upto]:
            if not group.reserved:
                continue
            for line in group.lines:
                line.charge_usd = line.charge_tokens = 0
            with contextlib.suppress(BudgetStoreError):  # else the lease expires on its own
                group.store.settle(ticket.rid, group.lines, ticket.now, count=False, estimated=False)

    # -- settling ------------------------------------------------------------------

    @classmethod
    def _charges(cls, ticket: _Ticket) -> tuple[bool, bool]:
        """Set each line's charge from the ticket's attempts: (estimated, an attempt still running)."""
        used = cls._used(ticket.record, ticket.n0, ticket.model, ticket.call, ticket.n1)
        for group in ticket.groups:
            for line in group.lines:
                line.charge_usd, line.charge_tokens = cls._charge(used, line.usd, line.tokens)
        return used[2], used[4]

    @staticmethod
    def _charge(used: tuple[int, int, bool, bool, bool], usd_held: int, tokens_held: int) -> tuple[int, int]:  # noqa: ARG004
        """What a reservation of *usd_held* / *tokens_held* is charged for *used* (see `_used`).

        The usage, except that an unpriced one keeps its dollar reservation
        (a cost is never taken to be zero).
        """
        usd, tokens, _, unpriced, _ = used
        return (max(usd, usd_held) if unpriced else usd), tokens

    @staticmethod
    def _used(
        record: CallRecord, n0: int, model: str | None, call: Call, n1: int | None = None
    ) -> tuple[int, int, bool, bool, bool]:
        """What attempts *n0* to *n1* used: (usd, tokens, estimated, unpriced, running).

        The one rule both paths (and the lane) settle by: an attempt's
        reported usage (for a stream that ended early, the estimate it
        recorded: the input confirmed or estimated plus the output seen); for
        an attempt that reported none although its request left
        (`_left_unmeasured`), its input estimated from the call's arguments
        plus the output estimated from the text it showed, flagged
        estimated. *running* says an attempt had not ended yet (a sync worker
        its timeout abandoned): `_follow` settles it again when it does.
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
                if not _left_unmeasured(att, outcome):
                    continue
                if sent_in is None:
                    sent_in = _sent_input(call)
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

    def _settle(self, ticket: _Ticket) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        ticket.n1 = len(ticket.record.attempts)
        estimated, running = self._charges(ticket)
        for group in ticket.groups:
            try:
                if group.reserved:
                    crossings = group.store.settle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
                else:  # on_store_error="fail_open" let it through unreserved
                    crossings = group.store.charge(group.lines, ticket.now, count=True, estimated=estimated)
            except BudgetStoreError as exc:
                self._settle_failed(ticket, group, exc)
                continue
            if crossings:
                self._alerts(ticket, group, crossings)
        if running:
            self._follow(ticket)
        if self._history:
            self._observe(ticket.record, ticket.n0)

    async def _asettle(self, ticket: _Ticket) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        ticket.n1 = len(ticket.record.attempts)
        estimated, running = self._charges(ticket)
        for group in ticket.groups:
            store = group.store
            try:
                if not group.reserved:  # on_store_error="fail_open" let it through unreserved
                    crossings = store.charge(group.lines, ticket.now, count=True, estimated=estimated)
                elif store.sync_ok:
                    crossings = store.settle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
                else:
                    crossings = await store.asettle(ticket.rid, group.lines, ticket.now, count=True, estimated=estimated)
            except BudgetStoreError as exc:
                self._settle_failed(ticket, group, exc)
                continue
            if crossings:
                self._alerts(ticket, group, crossings)
        if running:
            self._follow(ticket)
        if self._history:
            self._observe(ticket.record, ticket.n0)

    def _follow(self, ticket: _Ticket) -> None:
        """Settled while an attempt still ran (a sync worker abandoned at its deadline): correct it when that ends.

        The worker's real usage (or, for a stream it returned, what its
        closing records) replaces the estimate it was charged; the
        difference is added to the ledger as it is, not counted as a call.
        Registered before looking again, so an attempt that ended in between
        is corrected now (a correction that finds nothing new changes nothing).
        """
        lock = threading.Lock()  # this ticket's corrections, one at a time
        ticket.record.on_background_end(lambda: self._correct(ticket, lock))
        attempts = ticket.record.attempts[ticket.n0 : ticket.n1]
        if not any(att.outcome is _PENDING for att in attempts):
            self._correct(ticket, lock)

    def _correct(self, ticket: _Ticket, lock: threading.Lock) -> None:
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
            used = self._used(ticket.record, ticket.n0, ticket.model, ticket.call, ticket.n1)
            now = _clock.get_clock().time()
            for group in ticket.groups:
                changes: list[Line] = []
                for line in group.lines:
                    usd, tokens = self._charge(used, line.usd, line.tokens)
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
                    self._settle_failed(ticket, group, exc, changes)
                    if not exc.queued:
                        continue  # lost: the next correction of this ticket tries the difference again
                    crossings = []  # kept by the store, applied once it is back: charged as far as we go
                for line, change in zip(group.lines, changes, strict=True):
                    line.charge_usd += change.charge_usd
                    line.charge_tokens += change.charge_tokens
                if crossings:
                    self._alerts(ticket, group, crossings)

    def _settle_failed(
        self, ticket: _Ticket, group: _Group, exc: BudgetStoreError, lines: list[Line] | None = None
    ) -> None:
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

    def _alerts(self, ticket: _Ticket, group: _Group, crossings: list[_stores.Crossing]) -> None:
        for crossing in crossings:
            b = group.budgets[crossing.index]
            for level in crossing.crossed:
                b._alert(ticket.record, group.keys[crossing.index], group.starts[crossing.index], crossing.unit, level, crossing.spent)

    def _watch(self, ticket: _Ticket, result: _StreamBase) -> _StreamBase:
        settle = self._settle

        def hook(outcome: Outcome, exc: BaseException | None) -> None:  # noqa: ARG001
            settle(ticket)

        # A stream dropped before anything read it finishes when it is collected
        # (`_StreamBase.__del__`), an unread one at its input estimate. No
        # weakref.finalize here: its arguments (the ticket, its record) would keep
        # anything that reaches the stream alive for ever.
        result.on_finish(hook)
        return result

    # -- the layer ---------------------------------------------------------------

    def _make_reserver(self) -> Callable[[list[Any]], Any]:
        """``reserve(frame)``: `_plan` and `_reserve` for the common case, else `GENERAL`.

        The lane's enter. *frame* is the lane's, or (from the general path,
        `_fast_plan`) a list with the arguments in the same places and no
        layer. Its positional arguments include a method's ``self``. The
        common case: no scope, this function's own budget with a string key
        or none, no ``estimate=``, a store that answers without I/O,
        SDK-shaped arguments that give an output cap and a priced model, and
        a worst case within ``max_call_usd``. It computes what `_estimate`
        and `_plan` compute (the same `_estimate.size`, the same rates) inline:
        this runs on every call, so what it reads of the budget and the
        function is read once, here, into the closure. A refusal is raised on
        the lane; for the general path it is returned as the
        `_stores.Refusal` in place of the reservation id.
        """
        simple = self._frame_simple
        fast_args = self._fast_args
        flat, flat_rates, miss = _FLAT, prices.flat_rates, _MISS
        text_size, reserve_bytes = _estimate.size, _estimate.RESERVE_BYTES_PER_TOKEN
        max_call, key, period, store, lease = self._consts
        hold, clock, spec_of = store.hold, _clock, self._spec  # the module: tests swap its `wall`
        scopes, fast_of = _SCOPES.get, self._fast_of
        layer = self
        if simple is not None:
            cap_name, cap_pos, cap_default, name, pos, default, in_name, in_pos, in_default = simple
            # A parameter that is not positional is never found in args.
            cap_at: int = _NEVER if cap_pos is None else cap_pos
            at: int = _NEVER if pos is None else pos
            in_at: int = _NEVER if in_pos is None else in_pos

        def reserve(frame: list[Any]) -> Any:
            if scopes():
                return GENERAL
            args, kwargs = frame[_F_ARGS], frame[_F_KWARGS]
            if simple is not None:
                # One cap, one model, one input argument: read without the loops.
                n = len(args)
                cap = args[cap_at] if cap_at < n else kwargs.get(cap_name, cap_default)
                model = args[at] if at < n else kwargs.get(name, default)
                value = args[in_at] if in_at < n else kwargs.get(in_name, in_default)
                if cap.__class__ is not int or cap <= 0 or model.__class__ is not str or value is None:
                    return GENERAL
            else:
                found = fast_args(args, kwargs)
                if found is None:
                    return GENERAL
                cap, model, value = found
            rates = flat.get(model, miss)
            if rates is miss:
                rates = flat_rates(model)
            if rates is None:
                return GENERAL
            input_tokens = -(-text_size(value) // reserve_bytes)  # `_estimate.reserve_tokens`, inlined
            usd = round(input_tokens * rates[0] + cap * rates[1] + rates[2])
            if max_call is not None and usd > max_call:
                return GENERAL
            now = clock.wall()
            start = None if period is None else (now // period) * period
            window = layer._window
            spec = window[1] if window[0] == start else spec_of(key, start)
            tokens = input_tokens + cap
            held = hold(spec, usd, tokens, now, lease)
            state = (frame, model, store, held, spec, usd, tokens, key, start, now)
            if held.__class__ is not str and frame[_F_LAYER] is not None:
                fast_of(_realize(frame), state)  # refused on the lane: the general way raises the error
            return state

        return reserve

    def _fast_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, str, Any] | None:
        """(output cap, model, input) when all are plain arguments, else None (see `_make_reserver`).

        The input is the one input argument given, or the list of them.
        """
        if self._model_getter is None or self._n_getter is not None or self._var_kw:
            return None
        name, at, _, default = self._model_getter
        n_args = len(args)
        cap = None
        for cap_name, pos, cap_default in self._frame_caps:
            value = args[pos] if pos is not None and pos < n_args else kwargs.get(cap_name, cap_default)
            if value.__class__ is int and value > 0:
                cap = value
                break
        if cap is None:
            return None
        model = args[at] if at is not None and at < n_args else kwargs.get(name, default)
        if model.__class__ is not str:
            return None
        parts = []
        for in_name, pos, in_default in self._frame_inputs:
            value = args[pos] if pos is not None and pos < n_args else kwargs.get(in_name, in_default)
            if value is not None:
                parts.append(value)
        if not parts:
            return None
        return cap, model, parts[0] if len(parts) == 1 else _estimate.Parts(parts)

    def _spec(self, key: str | None, start: float | None) -> BucketSpec:
        """The `BucketSpec` of *key*'s bucket in the window from *start*, remembered for the next calls."""
        b = self.budget
        period = b._period
        expires = None if start is None or period is None else start + period + b._retention
        spec = BucketSpec(b._bucket(key, start), b._usd_limit, b.tokens, expires, b._usd_alerts, b._tokens_alerts)
        self._window = (start, spec)
        return spec

    def _fast_of(self, call: Call, reserved: _Reserved) -> _Fast:
        """The `_Fast` of a fast reservation for *call*; raises its refusal if it was refused."""
        _, model, store, held, spec, usd, tokens, key, start, now = reserved
        record = call.record
        rid = held if isinstance(held, str) else ""
        fast = (record, len(record.attempts), model, store, rid, spec, usd, tokens, key, start, now, call)
        if not isinstance(held, str):
            ticket = self._ticket_of(fast)
            raise self._refused(ticket, ticket.groups[0], held)
        if record.budget_decision is None:
            record.budget_decision = "reserved"
        return fast

    def _fast_plan(self, call: Call) -> _Fast | None:
        """`_fast_reserve` for a `Call` (the general path), the record noted."""
        args = call.args if call.instance is None else (call.instance, *call.args)
        reserved = self._reserve_fast([None, None, None, None, args, call.kwargs])
        return None if reserved is GENERAL else self._fast_of(call, reserved)

    def _ticket_of(self, fast: _Fast) -> _Ticket:
        """The general `_Ticket` for a fast-path reservation (streams, errors, alerts)."""
        record, n0, model, store, rid, spec, usd, tokens, key, start, now, call = fast
        group = _Group(store, [spec.line(usd, tokens, now)], [self.budget], [key], [start])
        group.reserved = True
        return _Ticket(record, [group], model, rid, now, n0, call)

    def _settle_fast(self, fast: _Fast) -> None:
        """`_settle` for a fast-path call that returned a plain result."""
        record, n0, model, store, rid, spec, usd, tokens, _, _, now, call = fast
        n1 = len(record.attempts)
        used = self._used(record, n0, model, call, n1)
        charge_usd, charge_tokens = self._charge(used, usd, tokens)
        try:
            crossings: Any = store.release(rid, spec, usd, tokens, charge_usd, charge_tokens, now, used[2])
        except BudgetStoreError as exc:
            crossings = exc
        if crossings or used[4]:
            ticket = self._settled(fast, charge_usd, charge_tokens, crossings)
            if used[4]:  # an earlier attempt (a retry inside this budget) still runs
                ticket.n1 = n1
                self._follow(ticket)
        if self._history:
            self._observe(record, n0)

    def _settled(
        self,
        fast: _Fast,
        charge_usd: int,
        charge_tokens: int,
        crossings: list[_stores.Crossing] | BudgetStoreError | None,
    ) -> _Ticket:
        """After a fast settlement charging *charge_usd* / *charge_tokens*: its alerts, or what its failure means.

        Returns the settled ticket it built.
        """
        ticket = self._ticket_of(fast)
        ticket.settled = True
        group = ticket.groups[0]
        line = group.lines[0]
        line.charge_usd, line.charge_tokens = charge_usd, charge_tokens
        if isinstance(crossings, BudgetStoreError):
            self._settle_failed(ticket, group, crossings)
        elif crossings:
            self._alerts(ticket, group, crossings)
        return ticket

    def _run_fast(self, call: Call, fast: _Fast) -> Any:
        """Call, settle (streams: when they finish), for a fast reservation."""
        try:
            result = call.proceed()
        except BaseException:
            self._settle(self._ticket_of(fast))
            raise
        return self._fast_returned(fast, result)

    async def _run_fast_async(self, call: Call, fast: _Fast) -> Any:
        """`_run_fast` for ``async def``."""
        try:
            result = await call.proceed_async()
        except BaseException:
            self._settle(self._ticket_of(fast))
            raise
        return self._fast_returned(fast, result)

    def _fast_returned(self, fast: _Fast, result: Any) -> Any:
        """After a fast reservation's call returned *result*: settle now, or a stream when it finishes."""
        if isinstance(result, _StreamBase):
            return self._watch(self._ticket_of(fast), result)
        self._settle_fast(fast)
        return result

    # -- the fast lane (this budget alone on a def / async def) -------------------

    def lane(self, shape: str) -> Lane | None:
        """The fast path: reserve from the frame's arguments, settle from the result's usage."""
        if not self._fast:
            return None
        resume = self._lane_resume if shape == SYNC else self._lane_resume_async
        return Lane(self._reserve_fast, self._make_lane_leave(), resume, needs_call=False)

    def _make_lane_leave(self) -> Callable[[Call | None, _LaneState, Any], Any]:
        """The lane's leave: settle from the reported or returned usage, without a record when it can."""
        extractor_of, plain_rates, cost_at, cost_of, epoch = (
            providers.usage_extractor,
            prices.plain_rates,
            prices.cost_at,
            prices.cost_of,
            prices.epoch,
        )
        lane_fast, settled, settle_fast = self._lane_fast, self._settled, self._settle_fast
        layer = self
        # The last result class seen and its usage reader, the last model and
        # provider priced, their rates and the price epoch they hold in
        # (tuples: threads may race to replace one, never to pair a key with
        # another's value).
        reader: tuple[type | None, Any] = (None, None)
        priced: tuple[Any, Any, prices.Rates | None, int] = (_MISS, _MISS, None, -1)

        def leave(call: Call | None, state: _LaneState, result: Any) -> Any:
            nonlocal reader, priced
            frame, requested, store, rid, spec, usd, tokens, _, _, now = state
            if call is None:
                cls = result.__class__
                known = reader
                if known[0] is not cls:
                    reader = known = (cls, extractor_of(cls))
                found = None
                if known[1] is not None:
                    try:
                        found = known[1](result)
                    except Exception:  # noqa: BLE001 - a malformed result has no usage (observe_usage)
                        found = None
                reported = frame[_F_USAGE]
                if reported is not None:
                    found = with_reported(found, reported)
                if found is not None and found[0] is not None:
                    usage, model, provider = found
                    model = model or requested
                    known_price = priced
                    if known_price[0] == model and known_price[1] == provider and known_price[3] == epoch[0]:
                        rates = known_price[2]
                    else:
                        now_epoch = epoch[0]  # before the rates: a price set in between makes the memo look old, never current
                        rates = plain_rates(model, provider)
                        priced = (model, provider, rates, now_epoch)
                    cost = (
                        cost_at(rates, usage)
                        if rates is not None and usage.input_tokens <= rates[5]
                        else cost_of(usage, model, provider)
                    )
                    if cost is not None:
                        # The common case, settled without a record.
                        charge_usd = round(cost * PICO)
                        charge_tokens = usage.input_tokens + usage.output_tokens
                        try:
                            crossings: Any = store.release(
                                rid, spec, usd, tokens, charge_usd, charge_tokens, now, usage.estimated
                            )
                        except BudgetStoreError as exc:
                            crossings = exc
                        if crossings:
                            settled(lane_fast(state, returned_call(frame, result)), charge_usd, charge_tokens, crossings)
                        if layer._history:
                            layer._observe_usage(usage, requested)  # the requested model first, as `_observe`
                        return result
            # Anything else (no usage, no price, a Call already made): from the record.
            settle_fast(lane_fast(state, returned_call(frame, result)))
            return result

        return leave

    def _lane_fast(self, state: _LaneState, call: Call) -> _Fast:
        call.note(budget_decision="reserved")
        _, model, store, rid, spec, usd, tokens, key, start, now = state
        return (call.record, 0, model, store, rid, spec, usd, tokens, key, start, now, call)

    def _lane_resume(self, call: Call, state: _LaneState) -> Any:
        return self._run_fast(call, self._lane_fast(state, call))

    async def _lane_resume_async(self, call: Call, state: _LaneState) -> Any:
        return await self._run_fast_async(call, self._lane_fast(state, call))

    # -- the layer ---------------------------------------------------------------

    def around(self, call: Call) -> Any:
        """Reserve, call, settle (streams: when they finish)."""
        fast = self._fast_plan(call) if self._fast and not _SCOPES.get() else None
        if fast is not None:
            return self._run_fast(call, fast)
        ticket = self._plan(call)
        if ticket is None:
            return call.proceed()
        if ticket.groups:
            self._reserve(ticket)
        try:
            result = call.proceed()
        except BaseException:
            self._settle(ticket)
            raise
        if isinstance(result, _StreamBase):
            return self._watch(ticket, result)
        self._settle(ticket)
        return result

    async def around_async(self, call: Call) -> Any:
        """Reserve, await, settle (streams: when they finish)."""
        fast = self._fast_plan(call) if self._fast and not _SCOPES.get() else None
        if fast is not None:
            return await self._run_fast_async(call, fast)
        ticket = self._plan(call)
        if ticket is None:
            return await call.proceed_async()
        if ticket.groups:
            await self._areserve(ticket)
        try:
            result = await call.proceed_async()
        except BaseException:
            await self._asettle(ticket)
            raise
        if isinstance(result, _StreamBase):
            return self._watch(ticket, result)
        await self._asettle(ticket)
        return result


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
    fractions that fire alerts once per window and key. *unknown_cost*:
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
