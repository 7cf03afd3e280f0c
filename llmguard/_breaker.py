"""`breaker`: a circuit breaker that skips a dead provider without calling it.

::

    @lg.retry(attempts=3)
    @lg.breaker(failures=5, cooldown=30)
    def ask(q: str) -> anthropic.types.Message: ...

The states
==========
**Closed**: calls go through, and each one's outcome is counted. After
``failures`` of the provider's faults in a row, or (with ``ratio=``) when
at least ``min_calls`` calls in the last ``window`` seconds were made and
that fraction of them failed, the circuit **opens** for ``cooldown``
seconds: every call gets `CircuitOpen` at once, no request is made. Past the
cooldown it is **half-open**: exactly ``probes`` calls are let through
(whoever asks first); everyone else still gets `CircuitOpen` at once, so a
recovering provider is not stampeded. A probe's success **closes** it; a
probe's fault opens it again, for twice the previous cooldown, up to
``max_cooldown``. A probe whose outcome says nothing (cancelled, an error
that is not the provider's) frees its slot for the next caller.

What counts
===========
Only the provider's fault, as `llmguard.providers.classify` reads the
error: server errors (5xx), overloaded (529), timeouts (the SDK's, and
llmguard's `GuardTimeout`), lost connections, and a 429 with no wait. An
error that is the request's fault (400, 401/403, 404, context too long,
content filtered) shows the provider answering: a success, for the breaker.
Errors that say nothing of the provider (llmguard's own refusals, a bug in
your code, cancellation) are not counted at all. Two errors open the
circuit at once, whatever the counts:

* a **rate limit with a wait** (a 429 with ``Retry-After``, ``retry-after-ms``
  or rate-limit reset headers): open for that long, never longer than
  ``max_cooldown``; then half-open;
* **quota or billing exhaustion** (anthropic ``billing_error`` / a 402 /
  a spend limit, openai ``insufficient_quota``): open for ``max_cooldown``,
  the long cooldown: waiting seconds will not refill an account.

Where it sits
=============
Below `retry` (each real attempt is counted, and `CircuitOpen` is not
retried) and above `budget` (a refused call reserves nothing). A stream's
outcome is known when it ends: its finish counts it (read to the end, or
closed by the caller: a success; an error: judged as above; cancelled or
dropped: nothing).

The circuit, for other guards
=============================
`fallback` keeps one circuit per target through this module's interface::

    class Circuit:
        def admit(self) -> object: ...        # a ticket, or raises CircuitOpen (.retry_after seconds)
        def record(self, ticket: object, exc: BaseException | None) -> None: ...  # None: success
        async def aadmit(self) -> object: ...
        async def arecord(self, ticket: object, exc: BaseException | None) -> None: ...
        state: str                            # "closed" | "open" | "half_open"

    def circuit(name: str, **settings: Any) -> Circuit: ...  # breaker()'s settings, checked alike

A ticket is the closed circuit's generation (an ``int``) or a `Probe` (a
half-open probe); `record` classifies the error itself. ``retry_after`` of
`CircuitOpen` is the seconds until the circuit half-opens (0 when it is
half-open with its probes out). No lock is held while user code runs: a
closed circuit in memory admits and records a success without one.

Sharing
=======
Without ``name=`` each decorated function has its circuit of its own.
Functions (and `circuit` callers) giving the same ``name=`` share one; with
``store="redis://..."`` (or a `RedisBreakerStore`) every process does, each
decision one atomic script (see `llmguard.stores.breaker`).
"""

from __future__ import annotations

import inspect

from collections.abc import Callable
from typing import Any, ClassVar, Final, ParamSpec, TypeVar, overload

from . import _check, _events
from ._binder import Binder
from ._call import Call
from ._record import ErrorKind, Outcome
from ._runner import Guard
from ._stream import _StreamBase
from .errors import GuardTimeout
from .providers import classify
from .stores import is_redis_target
from .stores._breaker_base import CLOSED as _CLOSED
from .stores._breaker_base import (
    FAULT,
    NEUTRAL,
    OK,
    OPEN,
    OPEN_FOR,
    BreakerStore,
    Cell,
    Probe,
    Rules,
    Transition,
)
from .stores._breaker_memory import MemoryBreakerStore, _MemoryCell
from .stores._breaker_redis import RedisBreakerStore


__all__ = ["BreakerLayer", "Circuit", "breaker", "circuit", "judge"]

P = ParamSpec("P")
R = TypeVar("R")

# The store of every breaker given no store=: circuits named alike (name=) are one circuit in it.
DEFAULT_STORE: Final = MemoryBreakerStore()

# The provider's fault (a 429 with no wait among them: see `judge`).
_FAULTS: Final = frozenset(
    {ErrorKind.SERVER, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.RATE_LIMITED}
)
# Kinds that say nothing of the provider.
_SILENT: Final = frozenset({ErrorKind.GUARD, ErrorKind.UNKNOWN})


def judge(exc: BaseException | None, rules: Rules) -> tuple[int, float, str]:
    """What *exc* (None: a success) means for a circuit: ``(verdict, seconds, reason)``.

    The verdict is `OK`, `FAULT`, `NEUTRAL` or `OPEN_FOR` (open for
    *seconds* at once); see the module docs for which error is which.
    """
    if exc is None:
        return OK, 0.0, ""
    if not isinstance(exc, Exception):
        return NEUTRAL, 0.0, ""  # cancellation, interrupts, a closed generator
    if isinstance(exc, GuardTimeout):
        return FAULT, 0.0, "timeout"
    info = classify(exc)
    if info.exhausted:
        return OPEN_FOR, rules.max_cooldown, f"quota exhausted: {info.message}"
    kind = info.kind
    if kind is ErrorKind.RATE_LIMITED and info.retry_after is not None:
        wait = min(info.retry_after, rules.max_cooldown)
        return OPEN_FOR, wait, f"rate limited for {info.retry_after:g}s"
    if kind in _FAULTS:
        return FAULT, 0.0, kind.value
    if kind in _SILENT:
        return NEUTRAL, 0.0, ""
    return OK, 0.0, ""  # the provider answered: the request was at fault


class Circuit:
    """One breaker's state machine (one target, one key): see the module docs."""

    __slots__ = ("_cell", "name", "rules")

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self.name = cell.name
        self.rules = cell.rules

    def __repr__(self) -> str:
        return f"Circuit({self.name!r}, {self._cell.__class__.__name__})"

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open past its cooldown reads half-open)."""
        return self._cell.state()

    def admit(self) -> object:
        """A ticket for one call; raises `CircuitOpen` (with ``retry_after``) when open or half-open and full."""
        ticket = self._cell.admit()
        if ticket.__class__ is Probe:
            self._probing(ticket, None)
        return ticket

    async def aadmit(self) -> object:
        """`admit` for a caller on an event loop (a Redis store awaits its I/O)."""
        cell = self._cell
        ticket = cell.admit() if cell.sync_ok else await cell.aadmit()
        if ticket.__class__ is Probe:
            self._probing(ticket, None)
        return ticket

    def record(self, ticket: object, exc: BaseException | None) -> None:
        """Count the outcome of the call *ticket* let through: *exc* None is a success; an error is judged here."""
        self._record(ticket, exc, None)

    async def arecord(self, ticket: object, exc: BaseException | None) -> None:
        """`record` for a caller on an event loop."""
        cell = self._cell
        if cell.sync_ok:
            self._record(ticket, exc, None)
            return
        self._changed(await cell.arecord(ticket, *judge(exc, self.rules)), None)

    # -- for the guard: events on the call's record (its span) -----------------

    def _record(self, ticket: object, exc: BaseException | None, call: Call | None) -> None:
        cell = self._cell
        changed = cell.ok(ticket) if exc is None else cell.record(ticket, *judge(exc, self.rules))
        if changed is not None:
            self._changed(changed, call)

    def _probing(self, ticket: Any, call: Call | None) -> None:
        if ticket.first:
            _events.emit(_events.BREAKER_HALF_OPENED, _record_of(call), breaker=self.name, probes=self.rules.probes)

    def _changed(self, changed: Transition | None, call: Call | None) -> None:
        if changed is None:
            return
        if changed.to == OPEN:
            _events.emit(
                _events.BREAKER_OPENED,
                _record_of(call),
                level="warning",
                breaker=self.name,
                seconds=round(changed.seconds, 3),
                reason=changed.reason,
            )
        else:
            _events.emit(_events.BREAKER_CLOSED, _record_of(call), breaker=self.name)


def _record_of(call: Call | None) -> Any:
    return None if call is None else call.record


def _rules(
    failures: int | None,
    ratio: float | None,
    window: float,
    min_calls: int,
    cooldown: float,
    max_cooldown: float | None,
    probes: int,
) -> Rules:
    """The settings checked as ``breaker(...)`` checks them: an error names the parameter."""
    _check.number("breaker", "failures", failures, integer=True, minimum=1, exclusive=False, optional=True)
    _check.number("breaker", "ratio", ratio, maximum=1, optional=True, real=True)
    if failures is None and ratio is None:
        msg = "breaker(failures=...) may be None only with a ratio=: the circuit would never open"
        raise ValueError(msg)
    window_s = _check.seconds("breaker", "window", window)
    _check.number("breaker", "min_calls", min_calls, integer=True, minimum=1, exclusive=False)
    cooldown_s = _check.seconds("breaker", "cooldown", cooldown)
    cap = _check.seconds("breaker", "max_cooldown", max_cooldown, optional=True)
    cap = max(cooldown_s, 600.0) if cap is None else cap
    if cap < cooldown_s:
        msg = f"breaker(max_cooldown=...) must be >= cooldown (cooldown={cooldown_s:g}), got {cap:g}"
        raise ValueError(msg)
    _check.number("breaker", "probes", probes, integer=True, minimum=1, exclusive=False)
    return Rules(
        failures,
        None if ratio is None else float(ratio),
        window_s,
        min_calls,
        cooldown_s,
        cap,
        probes,
    )


def _store_of(store: object) -> BreakerStore:
    if store is None:
        return DEFAULT_STORE
    if isinstance(store, BreakerStore):
        return store
    if is_redis_target(store):
        return RedisBreakerStore(store)
    msg = f"breaker(store=...) must be None, a BreakerStore, a redis:// URL or a redis-py client, got {store!r}"
    raise TypeError(msg)


class BreakerLayer(Guard):
    """The `breaker` guard. Build it with `breaker`, not directly."""

    name: ClassVar[str] = "breaker"

    def __init__(
        self,
        *,
        failures: int | None = 5,
        ratio: float | None = None,
        window: float = 60.0,
        min_calls: int = 10,
        cooldown: float = 30.0,
        max_cooldown: float | None = None,
        probes: int = 1,
        store: Any = None,
        name: str | None = None,
    ) -> None:
        self.rules = _rules(failures, ratio, window, min_calls, cooldown, max_cooldown, probes)
        if name is not None and (not isinstance(name, str) or not name):
            msg = f"breaker(name=...) must be None or a non-empty string, got {name!r}"
            raise TypeError(msg) if not isinstance(name, str) else ValueError(msg)
        self.store = _store_of(store)
        self.circuit_name = name
        self.circuit: Circuit | None = None  # per function: set by `for_function`

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {**self.rules._asdict(), "store": self.store, "name": self.circuit_name}

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> BreakerLayer:  # noqa: ARG002
        """A copy for *fn* with its circuit: its own, or the one named ``name=`` in the store."""
        layer = object.__new__(BreakerLayer)
        layer.__dict__.update(self.__dict__)
        name = self.circuit_name
        if name is None:
            module = getattr(fn, "__module__", None) or ""
            qualname = getattr(fn, "__qualname__", None) or repr(fn)
            name = f"{module}.{qualname}" if module else qualname
        # Memory: a function's own circuit unless named; Redis: shared by name (what it is for).
        cell = self.store.cell(name, self.rules, shared=self.circuit_name is not None)
        layer.circuit = Circuit(cell)
        layer._admit = cell.admit
        layer._ok = cell.ok
        if isinstance(cell, _MemoryCell) and self.rules.ratio is None:
            layer._closed_fast_path(cell)
        if not cell.sync_ok:
            layer.aenter = layer._aenter
            layer.aleave = layer._aleave
            layer.afail = layer._afail
        return layer

    def _closed_fast_path(self, cell: _MemoryCell) -> None:
        """``enter`` and ``leave`` as closures over a memory circuit: a closed one costs two attribute reads each way.

        The general hooks run whenever the circuit is not closed, a count is
        to be reset, or the result is a stream.
        """
        enter, leave = self.enter, self.leave

        def enter_closed(call: Call) -> object:
            if cell.current is _CLOSED:
                return cell.gen
            return enter(call)

        def leave_closed(call: Call, ticket: object, result: Any) -> Any:
            if not cell.cons and ticket.__class__ is int and cell.current is _CLOSED and not isinstance(result, _StreamBase):
                return result
            return leave(call, ticket, result)

        self.enter = enter_closed  # type: ignore[method-assign]
        self.leave = leave_closed  # type: ignore[method-assign]

    # -- the hooks ---------------------------------------------------------------

    _admit: Callable[[], object]
    _ok: Callable[[object], Transition | None]

    def enter(self, call: Call) -> object:
        """Admit the call (its ticket is the state) or raise `CircuitOpen`: nothing is sent."""
        ticket = self._admit()
        if ticket.__class__ is not int:
            self._probe(ticket, call)
        return ticket

    def leave(self, call: Call, ticket: object, result: Any) -> Any:
        """A success; a stream's outcome is counted when it ends."""
        if isinstance(result, _StreamBase):
            return self._watch(call, ticket, result)
        changed = self._ok(ticket)
        if changed is not None:
            self._circuit()._changed(changed, call)
        return result

    def fail(self, call: Call, ticket: object, exc: BaseException) -> None:
        """Judge the error and count it; it propagates."""
        self._circuit()._record(ticket, exc, call)

    async def _aenter(self, call: Call) -> object:
        circuit = self._circuit()
        ticket = await circuit._cell.aadmit()
        if ticket.__class__ is not int:
            self._probe(ticket, call)
        return ticket

    async def _aleave(self, call: Call, ticket: object, result: Any) -> Any:
        if isinstance(result, _StreamBase):
            return self._watch(call, ticket, result)
        circuit = self._circuit()
        circuit._changed(await circuit._cell.arecord(ticket, OK, 0.0, ""), call)
        return result

    async def _afail(self, call: Call, ticket: object, exc: BaseException) -> None:
        circuit = self._circuit()
        circuit._changed(await circuit._cell.arecord(ticket, *judge(exc, circuit.rules)), call)

    def _probe(self, ticket: object, call: Call) -> None:
        if isinstance(ticket, Probe):
            self._circuit()._probing(ticket, call)

    def _circuit(self) -> Circuit:
        circuit = self.circuit
        assert circuit is not None  # noqa: S101 - set by for_function, the only way a layer runs
        return circuit

    def _watch(self, call: Call, ticket: object, stream: _StreamBase) -> _StreamBase:
        circuit = self._circuit()
        cell = circuit._cell

        def finished(outcome: Outcome, exc: BaseException | None) -> None:
            # Runs in the stream's one finish, which is synchronous: a Redis store answers on its sync client.
            if outcome is Outcome.OK or outcome is Outcome.CLOSED:
                circuit._changed(cell.ok(ticket), call)  # read to the end, or the caller had enough
            elif outcome is Outcome.ERROR and exc is not None:
                circuit._changed(cell.record(ticket, *judge(exc, circuit.rules)), call)
            else:
                circuit._changed(cell.record(ticket, NEUTRAL, 0.0, ""), call)  # cancelled, dropped

        stream.on_finish(finished)
        return stream


def circuit(name: str, **settings: Any) -> Circuit:
    """One `Circuit` named *name*, with `breaker`'s settings checked as `breaker` checks them.

    Circuits of one name in one store are one circuit (``store=``, as for
    `breaker`; the default is the process's memory store).
    """
    if not isinstance(name, str) or not name:
        msg = f"circuit(name=...) must be a non-empty string, got {name!r}"
        raise TypeError(msg) if not isinstance(name, str) else ValueError(msg)
    layer = BreakerLayer(**settings, name=name)
    return Circuit(layer.store.cell(name, layer.rules))


@overload
def breaker(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def breaker(
    *,
    failures: int | None = 5,
    ratio: float | None = None,
    window: float = 60.0,
    min_calls: int = 10,
    cooldown: float = 30.0,
    max_cooldown: float | None = None,
    probes: int = 1,
    store: Any = None,
    name: str | None = None,
) -> BreakerLayer: ...
def breaker(fn: Any = None, /, **settings: Any) -> Any:
    """A circuit breaker: after repeated provider faults, calls fail fast with `CircuitOpen`, none sent.

    ``@lg.breaker`` or ``@lg.breaker(failures=5, ratio=None, window=60,
    min_calls=10, cooldown=30, max_cooldown=None, probes=1, store=None,
    name=None)``. *failures*: the provider's faults in a row that open it
    (None: only the ratio). *ratio*: open when at least *min_calls* calls
    were made in the last *window* seconds and this fraction of them (in
    (0, 1]) failed. *cooldown*: seconds it stays open before half-opening;
    each failed probe doubles it, up to *max_cooldown* (default: the longer of
    600 s and *cooldown*), which is also how long an exhausted quota keeps it
    open. *probes*: calls the half-open circuit lets through at once.
    *store*: a `BreakerStore`, a ``redis://`` URL or a redis-py client
    (default: this process's memory). *name*: the circuit's name; functions
    giving the same one share it (with Redis: by default the function's
    module and qualified name). See the module docs for what counts.
    """
    if fn is None:
        return BreakerLayer(**settings)
    if callable(fn) or isinstance(fn, (staticmethod, classmethod)):
        if settings:
            msg = "breaker(fn, ...) takes no other arguments; use @breaker(...) to configure"
            raise TypeError(msg)
        return BreakerLayer()(fn)
    msg = f"breaker() takes keyword arguments only (failures=, ratio=, ...), got {fn!r}"
    raise TypeError(msg)


# help(), IDEs and inspect.signature show the real parameters, not (fn=None, /, **settings).
breaker.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("fn", inspect.Parameter.POSITIONAL_ONLY, default=None),
        *list(inspect.signature(BreakerLayer.__init__).parameters.values())[1:],
    ]
)
